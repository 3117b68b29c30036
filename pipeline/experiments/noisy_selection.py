"""``w2s select-settings --scenario noisy``: rule 4's choice of the noisy-label weak teacher (docs/demo.md, as amended).

Teachers and ceilings only, never a student: for every noise mode and seed 0-4, the ceiling (the demo's
``ce`` run on the clean labels, made in the demo's folder and reused by it) and every candidate teacher:
``fmnist_mlp`` with ``hidden`` 64, 16 and 4 pre-trained with Sel-CL on ``selcl_mlp.yaml``'s recipe, then
``fmnist_linear`` trained with cross-entropy on the noisy labels (``teacher_linear.yaml``). The
chosen teacher is the first candidate (the strongest) whose error is at least 1.10 times the ceiling's
and far from chance on all (mode, seed) pairs; one whose Sel-CL training stops with an error on some
pair (its kNN selection keeps no example, say) does not qualify. Finished runs are skipped when the command runs again;
``selection.json`` and ``selection.md`` record every number and the choice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from pipeline.config.schema import load_config
from pipeline.engine.checkpoint import write_json
from pipeline.engine.runtime import stderr_console
from pipeline.experiments.noisy_demo import CONFIG_DIR, NOISE_MODES, NUM_CLASSES, run_one
from pipeline.experiments.regimes import SEEDS, error_ratio, weaker_than_student
from pipeline.experiments.runs import finished_with, load_run

HIDDEN = (64, 16, 4)  # fmnist_mlp's hidden width, strongest first (64: the teacher of the first 5-seed table)
CANDIDATES = (*(str(h) for h in HIDDEN), "linear")  # the linear teacher: rule 4's second amendment


def select_noisy_teacher(output: str | Path, demo: str | Path = "runs/noisy_demo", seeds: tuple[int, ...] = SEEDS,
                         data_dir: str | None = None, console: Console | None = None) -> dict[str, Any]:
    """Run the selection under ``output`` (ceilings under ``demo``); returns what ``selection.json`` records."""
    from pipeline.scenarios.sel_cl.pretrain import EmptySelection, pretrain
    from pipeline.train_student import train

    console = console or stderr_console()
    out, demo = Path(output), Path(demo)
    candidates: dict[str, Any] = {}
    for name in CANDIDATES:
        pairs: dict[str, dict[str, Any]] = {}
        for noise in NOISE_MODES:
            for seed in seeds:
                root = demo / noise / f"seed{seed}"
                run_one("ceiling", root, noise, seed, data_dir, console)
                common = [f"data.noise_mode={noise}", f"run.seed={seed}", *([f"data.data_dir={data_dir}"] if data_dir else [])]
                if name == "linear":
                    run_dir = out / noise / f"seed{seed}" / "teacher_linear"
                    cfg = load_config(CONFIG_DIR / "teacher_linear.yaml", common + [f"run.output={run_dir}"])
                else:
                    run_dir = out / noise / f"seed{seed}" / f"selcl_mlp_h{name}"
                    cfg = load_config(CONFIG_DIR / "selcl_mlp.yaml",
                                      common + [f"model.kwargs={{hidden: {name}}}", f"run.output={run_dir}"])
                ceiling = load_run(root / "ceiling").test_acc
                try:
                    if not finished_with(run_dir, cfg.to_dict()):
                        console.rule(f"{noise} seed {seed}: teacher {_label(name)}")
                        if name == "linear":
                            train(cfg, role="teacher", resume=(run_dir / "checkpoints").exists(), console=console)
                        else:
                            pretrain(cfg, resume=(run_dir / "checkpoints").exists(), console=console)
                except EmptySelection as exc:  # a teacher that cannot be trained on some seed is no teacher for the table
                    console.print(f"{noise} seed {seed}, {_label(name)}: {exc}")
                    pairs[f"{noise}/seed{seed}"] = {"teacher_acc": None, "ceiling_acc": ceiling, "ratio": None,
                                                    "holds": False, "error": str(exc)}
                    continue
                teacher = load_run(run_dir).test_acc
                pairs[f"{noise}/seed{seed}"] = {"teacher_acc": teacher, "ceiling_acc": ceiling,
                                                "ratio": error_ratio(teacher, ceiling),
                                                "holds": weaker_than_student(teacher, ceiling, NUM_CLASSES)}
        candidates[name] = {"pairs": pairs, "qualifies": all(p["holds"] for p in pairs.values())}
        if candidates[name]["qualifies"]:
            break  # in the rule's order: the later candidates are not needed
    chosen = next((n for n, c in candidates.items() if c["qualifies"]), None)
    record = {"candidates": candidates, "chosen": chosen, "seeds": list(seeds)}
    write_json(out / "selection.json", record)
    (out / "selection.md").write_text(selection_table(record) + "\n")
    print(selection_table(record))
    return record


def _label(name: str) -> str:
    return "`fmnist_linear`, cross-entropy" if name == "linear" else f"`fmnist_mlp` hidden {name}, Sel-CL"


def selection_table(record: dict[str, Any]) -> str:
    """The noisy-label selection as markdown: each candidate's r per (mode, seed) and whether rule 4 holds."""
    keys = list(next(iter(record["candidates"].values()))["pairs"])
    lines = ["| teacher | " + " | ".join(f"r {k}" for k in keys) + " | rule 4 on every seed |",
             "|---|" + "---:|" * len(keys) + "---|"]
    for name in sorted(record["candidates"], key=CANDIDATES.index):
        c = record["candidates"][name]
        mark = " **chosen**" if record["chosen"] == name else ""
        cells = ["training stopped" if c["pairs"][k]["ratio"] is None else
                 f"{c['pairs'][k]['ratio']:.2f}" + ("" if c["pairs"][k]["holds"] else " (fails)") for k in keys]
        lines.append(f"| {_label(name)}{mark} | " + " | ".join(cells) + f" | {'holds' if c['qualifies'] else 'fails'} |")
    if record["chosen"] is None:
        lines += ["", "no candidate qualifies: the noisy-label setting is not reached with these candidates"]
    return "\n".join(lines)
