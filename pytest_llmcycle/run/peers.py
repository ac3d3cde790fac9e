"""Base against head: processes that time the same stage side by side, taking turns (``--llmcycle-against``).

The pytest process the user started is *head 0* and the coordinator. It starts K *base*
processes (pytest in the base's tree, so the base's code is imported) and K *head* processes
(pytest in this tree); K is ``--llmcycle-against-pairs``. Base i and head i form pair i. Head 0
runs the test as the user sees it and takes its fewest rounds in turns of its own, but its numbers
are not judged: it carries the terminal, the reports and the run's state, so it is not a
process like the others, and a systematic difference there would read as a change. Each worker collects the
timed test files, connects back over a local socket, and runs one test at a time when told to,
in step with head 0. Several pairs because a process has a speed mode of its own: fresh
processes of the same code differ by a few per cent, so one pair cannot tell a small change
from its processes' luck (``engine.paired`` turns the pairs' spread into the interval).

Taking turns. Every timed unit (the cold call, calibration, warm-up and timed rounds) runs
only when the coordinator grants the process a turn (``measure.turns``), and a turn is granted
only while every other process is blocked, waiting for a turn or for its next test: untimed
code (a model being built, a counting pass) never runs beside a timed round. The turns of a
stage go pair by pair in ABBA order (base, head, head, base; then head, base, base, head), so
drift and a busy neighbour fall on both sides alike. The k-th timed round of a pair's head is
matched with the k-th of its base.

Order of stages. The stage head 0 is in runs first, with every process waiting at the same
stage; a process waiting at another stage waits its turn. A stage the base does not reach at
that point is ``new``; stages only the base runs are skipped when head 0 finishes the test
(the worker's test ends there) and listed as removed.

The coordinator runs inline, in head 0's thread, whenever head 0 itself waits (for a turn, for
the base's numbers, at the end of a test); there is no thread. Messages are tuples of plain
values (the base may run on another interpreter, ``--llmcycle-against-python``).
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Client, Connection, Listener, wait
from pathlib import Path
from typing import Any, Callable, Sequence

from ..measure.turns import ROUND, StopRounds

HEAD, BASE = "head", "base"
FREE, READY, IDLE, GONE = "free", "ready", "idle", "gone"
#: how long workers may take to start, import and collect
START_TIMEOUT_S = 600.0
ENV_KEY = "LLMCYCLE_PEER_KEY"
ENV_SETTINGS = "LLMCYCLE_PEER_SETTINGS"
ENV_HEAD_ROOT = "LLMCYCLE_PEER_HEAD_ROOT"


class PeerError(RuntimeError):
    """The base (or a head worker) cannot take part; the message is one line with the fix."""


class SectionSkipped(BaseException):
    """Raised in a worker at a stage head 0 does not have: the worker's test ends there.

    A BaseException so that a test's ``except Exception`` does not swallow it.
    """


def _log_tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


@dataclass
class Participant:
    role: str
    index: int
    conn: Connection | None = None  # None: head 0, this process
    proc: subprocess.Popen | None = None
    log: Path | None = None
    state: str = FREE
    key: tuple | None = None  # (nodeid, section) while READY; (nodeid,) while IDLE
    kind: str = ""  # what the READY turn is for (measure.turns: cold, calibrate, warm, round; block)
    #: (nodeid, stage) -> the record the worker sent (samples, unit, counters, env, round ids)
    records: dict = field(default_factory=dict)
    nodeids: tuple = ()
    error: str = ""

    @property
    def name(self) -> str:
        return f"{self.role} {self.index}"


class _Schedule:
    """The ABBA order of turns among the processes timing one stage."""

    def __init__(self, members: Sequence[Participant]) -> None:
        by = {(p.role, p.index): p for p in members}
        self.members = list(members)
        pairs = sorted(i for r, i in by if r == BASE and (HEAD, i) in by)
        solo = [p for (r, i), p in sorted(by.items()) if i not in pairs]
        self.cycles: list[list[Participant]] = []
        for flip in (False, True):
            order: list[Participant] = []
            for i in pairs:
                b, h = by[(BASE, i)], by[(HEAD, i)]
                order += [h, b, b, h] if flip else [b, h, h, b]
            order += solo
            self.cycles.append(order)
        self.pos = 0

    def next(self, ready: Callable[[Participant], bool]) -> Participant | None:
        flat = self.cycles[0] + self.cycles[1]
        for step in range(len(flat)):
            p = flat[(self.pos + step) % len(flat)]
            if ready(p):
                self.pos = (self.pos + step + 1) % len(flat)
                return p
        return None


class Coordinator:
    """Head 0's side: starts the workers, grants turns, collects the base's numbers."""

    def __init__(self, pairs: int, base_label: str) -> None:
        self.pairs = pairs
        self.base_label = base_label
        #: the CPUs every process times on (measure.affinity; None: not pinned)
        self.cpus: tuple[int, ...] | None = None
        self.me = Participant(HEAD, 0)
        self.workers: list[Participant] = []
        self._turn = 0
        self._granted = self._stopped = False
        #: sections head 0 has had a turn in: a section it enters anew first lets a worker waiting
        #: elsewhere (a stage only the base has, before it) catch up; see _pick
        self._started: set = set()
        self._schedules: dict[tuple, _Schedule] = {}
        #: (nodeid, section) -> when its first turn was granted (time.monotonic): the section's cost
        self._first_grant: dict[tuple, float] = {}
        #: head 0's last timed section: the workers still timing it get their remaining turns
        self._active: tuple | None = None
        #: nodeid -> sections only the base reached (skipped there), for the report
        self.removed: dict[str, list[str]] = {}
        #: nodeid -> why a base process's test failed, for the report
        self.base_failures: dict[str, str] = {}
        self._listener: Listener | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        #: set by close(): the workers are gone (session end, Ctrl-C); later calls do nothing
        self.closed = False

    # ------------------------------------------------------------------ starting
    def start(
        self,
        base_root: Path,
        head_root: Path,
        files: Sequence[str],
        settings: dict,
        *,
        base_python: str | None = None,
        extra_paths: Sequence[str] = (),
        pytest_args: Sequence[str] = (),
    ) -> None:
        """Start K base and K head workers and wait until each has collected and connected."""
        self._tmp = tempfile.TemporaryDirectory(prefix="llmcycle-peers-")
        tmp = Path(self._tmp.name)
        key = secrets.token_bytes(16)
        self._listener = Listener(str(tmp / "sock"), family="AF_UNIX", authkey=key)
        # pairs 1..K of worker processes; head 0 (this process) times too, in a turn of its own
        # each cycle, but is in no pair: it is not a fresh pytest process like the others
        specs = [(BASE, i) for i in range(1, self.pairs + 1)] + [(HEAD, i) for i in range(1, self.pairs + 1)]
        for role, i in specs:
            root = base_root if role == BASE else head_root
            existing = [f for f in files if (root / f.split("::")[0]).exists()]
            python = base_python if (role == BASE and base_python) else sys.executable
            env = dict(os.environ)
            env[ENV_KEY] = key.hex()
            env[ENV_SETTINGS] = json.dumps(settings)
            env[ENV_HEAD_ROOT] = str(head_root)
            env["PYTHONPATH"] = os.pathsep.join(
                [str(root / "src")] * (root / "src").is_dir() + [str(root)] + [str(root / x) for x in extra_paths]
                + [x for x in env.get("PYTHONPATH", "").split(os.pathsep) if x]
            )
            env.pop("PYTEST_ADDOPTS", None)  # the user's extra options are for head 0 (xdist, reports)
            log = tmp / f"{role}{i}.log"
            args = [python, "-m", "pytest", *existing, "-p", "no:cacheprovider", "-p", "no:xdist", "-q",
                    "--llmcycle-peer", f"{tmp / 'sock'}|{role}|{i}", *pytest_args]
            if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
                args[3:3] = ["-p", "pytest_llmcycle.plugin"]
            with open(log, "wb") as out:
                proc = subprocess.Popen(args, cwd=str(root), env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self.workers.append(Participant(role, i, proc=proc, log=log))
        self._accept()

    def _accept(self) -> None:
        """Wait for every worker's hello (it has collected); fail with its last output line if one dies."""
        import queue
        import threading

        assert self._listener is not None
        listener = self._listener
        got: "queue.Queue[tuple]" = queue.Queue()

        def accept(n: int) -> None:
            for _ in range(n):
                try:
                    conn = listener.accept()
                    got.put((conn, conn.recv()))
                except (OSError, EOFError):
                    return

        threading.Thread(target=accept, args=(len(self.workers),), daemon=True).start()
        waiting = {(w.role, w.index): w for w in self.workers}
        deadline = time.monotonic() + START_TIMEOUT_S
        while waiting:
            for w in waiting.values():
                if w.proc is not None and w.proc.poll() is not None:
                    raise PeerError(self._died(w, "exited before it could run a test"))
            if time.monotonic() > deadline:
                raise PeerError(f"--llmcycle-against {self.base_label}: the processes did not start within {START_TIMEOUT_S:g} s")
            try:
                conn, hello = got.get(timeout=0.2)
            except queue.Empty:
                continue
            _, role, index, nodeids, errors, leaks = hello
            w = waiting.pop((role, index))
            w.conn, w.nodeids, w.state = conn, tuple(nodeids), IDLE
            if errors:
                raise PeerError(
                    f"--llmcycle-against {self.base_label}: the {'base' if role == BASE else 'head'}'s tests failed to collect: "
                    + "; ".join(errors[:3])
                )
            if leaks:
                mod, path = leaks[0]
                raise PeerError(
                    f"--llmcycle-against {self.base_label}: the base imported {mod} from this checkout ({path}), not from "
                    "the base: add the folder that holds it to the ini option llmcycle_against_paths (relative to the "
                    "repository root), or install your package so that PYTHONPATH wins (a src/ or flat layout, or an "
                    "editable install)"
                )

    def _died(self, w: Participant, what: str) -> str:
        tail = _log_tail(w.log) if w.log else ""
        last = tail.splitlines()[-1] if tail else ""
        return f"--llmcycle-against {self.base_label}: the {w.name} process {what}" + (f": {last}" if last else "") + (
            f" (its output: {w.log})" if w.log else ""
        )

    # ------------------------------------------------------------------ tests
    def run_test(self, nodeid: str, next_nodeid: str | None) -> None:
        """Workers start ``nodeid`` (setup, body, teardown) in step with head 0."""
        self.me.state = FREE
        self._active = None
        for w in self._live():
            self._send(w, ("run", nodeid, next_nodeid))
            w.state = FREE

    def test_done(self, nodeid: str) -> None:
        """Head 0 finished its test body: wait until every worker finished the test too."""
        if self.closed:  # a fixture's teardown after the session closed the workers (Ctrl-C)
            return
        self.me.state, self.me.key = IDLE, (nodeid,)
        self._coordinate(lambda: all(w.state in (IDLE, GONE) for w in self.workers))

    def finished(self, nodeid: str) -> None:
        """Head 0 is past ``test_done`` (judging, teardown): it runs free again."""
        self.me.state = FREE

    # ------------------------------------------------------------------ turns (head 0)
    def turn(self, nodeid: str, section: str, kind: str = ROUND) -> int:
        """Head 0 waits for its turn in ``section``; returns the turn's number. Raises
        StopRounds for a round when its base partner has finished the stage."""
        key = (nodeid, section)
        self.me.state, self.me.key, self.me.kind = READY, key, kind
        self._active = key
        self._granted = self._stopped = False
        self._coordinate(lambda: self._granted)
        self.me.state = FREE
        if self._stopped:
            raise StopRounds()
        return self._turn

    def records(self, nodeid: str, stage: str, section: str | None) -> dict:
        """Each worker's record of ``stage`` (by (role, index)); waits for workers still timing it."""
        self.me.state, self.me.key = IDLE, (nodeid, "records")
        key = (nodeid, stage)
        at = (nodeid, section) if section else None

        def settled(w: Participant) -> bool:
            if w.state == GONE or key in w.records:
                return True
            if w.state == IDLE:
                return True
            return w.state == READY and w.key != at  # waiting at another stage: it has none here (yet)

        self._coordinate(lambda: all(settled(w) for w in self.workers))
        self.me.state = FREE
        return {(w.role, w.index): w.records[key] for w in self.workers if key in w.records}

    def section_span(self, nodeid: str, section: str) -> float | None:
        """Seconds from the first turn granted in ``section`` to now (call it once its records
        are in): what timing it cost, every process's turns together; None after the first call."""
        t0 = self._first_grant.pop((nodeid, section), None)
        return None if t0 is None else time.monotonic() - t0

    # ------------------------------------------------------------------ the loop
    def _live(self) -> list[Participant]:
        return [w for w in self.workers if w.state != GONE]

    def _send(self, w: Participant, msg: tuple) -> None:
        try:
            assert w.conn is not None
            w.conn.send(msg)
        except (OSError, EOFError, BrokenPipeError):
            self._gone(w)

    def _gone(self, w: Participant) -> None:
        if w.state != GONE:
            w.state = GONE
            w.error = self._died(w, "stopped")

    def _receive(self, w: Participant) -> None:
        try:
            assert w.conn is not None
            msg = w.conn.recv()
        except (OSError, EOFError):
            self._gone(w)
            return
        kind = msg[0]
        if kind == "ready":
            w.state, w.key, w.kind = READY, (msg[1], msg[2]), msg[3]
        elif kind == "idle":
            w.state, w.key = IDLE, (msg[1],)
            if msg[2] and w.role == BASE:
                self.base_failures.setdefault(msg[1], msg[2])
        elif kind == "record":
            w.records[(msg[1], msg[2])] = msg[3]
        elif kind == "skipped":
            if w.role == BASE and msg[2] not in self.removed.setdefault(msg[1], []):
                self.removed[msg[1]].append(msg[2])

    def _coordinate(self, done: Callable[[], bool]) -> None:
        while not done():
            free = [w for w in self.workers if w.state == FREE]
            if free:
                for conn in wait([w.conn for w in free if w.conn is not None]):
                    self._receive(next(w for w in free if w.conn is conn))
                continue
            p = self._pick()
            if p is None:
                stray = [w for w in self.workers if w.state == READY]
                if stray and self.me.state == IDLE and self.me.key is not None and len(self.me.key) == 1:
                    for w in stray:  # head 0's test is done: stages only a worker reached are skipped there
                        self._send(w, ("skip",))
                        if w.state != GONE:
                            w.state = FREE
                    continue
                if done():
                    return
                raise PeerError(f"--llmcycle-against {self.base_label}: the processes cannot agree on what to time next")
            if p.kind == ROUND and self._partner_gone(p):
                if p is self.me:
                    self._granted = self._stopped = True
                else:
                    self._send(p, ("stop",))
                    if p.state != GONE:
                        p.state = FREE
                continue
            self._turn += 1
            if p.key is not None:
                self._first_grant.setdefault(p.key, time.monotonic())
            if p is self.me:
                self._granted = True
                self._started.add(self.me.key)
                continue
            self._send(p, ("go", self._turn))
            if p.state != GONE:
                p.state = FREE

    def _partner_gone(self, p: Participant) -> bool:
        """``p``'s pair partner (same index, other side) timed this stage and has left it."""
        sched = self._schedules.get(p.key) if p.key else None
        if sched is None:
            return False
        other = BASE if p.role == HEAD else HEAD
        partner = next((q for q in sched.members if q.role == other and q.index == p.index), None)
        return partner is not None and not (partner.state == READY and partner.key == p.key)

    def _pick(self) -> Participant | None:
        """Whose turn it is, with every worker blocked; None when nothing is waiting to be timed."""
        everyone = [self.me, *self.workers]
        key = self.me.key if self.me.state == READY else self._active
        if self.me.state == READY and key not in self._started:
            # head 0 enters a stage while a worker waits at another: that one is a stage the base
            # has before this one (removed in the head) or after it (this one is new). Timing the
            # worker's first lets it catch up: if it was removed, the base reaches this stage next
            # and the two are paired; if this one is new, the base's later stage is timed apart
            # and judged unpaired (two samples), never left unjudged.
            elsewhere = [w for w in self.workers if w.state == READY and w.key != key]
            if elsewhere:
                key = elsewhere[0].key
        if key is not None:
            at = [p for p in everyone if p.state == READY and p.key == key]
            if at:
                sched = self._schedules.get(key)
                if sched is None:
                    sched = self._schedules[key] = _Schedule(at)
                p = sched.next(lambda q: q.state == READY and q.key == key)
                if p is None:  # joined after the schedule was made (not in its order): solo turn
                    p = at[0]
                return p
        return None

    # ------------------------------------------------------------------ closing
    def close(self, interrupted: bool = False) -> None:
        """Tell the workers to stop; stop the ones that do not (at once after a Ctrl-C)."""
        if self.closed:
            return
        self.closed = True
        if interrupted:
            for w in self.workers:
                if w.proc is not None and w.proc.poll() is None:
                    w.proc.kill()
        for w in self.workers:
            if w.state != GONE and w.conn is not None:
                try:
                    w.conn.send(("quit",))
                except (OSError, EOFError):
                    pass
        deadline = time.monotonic() + 20
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
        for w in self.workers:
            if w.conn is not None:
                w.conn.close()
        if self._listener is not None:
            self._listener.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def timed_turn(fn: Callable[[], Any], rounds: list, cpu: list | None, turn: int, kind: str) -> Any:
    """Run one unit of a turn; a timed round's turn number goes to ``rounds`` and its wall and
    process CPU time (ns) to ``cpu``: what share of a CPU the process had while it ran (busy
    neighbours take the rest; ``run.against`` judges on CPU time when they took much)."""
    if kind != ROUND:
        return fn()
    w0, c0 = time.perf_counter_ns(), time.process_time_ns()
    out = fn()
    c1, w1 = time.process_time_ns(), time.perf_counter_ns()
    rounds.append(turn)
    if cpu is not None:
        cpu.append((w1 - w0, c1 - c0))
    return out


class MainGate:
    """Head 0's gate of one timed section: each unit waits for head 0's turn."""

    def __init__(self, coord: Coordinator, nodeid: str, section: str, rounds: list, cpu: list | None = None) -> None:
        self.coord, self.nodeid, self.section, self.rounds, self.cpu = coord, nodeid, section, rounds, cpu

    def run(self, kind: str, fn: Callable[[], Any]) -> Any:
        turn = self.coord.turn(self.nodeid, self.section, kind)
        return timed_turn(fn, self.rounds, self.cpu, turn, kind)


# ---------------------------------------------------------------------------- worker side


class Peer:
    """A worker's side: the connection to head 0, and the turns of this process."""

    def __init__(self, conn: Connection, role: str, index: int, cpus: tuple[int, ...] | None = None) -> None:
        self.conn, self.role, self.index = conn, role, index
        #: the CPUs head 0 chose for every process's timed sections (Coordinator.cpus)
        self.cpus = cpus

    @classmethod
    def connect(cls, spec: str) -> "Peer":
        path, role, index = spec.rsplit("|", 2)
        key = bytes.fromhex(os.environ[ENV_KEY])
        cpus = tuple(json.loads(os.environ.get(ENV_SETTINGS, "{}")).get("cpus") or ()) or None
        return cls(Client(path, family="AF_UNIX", authkey=key), role, int(index), cpus)

    def turn(self, nodeid: str, section: str, kind: str = ROUND) -> int:
        self.conn.send(("ready", nodeid, section, kind))
        msg = self.conn.recv()
        if msg[0] == "go":
            return msg[1]
        if msg[0] == "stop":
            raise StopRounds()
        if msg[0] == "skip":
            self.conn.send(("skipped", nodeid, section))
            raise SectionSkipped(f"{section!r} is not in the head at this point of the test")
        raise SectionSkipped("stopped by head 0")

    def record(self, nodeid: str, stage: str, rec: dict) -> None:
        self.conn.send(("record", nodeid, stage, rec))


class PeerGate:
    """A worker's gate of one timed section."""

    def __init__(self, peer: Peer, nodeid: str, section: str, rounds: list, cpu: list | None = None) -> None:
        self.peer, self.nodeid, self.section, self.rounds, self.cpu = peer, nodeid, section, rounds, cpu

    def run(self, kind: str, fn: Callable[[], Any]) -> Any:
        turn = self.peer.turn(self.nodeid, self.section, kind)
        return timed_turn(fn, self.rounds, self.cpu, turn, kind)


def leaked_modules(head_root: str, own_root: str) -> list[tuple[str, str]]:
    """Modules a base worker imported from the head's checkout (``head_root``) instead of its own."""
    head, own = Path(head_root).resolve(), Path(own_root).resolve()
    prefixes = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    leaks = []
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if not f or name.startswith("pytest_llmcycle"):
            continue
        try:
            p = Path(f).resolve()
        except OSError:
            continue
        if "site-packages" in p.parts or any(p.is_relative_to(x) for x in prefixes):
            continue
        if p.is_relative_to(head) and not p.is_relative_to(own):
            leaks.append((name, str(p)))
    return sorted(leaks)


def worker_loop(session: Any, spec: str, run: Any, collect_errors: Sequence[Any]) -> None:
    """A worker's pytest_runtestloop: say hello, then run the tests head 0 names, one at a time."""
    peer = Peer.connect(spec)
    run.peer = peer  # the fixture times for head 0 (run.against)
    items = {i.nodeid: i for i in session.items}
    errors = []
    for r in collect_errors:
        lines = str(r.longrepr).strip().splitlines()
        errors.append(f"{r.nodeid or r.fspath}: {lines[-1] if lines else 'error'}")
    leaks = leaked_modules(os.environ.get(ENV_HEAD_ROOT, ""), str(session.config.rootpath)) if peer.role == BASE and os.environ.get(ENV_HEAD_ROOT) else []
    peer.conn.send(("hello", peer.role, peer.index, list(items), errors, leaks))
    while True:
        try:
            msg = peer.conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] != "run":
            # head 0 reports everything; this process has nothing left to do or write, and
            # pytest's own session end (other plugins' summaries) would only keep head 0 waiting
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        _, nodeid, next_id = msg
        item = items.get(nodeid)
        if item is None:
            peer.conn.send(("idle", nodeid, ""))
            continue
        session.config._llmcycle_failure = ""  # type: ignore[attr-defined]
        item.ihook.pytest_runtest_protocol(item=item, nextitem=items.get(next_id) if next_id else None)
        peer.conn.send(("idle", nodeid, getattr(session.config, "_llmcycle_failure", "")))
