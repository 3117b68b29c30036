"""Sweeps on one store (skip and resume), and the report: grouping over seeds, PGR, best-by-validation."""
from __future__ import annotations

import json
import math
import shutil

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cli import app
from pipeline.experiments.report import group_runs, pgr, summarize
from pipeline.experiments.runs import find_runs
from tests.helpers import fmnist_config

runner = CliRunner()


def _ok(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.stdout


@pytest.fixture(scope="module")
def setup(fmnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    path = fmnist_config(out / "cfg.yaml", fmnist_dir,
                         data={"limit": 800, "test_limit": 400, "val_fraction": 0.25},
                         views={"kind": "pad_crop", "num_views": 2},
                         model={"name": "fmnist_mlp", "kwargs": {"hidden": 32}},
                         teacher={"checkpoint": str(out / "teacher"), "store": str(out / "store"),
                                  "chunk_samples": 200},
                         objective={"name": "kd", "gt_weight": 0.0},
                         optim={"epochs": 2, "batch_size": 50, "eval_batch_size": 200},
                         run={"output": str(out / "unused")})
    _ok(["train-teacher", str(path), "--set", "model.name=fmnist_linear", "--set", "model.kwargs={}", "--set", "objective.name=vanilla",
         "--set", "objective.gt_weight=1.0", "--set", "optim.epochs=1", "--set", "optim.lr=0.002",
         "--set", f"run.output={out / 'teacher'}"])
    _ok(["train-teacher", str(path), "--set", "objective.name=vanilla", "--set", "objective.gt_weight=1.0",
         "--set", "optim.epochs=4", "--set", f"run.output={out / 'ceiling'}"])
    return out, path


def test_sweep_runs_the_grid_once_then_skips_and_resumes(setup):
    out, cfg = setup
    sweep_dir = out / "sw"
    args = ["sweep", str(cfg), "--grid", "objective.name=kd,adaptconf", "--seeds", "0,1", "--output", str(sweep_dir)]
    _ok(args)  # the store is missing: infer-teacher runs first
    assert (out / "store" / "zarr.json").exists()
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    names = [r["name"] for r in manifest["runs"]]
    assert names == ["name=kd__seed=0", "name=kd__seed=1", "name=adaptconf__seed=0", "name=adaptconf__seed=1"]
    assert all((sweep_dir / n / "result.json").exists() for n in names)
    again = runner.invoke(app, args)
    assert "4 done, 0 to run" in again.output
    (sweep_dir / names[1] / "result.json").unlink()  # an interrupted run: its checkpoint is still there
    third = runner.invoke(app, args)
    assert "3 done, 1 to run" in third.output and "resuming" in third.output
    assert (sweep_dir / names[1] / "result.json").exists()


def test_rerun_with_another_base_setting_is_refused(setup):
    """A finished sweep rerun with ``--set optim.lr=0.5`` used to say "done" and rewrite sweep.json with lr 0.5."""
    out, cfg = setup
    sweep_dir = out / "sw_lr"
    args = ["sweep", str(cfg), "--grid", "objective.name=kd,kd", "--seeds", "0", "--output", str(sweep_dir)]
    _ok(args)
    assert [r["name"] for r in json.loads((sweep_dir / "sweep.json").read_text())["runs"]] == ["name=kd__seed=0"]
    manifest = (sweep_dir / "sweep.json").read_text()
    res = runner.invoke(app, [*args, "--set", "optim.lr=0.5"])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "run name=kd__seed=0 was made with optim.lr=0.05 but this command gives 0.5" in " ".join(res.output.split())
    assert (sweep_dir / "sweep.json").read_text() == manifest  # nothing rewritten


def test_parallel_sweep_resolves_relative_paths_where_the_user_is(setup, tmp_path, monkeypatch):
    """``--output mysweep`` and a relative config land under the caller's directory, for every worker."""
    out, cfg = setup
    (tmp_path / "cfgs").mkdir()
    shutil.copy(cfg, tmp_path / "cfgs" / "c.yaml")
    monkeypatch.chdir(tmp_path)
    _ok(["sweep", "cfgs/c.yaml", "--grid", "objective.name=kd", "--seeds", "0,1", "--parallel", "2",
         "--output", "mysweep"])
    assert sorted(p.name for p in (tmp_path / "mysweep").iterdir() if p.is_dir()) == ["name=kd__seed=0",
                                                                                       "name=kd__seed=1"]
    assert all((tmp_path / "mysweep" / n / "result.json").exists() for n in ("name=kd__seed=0", "name=kd__seed=1"))


def test_parallel_sweep_uses_processes(setup):
    out, cfg = setup
    sweep_dir = out / "par"
    _ok(["sweep", str(cfg), "--grid", "objective.threshold=0.5,2.0", "--set", "objective.name=adaptconf",
         "--seeds", "3", "--parallel", "2", "--output", str(sweep_dir)])
    runs = find_runs([sweep_dir])
    assert sorted(r.config["objective"]["threshold"] for r in runs) == [0.5, 2.0]
    assert all((r.path / "sweep.log").exists() for r in runs)


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_a_diverging_run_does_not_stop_the_sweep(setup, parallel):
    """One grid point diverges (lr 1e30): the other runs finish, the sweep exits 2 naming the failure."""
    out, cfg = setup
    sweep_dir = out / f"diverge{parallel}"
    res = runner.invoke(app, ["sweep", str(cfg), "--grid", "optim.lr=1e30,0.05", "--seeds", "0",
                              "--parallel", parallel, "--output", str(sweep_dir)])
    assert res.exit_code == 2
    assert "1 of 2 sweep runs failed, first lr=1e30__seed=0" in " ".join(res.output.split())
    assert (sweep_dir / "lr=0.05__seed=0" / "result.json").exists()
    assert not (sweep_dir / "lr=1e30__seed=0" / "result.json").exists()
    if parallel == "2":
        assert "training diverged" in (sweep_dir / "lr=1e30__seed=0" / "sweep.log").read_text()


def test_report_table_files_and_figures(setup):
    out, cfg = setup
    sweep_dir = out / "sw"
    if not (sweep_dir / "sweep.json").exists():
        pytest.skip("needs the sweep test's runs")
    rep = out / "rep"
    text = _ok(["report", str(sweep_dir), "--weak", str(out / "teacher"), "--ceiling", str(out / "ceiling"),
                "--output", str(rep)])
    assert "| name=kd | 2 |" in text and "| name=adaptconf | 2 |" in text
    for f in ("report.csv", "report.parquet", "report.md", "curves.png", "curves_mean.png", "accuracy_pgr.png", "beta.png"):
        assert (rep / f).exists(), f
    table = pq.read_table(rep / "report.parquet").to_pylist()
    runs = find_runs([sweep_dir])
    weak = json.loads((out / "teacher" / "result.json").read_text())["test_acc"]
    ceiling = json.loads((out / "ceiling" / "result.json").read_text())["test_acc"]
    assert ceiling > weak
    for row in table:
        mine = [r for r in runs if f"name={r.config['objective']['name']}" == row["configuration"]]
        accs = [r.test_acc for r in mine]
        assert row["test_acc_mean"] == pytest.approx(sum(accs) / 2)
        per_seed = [pgr(a, weak, ceiling) for a in accs]
        assert row["pgr_mean"] == pytest.approx(sum(per_seed) / 2)
        assert row["weak_acc"] == pytest.approx(weak) and row["ceiling_acc"] == pytest.approx(ceiling)


def test_best_epoch_is_chosen_on_validation_not_test(setup):
    out, _ = setup
    runs = find_runs([out / "sw"]) if (out / "sw").exists() else []
    if not runs:
        pytest.skip("needs the sweep test's runs")
    for r in runs:
        best = max(r.history, key=lambda h: h["val_acc"])
        assert r.result["best_epoch"] == best["epoch"]
        assert r.result["test_acc_at_best"] == best["test_acc"]
        assert r.result["val_samples"] == 200 and r.result["train_samples"] == 600


def test_grouping_ignores_seed_and_output(setup, tmp_path):
    out, _ = setup
    runs = find_runs([out / "sw"]) if (out / "sw").exists() else []
    if not runs:
        pytest.skip("needs the sweep test's runs")
    groups = group_runs(runs)
    assert sorted(g.label for g in groups) == ["name=adaptconf", "name=kd"]
    rows = summarize(groups)
    assert all(r["seeds"] == 2 and math.isnan(r["pgr_mean"]) for r in rows)  # no ceiling given: no PGR
    assert all(r["weak_acc"] > 0 for r in rows)  # recorded by the students


def test_pgr():
    assert pgr(0.8, 0.7, 0.9) == pytest.approx(0.5)
    assert math.isnan(pgr(0.8, 0.9, 0.9))


def test_report_without_runs_fails_cleanly(tmp_path):
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "no finished runs" in res.output


def test_bad_grid(setup):
    out, cfg = setup
    res = runner.invoke(app, ["sweep", str(cfg), "--grid", "optim.lrr=0.1,0.2", "--output", str(out / "bad")])
    assert res.exit_code == 2 and "unknown config key 'optim.lrr'" in res.output
    shutil.rmtree(out / "bad", ignore_errors=True)
