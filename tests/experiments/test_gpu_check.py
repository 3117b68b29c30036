"""bench/gpu_check.py: the no-CUDA path, and its correctness checks' logic run with CPU for both devices.

The GPU figures themselves need a CUDA machine (``make gpu-check``); here each check that can run on a CPU
is run "cpu vs cpu" on small models, where its comparisons must come out exact or within their tolerance.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def load_script():  # noqa: ANN201  (a module object)
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gc = load_script()


def test_no_cuda_prints_one_line_and_exits_0() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no device even where the tests run on a GPU machine
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [gc.NO_CUDA_LINE]
    assert "no CUDA device" in gc.NO_CUDA_LINE and "DALI" in gc.NO_CUDA_LINE


def test_objectives_equal_on_the_same_device() -> None:
    from pipeline.objectives import OBJECTIVES

    res = gc.check_objectives("cpu", "cpu", batch=16)
    assert res.status == "pass", res.figure
    assert res.data["comparisons"] == 4 * len(OBJECTIVES) and res.data["failures"] == []
    assert res.data["max_abs_diff"] == 0.0


def test_checkpoint_round_trip_resumes_the_same_step() -> None:
    res = gc.check_checkpoint_roundtrip("cpu", "cpu", model="cifar_resnet8", batch=8)
    assert res.status == "pass", res.figure
    assert res.data["loss_diff"] == 0.0 and res.data["max_weight_diff"] == 0.0
    assert res.data["tensors_not_close"] == 0


def test_cached_float16_logits_match_online_within_rounding() -> None:
    res = gc.check_cached_vs_online("cpu", student="cifar_resnet8", teacher="cifar_resnet8", batch=16)
    assert res.status == "pass", res.figure
    fp32, bf16 = res.data["teacher_fp32"], res.data["teacher_bf16"]
    assert 0 < fp32["max_logit_rounding"] and fp32["diff"] <= fp32["allowed"]
    assert bf16["diff"] <= bf16["allowed"]


def test_deterministic_runs_and_process_group_on_cpu() -> None:
    before = torch.are_deterministic_algorithms_enabled()
    res = gc.check_determinism("cpu", model="cifar_resnet8", steps=2, batch=8)
    assert res.status == "pass", res.figure
    assert res.data["differing"] == [] and res.data["max_abs_diff"] == 0.0
    assert torch.are_deterministic_algorithms_enabled() == before  # the flag is restored
    pg = gc.check_process_group("cpu", backend="gloo")
    assert pg.status == "pass", pg.figure
    assert not torch.distributed.is_initialized()


def test_store_view_reaches_the_device_unchanged() -> None:
    pytest.importorskip("zarr")
    res = gc.check_pinned_store("cpu", num_samples=5000, classes=10)
    assert res.status == "pass", res.figure
    assert res.data["from_numpy_shares_memory"] and res.data["identical"]
    assert res.data["dtype"] == "float16" and res.data["bytes"] == 5000 * 10 * 2


def test_a_failing_check_is_reported_not_raised() -> None:
    def broken() -> gc.Result:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    row = gc.run_check("broken", broken)
    assert (row.name, row.kind, row.status) == ("broken", "correctness", "fail")
    assert "illegal memory access" in row.figure
    a = {"w": torch.ones(3)}
    ok, worst, bad = gc.compare_states(a, {"w": torch.tensor([1.0, 1.0, 1.1])}, rtol=1e-4, atol=1e-5)
    assert not ok and bad == 1 and worst == pytest.approx(0.1, rel=1e-5)
