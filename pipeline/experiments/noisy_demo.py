"""``w2s noisy-demo``: the paper's noisy-label method on Fashion-MNIST, from configs/noisy/fmnist_selcl.

For each noise mode (40% ``symmetric``, 40% ``asym_next``) and seed, three ways to train the CNN:
cross-entropy on the noisy labels (``ce``); Sel-CL pre-training then Sel-CL+ fine-tuning on its
selected examples (``selcl_cnn`` -> ``selcl_plus``); and the same fine-tuning with AdaptConf from a
weak teacher, the MLP's own Sel-CL model (``selcl_mlp`` -> ``selcl_plus_adaptconf``). It reports
test accuracy (mean +- std over seeds, paired differences) and, per epoch of the CNN's Sel-CL run,
the precision and recall of its selected set against the known clean labels (a figure). Finished
runs are skipped when the demo runs again.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from pipeline.config.schema import Config, load_config
from pipeline.engine.runtime import stderr_console
from pipeline.experiments.stats import mean_std, paired_difference

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "noisy" / "fmnist_selcl"
NOISE_MODES = ("symmetric", "asym_next")
METHODS = (("ce", "cross-entropy on the noisy labels"), ("selcl_plus", "Sel-CL -> Sel-CL+"),
           ("selcl_plus_adaptconf", "Sel-CL+ with AdaptConf from the weak Sel-CL teacher"))
PAIRS = (("selcl_plus", "ce"), ("selcl_plus_adaptconf", "selcl_plus"), ("selcl_plus_adaptconf", "ce"))


def _config(name: str, root: Path, noise: str, seed: int, data_dir: str | None) -> Config:
    over = [f"data.noise_mode={noise}", f"run.seed={seed}", f"run.output={root / name}"]
    if data_dir:
        over.append(f"data.data_dir={data_dir}")
    if name.startswith("selcl_plus"):
        over += [f"model.pretrained={root / 'selcl_cnn' / 'model.safetensors'}", f"noisy.selection={root / 'selcl_cnn'}"]
    if name == "selcl_plus_adaptconf":
        over.append(f"teacher.checkpoint={root / 'selcl_mlp'}")
    return load_config(CONFIG_DIR / f"{name}.yaml", over)


def _run(name: str, root: Path, noise: str, seed: int, data_dir: str | None, console: Console) -> None:
    if (root / name / "result.json").exists():
        return
    cfg = _config(name, root, noise, seed, data_dir)
    console.print(f"[bold]{noise} seed {seed}: {name}[/bold]")
    start = time.perf_counter()
    if name.startswith("selcl_") and not name.startswith("selcl_plus"):
        from pipeline.scenarios.sel_cl.pretrain import pretrain

        pretrain(cfg, resume=(root / name / "checkpoints").exists(), console=console)
    else:
        from pipeline.train_student import train

        role = "student" if cfg.objective.name != "vanilla" else "teacher"
        train(cfg, role=role, resume=(root / name / "checkpoints").exists(), console=console)
    console.print(f"{name}: {time.perf_counter() - start:.0f} s")


def run_noisy_demo(output: str | Path = "runs/noisy_demo", seeds: tuple[int, ...] = (0, 1, 2),
                   data_dir: str | None = None, console: Console | None = None) -> str:
    """Every run for every noise mode and seed under ``output``; returns the markdown report (also ``report.md``)."""
    console = console or stderr_console()
    out = Path(output)
    start = time.perf_counter()
    for noise in NOISE_MODES:
        for seed in seeds:
            root = out / noise / f"seed{seed}"
            for name in ("ce", "selcl_cnn", "selcl_plus", "selcl_mlp", "selcl_plus_adaptconf"):
                _run(name, root, noise, seed, data_dir, console)
    text = report(out, seeds)
    (out / "report.md").write_text(text + "\n")
    figure(out, seeds, out / "selection_precision_recall.png")
    console.print(f"noisy demo finished in {time.perf_counter() - start:.0f} s; {out / 'report.md'}")
    return text


def _result(path: Path) -> dict[str, Any]:
    return json.loads((path / "result.json").read_text())


def report(out: Path, seeds: tuple[int, ...]) -> str:
    """Markdown: test accuracy per method and noise mode (mean +- std, n), paired differences, selection quality."""
    lines = ["| noise (40%) | method | seeds | test acc (%) |", "|---|---|---:|---:|"]
    pairs = ["| noise (40%) | a - b, paired over seeds | seeds | difference (points) | 95% CI | p (paired t) |",
             "|---|---|---:|---:|---|---:|"]
    sel = ["| noise (40%) | Sel-CL model | selected (%) | precision (%) | recall (%) | noise in the labels (%) |",
           "|---|---|---:|---:|---:|---:|"]
    for noise in NOISE_MODES:
        acc = {m: {s: 100 * _result(out / noise / f"seed{s}" / m)["test_acc"] for s in seeds} for m, _ in METHODS}
        for m, label in METHODS:
            mean, sd, n = mean_std(acc[m].values())
            lines.append(f"| {noise} | {label} | {n} | {mean:.2f}" + (f" ± {sd:.2f} |" if n > 1 else " |"))
        for a, b in PAIRS:
            d = paired_difference(acc[a], acc[b])
            ci = f"[{d.ci_low:+.2f}, {d.ci_high:+.2f}]" if d.n > 1 else ""
            p = f"{d.p_value:.3f}" if d.n > 1 else ""
            pairs.append(f"| {noise} | {a} - {b} | {d.n} | {d.mean:+.2f} | {ci} | {p} |")
        for model in ("selcl_cnn", "selcl_mlp"):
            rs = [_result(out / noise / f"seed{s}" / model) for s in seeds]
            vals = [(100 * r["selected"] / r["train_samples"], 100 * r["selection_precision"],
                     100 * r["selection_recall"], 100 * (r["noise_rate"] or 0)) for r in rs]
            cols = [mean_std(v) for v in zip(*vals)]
            sel.append(f"| {noise} | {model} | " + " | ".join(f"{m:.1f} ± {sd:.1f}" for m, sd, _ in cols) + " |")
    return "\n".join(["Test accuracy on the clean test set:", "", *lines, "", *pairs, "",
                      "The selected set at the end of Sel-CL (mean ± std over seeds), against the known clean labels:",
                      "", *sel])


def figure(out: Path, seeds: tuple[int, ...], path: Path) -> None:
    """Precision and recall of the CNN's selected set per Sel-CL epoch (mean over seeds), both noise modes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for noise, color in zip(NOISE_MODES, ("tab:blue", "tab:orange")):
        rows = [[json.loads(x) for x in (out / noise / f"seed{s}" / "selcl_cnn" / "metrics.jsonl").read_text().splitlines()]
                for s in seeds]
        epochs = np.arange(1, len(rows[0]) + 1)
        for key, style in (("selection_precision", "-"), ("selection_recall", "--")):
            vals = np.array([[r[key] for r in run] for run in rows]) * 100
            ax.plot(epochs, vals.mean(0), style, color=color, marker="o", label=f"{noise}: {key.split('_')[1]}")
    ax.set_xlabel("Sel-CL epoch (selection at its end)")
    ax.set_ylabel("% (against the clean labels)")
    ax.set_title(f"Fashion-MNIST, 40% noise: the CNN's confident set (mean of {len(seeds)} seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
