"""The GitHub workflows, read as GitHub reads them and run as they are written.

Two files: this repository's CI (``.github/workflows/ci.yml``, which runs ``.ci/run``) and the
example project's template (``example_project/ci/latency.yml``, which a user copies to their
repository's ``.github/workflows/``).

* Every workflow file validates against GitHub's workflow schema (check-jsonschema's vendored
  copy, ``--builtin-schema vendor.github-workflows``: no network).
* The template pins the torch and transformers the example's baselines were recorded with (the
  versions ``.ci/constraints.txt`` pins), takes torch from PyTorch's CPU index and
  pytest-llmcycle from its repository.
* Its install steps run here without any index (``pip --no-index --dry-run``): this checkout
  stands in for the git URL, so nothing is looked up on an index pytest-llmcycle is not on.
* Its latency steps run in a copy of the example with the same options. The run gets a device
  key with no entries, which is what a hosted runner gets (see the template's "Device keys").
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example_project"
TEMPLATE = EXAMPLE / "ci" / "latency.yml"
CI = ROOT / ".github" / "workflows" / "ci.yml"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml")) + sorted((EXAMPLE / "ci").glob("*.y*ml"))
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: options the template uses that a released pytest-llmcycle may not have yet, with the version
#: that brings them (the template says so next to the option)
PLANNED = {"--llmcycle-against": "0.2"}
#: the one expression in a latency step's command, and what it is on a push to main
PUSH_EXPRESSIONS = {"inputs.update && '--llmcycle-update' || ''": ""}


def _load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    if True in doc:  # YAML 1.1 reads the key `on` as a boolean
        doc["on"] = doc.pop(True)
    return doc


def _step(job: dict, name: str) -> dict:
    found = [s for s in job["steps"] if s.get("name", "").startswith(name)]
    assert len(found) == 1, f"one step named {name!r}: {[s.get('name') for s in job['steps']]}"
    return found[0]


def _uses(job: dict, action: str) -> list[dict]:
    return [s for s in job["steps"] if s.get("uses", "").split("@")[0] == action]


def _expand(text: str, values: dict[str, str]) -> str:
    """``text`` with each ``${{ expr }}`` replaced by what it evaluates to in the test's event."""

    def value(m: re.Match) -> str:
        expr = m.group(1).strip()
        if expr not in values:
            pytest.fail(f"the test does not know what `{expr}` is: add it to the values of the event it simulates", pytrace=False)
        return values[expr]

    return re.sub(r"\$\{\{(.*?)\}\}", value, text)


def _constraint(name: str) -> str:
    text = (ROOT / ".ci" / "constraints.txt").read_text(encoding="utf-8")
    return re.search(rf"^{re.escape(name)}==(\S+)", text, re.M).group(1)


@pytest.fixture(scope="module")
def template() -> dict:
    return _load(TEMPLATE)


@pytest.fixture(scope="module")
def plugin_help() -> str:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _copy_example(dest: Path) -> Path:
    project = dest / "example_project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(
        "__pycache__", ".pytest_cache", "*.egg-info", "build", "reports", "history.sqlite"))
    return project


def _env(workflow: dict, tmp_path: Path, **extra: str) -> dict:
    """The environment a step sees: this venv's python first on PATH, the workflow's env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "GITHUB_", "PIP_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update({k: str(v) for k, v in workflow.get("env", {}).items()})
    env["GITHUB_STEP_SUMMARY"] = str(tmp_path / "step_summary.md")
    env.update(extra)
    return env


def _bash(command: str, cwd: Path, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    # what GitHub runs a `run:` with on Linux
    return subprocess.run(["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", command], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------- schema
def test_every_workflow_file_is_valid_against_githubs_workflow_schema():
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is not installed (pip install check-jsonschema; it is in the test extra)")
    assert CI in WORKFLOWS and TEMPLATE in WORKFLOWS
    proc = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           *map(str, WORKFLOWS)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_workflow_sits_where_github_never_runs_it():
    """GitHub reads .github/workflows/ at a repository's root only: the example's is a template."""
    folders = [p for p in ROOT.iterdir() if p.is_dir() and p.name not in {".git", ".github", ".venv"}]
    hidden = [p.relative_to(ROOT) for d in folders for p in d.glob("**/.github/workflows/*")]
    assert hidden == []
    head = TEMPLATE.read_text(encoding="utf-8")[:600]
    assert "TEMPLATE" in head and "cp ci/latency.yml .github/workflows/latency.yml" in head


# ----------------------------------------------------------------------------- this repo's CI
def test_ci_runs_ci_run_on_pull_requests_and_pushes_with_the_cpu_build_of_torch():
    ci = _load(CI)
    assert {"pull_request", "push"} <= set(ci["on"])
    (job,) = ci["jobs"].values()
    runs = [s.get("run", "") for s in job["steps"]]
    at = next(i for i, r in enumerate(runs) if r.strip() == ".ci/run")
    torch_step = next(i for i, r in enumerate(runs) if CPU_INDEX in r)
    # the CPU build goes into .ci/run's .venv before .ci/run installs the pinned torch there
    assert torch_step < at and ".venv/bin/python -m pip install" in runs[torch_step] and "constraints.txt" in runs[torch_step]
    assert any("nvidia-" in r and "exit 1" in r for r in runs[at + 1:]), "a step after .ci/run fails on CUDA packages"
    assert os.access(ROOT / ".ci" / "run", os.X_OK)


# ---------------------------------------------------------------------------------- the template
def test_the_template_pins_what_the_example_baselines_were_recorded_with(template):
    env = template["env"]
    assert env["TORCH_VERSION"] == _constraint("torch") and env["TRANSFORMERS_VERSION"] == _constraint("transformers")
    # from its repository, never a bare name an index would be asked for
    assert re.fullmatch(r"pytest-llmcycle @ git\+https://\S+", env["PYTEST_LLMCYCLE"])
    # the repository the project's metadata names, so a copy installs what the README describes
    source = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["urls"]["Source"]
    assert env["PYTEST_LLMCYCLE"].split(" @ git+")[1].split("@")[0] == source
    installs = [_step(job, "Install")["run"] for job in template["jobs"].values()]
    assert len(installs) == 2 and installs[0] == installs[1], "both jobs install the same way"
    lines = installs[0].strip().splitlines()
    assert lines[0] == f'python -m pip install "torch==$TORCH_VERSION" --index-url {CPU_INDEX}'
    assert '"transformers==$TRANSFORMERS_VERSION" "$PYTEST_LLMCYCLE"' in lines[1]
    assert lines[2] == 'python -m pip install -e ".[test]"'  # after pytest-llmcycle: nothing left to look up


def test_pull_requests_compare_base_and_head_with_the_history_they_need(template):
    job = template["jobs"]["pull-request"]
    assert "github.event_name == 'pull_request'" in job["if"]
    assert job["permissions"] == {"contents": "read", "pull-requests": "write"}
    (checkout,) = _uses(job, "actions/checkout")
    assert checkout["with"]["fetch-depth"] == 0  # the base branch, as origin/<base>, and its history
    step = _step(job, "Latency tests")
    assert step["env"]["BASE_REF"] == "${{ github.base_ref }}"
    assert '--llmcycle-against "origin/$BASE_REF"' in step["run"]
    text = TEMPLATE.read_text(encoding="utf-8")
    assert "needs pytest-llmcycle >= 0.2 (base-vs-head mode)" in text
    comment = _step(job, "Comment on the pull request")
    assert "gh pr comment" in comment["run"] and "reports/latency.md" in comment["run"] and comment["continue-on-error"]
    (upload,) = _uses(job, "actions/upload-artifact")
    assert upload["if"] == "always()" and upload["with"]["path"].strip() == "reports/"


def test_main_records_history_and_uploads_reports_and_baselines(template):
    job = template["jobs"]["main"]
    assert "github.event_name != 'pull_request'" in job["if"]
    run = _step(job, "Latency tests")["run"]
    history = re.search(r"--llmcycle-history (\S+)", run).group(1)
    (restore,) = _uses(job, "actions/cache/restore")
    (save,) = _uses(job, "actions/cache/save")
    assert restore["with"]["path"] == save["with"]["path"] == history
    assert "github.ref == 'refs/heads/main'" in save["if"] and save["with"]["key"] == restore["with"]["key"]
    (upload,) = _uses(job, "actions/upload-artifact")
    paths = upload["with"]["path"].split()
    assert paths == ["reports/", ".llmcycle/baselines.json"] and upload["with"]["include-hidden-files"] is True
    for written in re.findall(r"(?:--llmcycle-report|--junitxml) (\S+)", run):
        assert written.startswith("reports/"), f"{written} is not uploaded"


def test_no_job_forces_a_device_key_or_strictness(template):
    text = TEMPLATE.read_text(encoding="utf-8")
    commands = " ".join(s.get("run", "") for job in template["jobs"].values() for s in job["steps"])
    assert "--llmcycle-device-key" not in commands and "--llmcycle-strict" not in commands
    assert "LLMCYCLE_DEVICE_KEY" not in commands
    assert "cpu-amd-epyc" in text, "the template says which key the committed baselines have"


def test_the_template_names_only_options_the_plugin_has(plugin_help):
    flags = set(re.findall(r"--llmcycle-[a-z-]+", TEMPLATE.read_text(encoding="utf-8")))
    assert {"--llmcycle-report", "--llmcycle-history", "--llmcycle-update"} <= flags
    missing = sorted(f for f in flags - set(PLANNED) if not re.search(rf"{re.escape(f)}\b", plugin_help))
    assert missing == []


def test_the_install_steps_resolve_without_an_index(template, tmp_path):
    """The template's install commands, as written, in order, with pip told to use no index.

    The git URL becomes a copy of this checkout (a direct reference either way). ``--dry-run``
    installs nothing: torch and transformers must already be the pinned versions, and the
    example's ``[test]`` extra must need nothing that pytest-llmcycle's install did not bring.
    """
    source = tmp_path / "pytest-llmcycle"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "MANIFEST.in"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "pytest_llmcycle", source / "pytest_llmcycle", ignore=shutil.ignore_patterns("__pycache__"))
    project = _copy_example(tmp_path)
    env = _env(template, tmp_path, PYTEST_LLMCYCLE=f"pytest-llmcycle @ {source.as_uri()}",
               PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DRY_RUN="1",
               # pip reads this variable inverted: "0" turns build isolation off (no index to fetch setuptools from)
               PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    install = _step(template["jobs"]["main"], "Install")["run"]
    proc = _bash(_expand(install, {}), project, env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    would = re.findall(r"^Would install (.*)$", out, re.M)
    # the only thing the dry run would install is pytest-llmcycle itself (and the example, editable)
    installed = {w.rsplit("-", 1)[0] for line in would for w in line.split()}
    assert installed <= {"pytest-llmcycle", "pytest_llmcycle", "tinygen"}, would


# --------------------------------------------------------------------- the template, run as written
def test_the_main_latency_step_runs_as_written(template, tmp_path):
    """A push to main: the latency step's command in a copy of the example, on a runner whose
    device key has no entries (a hosted runner's): every stage is new, the run passes, and
    everything the later steps save or upload is there.

    ``PYTEST_ADDOPTS`` gives the runner's key and narrows the run to the latency tests
    (``tests/test_latency.py``); the whole example suite runs in ``test_example_project.py``.
    """
    pytest.importorskip("transformers")
    project = _copy_example(tmp_path)
    committed = (project / ".llmcycle" / "baselines.json").read_bytes()
    job = template["jobs"]["main"]
    command = _expand(_step(job, "Latency tests")["run"], PUSH_EXPRESSIONS)
    env = _env(template, tmp_path, PYTEST_ADDOPTS="--llmcycle-device-key test-runner-with-no-entries tests/test_latency.py")
    proc = _bash(command, project, env)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]

    doc = json.loads((project / "reports" / "latency.json").read_text(encoding="utf-8"))
    stages = [r for r in doc["results"] if r["kind"] == "stage"]
    assert stages and {r["outcome"] for r in stages} == {"new"}
    assert (project / ".llmcycle" / "baselines.json").read_bytes() == committed, "a push run never rewrites baselines"
    summary = (tmp_path / "step_summary.md").read_text(encoding="utf-8")
    assert "| `tests/test_latency.py::test_generate` | decode |" in summary
    (save,) = _uses(job, "actions/cache/save")
    assert (project / save["with"]["path"]).is_file(), "the history the cache step saves"
    (upload,) = _uses(job, "actions/upload-artifact")
    for path in upload["with"]["path"].split():
        assert (project / path).exists(), f"{path}: uploaded, so it must exist"
    for name in ("latency.md", "latency.html", "junit.xml"):
        assert (project / "reports" / name).is_file()


def test_the_pull_request_step_runs_base_against_head(template, plugin_help, tmp_path):
    """The pull-request step in a git copy of the example whose origin/main is its head (no change)."""
    for option, version in PLANNED.items():
        if not re.search(rf"{re.escape(option)}\b", plugin_help):
            pytest.skip(f"this pytest-llmcycle has no {option} (base-vs-head mode, planned for {version}); "
                        f"the template's pull-request step cannot run before it lands")
    pytest.importorskip("transformers")
    if shutil.which("git") is None:
        pytest.skip("needs git")
    project = _copy_example(tmp_path)
    git_env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@e"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["-c", "commit.gpgsign=false", "commit", "-q", "-m", "base"],
                 ["update-ref", "refs/remotes/origin/main", "HEAD"]):
        subprocess.run(["git", *args], cwd=project, env=git_env, check=True, capture_output=True)
    step = _step(template["jobs"]["pull-request"], "Latency tests")
    env = _env(template, tmp_path, PYTEST_ADDOPTS="tests/test_latency.py",
               **{k: _expand(str(v), {"github.base_ref": "main"}) for k, v in step.get("env", {}).items()})
    proc = _bash(_expand(step["run"], {}), project, env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert (project / "reports" / "latency.md").is_file() and (tmp_path / "step_summary.md").is_file()
