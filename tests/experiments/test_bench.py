"""The benchmark scripts run end to end on tiny settings and report consistent figures.

Speed itself is not checked here (that is what the scripts are for); these tests keep the
scripts working as the pipeline changes.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.data.sources.fashion_mnist import DEBIAN_DIR

ROOT = Path(__file__).resolve().parents[2]


def bench(script: str, *args: str) -> tuple[dict[str, Any], str]:
    """Run ``bench/SCRIPT ARGS``; its JSON object and the markdown that follows it."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    end = proc.stdout.index("\n}\n") + 2
    return json.loads(proc.stdout[:end]), proc.stdout[end:]


def test_stage1_bench_cifar_pair() -> None:
    res, table = bench("stage1_throughput.py", "--pair", "cifar", "--samples", "64", "--rounds", "1",
                       "--infer-batch-size", "32", "--busy-retries", "0")
    assert (res["samples"], res["views"], res["batch_size"]) == (64, 17, 32)
    for key in ("infer", "chunk_loop"):
        r = res[key]
        assert r["images_per_s"] > 0 and r["limit_images_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["images_per_s"] / r["limit_images_per_s"])
    assert res["machine"]["cpus_available"] >= 1
    assert "`infer()` end to end" in table and "cifar_resnet20" in table


def test_sweep_bench_cifar_pair() -> None:
    res, table = bench("sweep_amortization.py", "--pair", "cifar", "--samples", "64", "--epochs", "1", "--views", "1",
                       "--repeats", "1", "--objectives", "kd,adaptconf", "--test-limit", "32")
    t = res["timings"]
    assert len(t["cached"]) == len(t["online"]) == len(t["teacher"]) == 2 and len(t["stage1"]) == 1
    assert [r["objective"] for r in t["cached"]] == ["kd", "adaptconf"]
    assert res["cached_s"] == pytest.approx(res["stage1_s"] + res["cached_runs_s"])
    assert res["saving"] == pytest.approx(1 - res["cached_s"] / res["online_s"])
    assert 0 < res["teacher_share"] < 1
    assert res["views_over_runs_x_epochs"] == pytest.approx(2 / 2)
    assert res["bar_met"] == (res["saving"] >= res["teacher_share"])
    assert "cached: infer-teacher once" in table


@pytest.mark.skipif(not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists(), reason="Fashion-MNIST not installed")
def test_stage2_bench_fmnist_pair() -> None:
    res, table = bench("stage2_throughput.py", "--pair", "fmnist", "--samples", "512", "--rounds", "1", "--steps", "2",
                       "--warmup", "1", "--repeats", "1", "--pool", "2", "--busy-retries", "0")
    v, q = res["variants"], res["ratios"]
    for name in ("cached", "online", "limit", "loader"):
        assert v[name]["images_per_s"] > 0 and len(v[name]["runs"]) == 1
    assert q["cached/limit"] == pytest.approx(v["cached"]["runs"][0]["images_per_s"] / v["limit"]["runs"][0]["images_per_s"])
    store_epoch = res["trainer_epoch"]["store"]
    assert 0 < store_epoch["store_read_s"] < store_epoch["seconds"]
    assert res["trainer_epoch"]["online"]["store_read_s"] is None  # no store read in online mode
    assert "store read per epoch" in table


def test_dali_replay_floor_bench() -> None:
    res, table = bench("dali_replay_floor.py", "--batch", "64", "--rounds", "2")
    us = res["us_per_image"]
    assert set(us) == {"feed", "slice", "replay"} and all(v > 0 for v in us.values())
    assert all(len(t) == 2 for t in res["seconds"].values())
    assert "`pipeline.data.views.replay`" in table


def test_cache_cost_bench_pairs_store_runs_with_online_runs(fmnist_dir, tmp_path) -> None:
    """K = epochs replays exactly the online run's fresh views, so its paired difference is ~0."""
    res, table = bench("cache_cost.py", "--limit", "400", "--test-limit", "200", "--epochs", "2", "--ks", "1",
                       "--seeds", "0,1", "--data-dir", str(fmnist_dir), "--output", str(tmp_path / "cc"))
    assert res["ks"] == [1, 2]
    rows = {r["regime"]: r for r in res["rows"]}
    assert set(rows) == {"online", "store K=1", "store K=2"} and all(r["seeds"] == 2 for r in rows.values())
    same = rows["store K=2"]
    assert abs(same["diff_mean"]) <= 0.01  # same views, same seeds: only the float16 logits differ
    for key in ("store K=1", "store K=2"):
        per_seed = res["per_seed"]
        expect = sum(per_seed[key][s] - per_seed["online"][s] for s in ("0", "1")) / 2
        assert rows[key]["diff_mean"] == pytest.approx(expect)
        assert rows[key]["stage1_s"] > 0 and rows[key]["stage1_fraction"] > 0
    assert (tmp_path / "cc" / "cache_cost.png").exists()
    assert "| store, K = 2 | 2 |" in table


def test_store_scale_bench_uses_the_stores_view_param_width():
    """The bench hard-codes the width to stay DALI-free; it must follow pipeline.data.views."""
    import importlib.util

    from pipeline.data.views import PARAM_DIM

    spec = importlib.util.spec_from_file_location("store_scale", Path(__file__).resolve().parents[2] / "bench" / "store_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.PARAM_DIM == PARAM_DIM


@pytest.mark.skipif(not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists(), reason="Fashion-MNIST not installed")
def test_sweep_overhead_bench_fmnist_pair() -> None:
    res, table = bench("sweep_overhead.py", "--epochs", "1", "--samples", "256", "--test-limit", "64",
                       "--repeats", "1", "--objectives", "kd", "--seeds", "0,1")
    sweeps = {s["launcher"]: s for s in res["sweeps"]}
    assert [s["launcher"] for s in res["sweeps"]] == ["basic", "submitit_local"] and res["runs"] == 2
    for name, s in sweeps.items():
        assert [r["name"] for r in s["runs"]] == ["name=kd__seed=0", "name=kd__seed=1"]
        for r in s["runs"]:  # every run finished (result.json), its first step between submission and the end
            assert r["epochs"] == 1 and 0 < r["training_s"]
            assert 0 <= r["first_step_s"] <= s["seconds"]
            assert 0 <= r["submitted_s"] + r["first_step_s"] <= r["finished_s"] <= s["seconds"] + 0.1
        f = res["launchers"][name]
        assert f["training_s"] == pytest.approx(sum(r["training_s"] for r in s["runs"]))
        assert f["overhead_per_run_s"] == pytest.approx((s["seconds"] - f["training_s"]) / 2)
        assert f["wall_over_training"] == pytest.approx(s["seconds"] / f["training_s"]) and f["wall_over_training"] > 1
        assert f["first_step_max_s"] == max(r["first_step_s"] for r in s["runs"])
    assert res["submitit_over_basic"] == pytest.approx(sweeps["submitit_local"]["seconds"] / sweeps["basic"]["seconds"])
    assert "| `submitit_local` |" in table
