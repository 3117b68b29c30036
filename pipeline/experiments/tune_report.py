"""``w2s report DIR`` on a ``w2s tune`` directory: the trials' table, the best trial's config, Optuna's plots.

The table (``report.md``, ``trials.csv``) has one row per trial: number, state, parameters, the
score (``val_acc``: the last epoch's validation accuracy; for a pruned trial the last one it
reported), the test accuracy of its run's last epoch (shown, never used to choose) and the epochs it
ran. The best trial is the complete one with the highest ``val_acc``; its run's ``config.yaml``,
with ``run.output`` set to ``runs/<tune dir>-best``, is written as ``best.yaml`` for
``w2s train-student``. Figures: ``optimization_history.png`` and, with at least two complete trials
and a parameter that varies among them, ``param_importances.png`` (PED-ANOVA: Optuna's default
fANOVA needs scikit-learn).
"""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from pipeline.experiments.runs import LEAVE_OUT, ReportError, load_run
from pipeline.experiments.tune import trial_dir
from pipeline.experiments.tune_storage import Settings, open_study


def _history(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics rows of a trial's run (finished or not; none when it never finished an epoch)."""
    if (run_dir / "result.json").is_file():
        return load_run(run_dir).history
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise ReportError(f"{path} line {number}: not valid JSON; {LEAVE_OUT}") from None
    return rows


def trial_row(directory: Path, t: FrozenTrial, keys: list[str]) -> dict[str, Any]:
    """One trial: number, state, parameters, val_acc (the score), the run's last test_acc and its epochs."""
    history = _history(trial_dir(directory, t.number))
    steps = sorted(t.intermediate_values)
    val = t.value if t.state == TrialState.COMPLETE else (t.intermediate_values[steps[-1]] if steps else None)
    return {"number": t.number, "state": t.state.name, **{k: t.params.get(k) for k in keys}, "val_acc": val,
            "test_acc": history[-1].get("test_acc") if history else None, "epochs": len(history)}


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The trials as a markdown table (accuracies as fractions)."""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_best(directory: Path, best: FrozenTrial, path: Path) -> None:
    """The best trial's run config, with a fresh ``run.output``, as a config ``w2s train-student`` takes."""
    config = load_run(trial_dir(directory, best.number)).config
    config.setdefault("run", {})["output"] = str(Path("runs") / f"{directory.resolve().name}-best")
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def plots(study: optuna.Study, complete: list[FrozenTrial], out: Path, console: Console) -> None:
    """``optimization_history.png``; ``param_importances.png`` when two complete trials differ in a parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the matplotlib backend is marked so
        ax = plot_optimization_history(study, target_name="val_acc")
        ax.figure.savefig(out / "optimization_history.png", dpi=120, bbox_inches="tight")
        plt.close(ax.figure)
        keys = {k for t in complete for k in t.params}
        varies = any(len({json.dumps(t.params.get(k)) for t in complete}) > 1 for k in keys)
        if len(complete) < 2 or not varies:
            console.print("parameter importances skipped: they need at least two complete trials whose parameters "
                          "differ", highlight=False)
            return
        ax = plot_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                                    target_name="val_acc")
        ax.figure.savefig(out / "param_importances.png", dpi=120, bbox_inches="tight")
        plt.close(ax.figure)


def tune_report(directory: str | Path, out: str | Path, console: Console) -> str:
    """Write the trials' table, ``best.yaml`` and the plots of the tune directory to ``out``; returns the table."""
    directory, out = Path(directory), Path(out)
    settings = Settings.read(directory)
    study = open_study(directory, settings, settings.storage)
    trials = study.get_trials(deepcopy=False)
    if not trials:
        raise ReportError(f"study {settings.study} has no trials yet; run w2s tune on {directory} first")
    keys = [p.key for p in settings.space]
    rows = [trial_row(directory, t, keys) for t in trials]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = markdown(rows) + ("\n\nval_acc: the last epoch's validation accuracy (the score; a pruned trial's last "
                              "report); test_acc: the run's last epoch, never used to choose.")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = max(complete, key=lambda t: t.value)
        write_best(directory, best, out / "best.yaml")
        table += (f"\n\nbest trial {best.number}: val_acc {best.value:.4f}, test_acc "
                  f"{_cell(trial_row(directory, best, keys)['test_acc'])}; its config: {out / 'best.yaml'}")
    else:
        console.print("no complete trial yet: no best.yaml", highlight=False)
    (out / "report.md").write_text(table + "\n")
    plots(study, complete, out, console)
    return table
