"""bench/gpu_check.py: without CUDA it says so and exits 0; its --cpu dry run walks every step."""
from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


@pytest.fixture
def gpu_check():
    threads = torch.get_num_threads()  # the dry run pins one thread: give the session its own back
    yield runpy.run_path(str(SCRIPT), run_name="gpu_check")
    torch.set_num_threads(threads)


def test_without_cuda_it_skips_and_exits_zero(gpu_check, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check["main"]([]) == 0
    assert "no CUDA device on this machine: nothing to check (skipped)" in capsys.readouterr().out


def test_cpu_dry_run_walks_every_check(gpu_check, capsys):
    assert gpu_check["main"](["--cpu", "--tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "1. plugin vs raw CUDA events" in out and "2. per-token marks" in out
    assert out.count("matmul chain") == 2
    assert "hand-written loop: plugin" in out and "3 token(s)" in out
    assert "HF generate" in out and "dry run:" in out
