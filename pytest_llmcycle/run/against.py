"""``--llmcycle-against``: what the fixture does differently when the base runs beside the head.

The fixture (``run.fixture``) calls these few functions; the processes and their turns are
``run.peers``, the base's checkout ``run.basetree``, the numbers ``engine.paired`` and the
verdict ``engine.verdict.decide`` (the same rule as every other verdict).
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence

from ..engine import paired as pm
from ..engine import verdict as vd
from ..measure import affinity
from ..measure.turns import GATE
from ..storage.baseline import Entry, entry_from_samples, ns_to_ms

#: how the budget and the fewest rounds change when a stage is timed by 2K processes taking
#: turns: each process has the doubled budget in wall time, of which it runs a 1/(2K) share, so
#: each side gets the plain run's budget (timed part about 2x a plain run); the fewest rounds are
#: shared among a side's K processes
BUDGET_FACTOR = 2.0


def active(run: Any) -> bool:
    return getattr(run, "peers", None) is not None or getattr(run, "peer", None) is not None


def paired_settings(settings: Any, pairs: int, head0: bool = False) -> Any:
    """A test's settings for a stage timed beside its base (see :data:`BUDGET_FACTOR`).

    ``head0``: the settings of the user's own process, which runs the test but is in no pair
    and not judged: it takes its fewest rounds and leaves the turns to the pairs (a quarter
    more rounds for each of them with two pairs).
    """
    least = max(3, math.ceil(settings.min_rounds / max(1, pairs)))
    return replace(
        settings,
        budget_s=settings.budget_s * BUDGET_FACTOR,
        min_rounds=least,
        max_rounds=least if head0 else settings.max_rounds,
        remeasure=False,
        machine_check=False,
        update=False,
        update_all=False,
    )


def no_lock() -> Any:
    return nullcontext()


@contextmanager
def turns(run: Any, nodeid: str, section: str, rounds: dict, cpu: dict | None = None) -> Iterator[None]:
    """Inside it, every timed unit of ``section`` waits for this process's turn; each timed
    round's turn number goes to ``rounds[section]``, its wall and CPU time to ``cpu[section]``."""
    if not active(run):
        yield
        return
    from .peers import MainGate, PeerGate

    ids = rounds.setdefault(section, [])
    spent = cpu.setdefault(section, []) if cpu is not None else None
    gate = (MainGate(run.peers, nodeid, section, ids, spent) if run.peers is not None
            else PeerGate(run.peer, nodeid, section, ids, spent))
    unpin = affinity.pin(cpus(run))  # before the first turn: the move to the CPU is not timed
    token = GATE.set(gate)
    try:
        yield
    finally:
        GATE.reset(token)
        unpin()


def cpus(run: Any) -> tuple[int, ...] | None:
    """The CPUs every process of the run times on (chosen by head 0; None: not pinned)."""
    return (run.peers if run.peers is not None else run.peer).cpus


def block_turn(run: Any, nodeid: str, name: str, rounds: dict, pinned: list) -> None:
    """One run of a ``with llmcycle.stage(name):`` block waits for this process's turn, pinned to
    the run's CPUs from the first block on (``pinned`` holds the undo; :func:`unpin_blocks`)."""
    if not active(run):
        return
    if not pinned:
        pinned.append(affinity.pin(cpus(run)))
    waiter = run.peers if run.peers is not None else run.peer
    rounds.setdefault(name, []).append(waiter.turn(nodeid, name, "block"))  # a block is never stopped


def unpin_blocks(pinned: list) -> None:
    """At the test's end: the CPUs its stage blocks were pinned to are given back."""
    while pinned:
        pinned.pop()()


def own_record(m: Any, rounds: Sequence[int], env: dict, counters: dict | None, cpu: Sequence = ()) -> dict:
    """What a process knows of one stage: its samples, the turns of its rounds (and each round's
    wall and CPU ns), unit, env, counters."""
    return {
        "samples_ns": list(m.samples_ns),
        "rounds": list(rounds),
        "cpu": [list(x) for x in cpu] if len(cpu) == len(rounds) else [],
        "unit": m.unit,
        "env": dict(env),
        "counters": dict(counters or {}),
        "cold_ns": m.cold_ns,
    }


def round_medians(rec: dict) -> list[float]:
    """The median of each timed round of a record, in turn order ([] when samples and rounds do not split evenly)."""
    xs, ids = rec["samples_ns"], rec["rounds"]
    if not ids or not xs or len(xs) % len(ids):
        return []
    per = len(xs) // len(ids)
    meds = []
    for k, turn in enumerate(ids):
        chunk = sorted(xs[k * per:(k + 1) * per])
        n = len(chunk)
        meds.append((turn, chunk[n // 2] if n % 2 else 0.5 * (chunk[n // 2 - 1] + chunk[n // 2])))
    return [m for _, m in sorted(meds)]


def round_shares(rec: dict) -> list[float]:
    """The share of its CPUs each timed round of a record had (CPU time / wall time / threads),
    in turn order; [] when the record has none (a block stage, an older peer)."""
    spent, ids = rec.get("cpu") or [], rec["rounds"]
    if not spent or len(spent) != len(ids):
        return []
    n = max(1, int(rec.get("env", {}).get("threads") or 1))
    return [min(1.0, c / max(w, 1) / n) for _, (w, c) in sorted(zip(ids, spent))]


def _interleaved(a: dict, b: dict) -> bool:
    """True when the two records' rounds took turns (overlapping turn numbers), not one after the other."""
    ra, rb = a["rounds"], b["rounds"]
    return bool(ra and rb) and min(ra) < max(rb) and min(rb) < max(ra)


@dataclass(frozen=True)
class Judged:
    verdict: vd.Verdict
    entry: Entry | None
    estimate: pm.PairedEstimate | None
    head_samples_ns: tuple


def judge(coord: Any, nodeid: str, stage: str, section: str, mine: dict, rules: vd.Rules, on_cpu: bool = False) -> Judged:
    """Head 0's verdict of ``stage``: its own record and the workers', paired round by round.

    ``on_cpu``: the stage ran on the CPU, so when neighbours took a large share of the base's
    CPU while it was timed (:func:`engine.paired.cpu_basis`), the rounds are compared by their CPU
    time (each round's median times the share of its CPU it had), not their stretched wall time.
    """
    recs = coord.records(nodeid, stage, section)
    # head 0 (this process) is in no pair and not pooled: the head workers are fresh processes like the base's
    heads = {i: r for (role, i), r in recs.items() if role == "head"} or {0: mine}
    bases = {i: r for (role, i), r in recs.items() if role == "base"}
    label = coord.base_label
    head_ns = tuple(x for i in sorted(heads) for x in heads[i]["samples_ns"])
    current = vd.Evidence(ns_to_ms(head_ns), mine["unit"], mine["env"], mine["counters"])
    if not bases:
        why = f"not in {label} at this point of the test: a new stage"
        failed = coord.base_failures.get(nodeid)
        if failed:
            why += f" (the base's test failed: {failed})"
        v = vd.decide(vd.Case(None, current, rules, no_baseline_reason=why, paired=vd.Paired(base_label=label)))
        return Judged(v, None, None, head_ns)
    b0 = bases[min(bases)]
    base_ns = tuple(x for i in sorted(bases) for x in bases[i]["samples_ns"])
    base_ms = ns_to_ms(base_ns)
    entry = entry_from_samples(base_ms, b0["unit"], b0["cold_ns"] / 1e6 if b0.get("cold_ns") else None, b0["env"], b0["counters"] or None)
    pairs = [i for i in sorted(bases) if i in heads and _interleaved(bases[i], heads[i])]
    basis = pm.cpu_basis([x for i in pairs for x in round_shares(bases[i])]) if on_cpu else ""

    meds = {(side, i): round_medians(recs[i]) for side, recs in (("base", bases), ("head", heads)) for i in pairs}

    def by_cpu(side: str, i: int, rec: dict) -> list[float]:
        m, shares = meds[side, i], round_shares(rec)
        return [x * s for x, s in zip(m, shares)] if len(shares) == len(m) else m

    wall = tuple(tuple(pm.match_rounds(meds["base", i], meds["head", i])) for i in pairs)
    log_ratios = tuple(
        tuple(pm.match_rounds(by_cpu("base", i, bases[i]), by_cpu("head", i, heads[i]))) for i in pairs
    ) if basis else wall
    unpaired = not any(log_ratios)
    baseline = vd.Evidence(base_ms, b0["unit"], b0["env"], b0["counters"])
    paired = vd.Paired(log_ratios, label, unpaired, basis=basis, wall_log_ratios=wall if basis else ())
    case = vd.Case(baseline, current, rules, paired=paired)
    v = vd.decide(case)
    est = None if unpaired else pm.estimate(log_ratios)
    return Judged(v, entry, est, head_ns)


def cycle_pairs(run: Any, stages: Sequence[Any], weights: Sequence[float], estimates: dict) -> tuple[vd.Paired | None, bool]:
    """The cycle's paired evidence from its stages' estimates, and whether it can be judged."""
    parts = []
    for w, r in zip(weights, stages):
        got = estimates.get(r.stage)
        if got is None:
            return vd.Paired(base_label=run.peers.base_label), False
        parts.append((w, got[0], got[1]))
    return vd.Paired(base_label=run.peers.base_label, parts=tuple(parts)), True


# ---------------------------------------------------------------------------- the run (plugin hooks)


def start(session: Any, run: Any, options: Any, items: Sequence[Any]) -> None:
    """Prepare the base and start its processes before the first test; a clear UsageError if not."""
    import json  # noqa: F401 - the settings travel as JSON (peers.ENV_SETTINGS)
    from dataclasses import asdict
    from pathlib import Path

    import pytest

    from .basetree import BaseTreeError, resolve
    from .peers import Coordinator, PeerError

    config = session.config
    try:
        tree = resolve(options.against, config.rootpath, config.invocation_params.dir)
    except BaseTreeError as e:
        raise pytest.UsageError(str(e)) from None
    python = str(options.against_python) if options.against_python else None
    if python and not Path(python).exists():
        raise pytest.UsageError(f"--llmcycle-against-python {python}: no such file; give the Python of the base's environment")
    root = Path(config.rootpath)
    files = []
    for item in items:
        try:
            f = str(Path(item.path).relative_to(root))
        except ValueError:
            continue
        if f not in files:
            files.append(f)
    ids = [i.nodeid for i in items]
    run.against_next = dict(zip(ids, ids[1:] + [None]))
    coord = Coordinator(options.against_pairs, tree.label)
    coord.base_root = tree.root  # type: ignore[attr-defined]
    coord.cpus = affinity.choose(run.threads)
    try:
        coord.start(
            tree.root, root, files,
            {"settings": asdict(run.settings), "pairs": options.against_pairs, "cpus": list(coord.cpus or ())},
            base_python=python, extra_paths=options.against_paths,
        )
    except PeerError as e:
        coord.close(interrupted=True)
        raise pytest.UsageError(str(e)) from None
    except BaseException:
        coord.close(interrupted=True)
        raise
    run.peers = coord
    settle_device_key(run)


def peer_settings(settings: Any, options: Any) -> tuple[Any, Any]:
    """A worker's settings (head 0's, as it resolved them) and run options (no outputs of its own)."""
    import json
    import os

    from .peers import ENV_SETTINGS

    got = json.loads(os.environ.get(ENV_SETTINGS, "{}"))
    if got.get("settings"):
        settings = type(settings)(**got["settings"])
    return settings, replace(
        options, report=(), history=None, tensorboard=None, wandb=None, step_summary=False,
        against=None, against_pairs=int(got.get("pairs", options.against_pairs)),
    )


def begin_test(run: Any, item: Any) -> None:
    """Head 0 starts a timed test: its workers start the same test."""
    if run.peers is not None:
        run.peers.run_test(item.nodeid, getattr(run, "against_next", {}).get(item.nodeid))


def end_test(run: Any, nodeid: str) -> None:
    """After the test (its teardown): every worker is done with it too."""
    if run.peers is not None:
        run.peers.test_done(nodeid)
        run.peers.finished(nodeid)


def header(run: Any) -> str:
    c = run.peers
    return (
        f"llmcycle: against {c.base_label} (base checkout {c.base_root}): {c.pairs} base/head process pair(s) time "
        f"each stage, taking turns round by round{_on(c.cpus)}; threshold {run.settings.threshold * 100:g}%; the baseline file is "
        "not used for timing"
    )


def _on(cpus: Any) -> str:
    if not cpus:
        return ""
    return f" on CPU {cpus[0]}" if len(cpus) == 1 else f" on CPUs {','.join(map(str, cpus))}"


def note_removed(run: Any, nodeid: str, head_stages: Sequence[str]) -> None:
    """After a test: stages the base timed that the head has not, listed as removed."""
    coord = run.peers
    if coord is None:
        return
    have = set(head_stages)
    for w in coord.workers:
        if w.role != "base":
            continue
        for n, stage in w.records:
            if n == nodeid and stage not in have and stage not in coord.removed.setdefault(nodeid, []):
                coord.removed[nodeid].append(stage)
    if not coord.removed.get(nodeid):
        coord.removed.pop(nodeid, None)


def settle_device_key(run: Any) -> None:
    """Against a base no baseline file is read, so the device key (shown in the rows) is the
    option's or the default, never one chosen by looking into a file (run.session.device_key)."""
    from ..measure import device as devmod

    if getattr(run, "_device_key", None) is None:
        spec = run.settings.device_key
        run._device_key = devmod.expand_device_key(spec, run.device) if spec else devmod.default_device_key(run.device)
