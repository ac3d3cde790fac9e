"""Every Python example in README.md and docs/*.md runs, and the README's names are real.

How each ```python block is run:

* A block whose first line is ``# <path>/conftest.py`` is the README's shared preamble: the
  fixtures (``model``, ``tokenizer``, ``ids``, ``batch``) that later examples of the same file
  use. It is written as that file under every later example.
* A block that defines ``def test_...`` is a test file (written to the path its first line
  names, else ``tests/test_example.py``) and runs through pytester: ``--llmcycle-update``, then a
  plain run, both must pass and nothing may regress. Examples that come before the preamble in
  their file run without it (they are self-contained).
* Any other block is a plain snippet: it runs in a subprocess, in a project where the README's
  first example has run with ``--llmcycle-report reports/latency.json``.
* A block with ``<!-- not-run: reason -->`` on the line directly above it is skipped and
  counted (there may be only a few).

The review flow is also run as the README tells it: record, the change that fails (with the
failure lines the README shows), the printed accept command, and a passing run after it. The
``llmcycle.tokens`` example runs on models returning a tuple (as nanoGPT does) and a tensor,
besides the Hugging Face model of the preamble.

What cannot flake: every inner run uses a small budget (``llmcycle_budget = 0.05``, 1 thread,
the CPU) and a clock that moves one millisecond per read (the ``llmcycle`` fixture is wrapped
to set ``llmcycle.clock``), so a baseline and its check read identical times and a verdict
changes only when a deterministic counter changes. ``llmcycle.ab`` compares two callables in one
run, which a clock like that would make equally fast: the examples in ``REAL_CLOCK`` run once
on the real clock, with an assertion that holds with a wide margin (see the README).

Besides the examples: every relative link resolves (anchors included, as GitHub derives them),
and every ``--llmcycle-*`` option, ``llmcycle_*`` ini name, marker argument and ``llmcycle``
command named in the docs exists.
"""
from __future__ import annotations

import importlib
import json
import pkgutil
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import pytest_llmcycle

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

# Inline pytester runs drop the modules first imported inside them: torch and transformers
# cannot be loaded twice, so they (and the plugin's lazily imported modules) are loaded here.
import pytest_llmcycle.llm.ab  # noqa: F401,E402
import pytest_llmcycle.llm.hf  # noqa: F401,E402
import pytest_llmcycle.llm.scaling  # noqa: F401,E402
import pytest_llmcycle.measure.counters  # noqa: F401,E402
import pytest_llmcycle.measure.machine  # noqa: F401,E402
import pytest_llmcycle.measure.steps  # noqa: F401,E402
import pytest_llmcycle.reports.terminal  # noqa: F401,E402
import pytest_llmcycle.run.fixture  # noqa: F401,E402
import tokenizers  # noqa: F401,E402
import torch  # noqa: F401,E402
import transformers.models.llama.modeling_llama  # noqa: F401,E402
from pytest_llmcycle.config import MARKER_ARGS  # noqa: E402

for _m in pkgutil.walk_packages(pytest_llmcycle.__path__, "pytest_llmcycle."):
    if not _m.name.endswith("__main__"):
        importlib.import_module(_m.name)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]

PYTHON = {"python", "py", "python3"}
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(\S.*?)\s*-->$")
FILE_LINE = re.compile(r"^#\s*([\w./-]+\.py)\b")

#: test name -> why it runs once, on the real clock
REAL_CLOCK = {
    "test_kv_cache_is_faster": "llmcycle.ab compares two callables within one run; its speedup needs real time",
}

INI = """
[pytest]
llmcycle_budget = 0.05
llmcycle_min_rounds = 3
llmcycle_device = cpu
llmcycle_device_key = readme
llmcycle_threads = 1
llmcycle_machine_check = false
"""

#: the harness's own conftest (the project root's): a deterministic clock unless told otherwise
HARNESS = '''
"""Written by tests/test_readme.py: each clock read is one millisecond after the previous."""
import os

import pytest


class TickClock:
    def __init__(self):
        self.t = 0

    def __call__(self):
        self.t += 1_000_000
        return self.t


@pytest.fixture
def llmcycle(llmcycle):
    if os.environ.get("README_REAL_CLOCK") != "1":
        llmcycle.clock = TickClock()
    return llmcycle
'''

#: replacement ``model`` fixtures for the tokens example: what nanoGPT-like models return
OTHER_MODELS = {
    "tuple": '''

class _TupleLM(torch.nn.Module):
    """Returns ``(logits, loss)`` as nanoGPT's GPT.forward does."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(256, 32)
        self.head = torch.nn.Linear(32, 256)

    def forward(self, idx, targets=None):
        return self.head(self.emb(idx)), None


@pytest.fixture
def model(llmcycle):
    torch.manual_seed(0)
    return _TupleLM().eval().to(llmcycle.device)
''',
    "tensor": '''

@pytest.fixture
def model(llmcycle):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(256, 32), torch.nn.Linear(32, 256)).eval().to(llmcycle.device)
''',
}


# ---------------------------------------------------------------------------- the blocks
@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    heading: str  # the nearest heading above it
    not_run: str | None  # the reason, when marked not-run

    @property
    def id(self) -> str:
        return f"{self.doc.name}:{self.line}"

    @property
    def filename(self) -> str | None:
        first = self.code.lstrip().splitlines()[0] if self.code.strip() else ""
        m = FILE_LINE.match(first)
        return m.group(1) if m else None

    @property
    def is_conftest(self) -> bool:
        return (self.filename or "").endswith("conftest.py")

    @property
    def tests(self) -> list[str]:
        return re.findall(r"^def (test_\w+)", self.code, re.M)


def code_blocks(doc: Path) -> list[Block]:
    lines = doc.read_text(encoding="utf-8").splitlines()
    out, heading, i = [], "", 0
    while i < len(lines):
        m = re.match(r"^(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not m:
            if re.match(r"^#{1,6} ", lines[i]):
                heading = lines[i].lstrip("#").strip()
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        above = NOT_RUN.match(lines[start - 1].strip()) if start else None
        out.append(Block(doc, start + 1, lang, "\n".join(body) + "\n", heading, above.group(1) if above else None))
    return out


ALL = [b for doc in DOCS for b in code_blocks(doc)]
RUNNABLE = [b for b in ALL if b.lang in PYTHON and not b.not_run]
TEST_FILES = [b for b in RUNNABLE if b.tests]
SNIPPETS = [b for b in RUNNABLE if not b.tests and not b.is_conftest]


def preamble(block: Block) -> Block | None:
    """The conftest block of the block's document that comes before it, if any."""
    before = [b for b in RUNNABLE if b.doc == block.doc and b.is_conftest and b.line < block.line]
    return before[-1] if before else None


def block_in(heading: str, *, contains: str = "") -> list[Block]:
    return [b for b in TEST_FILES if b.doc == README and b.heading == heading and contains in b.code]


# ---------------------------------------------------------------------------- a project
@pytest.fixture(scope="module", autouse=True)
def _frozen_heap():
    """Each inline pytest run ends with gc.collect() (pytest's unraisable-exception hook); with
    torch and transformers loaded that walks a large heap twice a run. What is alive now stays
    alive anyway: freezing it makes those collections cheap, for this module's runs only."""
    import gc

    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture
def project(pytester, monkeypatch):
    monkeypatch.delenv("README_REAL_CLOCK", raising=False)
    # the timing lock lives in the temp folder and serializes every pytest-llmcycle run of this
    # user on the machine; these runs need no quiet machine, so they don't wait for others'
    private = pytester.mkdir("tmp")
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    pytester.makeini(INI)
    pytester.makeconftest(HARNESS)
    return pytester


def write(project, block: Block, extra_conftest: str = "") -> str:
    """Write the block (and its preamble) into the project; returns the test file's path."""
    pre = preamble(block)
    if pre is not None:
        path = project.path / pre.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(pre.code + extra_conftest, encoding="utf-8")
    else:
        assert not extra_conftest, "a replacement fixture needs the preamble"
    name = block.filename or "tests/test_example.py"
    path = project.path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block.code, encoding="utf-8")
    return name


#: inner runs load no plugins the examples don't use: an inline run re-imports what it loads
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:anyio", "-p", "no:benchmark", "-p", "no:xdist")


def run(project, *args: str):
    return project.runpytest(*QUIET, "-rA", *args)


def assert_passed(result, block: Block) -> None:
    text = result.stdout.str()
    assert result.ret == 0, f"{block.id} failed:\n{text[-6000:]}"
    result.assert_outcomes(passed=len(block.tests))
    assert not re.search(r"\bregressed\b", text), f"{block.id}: a stage regressed:\n{text[-6000:]}"


def record_then_check(project, block: Block, extra_conftest: str = "") -> None:
    write(project, block, extra_conftest)
    recorded = run(project, "--llmcycle-update")
    assert_passed(recorded, block)
    checked = run(project)
    assert_passed(checked, block)


# ---------------------------------------------------------------------------- the tests
def test_the_docs_have_runnable_examples_and_few_not_run_blocks():
    assert len(TEST_FILES) >= 10, [b.id for b in TEST_FILES]
    assert len([b for b in RUNNABLE if b.doc == README and b.is_conftest]) == 1, "the README has one preamble"
    not_run = [b for b in ALL if b.not_run]
    assert len(not_run) <= 3, [b.id for b in not_run]
    # a not-run marker above a block that is not Python is a leftover
    assert all(b.lang in PYTHON for b in not_run), [b.id for b in not_run]
    # every fenced block says what it is: an unlabelled one would dodge this file
    assert not [b.id for b in ALL if not b.lang], "label every code block (```python, ```bash, ```text, ...)"
    for b in TEST_FILES:
        assert "llmcycle" in b.code, f"{b.id}: a test example that does not use the llmcycle fixture"


@pytest.mark.parametrize("block", TEST_FILES, ids=[f"{b.id}-{'-'.join(b.tests)}" for b in TEST_FILES])
def test_example_records_then_checks(project, monkeypatch, block):
    if set(block.tests) & set(REAL_CLOCK):
        monkeypatch.setenv("README_REAL_CLOCK", "1")
        write(project, block)
        assert_passed(run(project), block)
        return
    record_then_check(project, block)


@pytest.mark.parametrize("kind", sorted(OTHER_MODELS))
def test_the_tokens_example_takes_a_model_returning_a_tuple_or_a_tensor(project, kind):
    (block,) = [b for b in TEST_FILES if b.doc == README and "llmcycle.tokens(" in b.code]
    record_then_check(project, block, OTHER_MODELS[kind])


def _pattern(line: str) -> str:
    """A README output line as an fnmatch pattern: numbers (with their units) and the device key vary."""
    line = line.replace("cpu-amd-epyc", "*")
    line = re.sub(r"[-+]?\d[\d.]*(?:e[-+]?\d+)?\s*(?:[kMG]?FLOP|[KMG]iB|ms|us|x|%)?", "*", line)
    line = re.sub(r"\*(?:\s*\*)+", "*", line)
    return "*" + line.strip() + "*"


def test_the_review_flow_as_the_readme_tells_it(project):
    section = "The review flow"
    before, after = block_in(section)
    assert before.filename == after.filename, "the change edits the recorded test"
    shown = [b for b in code_blocks(README) if b.heading == section and b.lang == "text"]
    (failure,) = [b for b in shown if "regressed" in b.code]

    # 1. record a baseline
    name = write(project, before)
    assert_passed(run(project, "--llmcycle-update"), before)
    stored = json.loads((project.path / ".llmcycle/baselines.json").read_text(encoding="utf-8"))
    entry = stored["devices"]["readme"]["tests"][f"{name}::test_generate"]
    assert {"prefill", "decode", "e2e"} <= set(entry)
    flops_before = entry["decode"]["counters"]["flops"]

    # 2. the change fails, with the lines the README shows (the deterministic ones: the
    #    counters, the first line and the accept command; times come from the fake clock here)
    write(project, after)
    failed = run(project)
    assert failed.ret == 1, failed.stdout.str()[-6000:]
    failed.assert_outcomes(failed=1)
    lines = [ln for ln in failure.code.splitlines() if ln.strip().startswith(("llmcycle:", "counter", "to accept"))]
    assert len(lines) >= 3
    failed.stdout.fnmatch_lines([_pattern(ln) for ln in lines])

    # 3. the printed command accepts it
    m = re.search(r"to accept the new numbers: pytest (\S+) --llmcycle-update", failed.stdout.str())
    assert m and m.group(1) == f"{name}::test_generate"
    accepted = run(project, m.group(1), "--llmcycle-update")
    accepted.assert_outcomes(passed=1)
    stored = json.loads((project.path / ".llmcycle/baselines.json").read_text(encoding="utf-8"))
    assert stored["devices"]["readme"]["tests"][f"{name}::test_generate"]["decode"]["counters"]["flops"] > flops_before

    # 4. and from then on the check passes
    assert_passed(run(project), after)


@pytest.mark.parametrize("block", SNIPPETS, ids=[b.id for b in SNIPPETS])
def test_plain_snippet_runs(project, block):
    (first,) = [b for b in TEST_FILES if b.doc == README][:1]
    write(project, first)
    assert run(project, "--llmcycle-report", "reports/latency.json").ret == 0
    proc = subprocess.run([sys.executable, "-c", block.code], cwd=project.path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{block.id}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


# ---------------------------------------------------------------------------- names and links
def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if re.match(r"^(`{3,}|~{3,})", line):
            in_code = not in_code
        if in_code or not re.match(r"^#{1,6} ", line):
            continue
        slug = _slug(line.lstrip("#"))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _prose(doc: Path) -> str:
    """The document without its fenced code blocks."""
    return re.sub(r"^(`{3,}).*?^\1\s*$", "", doc.read_text(encoding="utf-8"), flags=re.M | re.S)


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_relative_links_resolve(doc):
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(doc)):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading with that anchor")
    assert not bad, bad


@pytest.fixture(scope="module")
def help_text():
    plugin = subprocess.run([sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True)
    cli = subprocess.run([sys.executable, "-m", "pytest_llmcycle", "--help"], capture_output=True, text=True)
    commands = re.findall(r"^    (\w+)\s", cli.stdout, re.M)
    sub = {c: subprocess.run([sys.executable, "-m", "pytest_llmcycle", c, "--help"], capture_output=True, text=True).stdout for c in commands}
    return plugin.stdout, commands, sub


def test_every_option_ini_name_and_command_named_exists(help_text):
    plugin, commands, sub = help_text
    text = "\n".join(d.read_text(encoding="utf-8") for d in DOCS)
    options = set(re.findall(r"--llmcycle-[a-z-]*[a-z]", text))
    assert options and not [o for o in options if not re.search(re.escape(o) + r"\b(?!-)", plugin)], options
    inis = set(re.findall(r"\bllmcycle_[a-z_]*[a-z]\b", text))
    assert inis and not [i for i in inis if not re.search(rf"^  {i} \(", plugin, re.M)], inis
    named = set(re.findall(r"`llmcycle (\w+)", text)) | set(re.findall(r"^\$? ?llmcycle (\w+)", text, re.M))
    assert {"show", "compare", "prune", "history"} <= named and named <= set(commands), (named, commands)
    # the command's flags named in the docs (others are pip's, pytest's or pytest-timeout's)
    others = {"--index-url", "--timeout", "--timeout-method", "--junitxml", "--collect-only", "--help", "--cpu",
              "--lf", "--checks", "--runs", "--repeat", "--tolerance", "--overhead", "--benchmark-compare-fail",
              "--blocks", "--clock"}  # bench/per_token.py's and bench/tiny_calls.py's
    flags = set(re.findall(r"(?<![\w-])--(?!llmcycle-)[a-z][a-z-]*[a-z]", text)) - others
    known = "\n".join(sub.values())
    assert not [f for f in flags if not re.search(re.escape(f) + r"\b(?!-)", known)], flags


def test_the_reference_lists_every_option_ini_name_and_command_flag(help_text):
    plugin, commands, sub = help_text
    readme = README.read_text(encoding="utf-8")
    options = set(re.findall(r"--llmcycle-[a-z-]*[a-z]", plugin)) | set(re.findall(r"^  (llmcycle_\w+) \(", plugin, re.M))
    assert options and not sorted(o for o in options if not re.search(re.escape(o) + r"\b(?!-)", readme))
    for command, text in sub.items():
        assert f"llmcycle {command}" in readme
        flags = set(re.findall(r"^  (--[a-z][a-z-]*)", text, re.M)) - {"--help"}
        assert not sorted(f for f in flags if not re.search(re.escape(f) + r"\b(?!-)", readme)), command


def test_the_marker_arguments_listed_are_the_plugins():
    text = README.read_text(encoding="utf-8")
    section = text.split("### Marker arguments", 1)[1].split("\n#", 1)[0]
    listed = section.split("Any other argument", 1)[0]
    assert set(re.findall(r"`(\w+)`", listed)) == set(MARKER_ARGS)
