"""``w2s noisy-demo``: the paper's noisy-label method on Fashion-MNIST, from configs/noisy/fmnist_selcl.

For each noise mode (40% ``symmetric``, 40% ``asym_next``) and seed, three ways to train the CNN:
cross-entropy on the noisy labels (``ce``); Sel-CL pre-training then Sel-CL+ fine-tuning on its
selected examples (``selcl_cnn`` -> ``selcl_plus``); and the same fine-tuning with AdaptConf from a
weak teacher, a linear model trained with cross-entropy on the noisy labels (``teacher_linear`` ->
``selcl_plus_adaptconf``; rule 4 as amended, after the MLP's own Sel-CL model failed it). The
student's ceiling (rule 4 of docs/demo.md) is the same CNN and recipe as ``ce`` on the clean
labels (``ceiling``). It reports, per noise mode, the teacher, the ceiling and each method's test
accuracy (mean +- std over seeds) with PGR, each seed's error ratio against rule 4, the paired
differences as one Holm-Bonferroni family, and, per epoch of the CNN's Sel-CL run, the precision
and recall of its selected set against the known clean labels (a figure). Finished runs made with
the same settings are skipped when the demo runs again; finished runs made with others are refused.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from pipeline.config.schema import Config, load_config
from pipeline.engine.checkpoint import write_json
from pipeline.engine.runtime import stderr_console
from pipeline.experiments.regimes import ALPHA, SEEDS, error_ratio, weaker_than_student
from pipeline.experiments.report import pgr
from pipeline.experiments.runs import finished_with
from pipeline.experiments.stats import holm, mean_std, paired_difference

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "noisy" / "fmnist_selcl"
NOISE_MODES = ("symmetric", "asym_next")
METHODS = (("ce", "cross-entropy on the noisy labels"), ("selcl_plus", "Sel-CL -> Sel-CL+"),
           ("selcl_plus_adaptconf", "Sel-CL+ with AdaptConf from the weak teacher"))
PAIRS = (("selcl_plus", "ce"), ("selcl_plus_adaptconf", "selcl_plus"), ("selcl_plus_adaptconf", "ce"))
# the weak teacher's run and config: rule 4's second amendment chose the linear one (docs/demo.md,
# docs/results/noisy_selection.json); the MLP's Sel-CL model (selcl_mlp) failed rule 4 on seed 1
TEACHER = "teacher_linear"
TEACHER_LABEL = "weak teacher: `fmnist_linear`, cross-entropy on the noisy labels"
RUNS = ("ceiling", "ce", "selcl_cnn", "selcl_plus", TEACHER, "selcl_plus_adaptconf")
NUM_CLASSES = 10


def _config(name: str, root: Path, noise: str, seed: int, data_dir: str | None) -> Config:
    over = [f"data.noise_mode={noise}", f"run.seed={seed}", f"run.output={root / name}"]
    if name == "ceiling":  # the student's ceiling: the ce run on the clean labels
        over += ["data.noise_mode=none", "data.noise_rate=0"]
    if data_dir:
        over.append(f"data.data_dir={data_dir}")
    if name.startswith("selcl_plus"):
        over += [f"model.pretrained={root / 'selcl_cnn' / 'model.safetensors'}", f"noisy.selection={root / 'selcl_cnn'}"]
    if name == "selcl_plus_adaptconf":
        over.append(f"teacher.checkpoint={root / TEACHER}")
    return load_config(CONFIG_DIR / f"{'ce' if name == 'ceiling' else name}.yaml", over)



def run_one(name: str, root: Path, noise: str, seed: int, data_dir: str | None, console: Console) -> None:
    """One run of the noisy demo (skipped when finished with the same settings, refused when finished with
    others; resumed when interrupted)."""
    cfg = _config(name, root, noise, seed, data_dir)
    if finished_with(root / name, cfg.to_dict()):
        return
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


def run_noisy_demo(output: str | Path = "runs/noisy_demo", seeds: tuple[int, ...] = SEEDS,
                   data_dir: str | None = None, console: Console | None = None) -> str:
    """Every run for every noise mode and seed under ``output``; returns the markdown report (also ``report.md``)."""
    console = console or stderr_console()
    out = Path(output)
    start = time.perf_counter()
    for noise in NOISE_MODES:
        for seed in seeds:
            root = out / noise / f"seed{seed}"
            for name in RUNS:
                run_one(name, root, noise, seed, data_dir, console)
    text = report(out, seeds)
    (out / "report.md").write_text(text + "\n")
    write_json(out / "record.json", record(out, seeds))
    figure(out, seeds, out / "selection_precision_recall.png")
    curves(out, seeds, out / "test_accuracy_curves.png")
    console.print(f"noisy demo finished in {time.perf_counter() - start:.0f} s; {out / 'report.md'}")
    return text


def _result(path: Path) -> dict[str, Any]:
    return json.loads((path / "result.json").read_text())


def record(out: Path, seeds: tuple[int, ...]) -> dict[str, Any]:
    """Per noise mode, seed and run: test accuracy (and agreement with the teacher where the run has it); the
    shipped copy is docs/results/demo_noisy.json, which a test checks against rule 4."""
    def one(path: Path) -> dict[str, Any]:
        r = _result(path)
        return {"test_acc": r["test_acc"], "test_agreement": r.get("test_agreement")}
    return {"rule": "rule 4 (noisy labels)", "teacher": TEACHER, "ceiling": "ceiling",
            "modes": {noise: {str(s): {name: one(out / noise / f"seed{s}" / name) for name in RUNS} for s in seeds}
                      for noise in NOISE_MODES}}


def report(out: Path, seeds: tuple[int, ...]) -> str:
    """Markdown: per noise mode the teacher, the ceiling and each method's test accuracy (mean +- std, n) with PGR
    and agreement, each seed's error ratio against rule 4, the paired differences (Holm over the mode's
    comparisons, Bonferroni intervals), and the selection quality."""
    m = len(PAIRS)
    level = 1 - ALPHA / m
    lines = ["| noise (40%) | run | seeds | test acc (%) | PGR | agreement with teacher (%) |",
             "|---|---|---:|---:|---:|---:|"]
    pairs = [f"| noise (40%) | a - b, paired over seeds | seeds | difference (points) | {100 * level:.2f}% CI "
             f"(Bonferroni, {m} comparisons) | p (paired t) | p (Holm) |", "|---|---|---:|---:|---|---:|---:|"]
    sel = ["| noise (40%) | Sel-CL model | selected (%) | precision (%) | recall (%) | noise in the labels (%) |",
           "|---|---|---:|---:|---:|---:|"]
    ratios = []
    for noise in NOISE_MODES:
        res = {m_: {s: _result(out / noise / f"seed{s}" / m_) for s in seeds} for m_ in (TEACHER, "ceiling",
                                                                                      *(x for x, _ in METHODS))}
        acc = {m_: {s: 100 * r["test_acc"] for s, r in by_seed.items()} for m_, by_seed in res.items()}
        rows = [(TEACHER, TEACHER_LABEL),
                ("ceiling", "ceiling: cross-entropy on the clean labels"), *METHODS]
        for m_, label in rows:
            mean, sd, n = mean_std(acc[m_].values())
            pm, ps, _ = mean_std(pgr(acc[m_][s], acc[TEACHER][s], acc["ceiling"][s]) for s in seeds)
            agree = [r.get("test_agreement") for r in res[m_].values()]
            am, _, na = mean_std(agree)
            lines.append(f"| {noise} | {label} | {n} | {mean:.2f}" + (f" ± {sd:.2f}" if n > 1 else "")
                         + (" | |" if m_ == TEACHER else f" | {pm:.3f}" + (f" ± {ps:.3f} |" if n > 1 else " |"))
                         + (f" {100 * am:.2f} |" if na else " |"))
        r_seed = {s: error_ratio(acc[TEACHER][s] / 100, acc["ceiling"][s] / 100) for s in seeds}
        holds = all(weaker_than_student(acc[TEACHER][s] / 100, acc["ceiling"][s] / 100, NUM_CLASSES)
                    for s in seeds)
        ratios.append(f"{noise}: " + ", ".join(f"seed {s} {r:.2f}" for s, r in r_seed.items())
                      + f" (rule 4, r >= 1.10 and far from chance: {'holds on every seed' if holds else 'fails'})")
        diffs = [paired_difference(acc[a], acc[b]) for a, b in PAIRS]
        wide = [paired_difference(acc[a], acc[b], level) for a, b in PAIRS]
        for (a, b), d, w, ph in zip(PAIRS, diffs, wide, holm([d.p_value for d in diffs])):
            ci = f"[{w.ci_low:+.2f}, {w.ci_high:+.2f}]" if d.n > 1 else ""
            p = f"{d.p_value:.3f}" if d.n > 1 else ""
            pairs.append(f"| {noise} | {a} - {b} | {d.n} | {d.mean:+.2f} | {ci} | {p} | "
                         + (f"{ph:.3f} |" if d.n > 1 else " |"))
        for model in ("selcl_cnn", *((TEACHER,) if TEACHER.startswith("selcl_") else ())):  # the Sel-CL models
            rs = [_result(out / noise / f"seed{s}" / model) for s in seeds]
            vals = [(100 * r["selected"] / r["train_samples"], 100 * r["selection_precision"],
                     100 * r["selection_recall"], 100 * (r["noise_rate"] or 0)) for r in rs]
            cols = [mean_std(v) for v in zip(*vals)]
            sel.append(f"| {noise} | {model} | " + " | ".join(f"{m:.1f} ± {sd:.1f}" for m, sd, _ in cols) + " |")
    return "\n".join(["Test accuracy on the clean test set:", "", *lines, "",
                      "Error ratio r = err_teacher / err_ceiling per seed:", "", *(f"- {r}" for r in ratios), "",
                      *pairs, "",
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


def curves(out: Path, seeds: tuple[int, ...], path: Path) -> None:
    """Test accuracy per epoch (mean over seeds) of the ceiling and each method, one panel per noise mode; the
    Sel-CL+ runs start after the 8 epochs of Sel-CL they fine-tune, and the weak teacher is a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(NOISE_MODES), figsize=(10.0, 4.0), sharey=True)
    for ax, noise in zip(axes, NOISE_MODES):
        for name, label in (("ceiling", "ceiling: CE on the clean labels"), *METHODS):
            rows = [[json.loads(x)["test_acc"] for x in (out / noise / f"seed{s}" / name / "metrics.jsonl")
                     .read_text().splitlines()] for s in seeds]
            start = 0
            if name.startswith("selcl_plus"):
                start = len((out / noise / f"seed{seeds[0]}" / "selcl_cnn" / "metrics.jsonl").read_text().splitlines())
            vals = 100 * np.array(rows).mean(0)
            ax.plot(np.arange(start + 1, start + len(vals) + 1), vals, marker="o", ms=3, label=label)
        teacher = np.mean([100 * _result(out / noise / f"seed{s}" / TEACHER)["test_acc"] for s in seeds])
        ax.axhline(teacher, color="gray", ls="--", label=TEACHER_LABEL)
        ax.set_title(f"40% {noise}")
        ax.set_xlabel("epoch (Sel-CL+ after Sel-CL's)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"test accuracy (%), mean of {len(seeds)} seeds")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
