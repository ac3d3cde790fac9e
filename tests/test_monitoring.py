"""Monitoring the cycle over time: TensorBoard scalars and an offline Weights & Biases run,
each read back from what was written (the event file, the run's record file).

Both exporters write the tags of :func:`outputs.monitoring_scalars`, ``<test>/<stage>/<metric>``;
TensorBoard at step = seconds since the epoch (one point per run), W&B one run per pytest run.
The W&B tests run offline (``WANDB_MODE=offline``, every W&B folder in ``tmp_path``): nothing
touches the network.
"""
from __future__ import annotations

import json
import struct
import sys

import numpy  # noqa: F401 - modules first imported inside inline pytester runs are dropped after it;
import pytest
import torch  # noqa: F401 - torch and numpy cannot load twice in one process
import torch._dynamo  # noqa: F401 - counting loads it (it registers torch ops: only once per process)

import pytest_llmcycle.measure.counters  # noqa: F401 - the plugin's lazy imports, loaded once (see above)
import pytest_llmcycle.measure.machine  # noqa: F401
import pytest_llmcycle.measure.steps  # noqa: F401
import pytest_llmcycle.reports.terminal  # noqa: F401
import pytest_llmcycle.run.fixture  # noqa: F401

from pytest_llmcycle.engine import verdict as vd
from pytest_llmcycle.reports.outputs import export_tensorboard, export_wandb, monitoring_scalars, write_outputs
from pytest_llmcycle.run.results import COLD, CYCLE, StageResult

try:  # imported here, not first inside an inline run (see above); each test says when it is missing
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
except Exception:
    EventAccumulator = None

CYCLE_TEST = """
import torch


def test_cycle(llmcycle):
    torch.manual_seed(0)
    model = torch.nn.Linear(32, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 32)
    llmcycle.train_step(lambda: model(x).pow(2).mean(), model=model, optimizer=opt)

    def loop(tick):
        h = x
        for _ in range(4):
            h = model(h)
            tick()

    llmcycle.tokens(loop, n_tokens=4, inference_mode=True)
"""


def needs_tensorboard():
    if EventAccumulator is None:
        pytest.skip("tensorboard is not installed (pip install -e '.[test]' installs it)")


def scalars_of(logdir) -> dict:
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def row(nodeid: str, stage: str, median: float | None, kind: str = "stage", change: float | None = 0.05,
        counters: dict | None = None) -> StageResult:
    ratio = None if change is None else 1 + change
    return StageResult(nodeid, stage, "cpu-a", vd.Verdict(vd.OK, 0.1, 0.01, ratio=ratio), kind=kind,
                       median_ms=median, n=20, counters=dict(counters or {}))


ROWS = [
    row("t.py::test_a", "forward", 2.0, counters={"flops": 1000, "aten_ops": 12}),
    row("t.py::test_a", "forward", 40.0, kind=COLD, change=None),
    row("t.py::test_a", "backward", 3.0),
    row("t.py::test_a", "forward+backward", 5.0, kind=CYCLE),
]


def test_monitoring_scalars_are_one_tag_per_stage_and_metric():
    assert monitoring_scalars(ROWS) == {
        "t.py::test_a/forward/median_ms": 2.0,
        "t.py::test_a/forward/change": pytest.approx(0.05),
        "t.py::test_a/forward/aten_ops": 12.0,
        "t.py::test_a/forward/flops": 1000.0,
        "t.py::test_a/forward/cold_ms": 40.0,  # the first call: compile and first-touch costs
        "t.py::test_a/backward/median_ms": 3.0,
        "t.py::test_a/backward/change": pytest.approx(0.05),
        "t.py::test_a/cycle/median_ms": 5.0,
        "t.py::test_a/cycle/change": pytest.approx(0.05),
    }


# ---------------------------------------------------------------------------- TensorBoard


def test_tensorboard_holds_every_stage_of_every_run(pytester):
    """A user runs the suite twice with --llmcycle-tensorboard: each stage is a curve of two points."""
    needs_tensorboard()
    pytester.makepyfile(test_model=CYCLE_TEST)
    for _ in range(2):
        result = pytester.runpytest("-p", "no:cacheprovider", "--llmcycle-budget", "0.05", "--llmcycle-min-rounds", "3",
                                    "--llmcycle-tensorboard", "tb", "--llmcycle-report", "r.json")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(["llmcycle: exported * scalar(s) to TensorBoard logdir *tb"])
    doc = json.loads((pytester.path / "r.json").read_text(encoding="utf-8"))
    stages = {r["stage"] for r in doc["results"] if r["kind"] == "stage"}
    assert stages == {"forward", "backward", "optimizer", "prefill", "decode", "e2e"}
    got = scalars_of(pytester.path / "tb")
    test = "test_model.py::test_cycle"
    for stage in sorted(stages) + ["cycle"]:
        values = got.get(f"{test}/{stage}/median_ms")
        assert values is not None and len(values) == 2 and all(v > 0 for v in values), (stage, sorted(got))
        if stage != "cycle":
            assert len(got[f"{test}/{stage}/cold_ms"]) == 2
    # the second run was judged against nothing stored (no --llmcycle-update): no change; the
    # deterministic counters of the LLM helpers are there, per stage
    assert got[f"{test}/forward/flops"] == [2 * 8 * 32 * 32] * 2  # one 8x32 @ 32x32 matmul
    assert len(got[f"{test}/decode/aten_ops"]) == 2


def test_tensorboard_text_names_the_run(tmp_path):
    needs_tensorboard()
    message, is_error = export_tensorboard(tmp_path / "tb", ROWS, {"commit": "abc123", "device_key": "cpu-a"})
    assert not is_error and message.startswith("exported 9 scalar(s)")
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    text = acc.Tensors("llmcycle/run/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "commit abc123" in text and "device_key cpu-a" in text


def test_without_tensorboard_the_export_says_so(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the import raises ImportError
    message, is_error = export_tensorboard(tmp_path / "tb", ROWS, {})
    assert not is_error and message.startswith("--llmcycle-tensorboard: the tensorboard package is not installed")
    assert not (tmp_path / "tb").exists()


def test_an_unwritable_tensorboard_logdir_is_reported_not_raised(tmp_path):
    needs_tensorboard()
    (tmp_path / "tb").write_text("a file where the folder should be")
    message, is_error = export_tensorboard(tmp_path / "tb", ROWS, {})
    assert is_error and "NOT written" in message


# ---------------------------------------------------------------------------- Weights & Biases


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B offline, every folder it writes in tmp_path, no credentials: it cannot reach the network."""
    pytest.importorskip("wandb", reason="wandb is not installed (pip install -e '.[test]' installs it)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var, sub in (("WANDB_DIR", "runs"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_DATA_DIR", "data")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "runs"


def read_wandb_records(path) -> list:
    """The records of an offline run file (``run-<id>.wandb``): W&B's LevelDB-style log.

    A 7-byte header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with
    a 7-byte header (CRC32, length, type: 1 full, 2 first, 3 middle, 4 last). Read by hand: the
    W&B SDK no longer ships a reader of its own file.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<HB", data[4:7]) == (0xBEE1, 0), data[:7]
    block = 32768
    pos, records, pending = 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left in the block for a chunk header: padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            records.append(rec)
    return records


def offline_run(runs_dir):
    """The one offline run under ``runs_dir``: folder, record kinds, run record, history, summary, config."""
    import wandb

    # W&B's service finishes writing the run file after run.finish() returns (at the latest
    # when the process exits, W&B's atexit hook waits for it); this test process goes on, so wait here.
    wandb.teardown()
    [run_dir] = sorted((runs_dir / "wandb").glob("offline-run-*"))
    [record_file] = run_dir.glob("run-*.wandb")
    records = read_wandb_records(record_file)
    kinds = [r.WhichOneof("record_type") for r in records]
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    history = nested(i for r in records if r.WhichOneof("record_type") == "history" for i in r.history.item)
    summary = nested(i for r in records if r.WhichOneof("record_type") == "summary" for i in r.summary.update)
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    return run_dir, kinds, run, history, summary, config


def nested(items) -> dict:
    """Items of history or summary records as a dict; a nested key (a logged table's fields) as nested dicts."""
    out: dict = {}
    for i in items:
        keys = [i.key] if i.key else list(i.nested_key)
        d = out
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = json.loads(i.value_json)
    return out


def test_wandb_offline_run_reads_back_with_every_scalar(wandb_offline):
    meta = {"commit": "abc123", "device_key": "cpu-a", "settings": {"threshold": 0.1}, "ref": None}
    messages = write_outputs(ROWS, meta, wandb="llmcycle-tests")
    [(message, is_error)] = messages
    assert not is_error and "wrote offline W&B run" in message and "wandb sync" in message
    run_dir, kinds, run, history, summary, config = offline_run(wandb_offline)
    assert str(run_dir) in message
    assert run.project == "llmcycle-tests" and run.job_type == "llmcycle"
    assert config["commit"] == "abc123" and config["device_key"] == "cpu-a" and "ref" not in config
    expected = monitoring_scalars(ROWS)
    assert {k: history[k] for k in expected} == pytest.approx(expected)  # one logged step
    assert {k: summary[k] for k in expected} == pytest.approx(expected)  # and the run's summary
    table = history["llmcycle/stages"]  # every row, cold and cycle rows too, as a W&B table file
    assert table["_type"] == "table-file" and table["nrows"] == len(ROWS)
    data = json.loads((run_dir / "files" / table["path"]).read_text(encoding="utf-8"))
    assert data["columns"][:3] == ["test", "stage", "kind"]
    assert [r[:3] for r in data["data"]] == [[r.nodeid, r.stage, r.kind] for r in ROWS]
    assert "exit" in kinds  # the run was finished, not left open


def test_wandb_export_never_leaves_offline_on_its_own(wandb_offline, monkeypatch):
    """Without WANDB_MODE the export still writes offline: uploading is the user's `wandb sync`."""
    monkeypatch.delenv("WANDB_MODE")
    message, is_error = export_wandb("llmcycle-tests", ROWS, {})
    assert not is_error and "offline" in message
    assert offline_run(wandb_offline)[2].project == "llmcycle-tests"


def test_without_wandb_the_export_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    message, is_error = export_wandb("p", ROWS, {})
    assert not is_error and message == "--llmcycle-wandb: the wandb package is not installed; nothing exported"


def test_wandb_option_exports_a_suite_run(pytester, wandb_offline):
    """With the --llmcycle-wandb option wired into the plugin, a user's run writes an offline W&B run."""
    if "--llmcycle-wandb" not in pytester.runpytest("--help").stdout.str():
        pytest.skip("the plugin has no --llmcycle-wandb option yet (outputs.write_outputs(wandb=...) is ready)")
    pytester.makepyfile(test_model=CYCLE_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider", "--llmcycle-budget", "0.05", "--llmcycle-min-rounds", "3",
                                "--llmcycle-wandb", "llmcycle-tests")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["llmcycle: wrote offline W&B run *; upload it with: wandb sync *"])
    _, _, run, history, _, _ = offline_run(wandb_offline)
    assert run.project == "llmcycle-tests"
    for stage in ("forward", "backward", "optimizer", "prefill", "decode", "e2e", "cycle"):
        assert history[f"test_model.py::test_cycle/{stage}/median_ms"] > 0
