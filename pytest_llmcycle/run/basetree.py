"""The base of a ``--llmcycle-against`` run: a checkout given as a path, or a git worktree of a revision.

A revision is checked out once per commit into ``<git dir>/llmcycle/worktrees/<commit>`` and
reused by later runs (cached by commit); the three most recently used are kept and older ones
removed. A worktree is built under a temporary name and renamed when complete, so a run
interrupted while building it (Ctrl-C) leaves nothing half made behind: the next run removes the
leftover and prunes git's record of it.

Errors are one line that names the option, what was given and the fix (:class:`BaseTreeError`).
Pure standard library: runs only when the option is given.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

#: worktrees kept in the cache (most recently used first); older ones are removed
KEEP = 3
OPTION = "--llmcycle-against"


class BaseTreeError(ValueError):
    """The base cannot be prepared; the message is the one line the user sees."""


@dataclass(frozen=True)
class BaseTree:
    """Where the base's code is and what to call it."""

    #: the base's counterpart of this run's rootdir (where its tests run from)
    root: Path
    #: how reports name it: "origin/main @ 1a2b3c4", or the path
    label: str
    commit: str | None = None


def _git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=str(cwd), capture_output=True, text=True, check=check)


def git_toplevel(path: Path) -> Path | None:
    """The top folder of the git work tree holding ``path``, or None."""
    try:
        p = _git(path, "rev-parse", "--show-toplevel", check=False)
    except OSError:  # no git installed
        return None
    return Path(p.stdout.strip()) if p.returncode == 0 and p.stdout.strip() else None


def resolve(spec: str, rootdir: Path, invocation_dir: Path | None = None) -> BaseTree:
    """The base named by ``--llmcycle-against SPEC`` for a run whose rootdir is ``rootdir``.

    An existing folder (relative to where pytest was started) is a checkout of the base: the
    rootdir's counterpart inside it when the run is in a subfolder of a git repository (the
    same relative path), else the folder itself. Anything else is a git revision.
    """
    rootdir = Path(rootdir).resolve()
    where = Path(invocation_dir or os.getcwd())
    top = git_toplevel(rootdir)
    rel = rootdir.relative_to(top) if top is not None and rootdir.is_relative_to(top) else Path()
    path = (where / spec).expanduser()
    if path.is_dir():
        base = path.resolve()
        if str(rel) != "." and (base / rel).is_dir():
            base = base / rel
        if base == rootdir:
            raise BaseTreeError(
                f"{OPTION} {spec}: that is this run's rootdir; give a checkout of the base, or a git revision "
                f"(pytest takes a folder given after a space for a test path and may move its rootdir there: "
                f"write {OPTION}={spec})"
            )
        commit = None
        btop = git_toplevel(base)
        if btop is not None:
            c = _git(btop, "rev-parse", "--short=7", "HEAD", check=False)
            commit = c.stdout.strip() or None
        return BaseTree(base, f"{spec} @ {commit}" if commit else spec, commit)
    if top is None:
        raise BaseTreeError(
            f"{OPTION} {spec}: no such folder, and {rootdir} is not in a git repository, so it cannot be a revision; "
            "give a checkout of the base (a folder) or run inside a git repository"
        )
    got = _git(top, "rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}", check=False)
    commit = got.stdout.strip()
    if got.returncode != 0 or not commit:
        raise BaseTreeError(
            f"{OPTION} {spec}: no such revision in {top} (and no such folder); fetch it first "
            f"(e.g. `git fetch origin main`; in GitHub Actions checkout with fetch-depth: 0)"
        )
    tree = worktree(top, commit)
    return BaseTree(tree / rel, f"{spec} @ {commit[:7]}", commit)


def _cache(top: Path) -> Path:
    common = _git(top, "rev-parse", "--git-common-dir").stdout.strip()
    base = Path(common) if Path(common).is_absolute() else top / common
    return base / "llmcycle" / "worktrees"


def worktree(top: Path, commit: str) -> Path:
    """A clean checkout of ``commit`` (cached by commit), built atomically."""
    cache = _cache(top)
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / commit
    _clean(top, cache, keep=final)
    if final.is_dir():
        head = _git(final, "rev-parse", "HEAD", check=False).stdout.strip()
        dirty = _git(final, "status", "--porcelain", "--untracked-files=no", check=False).stdout.strip()
        if head == commit and not dirty:
            os.utime(final)  # most recently used
            return final
        _remove(top, final)
    tmp = cache / f"{commit}.tmp{os.getpid()}"
    try:
        got = _git(top, "worktree", "add", "--detach", "--force", str(tmp), commit, check=False)
        if got.returncode != 0:
            raise BaseTreeError(f"{OPTION}: git could not check out {commit[:7]}: {got.stderr.strip().splitlines()[-1:]}")
        moved = _git(top, "worktree", "move", str(tmp), str(final), check=False)
        if moved.returncode != 0:
            raise BaseTreeError(f"{OPTION}: git could not move the worktree into place: {moved.stderr.strip()}")
    except BaseException:
        _remove(top, tmp)  # Ctrl-C while checking out: nothing half made stays behind
        raise
    return final


def _remove(top: Path, path: Path) -> None:
    _git(top, "worktree", "remove", "--force", "--force", str(path), check=False)
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    _git(top, "worktree", "prune", check=False)


def _clean(top: Path, cache: Path, keep: Path) -> None:
    """Remove leftovers of interrupted runs and all but the :data:`KEEP` most recent worktrees."""
    entries = [p for p in cache.iterdir() if p.is_dir()]
    for p in entries:
        if ".tmp" in p.name:
            pid = p.name.rsplit(".tmp", 1)[1]
            if not (pid.isdigit() and _alive(int(pid))):
                _remove(top, p)
    done = sorted((p for p in entries if ".tmp" not in p.name and p != keep and p.exists()), key=_mtime, reverse=True)
    for p in done[KEEP - 1:]:
        _remove(top, p)
    _git(top, "worktree", "prune", check=False)


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return time.time()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
