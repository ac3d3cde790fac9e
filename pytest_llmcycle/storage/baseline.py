"""The committed baseline file: format, keys, validation and atomic, merging writes; how a
stage's samples become an entry (and how ``--llmcycle-update-append`` pools processes); which
file holds a test (one file, or one per test module with ``{module}`` in the path).

Layout (schema 1), keys sorted, one field a line, samples on one line so that a PR diff shows
exactly which stage moved::

    {
      "about": "...",
      "devices": {
        "<device_key>": {
          "reference": {<entry>},
          "tests": {
            "<test node id>": {
              "<stage>": {<entry>}
    ...
      "format": "pytest-llmcycle-baselines",
      "schema": 1
    }

Times are milliseconds rounded to four significant digits. The ``format`` field tells a
baseline file from the other JSON documents pytest-llmcycle writes (a JSON report says
``pytest-llmcycle-report``); a file without it is one of the previous version and is read.
The loader refuses what the writer never produces: an entry whose median or quartiles do not
fit its own samples (a hand edit: the table would show one number, the gate use another),
nesting deeper than :data:`MAX_DEPTH`. A file keeps its line endings and byte-order mark.
Writers of one file take turns on a lock of the file's folder (:func:`baseline_lock`), so
every writer shares it whatever its temp folder; no lock file is created (but where a folder
cannot be locked: see that function).
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from json.encoder import encode_basestring_ascii as _encode_str  # what json.dumps uses for str
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

if TYPE_CHECKING:
    import numpy as np

    from ..engine.verdict import Evidence

SCHEMA_VERSION = 1
#: The largest counter value read (FLOPs of any real workload are far below; a float holds it)
MAX_COUNT = 1e30
#: the ``format`` field of a baseline file (absent in files of the previous version)
FORMAT = "pytest-llmcycle-baselines"
#: Deeper nesting is never written by the plugin, and could not be written back (recursion)
MAX_DEPTH = 32
#: Relative slack when a stored median or quartile is checked against the stored samples:
#: both are rounded to SIG_DIGITS (at most 5e-4 each), so 1e-3 accepts every file written.
CONSISTENCY_TOLERANCE = 1e-3
ABOUT = "pytest-llmcycle baselines: review changes like code; refresh with pytest --llmcycle-update"
#: Samples kept per entry: enough for a rank test, few enough to read in a diff.
STORED_SAMPLES = 64
SIG_DIGITS = 4
#: Times outside this range (milliseconds) are not measurements but hand edits; refusing them
#: keeps every ratio a verdict takes finite (a 5e-324 baseline would make any stage "+inf%").
MIN_MS, MAX_MS = 1e-9, 1e12


class BaselineError(Exception):
    """A baseline file that cannot be used; the message names the file and the fix."""


class NotABaselineFile(BaselineError):
    """A JSON document that is not a baseline file at all (a JSON report, a package.json).

    ``note`` is the one line shown when such a file in a ``{module}`` folder is skipped."""

    def __init__(self, message: str, note: str) -> None:
        super().__init__(message)
        self.note = note


def round_sig(x: float, digits: int = SIG_DIGITS) -> float:
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


def round_sig_many(xs: Any, digits: int = SIG_DIGITS) -> list[float]:
    """``[round_sig(x) for x in xs]``, vectorised: 5x faster on many samples.

    ``rint(x * 10**d) / 10**d`` is the double nearest the rounded decimal whenever ``x * 10**d``
    is not within rounding error of a half (10**d is exact up to 1e22, and one correctly
    rounded division follows). Values that close to a tie go through ``round_sig``, so the
    result is identical to it, value for value (the test suite checks both on random and on
    tie-shaped inputs); so do zeros, non-finite values and scales beyond 1e22.
    """
    import numpy as np

    a = np.asarray(xs, dtype=float)
    if a.size == 0:
        return []
    mag = np.abs(a)
    if not (mag.min() > 0 and np.isfinite(mag.max())):
        return [round_sig(float(x), digits) for x in a]
    d = (digits - 1) - np.floor(np.log10(mag))
    if d.min() < -22 or d.max() > 22:
        return [round_sig(float(x), digits) for x in a]
    p = 10.0 ** np.abs(d)  # exact powers of ten
    up = d >= 0
    scaled = np.where(up, a * p, a / p)
    r = np.rint(scaled)
    values = np.where(up, r / p, r * p).tolist()
    near_tie = np.abs(np.abs(scaled - np.trunc(scaled)) - 0.5) < 1e-6
    if near_tie.any():
        for i in np.flatnonzero(near_tie).tolist():
            values[i] = round_sig(float(a[i]), digits)
    return values


def entries_to_json(entries: Sequence["Entry"]) -> list[dict]:
    """``[e.to_json() for e in entries]`` with every entry's samples rounded in one batch."""
    counts = [len(e.samples_ms) for e in entries]
    flat = round_sig_many([x for e in entries for x in e.samples_ms])
    out, i = [], 0
    for e, n in zip(entries, counts):
        out.append(e.to_json(_rounded_samples=flat[i : i + n]))
        i += n
    return out


#: an entry's field listing the medians of the processes it was recorded in (--llmcycle-update-append)
PROCESS_MEDIANS = "process_medians_ms"


def process_medians(entry: "Entry") -> list[float]:
    """The entry's recording processes' medians (positive numbers only: a hand edit is ignored)."""
    medians = entry.extra.get(PROCESS_MEDIANS)
    if not isinstance(medians, list):
        return []
    return [float(m) for m in medians if isinstance(m, (int, float)) and not isinstance(m, bool) and m > 0]


def process_range(entry: "Entry | None") -> tuple[float, float] | None:
    """(fastest, slowest) recorded process median over the entry's median; None from one process."""
    values = process_medians(entry) if entry is not None else []
    if len(values) < 2 or entry.median_ms <= 0:  # type: ignore[union-attr]
        return None
    return min(values) / entry.median_ms, max(values) / entry.median_ms  # type: ignore[union-attr]


@dataclass(frozen=True)
class Entry:
    """One stage's stored measurement (milliseconds per ``unit``)."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    n: int
    samples_ms: tuple
    unit: str = "call"
    cold_ms: float | None = None
    env: Mapping[str, Any] = field(default_factory=dict)
    counters: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def evidence(self) -> "Evidence":
        """This entry as the verdict engine reads it (samples, unit, environment, counters,
        the recording processes' spread)."""
        from ..engine.verdict import Evidence  # numpy: only when a verdict is being made

        return Evidence(self.samples_ms, self.unit, dict(self.env), dict(self.counters), process_range(self))

    def to_json(self, *, _rounded_samples: list | None = None) -> dict:
        d: dict[str, Any] = {
            "median_ms": round_sig(self.median_ms),
            "q1_ms": round_sig(self.q1_ms),
            "q3_ms": round_sig(self.q3_ms),
            "n": int(self.n),
            "samples_ms": round_sig_many(self.samples_ms) if _rounded_samples is None else _rounded_samples,
            "unit": self.unit,
        }
        if self.cold_ms is not None:
            d["cold_ms"] = round_sig(self.cold_ms)
        if self.env:
            d["env"] = dict(self.env)
        if self.counters:
            d["counters"] = dict(self.counters)
        d.update(self.extra)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Entry":
        known = {"median_ms", "q1_ms", "q3_ms", "n", "samples_ms", "unit", "cold_ms", "env", "counters"}
        return cls(
            median_ms=float(d["median_ms"]),
            q1_ms=float(d["q1_ms"]) if d.get("q1_ms") is not None else float(d["median_ms"]),
            q3_ms=float(d["q3_ms"]) if d.get("q3_ms") is not None else float(d["median_ms"]),
            n=int(d.get("n", len(d["samples_ms"]))),
            samples_ms=tuple(map(float, d["samples_ms"])),
            unit=str(d.get("unit", "call")),
            cold_ms=float(d["cold_ms"]) if d.get("cold_ms") is not None else None,
            env=dict(d.get("env", {})),
            counters=dict(d.get("counters", {})),
            extra={k: v for k, v in d.items() if k not in known},
        )


# --------------------------------------------------------------------------- making entries
# numpy (engine.stats) and the verdict rules load inside these functions: this module is read
# by the plugin and the CLI in runs that time nothing.


def ns_to_ms(samples: Any) -> "np.ndarray":
    """Nanosecond samples as a float array of milliseconds (the verdicts and summaries read
    arrays: no list of Python floats is built only to be converted again)."""
    import numpy as np

    return np.asarray(samples, dtype=float) / 1e6


def entry_from_samples(
    samples_ms: Any,
    unit: str,
    cold_ms: float | None,
    env: Mapping[str, Any],
    counters: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Entry:
    """The entry stored for a stage measured as ``samples_ms``: its median and quartiles, and
    :data:`STORED_SAMPLES` of its samples spread over their range."""
    from ..engine import stats

    x = stats.sorted_array(samples_ms)  # one sort for the quartiles and the stored samples
    s = stats.summarize(x, presorted=True)
    return Entry(
        median_ms=s.median,
        q1_ms=s.q1,
        q3_ms=s.q3,
        n=s.n,
        samples_ms=tuple(stats.thin(x, STORED_SAMPLES, presorted=True)),
        unit=unit,
        cold_ms=cold_ms,
        env=env,
        counters=counters or {},
        extra=extra or {},
    )


#: the most recent recording processes an entry remembers
MAX_PROCESSES = 8


def append_process(stored: Entry | None, new: Entry) -> Entry:
    """``new`` added to ``stored`` as one more recording process.

    The stored samples stand for the k processes recorded so far, so the new process gets
    1/(k+1) of the pooled 64 samples; the entry's median and quartiles are the pooled sample's,
    and it lists each process's median (the last :data:`MAX_PROCESSES`). A stored entry of
    another unit, environment or counters is replaced, not pooled.
    """
    from ..engine import stats
    from ..engine.verdict import env_mismatch

    own = round_sig(new.median_ms)
    if stored is None or stored.unit != new.unit or env_mismatch(dict(stored.env), dict(new.env)) or (
        dict(stored.counters) != dict(new.counters)
    ):
        return replace(new, extra={**new.extra, PROCESS_MEDIANS: [own]})
    medians = process_medians(stored) or [round_sig(stored.median_ms)]
    share = max(1, round(STORED_SAMPLES / len(medians)))
    pooled = stats.sorted_array(list(stored.samples_ms) + stats.thin(new.samples_ms, share))
    s = stats.summarize(pooled, presorted=True)
    return replace(
        new,
        median_ms=s.median,
        q1_ms=s.q1,
        q3_ms=s.q3,
        n=stored.n + new.n,
        samples_ms=tuple(stats.thin(pooled, STORED_SAMPLES, presorted=True)),
        extra={**stored.extra, **new.extra, PROCESS_MEDIANS: (medians + [own])[-MAX_PROCESSES:]},
    )


# --------------------------------------------------------------------------- formatting


def dumps(data: Mapping[str, Any]) -> str:
    """Deterministic JSON: sorted keys, flat records and lists on one line, newline at end."""
    return _dump(data, 0) + "\n"


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _scalar(v: Any) -> str:
    """``json.dumps(v, allow_nan=False)`` for the plain types a baseline holds, ~5x cheaper."""
    t = type(v)
    if t is str:
        return _encode_str(v)
    if t is float and -math.inf < v < math.inf:
        return float.__repr__(v)
    if t is int:
        return int.__repr__(v)
    return json.dumps(v, allow_nan=False)  # None, bools, subclasses, and the error for a NaN


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _dump(v: Any, depth: int) -> str:
    t = type(v)
    if t is list or t is tuple:
        types = set(map(type, v))
        if types == {float} and math.isfinite(sum(v)):
            return str(list(v))  # a finite float list prints exactly as json.dumps writes it
        if types <= _SCALARS:
            return "[" + ", ".join(map(_scalar, v)) + "]"
    elif t is dict:
        keys = sorted(v)
        if set(map(type, keys)) <= {str}:
            if set(map(type, v.values())) <= _SCALARS:
                return "{" + ", ".join([f"{_encode_str(k)}: {_scalar(v[k])}" for k in keys]) + "}"
            pad = "  " * (depth + 1)
            items = [f"{pad}{_encode_str(k)}: {_dump(v[k], depth + 1)}" for k in keys]
            return "{\n" + ",\n".join(items) + "\n" + "  " * depth + "}"
    elif t in _SCALARS:
        return _scalar(v)
    return _dump_general(v, depth)


def _dump_general(v: Any, depth: int) -> str:
    """The same layout for any other mapping or sequence (subclasses, non-string keys)."""
    if isinstance(v, Mapping):
        if not v:
            return "{}"
        if all(_is_scalar(x) for x in v.values()):
            return json.dumps(dict(sorted(v.items())), allow_nan=False, separators=(", ", ": "))
        pad = "  " * (depth + 1)
        items = [f"{pad}{json.dumps(k)}: {_dump(v[k], depth + 1)}" for k in sorted(v)]
        return "{\n" + ",\n".join(items) + "\n" + "  " * depth + "}"
    if isinstance(v, (list, tuple)):
        if all(_is_scalar(x) for x in v):
            return json.dumps(list(v), allow_nan=False, separators=(", ", ": "))
        pad = "  " * (depth + 1)
        return "[\n" + ",\n".join(pad + _dump(x, depth + 1) for x in v) + "\n" + "  " * depth + "]"
    return json.dumps(v, allow_nan=False)


# --------------------------------------------------------------------------- loading


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid time")


def _unique_keys(pairs: list) -> dict:
    # json keeps the last of two equal keys silently; in a hand-merged file that hides an entry
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {dup!r} in one object (a hand merge?)")
    return d


def _object_hook() -> Callable[[list], dict]:
    """:func:`_unique_keys`, and each value of an entry's ``samples_ms`` held once: samples rounded
    to 4 digits repeat (2,000 entries of 64 samples hold about 14,000 distinct values), so one
    float object each instead of one a sample saves 2.5 MB of a 1.5 MB file's 4.5 MB in memory.
    Done as each entry is parsed, so the duplicates freed are the blocks the next ones reuse.
    Only lists of floats: an int sample stays an int (an untouched entry is written back as read)."""
    memo: dict = {}

    def hook(pairs: list) -> dict:
        d = _unique_keys(pairs)
        s = d.get("samples_ms")
        if type(s) is list and set(map(type, s)) == _FLOAT_ONLY:
            d["samples_ms"] = list(map(memo.setdefault, s, s))
        return d

    return hook


_CONFLICT = re.compile(r"^(<<<<<<<|=======|>>>>>>>)", re.M)


def _fix_hint(path: Path) -> str:
    return (
        f"restore it from version control (git checkout -- {path}) or delete it and "
        "re-record with --llmcycle-update"
    )


class Baselines:
    """A validated, in-memory baseline file. Untouched entries round-trip unchanged."""

    def __init__(self, path: Path, raw: dict | None = None, *, newline: str = "\n", bom: bool = False) -> None:
        self.path = Path(path)
        self.raw: dict = raw if raw is not None else {
            "about": ABOUT, "devices": {}, "format": FORMAT, "schema": SCHEMA_VERSION
        }
        #: the file's own line ending and byte-order mark, kept when it is written back (a CRLF
        #: file written as LF would change every line of the diff)
        self.newline = newline
        self.bom = bom

    # ---- reading
    @classmethod
    def load(cls, path: str | os.PathLike) -> "Baselines":
        """Read and validate ``path``; a missing file is an empty baseline set."""
        p = Path(path)
        try:
            os.stat(p)
        except FileNotFoundError:  # also a dangling symlink: writing creates its target
            return cls(p)
        except OSError as e:
            if e.errno == errno.ENOTDIR:  # a file where a folder should be: check_writable names it
                return cls(p)
            if e.errno == errno.ELOOP:
                raise BaselineError(
                    f"baseline file {p} is a symlink loop (a link that points back to itself); "
                    "fix or remove the link, or give another path with --llmcycle-baseline"
                ) from None
            raise BaselineError(f"cannot read baseline file {p}: {e}") from None
        if not p.is_file():  # a folder, a FIFO (reading would block), a device
            raise BaselineError(f"baseline file {p} is not a regular file; give the path of a .json file with --llmcycle-baseline")
        try:
            # bytes, not read_text: universal newlines would hide a CRLF file's line endings
            text = p.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise BaselineError(f"cannot read baseline file {p}: {e}") from None
        return cls.loads(text, p)

    @classmethod
    def loads(cls, text: str, path: Path) -> "Baselines":
        bom = text.startswith("\ufeff")  # editors on Windows add one; json.loads refuses it
        if bom:
            text = text[1:]
        newline = "\r\n" if text.count("\r\n") * 2 > text.count("\n") else "\n"
        if not text.strip():
            raise BaselineError(f"baseline file {path} is empty (truncated?); {_fix_hint(path)}")
        try:
            raw = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_object_hook())
        except json.JSONDecodeError as e:
            conflict = (
                ": it contains an unresolved git merge conflict (<<<<<<< markers), resolve it"
                if _CONFLICT.search(text)
                else ""
            )
            raise BaselineError(
                f"baseline file {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}){conflict}; "
                f"{_fix_hint(path)}"
            ) from None
        except (ValueError, RecursionError) as e:
            raise BaselineError(f"baseline file {path} is not valid: {e}; {_fix_hint(path)}") from None
        _check_format(raw, path)
        _validate(raw, path)
        return cls(path, raw, newline=newline, bom=bom)

    def devices(self) -> dict:
        return self.raw.setdefault("devices", {})

    def entry(self, device_key: str, nodeid: str, stage: str) -> Entry | None:
        d = self.devices().get(device_key, {}).get("tests", {}).get(nodeid, {}).get(stage)
        return Entry.from_json(d) if d is not None else None

    def entries_elsewhere(self, device_key: str, nodeid: str, stage: str) -> Iterator[tuple[str, Entry]]:
        """``(key, entry)`` of this stage under every device key but ``device_key``, keys sorted."""
        for key in sorted(self.devices()):
            d = self.devices()[key].get("tests", {}).get(nodeid, {}).get(stage) if key != device_key else None
            if d is not None:
                yield key, Entry.from_json(d)

    def reference(self, device_key: str) -> Entry | None:
        d = self.devices().get(device_key, {}).get("reference")
        return Entry.from_json(d) if d is not None else None

    def iter_entries(self) -> Iterator[tuple[str, str, str, Entry]]:
        for key in sorted(self.devices()):
            tests = self.devices()[key].get("tests", {})
            for nodeid in sorted(tests):
                for stage in sorted(tests[nodeid]):
                    yield key, nodeid, stage, Entry.from_json(tests[nodeid][stage])

    # ---- writing
    def set_entry(self, device_key: str, nodeid: str, stage: str, entry: Entry) -> None:
        self.set_entry_json(device_key, nodeid, stage, entry.to_json())

    def set_entry_json(self, device_key: str, nodeid: str, stage: str, d: dict) -> None:
        dev = self.devices().setdefault(device_key, {})
        dev.setdefault("tests", {}).setdefault(nodeid, {})[stage] = d

    def set_reference(self, device_key: str, entry: Entry) -> None:
        self.devices().setdefault(device_key, {})["reference"] = entry.to_json()

    def remove_test(self, device_key: str, nodeid: str) -> bool:
        tests = self.devices().get(device_key, {}).get("tests", {})
        return tests.pop(nodeid, None) is not None

    def dumps(self) -> str:
        """The file's text, in its own line endings and with its byte-order mark, if it had them."""
        self.raw["schema"] = SCHEMA_VERSION
        self.raw["format"] = FORMAT
        self.raw.setdefault("about", ABOUT)
        text = dumps(self.raw)
        if self.newline != "\n":
            text = text.replace("\n", self.newline)  # JSON strings escape newlines: only line ends change
        return "\ufeff" + text if self.bom else text


def _check_format(raw: Any, path: Path) -> None:
    """A JSON document that is not a baseline file is refused as such (NotABaselineFile)."""
    if not isinstance(raw, dict):
        raise NotABaselineFile(
            f"baseline file {path} is not a JSON object; {_fix_hint(path)}", f"skipped {path}: not a JSON object"
        )
    fmt = raw.get("format", FORMAT)  # absent: a file of the previous version
    if fmt != FORMAT:
        what = "a pytest-llmcycle JSON report" if fmt == "pytest-llmcycle-report" else f"a {_short(fmt)} document"
        raise NotABaselineFile(
            f"{path} is {what}, not a baseline file (its 'format' is not {FORMAT!r}); "
            "give --llmcycle-baseline a baseline file, and write reports elsewhere",
            f"skipped {path}: {what}, not a baseline file",
        )
    if "format" not in raw and "schema" not in raw and "devices" not in raw:
        raise NotABaselineFile(
            f"{path} is not a baseline file (no 'format', 'schema' or 'devices' field); "
            "give --llmcycle-baseline a baseline file",
            f"skipped {path}: not a baseline file (no 'format', 'schema' or 'devices' field)",
        )


_CONTAINERS = frozenset({dict, list})


def _depth_exceeds(v: Any, limit: int) -> bool:
    """Whether ``v`` nests containers deeper than ``limit`` (iterative: no recursion limit)."""
    stack = [(v, 1)]
    while stack:
        obj, depth = stack.pop()
        kids = obj.values() if type(obj) is dict else obj
        if not _CONTAINERS & set(map(type, kids)):  # the common case (samples, env): one C-level pass
            continue
        for k in kids:
            if type(k) is dict or type(k) is list:
                if depth + 1 > limit:
                    return True
                stack.append((k, depth + 1))
    return False


def _validate(raw: Any, path: Path) -> None:
    def bad(where: str, what: str) -> BaselineError:
        return BaselineError(f"baseline file {path}: {where} {what}; fix or delete that entry, or {_fix_hint(path)}")

    if not isinstance(raw, dict):
        raise BaselineError(f"baseline file {path} is not a JSON object; {_fix_hint(path)}")
    if _depth_exceeds(raw, MAX_DEPTH):
        raise BaselineError(
            f"baseline file {path} nests objects or lists more than {MAX_DEPTH} levels deep, which "
            f"pytest-llmcycle never writes (a hand edit?); {_fix_hint(path)}"
        )
    schema = raw.get("schema")
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise BaselineError(f"baseline file {path} has no integer 'schema' field; {_fix_hint(path)}")
    if schema > SCHEMA_VERSION:
        raise BaselineError(
            f"baseline file {path} has schema {schema}, newer than this pytest-llmcycle reads "
            f"({SCHEMA_VERSION}): upgrade pytest-llmcycle"
        )
    if schema < 1:
        raise BaselineError(f"baseline file {path} has unknown schema {schema}; {_fix_hint(path)}")
    devices = raw.get("devices", {})
    if not isinstance(devices, dict):
        raise bad("'devices'", "is not an object")
    for key, dev in devices.items():
        if not isinstance(dev, dict):
            raise bad(f"devices.{_name(key)}", "is not an object")
        if "reference" in dev:
            validate_entry(dev["reference"], f"devices.{_name(key)}.reference", bad)
        tests = dev.get("tests", {})
        if not isinstance(tests, dict):
            raise bad(f"devices.{_name(key)}.tests", "is not an object")
        for nodeid, stages in tests.items():
            if not isinstance(stages, dict):
                raise bad(f"devices.{_name(key)}.tests[{nodeid!r}]", "is not an object")
            for stage, entry in stages.items():
                validate_entry(entry, f"devices.{_name(key)}.tests[{nodeid!r}].{_name(stage)}", bad)


def _name(key: str) -> str:
    """A key as an error message shows it: plain names as they are, anything else quoted (one line)."""
    return key if re.fullmatch(r"[\w.:+-]+", key) else repr(key)


def _positive_time(v: Any) -> bool:
    # comparisons, not math.isfinite: a 400-digit integer must be refused, not overflow
    return isinstance(v, (int, float)) and not isinstance(v, bool) and MIN_MS <= v <= MAX_MS


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


_FLOAT_ONLY = {float}


def validate_entry(entry: Any, where: str, bad) -> None:
    """Check one stored entry (a parsed JSON object); ``bad(where, what)`` builds the error to raise.

    The one entry rule: baseline files use it, and so do JSON reports read by ``llmcycle compare``.
    """
    if not isinstance(entry, dict):
        raise bad(where, "is not an object")
    if not _positive_time(entry.get("median_ms")):
        raise bad(
            where, f"has median_ms={_short(entry.get('median_ms'))}, expected a positive number of milliseconds (at most {MAX_MS:g})"
        )
    for k in ("q1_ms", "q3_ms", "cold_ms"):
        if k in entry and entry[k] is not None and not (
            isinstance(entry[k], (int, float)) and not isinstance(entry[k], bool) and 0 <= entry[k] <= MAX_MS
        ):
            raise bad(where, f"has {k}={_short(entry[k])}, expected a non-negative number of milliseconds")
    samples = entry.get("samples_ms")
    if not isinstance(samples, list) or not samples:
        raise bad(where, "has no 'samples_ms' list")
    # the common case (all floats, in range) is checked in two C-level passes; the loop names a bad one
    if not (set(map(type, samples)) == _FLOAT_ONLY and MIN_MS <= min(samples) and max(samples) <= MAX_MS):
        for s in samples:
            if not _positive_time(s):
                raise bad(where, f"has a sample {_short(s)} in samples_ms, expected positive milliseconds ({MIN_MS:g} to {MAX_MS:g})")
    if "n" in entry and (not isinstance(entry["n"], int) or isinstance(entry["n"], bool) or entry["n"] < 1):
        raise bad(where, f"has n={_short(entry['n'])}, expected a positive integer")
    for k in ("env", "counters"):
        if k in entry and not isinstance(entry[k], dict):
            raise bad(where, f"has '{k}' that is not an object")
    for name, v in (entry.get("counters") or {}).items():
        # a counter is compared as a float: a 400-digit integer would overflow in the comparison
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not -MAX_COUNT <= v <= MAX_COUNT:
            raise bad(where, f"has counter {_name(str(name))}={_short(v)}, expected at most {MAX_COUNT:g}")
    if "unit" in entry and not isinstance(entry["unit"], str):
        raise bad(where, "has a 'unit' that is not a string")
    if entry.get("unit") == "":
        raise bad(where, "has an empty 'unit' (the plugin writes 'call', 'token', ...)")
    _check_consistent(entry, samples, where, bad)


def _check_consistent(entry: dict, samples: list, where: str, bad) -> None:
    """The median, quartiles and recording processes' medians must fit the stored samples.

    The gate judges the samples while the table shows ``median_ms``: an edited median would
    show one number and judge another (and, with ``process_medians_ms``, widen the spread the
    verdict allows). The stored samples are at most STORED_SAMPLES order statistics spread
    evenly over all samples (min and max included), so the true p-quantile lies between the
    stored ones one rank either side of position p*(k-1); rounding adds CONSISTENCY_TOLERANCE.
    """
    s = sorted(samples)
    k = len(s)
    lo_tol, hi_tol = 1 - CONSISTENCY_TOLERANCE, 1 + CONSISTENCY_TOLERANCE
    values = {"median_ms": entry["median_ms"]}
    for name in ("q1_ms", "q3_ms"):
        if entry.get(name) is not None:
            values[name] = entry[name]
    for name, p in (("q1_ms", 0.25), ("median_ms", 0.5), ("q3_ms", 0.75)):
        if name not in values:
            continue
        pos = p * (k - 1)
        lo = s[max(0, math.floor(pos) - 1)] * lo_tol
        hi = s[min(k - 1, math.ceil(pos) + 1)] * hi_tol
        if not lo <= values[name] <= hi:
            raise bad(
                where,
                f"has {name}={_short(values[name])}, which its samples_ms do not give "
                f"(expected {round_sig(lo / lo_tol)} to {round_sig(hi / hi_tol)}; a hand edit? the gate judges the samples)",
            )
    q1, med, q3 = values.get("q1_ms", values["median_ms"]), values["median_ms"], values.get("q3_ms", values["median_ms"])
    if not (q1 <= med * hi_tol and med <= q3 * hi_tol):
        raise bad(where, f"has q1_ms={_short(q1)}, median_ms={_short(med)}, q3_ms={_short(q3)} out of order (expected q1 <= median <= q3)")
    medians = entry.get(PROCESS_MEDIANS)
    if isinstance(medians, list):
        for m in medians:
            # non-numbers are ignored by process_medians(); a number must lie in the pooled range
            if isinstance(m, (int, float)) and not isinstance(m, bool) and m > 0 and not (
                s[0] * lo_tol <= m <= s[-1] * hi_tol
            ):
                raise bad(
                    where,
                    f"has {PROCESS_MEDIANS} {_short(m)} outside its samples' range "
                    f"({s[0]:g} to {s[-1]:g}; a hand edit? every recording process's samples are pooled in samples_ms)",
                )


# --------------------------------------------------------------------------- one file, or one per module

#: in --llmcycle-baseline, replaced by the test module's name: one baseline file per module
MODULE_PLACEHOLDER = "{module}"


def module_file_stem(nodeid: str) -> str:
    """``tests/llm/test_decode.py::test_x[a]`` -> ``tests.llm.test_decode``: a file name, never a path.

    Anything but letters, digits, ``_``, ``.`` and ``-`` becomes ``_`` and runs of dots fold
    into one, so a module name can neither leave the baseline folder nor hide a file.
    """
    module = nodeid.split("::", 1)[0]
    if module.endswith(".py"):
        module = module[:-3]
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", module.replace("\\", ".").replace("/", "."))
    stem = re.sub(r"\.{2,}", ".", stem).strip(".")
    return stem or "_"


class BaselineFiles:
    """The baseline file(s) of a run: one file, or with ``{module}`` in the path one file per
    test module. Says which file holds a test, loads and validates each once, and merges
    updates into them."""

    def __init__(self, path: str | os.PathLike) -> None:
        #: the one file, or the template with ``{module}``
        self.path = Path(path)
        self.per_module = MODULE_PLACEHOLDER in str(self.path)
        self._loaded: dict[Path, Baselines] = {}
        #: with ``{module}``: one line per *.json file in the folder that is not a baseline
        #: file (a JSON report, a package.json), skipped by :meth:`preload`; the plugin shows them
        self.skipped: list[str] = []

    @classmethod
    def at(cls, setting: str, rootdir: str | os.PathLike) -> "BaselineFiles":
        """The files ``--llmcycle-baseline`` names: ``~`` expanded, relative to ``rootdir``."""
        path = Path(os.path.expanduser(setting))
        # ".." is collapsed lexically (no stray folders are created for "a/../b.json");
        # symlinks are kept here and followed when the file is written (atomic_write_text)
        return cls(os.path.abspath(path if path.is_absolute() else Path(rootdir) / path))

    def path_for(self, nodeid: str | None) -> Path:
        """The file that holds ``nodeid``'s baselines (the one file, or its module's file)."""
        if not self.per_module:
            return self.path
        if nodeid is None:
            raise ValueError("with {module} in the baseline path, a test's node id picks the file")
        return Path(str(self.path).replace(MODULE_PLACEHOLDER, module_file_stem(nodeid)))

    def load(self, nodeid: str | None = None) -> Baselines:
        """Load (once) and validate the baseline file that holds ``nodeid``; raises BaselineError."""
        path = self.path_for(nodeid)
        loaded = self._loaded.get(path)
        if loaded is None:
            loaded = self._loaded[path] = Baselines.load(path)
        return loaded

    def preload(self) -> None:
        """Load and validate every baseline file now (before any test runs): a bad one fails early."""
        if not self.per_module:
            self.load()
            return
        import glob

        pattern = glob.escape(str(self.path)).replace(MODULE_PLACEHOLDER, "*")
        self.skipped = []
        for name in sorted(glob.glob(pattern)):
            p = Path(name)
            if p not in self._loaded:
                try:
                    self._loaded[p] = Baselines.load(p)
                except NotABaselineFile as e:
                    # another tool's file in the folder is none of ours: it only matters when a
                    # test module's file is one (then load() refuses it, naming it)
                    self.skipped.append(e.note)

    def device_keys(self) -> set[str]:
        """The device keys of the files loaded so far (all of them after :meth:`preload`)."""
        return {key for b in self._loaded.values() for key in b.devices()}

    def forget_loaded(self) -> None:
        """Read the baseline files again on next use (after something else wrote them)."""
        self._loaded.clear()

    def check_writable(self) -> str | None:
        """Why the baseline file could not be written, or None; checked before a long run."""
        target = str(self.path).replace(MODULE_PLACEHOLDER, "_")  # per module: its folder
        return write_problem(Path(target), check_name=not self.per_module)

    def write_problems(self, paths: Sequence[Path]) -> list[str]:
        """Why each of ``paths`` could not be written (one line each); empty when all can be."""
        return [problem for problem in map(write_problem, paths) if problem]

    def by_file(self, entries: Sequence[tuple[str, str, str, Entry]]) -> list[tuple[Path, list]]:
        """``(device_key, nodeid, stage, entry)`` rows grouped by the file that holds them, in path order."""
        grouped: dict[Path, list] = {}
        for row in entries:
            grouped.setdefault(self.path_for(row[1]), []).append(row)
        return sorted(grouped.items())

    def merge(
        self,
        path: Path,
        entries: list[tuple[str, str, str, Entry]],
        references: Mapping[str, Entry] | None = None,
        *,
        append: bool = False,
    ) -> Baselines:
        """:func:`merge_into_file`; ``append`` pools each entry with the one stored now
        (``--llmcycle-update-append``) instead of replacing it."""
        return merge_into_file(path, entries, references, combine=append_process if append else None)


# --------------------------------------------------------------------------- atomic writes


def write_problem(path: Path, *, check_name: bool = True) -> str | None:
    """Why ``path`` could not be written, or None: what can be known before writing (the
    folder, permissions, the length of the file's and its temp file's names)."""
    p = Path(os.path.realpath(path))  # a symlink is written at its target
    folder = p.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        return f"cannot create the baseline file {p}: {folder} is not a folder"
    if check_name:  # first: stat() of a name that is too long raises
        try:
            name_max = os.pathconf(folder, "PC_NAME_MAX")
        except (OSError, ValueError, AttributeError):
            name_max = 255
        longest = len(os.fsencode(_temp_prefix(p.name))) + 8 + len(".tmp")  # mkstemp adds 8 characters
        if longest > name_max:
            return (
                f"cannot write the baseline file {p}: its name is too long ({len(os.fsencode(p.name))} bytes; "
                f"this file system allows {name_max}, less {longest - len(os.fsencode(p.name))} for the temp file "
                "written next to it); shorten the test module's name or the --llmcycle-baseline path"
            )
    try:
        exists = p.exists()
    except OSError as e:
        return f"cannot write the baseline file {p}: {e}"
    if exists and p.is_dir():
        return f"baseline path {p} is a folder; give a .json file path"
    if exists and not os.access(p, os.W_OK):
        return f"baseline file {p} is not writable"
    if not os.access(folder, os.W_OK):
        return f"cannot create the baseline file {p}: folder {folder} is not writable"
    return None


def _temp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}."


@contextlib.contextmanager
def baseline_lock(path: Path, timeout_s: float = 60.0) -> Iterator[None]:
    """Held by every writer of ``path`` while it re-reads, merges and replaces the file.

    The lock is the file's folder itself (``flock`` on the directory): every process that
    writes this file takes the same lock whatever its temp folder, user or container, nothing
    is created in the work tree, and the kernel drops it when a holder dies. The folder is
    created first (writers create the file in it anyway). Reentrant within a process (one
    process may lock several files of one folder, as ``llmcycle prune`` does); threads take
    turns. Where folders cannot be locked (Windows, a network file system that only has write
    locks), a ``.<name>.lock`` file next to the file (git-ignore ``.*.lock``) does the same.
    """
    real = Path(os.path.realpath(path))
    real.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl  # noqa: F401
    except ImportError:  # pragma: no cover - Windows
        with _lock_file_next_to(real, path, timeout_s):
            yield
        return
    folder = str(real.parent)
    with _FOLDER_LOCKS_GUARD:
        held = _FOLDER_LOCKS.setdefault(folder, [threading.RLock(), None, 0])
    deadline = time.monotonic() + timeout_s
    if not held[0].acquire(timeout=max(timeout_s, 0)):
        raise BaselineError(_lock_timeout_message(path, timeout_s))
    try:
        if held[2] == 0:
            try:
                fd = os.open(folder, os.O_RDONLY)
            except OSError:
                fd = None
            try:
                locked = fd is not None and _flock_until(fd, deadline, path, timeout_s)
            except BaseException:
                os.close(fd)  # type: ignore[arg-type]
                raise
            if not locked:  # a file system that cannot lock a folder (NFS emulates flock with write locks)
                if fd is not None:
                    os.close(fd)
                with _lock_file_next_to(real, path, max(0.0, deadline - time.monotonic())):
                    yield
                return
            held[1] = fd
        held[2] += 1
        try:
            yield
        finally:
            held[2] -= 1
            if held[2] == 0:
                os.close(held[1])  # releases the flock
                held[1] = None
    finally:
        held[0].release()


def _flock_until(fd: int, deadline: float, path: Path, timeout_s: float) -> bool:
    """Lock the open folder ``fd`` exclusively, polling until ``deadline``; False where the file
    system cannot lock a folder."""
    import fcntl

    delay = 0.005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise BaselineError(_lock_timeout_message(path, timeout_s)) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        except OSError:
            return False


#: folder -> [thread lock, open folder fd holding the flock, nesting depth] of this process
_FOLDER_LOCKS: dict[str, list] = {}
_FOLDER_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def _lock_file_next_to(real: Path, path: Path, timeout_s: float) -> Iterator[None]:
    """The fallback lock: a ``.<name>.lock`` file next to the baseline file (git-ignore it)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(real.parent / f".{real.name}.lock"))
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout:
        raise BaselineError(_lock_timeout_message(path, timeout_s)) from None
    try:
        yield
    finally:
        lock.release()


def _lock_timeout_message(path: Path, timeout_s: float) -> str:
    return (
        f"waited {timeout_s:g} s for the write lock of baseline file {path} (its folder), held by another "
        "process writing it (a stuck pytest-llmcycle run or `llmcycle prune`?); stop that process and "
        "record again with --llmcycle-update"
    )


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and ``os.replace``: readers see old or new, never partial.

    A symlink is followed: its target is replaced and the link stays (replacing the link
    itself would silently fork the file). The temp file is created next to the target only,
    named ``.<name>.<pid>.<random>.tmp`` so that one left by a killed writer can be recognised.
    """
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def merge_into_file(
    path: Path,
    entries: list[tuple[str, str, str, Entry]],
    references: Mapping[str, Entry] | None = None,
    timeout_s: float = 60.0,
    combine: Callable[[Entry | None, Entry], Entry] | None = None,
) -> Baselines:
    """Re-read ``path`` under an inter-process lock, apply ``entries``, write atomically.

    Re-reading inside the lock keeps what other processes (xdist workers, a parallel job)
    wrote since this run started. A file that fails validation is never overwritten.
    ``combine(stored, new)``, when given, makes each written entry from the one stored *now*
    (``--llmcycle-update-append``: two runs appending at once both count). A write that fails
    (a full disk) raises BaselineError naming the file; the old file is left whole.
    """
    with baseline_lock(path, timeout_s):
        # temp files are removed here, under the lock, and not at load: a reader may not be
        # allowed to write the folder, and only a writer knows no other writer is mid-write
        remove_stale_temp_files(path)
        current = Baselines.load(path)
        for key, ref in (references or {}).items():
            current.set_reference(key, ref)
        if combine is not None:
            entries = [(k, n, s, combine(current.entry(k, n, s), e)) for k, n, s, e in entries]
        for (key, nodeid, stage, _), d in zip(entries, entries_to_json([e for *_, e in entries])):
            current.set_entry_json(key, nodeid, stage, d)
        try:
            atomic_write_text(path, current.dumps())
        except OSError as e:
            full = e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
            fix = "free some space there" if full else "make it writable"
            raise BaselineError(
                f"cannot write baseline file {path} ({e}); the old file is unchanged: {fix} and record again "
                "with --llmcycle-update"
            ) from None
        return current


def remove_stale_temp_files(path: Path) -> list[str]:
    """Delete temp files that writers killed mid-write (SIGKILL, power loss) left next to ``path``.

    Only files named by :func:`atomic_write_text` whose writer process is gone are removed; a
    live writer's file is never touched. POSIX only (elsewhere the files are left alone).
    """
    if os.name != "posix":
        return []
    real = Path(os.path.realpath(path))
    prefix = f".{real.name}."
    try:
        names = os.listdir(real.parent)
    except OSError:
        return []
    removed = []
    for name in names:
        pid = name[len(prefix):].split(".", 1)[0]
        if not (name.startswith(prefix) and name.endswith(".tmp") and pid.isdigit()):
            continue
        if int(pid) == os.getpid() or _process_alive(int(pid)):
            continue
        try:
            os.unlink(real.parent / name)
            removed.append(name)
        except OSError:
            pass
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or an absurd number): leave its file alone
    return True
