"""Result tables and figures: accuracy, performance gap recovered (PGR) and training curves."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass
class RunResult:
    """What the report needs of one run directory."""

    name: str
    path: Path
    result: dict[str, Any]
    config: dict[str, Any]
    history: list[dict[str, Any]]

    @property
    def test_acc(self) -> float:
        return float(self.result["test_acc"])


def load_run(path: str | Path, name: str | None = None) -> RunResult:
    """Read ``result.json``, ``config.yaml`` and ``metrics.jsonl`` of a finished run."""
    p = Path(path)
    result_file = p / "result.json"
    if not result_file.is_file():
        raise FileNotFoundError(f"{p} is not a finished run (no result.json)")
    cfg_file = p / "config.yaml"
    metrics = p / "metrics.jsonl"
    return RunResult(name or p.name, p, json.loads(result_file.read_text()),
                     yaml.safe_load(cfg_file.read_text()) if cfg_file.exists() else {},
                     [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
                     if metrics.exists() else [])


def pgr(student: float, weak: float, ceiling: float) -> float:
    """Performance gap recovered: ``(student - weak) / (ceiling - weak)``; NaN when there is no gap."""
    gap = ceiling - weak
    return (student - weak) / gap if gap > 0 else math.nan


def weak_to_strong_rows(weak: RunResult, ceiling: RunResult, students: list[RunResult]) -> list[dict[str, Any]]:
    """One row per model: test accuracy, PGR (students only) and agreement with the teacher."""
    rows = [{"model": weak.name, "role": "weak teacher", "test_acc": weak.test_acc, "pgr": None, "agreement": None},
            {"model": ceiling.name, "role": "strong ceiling (ground truth)", "test_acc": ceiling.test_acc,
             "pgr": 1.0, "agreement": None}]
    for s in students:
        rows.append({"model": s.name, "role": f"student ({s.result.get('objective')})", "test_acc": s.test_acc,
                     "pgr": pgr(s.test_acc, weak.test_acc, ceiling.test_acc),
                     "agreement": s.result.get("test_agreement")})
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The weak-to-strong table as markdown (accuracy in percent)."""
    lines = ["| run | role | test acc (%) | PGR | agreement with teacher (%) |", "|---|---|---:|---:|---:|"]
    for r in rows:
        pg = "" if r["pgr"] is None or (isinstance(r["pgr"], float) and math.isnan(r["pgr"])) else f"{r['pgr']:.3f}"
        ag = "" if r["agreement"] is None else f"{100 * r['agreement']:.2f}"
        lines.append(f"| {r['model']} | {r['role']} | {100 * r['test_acc']:.2f} | {pg} | {ag} |")
    return "\n".join(lines)


def plot_weak_to_strong(rows: list[dict[str, Any]], runs: list[RunResult], path: str | Path) -> None:
    """Two panels: final test accuracy per run (bars) and test accuracy per epoch (curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["model"] for r in rows]
    accs = [100 * r["test_acc"] for r in rows]
    colors = ["tab:gray", "tab:green"] + ["tab:blue"] * (len(rows) - 2)
    bars = ax1.bar(names, accs, color=colors)
    for bar, r in zip(bars, rows):
        label = f"{100 * r['test_acc']:.1f}"
        if r["pgr"] is not None and r["role"].startswith("student"):
            label += f"\nPGR {r['pgr']:.2f}"
        ax1.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    lo = min(accs) - 5
    ax1.set_ylim(max(0, lo), min(100, max(accs) + 4))
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_title("weak-to-strong on the test split")
    ax1.tick_params(axis="x", rotation=20)
    for run in runs:
        if run.history:
            ax2.plot([h["epoch"] + 1 for h in run.history], [100 * h["test_acc"] for h in run.history],
                     marker="o", label=run.name)
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("test accuracy (%)")
    ax2.set_title("test accuracy per epoch")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
