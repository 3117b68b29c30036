"""Reading finished runs for ``w2s report``: ``result.json``, ``config.yaml``, ``metrics.jsonl`` and the
sweep's ``sweep.json``, each checked, so a damaged or unrelated file is one line naming it (and the
line, for metrics) and the way out.
"""
from __future__ import annotations

import json
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.engine.run_dir import first_difference
from pipeline.engine.runtime import RunError

IGNORED_KEYS = ("run.output", "run.seed")


class ReportError(ValueError):
    """A file the report reads is not what a finished run (or sweep) writes; one line naming it and the way out."""


LEAVE_OUT = "rerun that run, or leave its directory out of the paths given to `w2s report`"


@dataclass
class RunResult:
    """What the report needs of one run directory."""

    name: str
    path: Path
    result: dict[str, Any]
    config: dict[str, Any]
    history: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def test_acc(self) -> float:
        return float(self.result["test_acc"])


def _is_number(x: Any) -> bool:
    """An int or float, not a bool (JSON ``true`` is no accuracy)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _text(path: Path, fix: str) -> str:
    """The contents of ``path``; a :class:`ReportError` naming it and ``fix`` when it is not UTF-8 text."""
    try:
        return path.read_text()
    except UnicodeDecodeError as exc:
        raise ReportError(f"{path}: not text ({exc.reason} at byte {exc.start}); {fix}") from None


def read_json_file(path: Path, fix: str) -> Any:
    """``path`` parsed as JSON; a :class:`ReportError` naming it and ``fix`` when it is not JSON."""
    try:
        return json.loads(_text(path, fix))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc}); {fix}") from None


def _sweep_settings(manifest: Path, run_name: str) -> dict[str, Any]:
    """The ``--grid`` settings ``sweep.json`` records for ``run_name`` (empty when it lists no such run)."""
    fix = "delete it (the report then labels runs by their configs) or rerun the sweep to rewrite it"
    data = read_json_file(manifest, fix)
    runs = data.get("runs", []) if isinstance(data, dict) else None
    if not isinstance(runs, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str)
                                             and isinstance(e.get("settings"), dict) for e in runs):
        raise ReportError(f"{manifest}: not a sweep manifest (expected an object whose runs each have a name and "
                          f"settings); {fix}")
    for entry in runs:
        if entry["name"] == run_name:
            return {k: v for k, v in entry["settings"].items() if k not in IGNORED_KEYS}
    return {}


def _result(path: Path) -> dict[str, Any]:
    """``result.json``: an object with a numeric ``test_acc`` (and numbers, or null, for the other accuracies)."""
    result = read_json_file(path, LEAVE_OUT)
    if not isinstance(result, dict):
        raise ReportError(f"{path}: not a run result (a JSON {type(result).__name__}, expected an object); {LEAVE_OUT}")
    if not _is_number(result.get("test_acc")):
        found = ("no test_acc" if "test_acc" not in result
                 else f"test_acc is {reprlib.repr(result['test_acc'])}, not a number")
        raise ReportError(f"{path}: not a training run's result ({found}); {LEAVE_OUT}")
    for key in ("test_acc_at_best", "best_test_top1", "teacher_test_acc", "test_agreement"):
        if result.get(key) is not None and not _is_number(result[key]):
            raise ReportError(f"{path}: {key} is {reprlib.repr(result[key])}, not a number; {LEAVE_OUT}")
    return result


def _config(path: Path) -> dict[str, Any]:
    """``config.yaml``: a mapping whose ``run.seed``, if any, is an integer (seeds pair runs up)."""
    try:
        config = yaml.safe_load(_text(path, LEAVE_OUT))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ReportError(f"{path}: not valid YAML ({getattr(exc, 'problem', None) or type(exc).__name__}{where}); "
                          f"{LEAVE_OUT}") from None
    if not isinstance(config, dict):
        raise ReportError(f"{path}: not a run config (a YAML {type(config).__name__}, expected a mapping); {LEAVE_OUT}")
    run = config.get("run", {})
    if not isinstance(run, dict) or not isinstance(run.get("seed", 0), int):
        raise ReportError(f"{path}: run.seed is not an integer; {LEAVE_OUT}")
    return config


def _row_problem(row: Any) -> str | None:
    """Why ``row`` is not a metrics row the report can use (numeric ``epoch``/``test_acc``, a list ``weight_hist``)."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, expected an object"
    for key in ("epoch", "test_acc"):
        if key in row and not _is_number(row[key]):
            return f"{key} is {reprlib.repr(row[key])}, not a number"
    hist = row.get("weight_hist", [])
    if not (isinstance(hist, list) and all(_is_number(x) for x in hist)):
        return "weight_hist is not a list of numbers"
    return None


def _history(path: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl``: one metrics row (a JSON object) per line; a bad line is named by its number."""
    rows = []
    for number, line in enumerate(_text(path, LEAVE_OUT).splitlines(), 1):
        if not line.strip():
            continue
        fix = f"delete that line or {LEAVE_OUT}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path} line {number}: not valid JSON ({exc.msg}); {fix}") from None
        problem = _row_problem(row)
        if problem is not None:
            raise ReportError(f"{path} line {number}: not a metrics row ({problem}); {fix}")
        rows.append(row)
    return rows


def load_run(path: str | Path, name: str | None = None) -> RunResult:
    """Read ``result.json``, ``config.yaml`` and ``metrics.jsonl`` of a finished run (and its sweep settings).

    A file that is not what a run writes raises a one-line :class:`ReportError` naming it (and the
    line, in ``metrics.jsonl``): the report reads whole directory trees, which may hold other files."""
    p = Path(path)
    manifest = p.parent / "sweep.json"
    settings = _sweep_settings(manifest, p.name) if manifest.exists() else {}
    result_file = p / "result.json"
    if not result_file.is_file():
        raise FileNotFoundError(f"{p} is not a finished run (no result.json)")
    cfg_file = p / "config.yaml"
    metrics = p / "metrics.jsonl"
    return RunResult(name or p.name, p, _result(result_file), _config(cfg_file) if cfg_file.exists() else {},
                     _history(metrics) if metrics.exists() else [], settings)


def find_runs(paths: list[str | Path]) -> list[RunResult]:
    """Finished runs in the given run or sweep directories (searched up to three levels down)."""
    found: list[RunResult] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        dirs = [p] if (p / "result.json").exists() else sorted(
            {r.parent for depth in ("*/", "*/*/", "*/*/*/") for r in p.glob(depth + "result.json")})
        found += [load_run(d) for d in dirs]
    if not found:
        raise FileNotFoundError(f"no finished runs (result.json) under {', '.join(map(str, paths))}")
    return found


def finished_with(run_dir: Path, config: dict[str, Any]) -> bool:
    """Whether ``run_dir`` holds a finished run (a ``result.json``) made with ``config``. A finished run whose
    ``config.yaml`` is unreadable or differs is refused in one line, never reused: a changed config or rule
    would otherwise put old numbers into a new table."""
    if not (run_dir / "result.json").exists():
        return False
    try:
        stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as exc:
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise RunError(f"{run_dir / 'config.yaml'}: unreadable ({why}); move {run_dir} away to rerun it") from exc
    diff = first_difference(stored if isinstance(stored, dict) else {}, config)
    if diff is not None:
        key, was, now = diff
        raise RunError(f"{run_dir} is finished with {key} = {was!r}, but the demo now sets {now!r}; move it "
                       "away (or choose another --output) to retrain it")
    return True
