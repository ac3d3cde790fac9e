"""pytest-llmcycle as a package: what ``python -m build`` makes of this checkout.

An sdist and a wheel that ``twine check`` accepts, carrying the license file, the project URLs,
valid classifiers and the one version string (``pytest_llmcycle.__version__``, which the
changelog has a section for); and a README (the package page's text) without links that break
on that page. The build runs on a copy of the checkout, without build isolation when this
environment has what ``[build-system]`` requires (offline), else with it (which needs an index).
"""
from __future__ import annotations

import ast
import email.parser
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CHANGELOG = ROOT / "CHANGELOG.md"

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _version() -> str:
    """``__version__`` as written in the package (read, not imported: the build reads it the same way)."""
    tree = ast.parse((ROOT / "pytest_llmcycle" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("pytest_llmcycle/__init__.py has no __version__")


def _build_requirements_met() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    for spec in PYPROJECT["build-system"]["requires"]:
        req = Requirement(spec)
        try:
            if not req.specifier.contains(version(req.name), prereleases=True):
                return False
        except PackageNotFoundError:
            return False
    return True


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("build", reason="build is not installed (pip install build; it is in the test extra)")
    tmp = tmp_path_factory.mktemp("package")
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".hypothesis", ".benchmarks", ".pytest_cache", "__pycache__", "*.egg-info", "build", "dist",
        "reports", "*.sqlite"))
    isolation = ["--no-isolation"] if _build_requirements_met() else []
    # sdist first, then the wheel built from the sdist (build's default): a file the sdist lacks
    # breaks the wheel
    proc = subprocess.run([sys.executable, "-m", "build", *isolation, "--outdir", str(tmp / "dist"), str(source)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (sdist,) = (tmp / "dist").glob("*.tar.gz")
    (wheel,) = (tmp / "dist").glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


@pytest.fixture(scope="module")
def metadata(dists) -> email.message.Message:
    with zipfile.ZipFile(dists["wheel"]) as whl:
        (name,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(whl.read(name).decode("utf-8"))


def test_twine_check_accepts_the_sdist_and_the_wheel(dists):
    pytest.importorskip("twine", reason="twine is not installed (pip install twine; it is in the test extra)")
    proc = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(dists["sdist"]), str(dists["wheel"])],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_one_version_string(dists, metadata):
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    version = _version()
    assert metadata["Version"] == version
    assert dists["wheel"].name.startswith(f"pytest_llmcycle-{version}-")
    assert re.search(rf"^## {re.escape(version)}\b", CHANGELOG.read_text(encoding="utf-8"), re.M), \
        f"CHANGELOG.md has no '## {version}' section"


def test_license_urls_and_classifiers(dists, metadata):
    assert metadata["License-Expression"] == "MIT"
    with zipfile.ZipFile(dists["wheel"]) as whl:
        licenses = [n for n in whl.namelist() if ".dist-info/licenses/" in n]
        (license_file,) = licenses
        assert whl.read(license_file) == (ROOT / "LICENSE").read_bytes()
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL"))
    assert {"Homepage", "Source", "Issues", "Changelog", "Documentation"} <= set(urls)
    assert all(u.startswith("https://") for u in urls.values())
    # one repository, named for real: every project URL lies under Source, none is a placeholder
    assert all(u.startswith(urls["Source"]) for u in urls.values())
    assert re.fullmatch(r"https://github\.com/[\w.-]+/pytest-llmcycle", urls["Source"])
    assert not re.search(r"OWNER|USER|your-", urls["Source"])
    classifiers = metadata.get_all("Classifier")
    assert "Framework :: Pytest" in classifiers
    trove = pytest.importorskip("trove_classifiers", reason="trove-classifiers is not installed (it is in the test extra)")
    # PyPI refuses an upload with a classifier it does not know, or a license classifier next to License-Expression
    assert sorted(set(classifiers) - trove.classifiers) == []
    assert not [c for c in classifiers if c.startswith("License ::")]


def test_the_sdist_holds_what_the_package_page_and_a_rebuild_need(dists):
    with tarfile.open(dists["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "pytest_llmcycle/__init__.py"} <= names
    # the tests need the example project, the docs and .ci/ of a checkout: none of them, not half of them
    assert not [n for n in names if n.startswith("tests/")]


# ------------------------------------------------------------------------------ the package page
def _links(markdown: str) -> list[str]:
    prose = re.sub(r"^(`{3,}).*?^\1\s*$", "", markdown, flags=re.M | re.S)
    return re.findall(r"\]\(([^)\s]+)\)", prose) + re.findall(r"^\s*\[[^\]]+\]:\s*(\S+)", prose, re.M) \
        + re.findall(r"""href=["']([^"']+)""", prose)


def _github_anchors(doc: Path) -> Iterator[str]:
    """The anchors GitHub derives from a document's headings."""
    seen: dict[str, int] = {}
    in_code = False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if re.match(r"^(`{3,}|~{3,})", line):
            in_code = not in_code
        if in_code or not re.match(r"^#{1,6} ", line):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        yield slug if n == 0 else f"{slug}-{n}"


def test_readme_links_work_on_the_package_page(metadata):
    """The package page shows the README with relative links resolved against pypi.org: a link to
    a file of this repository must be absolute, and must lead to a file (and heading) that exists."""
    source = PYPROJECT["project"]["urls"]["Source"].rstrip("/")
    bad = []
    for target in _links(metadata.get_payload()):
        if target.startswith("#") or target.startswith("mailto:"):
            continue  # an in-page anchor: kept (PyPI does not make heading anchors, GitHub does)
        if not re.match(r"^https?://", target):
            bad.append(f"{target}: relative, so a 404 on the package page; write {source}/blob/main/{target}")
            continue
        m = re.match(rf"^{re.escape(source)}/(?:blob|tree)/main/([^#?]+)(?:#(.*))?$", target)
        if m:
            path = ROOT / m.group(1)
            if not path.exists():
                bad.append(f"{target}: no such file in the repository")
            elif m.group(2) and path.suffix == ".md" and m.group(2) not in set(_github_anchors(path)):
                bad.append(f"{target}: no heading with that anchor")
    assert not bad, "\n".join(bad)
