"""Where a paper-regime epoch's time goes: the per-epoch test evaluation behind the demo's curves against training.

The paper regime's ceiling (``configs/fmnist/paper/ceiling_cnn.yaml``: 4,500 training images after rule 6's
hold-out, 10,000 test images, 500 held out) trains ``--epochs`` epochs in a temporary folder; its
``metrics.jsonl`` gives each epoch's training time (``epoch_s``, the steps alone). The same run's model is then
evaluated the way the run loop does at every epoch end (``Trainer.evaluate``: the held-out part and the test
set's fixed view), ``--repeats`` times, and the two parts of that evaluation are timed alone: the DALI replay of
the test set's fixed view, and the model's forward pass over the replayed batches. Reported: seconds per
epoch of each, and evaluation / training, all measured in this one run.

    python bench/epoch_eval_cost.py [--epochs 3] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from pipeline.config.schema import load_config
from pipeline.student.accuracy import fixed_view_stream
from pipeline.train_student import Trainer, train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        over = [f"run.output={tmp}/ceiling", "data.val_fraction=0.1", f"optim.epochs={args.epochs}"]
        cfg = load_config(ROOT / "configs" / "fmnist" / "paper" / "ceiling_cnn.yaml", over)
        train(cfg, role="teacher")
        rows = [json.loads(x) for x in (Path(tmp) / "ceiling" / "metrics.jsonl").read_text().splitlines()]
        train_s = sum(r["epoch_s"] for r in rows[1:]) / max(len(rows) - 1, 1)  # the first epoch warms up
        trainer = Trainer(cfg, "teacher")
        trainer.prepare()
        trainer.evaluate()  # warm-up
        evaluate_s = replay_s = forward_s = 0.0
        for _ in range(args.repeats):
            start = time.perf_counter()
            trainer.evaluate()
            evaluate_s += time.perf_counter() - start
            start = time.perf_counter()
            batches = [b.inputs[0].clone() for b in fixed_view_stream(trainer.test_src, trainer.eval_replayer,
                                                                      trainer.policy)]
            replay_s += time.perf_counter() - start
            trainer.model.eval()
            start = time.perf_counter()
            with torch.no_grad():
                for x in batches:
                    trainer.model(x.contiguous(memory_format=trainer.memory_format)).argmax(1)
            forward_s += time.perf_counter() - start
    n = args.repeats
    print(f"training, per epoch (epochs 2-{args.epochs}): {train_s:.2f} s")
    print(f"evaluation, per epoch (held-out part + {len(trainer.test_src)} test images): {evaluate_s / n:.2f} s")
    print(f"  of which the test set's DALI replay alone: {replay_s / n:.2f} s; the model's forward alone: "
          f"{forward_s / n:.2f} s")
    print(f"evaluation / training: {evaluate_s / n / train_s:.2f}")


if __name__ == "__main__":
    main()
