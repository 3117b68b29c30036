"""``w2s report`` over damaged or unrelated files: one line naming the file (and line) and the way out.

The runs are faked with the files a finished run writes (``result.json``, ``config.yaml``,
``metrics.jsonl``, and the sweep's ``sweep.json``); each case damages one of them.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.cli_run import invoke, one_line_failure

LEAVE_OUT = "rerun that run, or leave its directory out of the paths given to `w2s report`"


def _run(d: Path, seed: int, acc: float) -> Path:
    """A finished run's files: two epochs of metrics, its config and result."""
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps({"test_acc": acc, "teacher_test_acc": 0.6, "best_test_top1": acc}))
    config = {"objective": {"name": "kd"}, "run": {"seed": seed, "output": str(d)}}
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "test_acc": acc - 0.1 + 0.1 * e}) + "\n"
                                             for e in range(2)))
    return d


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    """A sweep directory of two seeds, with its manifest."""
    d = tmp_path / "sweep"
    for seed in (0, 1):
        _run(d / f"name=kd__seed={seed}", seed, 0.8 + 0.01 * seed)
    (d / "sweep.json").write_text(json.dumps({"runs": [{"name": f"name=kd__seed={s}",
                                                        "settings": {"objective.name": "kd", "run.seed": s}}
                                                       for s in (0, 1)]}))
    return d


def test_the_fake_sweep_reports(sweep: Path, tmp_path: Path) -> None:
    """The undamaged files make a report, so each failure below is the damage's doing."""
    res = invoke(["report", str(sweep), "--output", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert "| kd | 2 |" in res.output.replace("name=kd", "kd")


RESULT_CASES = [
    ("{}", "not a training run's result (no test_acc)"),
    ("[0.8, 0.9]", "not a run result (a JSON list, expected an object)"),
    ("test_acc: 0.8", "not valid JSON (Expecting value: line 1 column 1"),
    ('{"test_acc": "high"}', "not a training run's result (test_acc is 'high', not a number)"),
    ('{"test_acc": 0.8, "teacher_test_acc": [1]}', "teacher_test_acc is [1], not a number"),
]


@pytest.mark.parametrize("text,problem", RESULT_CASES, ids=["empty", "list", "not-json", "string-acc", "list-teacher"])
def test_damaged_result_json(sweep: Path, tmp_path: Path, text: str, problem: str) -> None:
    bad = sweep / "name=kd__seed=1" / "result.json"
    bad.write_text(text)
    one_line_failure(["report", str(sweep), "--output", str(tmp_path / "rep")], f"{bad}: {problem}", LEAVE_OUT)


@pytest.mark.parametrize("text,problem", [("- a\n- b\n", "not a run config (a YAML list, expected a mapping)"),
                                          ("run: {seed: 0\nobjective: x\n", "not valid YAML ("),
                                          ("run: {seed: zero}\n", "run.seed is not an integer")],
                         ids=["list", "invalid", "seed"])
def test_damaged_config_yaml(sweep: Path, tmp_path: Path, text: str, problem: str) -> None:
    bad = sweep / "name=kd__seed=0" / "config.yaml"
    bad.write_text(text)
    one_line_failure(["report", str(sweep), "--output", str(tmp_path / "rep")], f"{bad}: {problem}", LEAVE_OUT)


@pytest.mark.parametrize("text,problem", [("junk", "not valid JSON"), ('{"runs": 3}', "not a sweep manifest"),
                                          ('{"runs": [{"name": "x"}]}', "not a sweep manifest")],
                         ids=["junk", "runs-number", "no-settings"])
def test_damaged_sweep_json(sweep: Path, tmp_path: Path, text: str, problem: str) -> None:
    bad = sweep / "sweep.json"
    bad.write_text(text)
    one_line_failure(["report", str(sweep), "--output", str(tmp_path / "rep")], f"{bad}: {problem}",
                     "delete it (the report then labels runs by their configs) or rerun the sweep to rewrite it")


@pytest.mark.parametrize("line,problem", [("{garbage", "not valid JSON ("),
                                          ("[1, 2]", "not a metrics row (a JSON list"),
                                          ('{"epoch": 1, "test_acc": null}', "not a metrics row (test_acc is None"),
                                          ('{"epoch": 1, "test_acc": 0.7, "weight_hist": "x"}',
                                           "not a metrics row (weight_hist is not a list of numbers)")],
                         ids=["garbage", "list", "null-acc", "hist"])
def test_bad_line_in_metrics_jsonl(sweep: Path, tmp_path: Path, line: str, problem: str) -> None:
    """One bad line in one run's metrics used to fail the whole report with a traceback."""
    bad = sweep / "name=kd__seed=0" / "metrics.jsonl"
    bad.write_text(bad.read_text() + "\n" + line + "\n")  # line 3 is blank: the bad one is line 4
    one_line_failure(["report", str(sweep), "--output", str(tmp_path / "rep")], f"{bad} line 4: {problem}",
                     "delete that line or " + LEAVE_OUT)


def test_binary_metrics_jsonl(sweep: Path, tmp_path: Path) -> None:
    bad = sweep / "name=kd__seed=0" / "metrics.jsonl"
    bad.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe")
    one_line_failure(["report", str(sweep), "--output", str(tmp_path / "rep")], f"{bad}: not text (", LEAVE_OUT)


@pytest.mark.parametrize("option", ["--weak", "--ceiling"])
def test_weak_or_ceiling_pointing_at_a_damaged_run(sweep: Path, tmp_path: Path, option: str) -> None:
    other = _run(tmp_path / "other", 0, 0.7)
    (other / "result.json").write_text('{"accuracy": 0.7}')  # e.g. a few-shot evaluation, not a training run
    one_line_failure(["report", str(sweep), option, str(other), "--output", str(tmp_path / "rep")],
                     f"{other / 'result.json'}: not a training run's result (no test_acc)", LEAVE_OUT)
    (other / "result.json").write_text('{"test_acc": 0.7}')
    (other / "metrics.jsonl").write_text("not json\n")
    one_line_failure(["report", str(sweep), option, str(other), "--output", str(tmp_path / "rep")],
                     f"{other / 'metrics.jsonl'} line 1: not valid JSON")


def test_rows_without_test_acc_are_not_plotted(sweep: Path, tmp_path: Path) -> None:
    """Metrics rows without a test accuracy (a few-shot meta run's) are read but left off the curves."""
    m = sweep / "name=kd__seed=0" / "metrics.jsonl"
    m.write_text(m.read_text() + json.dumps({"epoch": 2, "loss": 0.3}) + "\n")
    res = invoke(["report", str(sweep), "--output", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rep" / "curves.png").exists()

