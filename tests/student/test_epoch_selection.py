"""The selected epochs in ``result.json`` (upstream's best-on-test, best-on-validation) and their report columns."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.experiments.report import report
from pipeline.engine.run_dir import RunDir
from pipeline.engine.run_loop import epoch_selection
from tests.cli_run import invoke, ok
from tests.helpers import fmnist_config

LAST, AT_VAL, BEST_TEST = ("test acc, last epoch (%)", "test acc, at best val epoch (%)",
                           "test acc, best on test (upstream's metric, optimistic) (%)")


def _config(tmp: Path, fmnist_dir: Path, out: Path) -> Path:
    return fmnist_config(tmp / f"{out.name}.yaml", fmnist_dir,
                         data={"limit": 600, "test_limit": 200, "val_fraction": 0.25},
                         views={"kind": "pad_crop", "num_views": 2, "pad": 2},
                         model={"name": "fmnist_linear"},
                         optim={"epochs": 3, "batch_size": 50, "eval_batch_size": 200, "lr": 0.05},
                         run={"output": str(out), "num_threads": 1})


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A 3-epoch supervised run with a validation split, through the CLI."""
    tmp = tmp_path_factory.mktemp("selection")
    printed = ok(["train-teacher", str(_config(tmp, fmnist_dir, tmp / "run"))])
    return tmp / "run", printed


def test_selection_ties_go_to_the_earliest_epoch_and_need_a_test_accuracy() -> None:
    rows = [{"epoch": 0, "test_acc": 0.5, "val_acc": 0.7}, {"epoch": 1, "test_acc": 0.8, "val_acc": 0.6},
            {"epoch": 2, "test_acc": 0.8, "val_acc": 0.7}]
    got = epoch_selection(rows)
    assert (got["best_test_top1"], got["best_test_epoch"]) == (0.8, 1)  # timm's CheckpointSaver: strictly better
    assert (got["best_epoch"], got["best_val_acc"], got["test_acc_at_best"]) == (0, 0.7, 0.5)
    assert "test set" in got["best_test_note"]
    assert "best_epoch" not in epoch_selection([{k: v for k, v in r.items() if k != "val_acc"} for r in rows])
    assert epoch_selection([{"epoch": 0, "train_acc": 0.9}]) == {}  # Meta-Baseline: no test accuracy per epoch


def test_result_records_last_best_on_test_and_at_best_validation(finished: tuple[Path, dict]) -> None:
    run, printed = finished
    result, rows = json.loads((run / "result.json").read_text()), _rows(run)
    assert printed == result and len(rows) == 3
    assert result["test_acc"] == rows[-1]["test_acc"]  # the headline stays the last epoch
    best = max(rows, key=lambda r: r["test_acc"])
    assert result["best_test_top1"] == best["test_acc"] == max(r["test_acc"] for r in rows)
    assert result["best_test_epoch"] == best["epoch"]
    assert "selected on the test set" in result["best_test_note"]
    by_val = max(rows, key=lambda r: r["val_acc"])
    assert (result["best_epoch"], result["best_val_acc"], result["test_acc_at_best"]) == (
        by_val["epoch"], by_val["val_acc"], by_val["test_acc"])


def test_selection_after_resume_uses_the_whole_history(fmnist_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop after the last epoch checkpoint, before ``result.json``: the resumed process runs no epoch."""
    cfg = _config(tmp_path, fmnist_dir, tmp_path / "cut")
    would_write: list[dict] = []

    def interrupted(self: RunDir, result: dict) -> None:
        would_write.append(result)
        raise RuntimeError("interrupted before result.json")

    with monkeypatch.context() as m:
        m.setattr(RunDir, "write_result", interrupted)
        assert invoke(["train-teacher", str(cfg)]).exit_code != 0
    assert not (tmp_path / "cut" / "result.json").exists() and len(_rows(tmp_path / "cut")) == 3
    resumed = ok(["train-teacher", str(cfg), "--resume"])
    assert resumed == would_write[0] == json.loads((tmp_path / "cut" / "result.json").read_text())
    rows = _rows(tmp_path / "cut")
    assert resumed["best_test_top1"] == max(r["test_acc"] for r in rows)
    assert rows[resumed["best_test_epoch"]]["test_acc"] == resumed["best_test_top1"]


def test_report_labels_each_accuracy_column(finished: tuple[Path, dict], tmp_path: Path) -> None:
    run, result = finished
    res = invoke(["report", str(run), "--output", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    header = next(line for line in res.stdout.splitlines() if line.startswith("| configuration"))
    assert [c.strip() for c in header.split("|")][3:6] == [LAST, AT_VAL, BEST_TEST]
    assert "selects the epoch on the test set, so it is optimistic" in " ".join(res.stdout.split())
    row = pq.read_table(tmp_path / "rep" / "report.parquet").to_pylist()[0]
    assert row["test_acc_mean"] == pytest.approx(result["test_acc"])
    assert row["best_val_epoch_acc_mean"] == pytest.approx(result["test_acc_at_best"])
    assert row["best_test_acc_mean"] == pytest.approx(result["best_test_top1"])


def _fake_run(d: Path, name: str, seed: int, last: float, best_test: float) -> None:
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"objective": {"name": name}, "run": {"seed": seed}}))
    (d / "result.json").write_text(json.dumps({"test_acc": last, "best_test_top1": best_test}))


def test_paired_tests_stay_on_the_last_epoch(tmp_path: Path) -> None:
    """Best-on-test favours b, the last epoch favours a: the pairs compare last epochs; no val split, no value."""
    for seed, (a, b) in enumerate([(0.70, 0.60), (0.72, 0.61), (0.71, 0.63)]):
        _fake_run(tmp_path / "runs" / f"a{seed}", "a", seed, a, 0.75)
        _fake_run(tmp_path / "runs" / f"b{seed}", "b", seed, b, 0.90)
    table, rows = report([tmp_path / "runs"], tmp_path / "rep")
    by_name = {r["configuration"]: r for r in rows}
    assert by_name["name=b"]["best_test_acc_mean"] == pytest.approx(0.90)
    assert by_name["name=a"]["test_acc_mean"] == pytest.approx(0.71)
    line = next(x for x in table.splitlines() if x.startswith("| name=a | 3 |"))
    assert [c.strip() for c in line.split("|")][3:6] == ["71.00 ± 1.00", "", "75.00 ± 0.00"]
    pair = pacsv.read_csv(tmp_path / "rep" / "paired.csv").to_pylist()[0]
    assert pair["diff_mean"] == pytest.approx(0.71 - (0.60 + 0.61 + 0.63) / 3)
    assert "Paired over seeds (last-epoch test accuracy)" in table
