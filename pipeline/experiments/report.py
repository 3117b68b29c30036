"""Results tables and figures: accuracy (mean +- std over seeds), PGR, agreement, curves, beta.

Runs are grouped by configuration: two runs belong together when their resolved configs differ
only in ``run.seed`` and ``run.output``. Three test accuracies per run, each labelled in the table
(:data:`ACCURACY_LEGEND`): the last epoch's (the headline, which PGR and the paired tests use);
the one at the epoch with the best *validation* accuracy (``data.val_fraction``); and the best
over epochs, upstream's CheckpointSaver metric, which selects on the test set (optimistic, for
comparing with the paper's tables). PGR = (student - weak) / (ceiling - weak)
with the weak teacher's test accuracy (recorded by each student run, or ``--weak`` runs) and the
ceiling's (``--ceiling`` runs: the strong model trained on ground truth).

Every mean names its number of seeds; with one seed the spread is left empty (not "+- 0").
Configurations that share seeds are also compared pairwise, seed by seed (``paired.md``: mean
difference, 95% CI, paired t-test; ``pipeline.experiments.stats``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.experiments.runs import IGNORED_KEYS, RunResult, find_runs
from pipeline.experiments.stats import mean_std, paired_difference

ACCURACY_LEGEND = ("Test accuracies: *last epoch* is the headline (PGR and the paired tests use it); "
                   "*at best val epoch* is the test accuracy at the epoch with the best validation accuracy "
                   "(`data.val_fraction`; empty without a validation split); *best on test* is the highest test "
                   "top-1 over epochs, upstream's CheckpointSaver metric (the one to compare with the paper's tables): "
                   "it selects the epoch on the test set, so it is optimistic.")


def pgr(student: float, weak: float, ceiling: float) -> float:
    """Performance gap recovered: ``(student - weak) / (ceiling - weak)``; NaN when there is no gap."""
    gap = ceiling - weak
    return (student - weak) / gap if gap > 0 else math.nan


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
    return out


@dataclass
class Group:
    """Runs of one configuration (differing only in seed) and their summary."""

    label: str
    runs: list[RunResult] = field(default_factory=list)

    def stat(self, values: list[float | None]) -> tuple[float, float]:
        """Mean and standard deviation over seeds (NaN spread with fewer than two)."""
        mean, std, _ = mean_std(values)
        return mean, std

    def by_seed(self) -> dict[int, float]:
        """Last-epoch test accuracy per ``run.seed``."""
        return {int(r.config.get("run", {}).get("seed", 0)): r.test_acc for r in self.runs}


def group_runs(runs: list[RunResult], label_of: Callable[[RunResult], str] | None = None) -> list[Group]:
    """Group by configuration (everything but seed and output), or by ``label_of(run)`` when given.

    A group's label is its sweep settings (``--grid`` values) when its runs came from sweeps and
    those labels tell the groups apart, else the config keys that vary between groups.
    """
    if label_of is not None:
        labelled: dict[str, Group] = {}
        for run in runs:
            labelled.setdefault(label_of(run), Group(label_of(run))).runs.append(run)
        return list(labelled.values())
    flats = [{k: v for k, v in _flat(r.config).items() if k not in IGNORED_KEYS} for r in runs]
    keys = sorted({k for f in flats for k in f})
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]
    groups: dict[str, Group] = {}
    for run, f in zip(runs, flats):
        key = json.dumps([f.get(k) for k in varying], sort_keys=True, default=str)
        label = ", ".join(f"{k.split('.')[-1]}={f.get(k)}" for k in varying) or run.name
        groups.setdefault(key, Group(label)).runs.append(run)
    sweep_labels = [", ".join(f"{k.split('.')[-1]}={v}" for k, v in g.runs[0].settings.items()) for g in groups.values()]
    if all(sweep_labels) and len(set(sweep_labels)) == len(sweep_labels):
        for g, label in zip(groups.values(), sweep_labels):
            g.label = label
    return list(groups.values())


def summarize(groups: list[Group], weak: float | None = None, ceiling: float | None = None) -> list[dict[str, Any]]:
    """One row per group: accuracy statistics over seeds, PGR and agreement."""
    rows = []
    for g in groups:
        last = [r.test_acc for r in g.runs]
        at_best_val = [r.result.get("test_acc_at_best") for r in g.runs]
        best_test = [r.result.get("best_test_top1") for r in g.runs]
        teacher = [r.result.get("teacher_test_acc") for r in g.runs]
        w = weak if weak is not None else g.stat(teacher)[0]
        row: dict[str, Any] = {"configuration": g.label, "seeds": len(g.runs)}
        row["test_acc_mean"], row["test_acc_std"] = g.stat(last)
        row["best_val_epoch_acc_mean"], row["best_val_epoch_acc_std"] = g.stat(at_best_val)
        row["best_test_acc_mean"], row["best_test_acc_std"] = g.stat(best_test)
        row["weak_acc"] = w
        row["ceiling_acc"] = ceiling if ceiling is not None else math.nan
        per_seed = [pgr(a, w, ceiling) for a in last] if ceiling is not None and not math.isnan(w) else []
        row["pgr_mean"], row["pgr_std"] = g.stat(per_seed)
        row["agreement_mean"], _ = g.stat([r.result.get("test_agreement") for r in g.runs])
        rows.append(row)
    return rows


def plus_minus(mean: float, std: float, scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std``; the mean alone when there is no spread (one seed)."""
    if math.isnan(mean):
        return ""
    if math.isnan(std):
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def paired(groups: list[Group]) -> list[dict[str, Any]]:
    """Every two configurations with at least two seeds in common: test accuracy difference, seed by seed."""
    rows = []
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            d = paired_difference(a.by_seed(), b.by_seed())
            if d.n >= 2:
                rows.append({"a": a.label, "b": b.label, "seeds": d.n, "diff_mean": d.mean, "ci_low": d.ci_low,
                             "ci_high": d.ci_high, "p_value": d.p_value, "significant": d.significant})
    return rows


def paired_markdown(rows: list[dict[str, Any]]) -> str:
    """The paired comparisons in markdown (differences in accuracy points)."""
    lines = ["| a | b | seeds | a - b (points) | 95% CI | paired t p | CI excludes 0 |",
             "|---|---|---:|---:|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r['a']} | {r['b']} | {r['seeds']} | {100 * r['diff_mean']:+.2f} | "
                     f"[{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}] | {r['p_value']:.3f} | "
                     f"{'yes' if r['significant'] else 'no'} |")
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The report table in markdown (accuracies in percent), then :data:`ACCURACY_LEGEND`."""
    lines = ["| configuration | seeds | test acc, last epoch (%) | test acc, at best val epoch (%) | "
             "test acc, best on test (upstream's metric, optimistic) (%) | weak (%) | ceiling (%) | PGR | "
             "agreement (%) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        weak = "" if math.isnan(r["weak_acc"]) else f"{100 * r['weak_acc']:.2f}"
        ceil = "" if math.isnan(r["ceiling_acc"]) else f"{100 * r['ceiling_acc']:.2f}"
        agree = "" if math.isnan(r["agreement_mean"]) else f"{100 * r['agreement_mean']:.2f}"
        lines.append(f"| {r['configuration']} | {r['seeds']} | {plus_minus(r['test_acc_mean'], r['test_acc_std'])} | "
                     f"{plus_minus(r['best_val_epoch_acc_mean'], r['best_val_epoch_acc_std'])} | "
                     f"{plus_minus(r['best_test_acc_mean'], r['best_test_acc_std'])} | {weak} | {ceil} | "
                     f"{plus_minus(r['pgr_mean'], r['pgr_std'], 1.0, 3)} | {agree} |")
    return "\n".join(lines) + "\n\n" + ACCURACY_LEGEND


def write_tables(rows: list[dict[str, Any]], out: Path, pairs: list[dict[str, Any]] = ()) -> None:
    """``report.csv``, ``report.parquet`` and ``report.md``; ``paired.csv`` and ``paired.md`` when there are pairs."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    pacsv.write_csv(table, out / "report.csv")
    pq.write_table(table, out / "report.parquet")
    (out / "report.md").write_text(markdown(rows) + "\n")
    if pairs:
        pacsv.write_csv(pa.Table.from_pylist(list(pairs)), out / "paired.csv")
        (out / "paired.md").write_text(paired_markdown(list(pairs)) + "\n")


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(groups: list[Group], path: Path, extra: list[RunResult] = ()) -> None:
    """Test accuracy per epoch of every run (one colour per configuration)."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, g in enumerate([*[Group(r.name, [r]) for r in extra], *groups]):
        for j, r in enumerate(g.runs):
            tested = [h for h in r.history if "epoch" in h and "test_acc" in h]  # few-shot rows have no test_acc
            if tested:
                ax.plot([h["epoch"] + 1 for h in tested], [100 * h["test_acc"] for h in tested], marker="o",
                        ms=3, color=colors[i % len(colors)], label=g.label if j == 0 else None, alpha=0.85)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_mean_curves(groups: list[Group], path: Path, extra: list[Group] = ()) -> bool:
    """Test accuracy per epoch, mean over each group's seeds with its min-max band (written when some group
    has two seeds or more, where the per-run figure gets crowded); whether it was written."""
    groups = [*extra, *groups]
    if not any(len(g.runs) > 1 for g in groups):
        return False
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, g in enumerate(groups):
        curves = [[100 * h["test_acc"] for h in r.history if "epoch" in h and "test_acc" in h] for r in g.runs]
        n = min((len(c) for c in curves), default=0)
        if not n:
            continue
        acc = np.array([c[:n] for c in curves])
        epochs = np.arange(1, n + 1)
        color = colors[i % len(colors)]
        ax.plot(epochs, acc.mean(0), color=color, label=f"{g.label} ({len(g.runs)} seeds)")
        ax.fill_between(epochs, acc.min(0), acc.max(0), color=color, alpha=0.15, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%), mean over seeds (band: min-max)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_accuracy_bars(rows: list[dict[str, Any]], path: Path, weak: float | None, ceiling: float | None) -> None:
    """Last-epoch test accuracy per configuration (error bars: std over seeds), weak and ceiling lines; PGR labels."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(rows) + 2), 4.5))
    means = [100 * r["test_acc_mean"] for r in rows]
    errors = [0.0 if math.isnan(r["test_acc_std"]) else 100 * r["test_acc_std"] for r in rows]
    bars = ax.bar(range(len(rows)), means, yerr=errors, capsize=4, color="tab:blue")
    for bar, r in zip(bars, rows):
        label = f"{100 * r['test_acc_mean']:.1f} (n={r['seeds']})"
        if not math.isnan(r["pgr_mean"]):
            label += f"\nPGR {plus_minus(r['pgr_mean'], r['pgr_std'], 1.0, 2)}"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    lows = means
    if weak is not None and not math.isnan(weak):
        ax.axhline(100 * weak, color="tab:gray", ls="--", label=f"weak teacher {100 * weak:.1f}")
        lows = lows + [100 * weak]
    if ceiling is not None and not math.isnan(ceiling):
        ax.axhline(100 * ceiling, color="tab:green", ls="--", label=f"strong ceiling {100 * ceiling:.1f}")
        lows = lows + [100 * ceiling]
    ax.set_ylim(max(0.0, min(lows) - 5), min(100.0, max(lows) + 4))
    ax.set_xticks(range(len(rows)), [r["configuration"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy, last epoch (%)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_beta(groups: list[Group], path: Path) -> bool:
    """AdaptConf's beta distribution per epoch (share of samples per bin, averaged over seeds)."""
    with_hist = [g for g in groups if any("weight_hist" in h for r in g.runs for h in r.history)]
    if not with_hist:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(with_hist), figsize=(4.5 * len(with_hist), 3.8), squeeze=False)
    for ax, g in zip(axes[0], with_hist):
        hists = [np.array([h["weight_hist"] for h in r.history]) for r in g.runs if r.history]
        epochs = min(len(h) for h in hists)
        mean = np.mean([h[:epochs] for h in hists], axis=0)
        im = ax.imshow(mean.T, origin="lower", aspect="auto", extent=(0.5, epochs + 0.5, 0.0, 0.5), cmap="viridis")
        ax.set_xlabel("epoch")
        ax.set_ylabel("beta")
        ax.set_title(g.label, fontsize=8)
        fig.colorbar(im, ax=ax, label="share of samples")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def report(paths: list[str | Path], out: str | Path, weak_paths: list[str | Path] = (),
           ceiling_paths: list[str | Path] = (),
           label_of: Callable[[RunResult], str] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Build the table and figures for the runs under ``paths``; returns (markdown, rows).

    ``label_of`` groups the runs by a label of the caller's (e.g. the demo's run names, whose seeds
    each have their own teacher) instead of by configuration."""
    runs = find_runs(list(paths))
    weak_runs = find_runs(list(weak_paths)) if weak_paths else []
    ceiling_runs = find_runs(list(ceiling_paths)) if ceiling_paths else []
    weak = float(np.mean([r.test_acc for r in weak_runs])) if weak_runs else None
    ceiling = float(np.mean([r.test_acc for r in ceiling_runs])) if ceiling_runs else None
    groups = group_runs(runs, label_of)
    rows = summarize(groups, weak, ceiling)
    pairs = paired(groups)
    out = Path(out)
    write_tables(rows, out, pairs)
    plot_curves(groups, out / "curves.png", extra=[*weak_runs, *ceiling_runs])
    plot_mean_curves(groups, out / "curves_mean.png",
                     extra=[Group(name, list(rs)) for name, rs in (("ceiling", ceiling_runs),) if rs])
    w = weak if weak is not None else (rows[0]["weak_acc"] if rows else None)
    plot_accuracy_bars(rows, out / "accuracy_pgr.png", w, ceiling)
    plot_beta(groups, out / "beta.png")
    table = markdown(rows)
    if pairs:
        table += "\n\nPaired over seeds (last-epoch test accuracy):\n\n" + paired_markdown(pairs)
    return table, rows
