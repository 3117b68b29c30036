"""The weak-supervision stopping rule: ``teacher.label_val`` scores the held-out images against the teacher."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.schema import load_config
from pipeline.student.accuracy import predictions
from pipeline.train_student import Trainer
from tests.cli_run import fails, ok
from tests.helpers import DROP, trained_teacher

STUDENT = ["objective.name=kd", "teacher.mode=online", "data.val_fraction=0.25", "teacher.label_val=true",
           "optim.epochs=2"]


@pytest.fixture(scope="module")
def config(fmnist_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("weak_stopping")
    return trained_teacher(out, fmnist_dir, data={"limit": 600, "test_limit": 200}, views={"pad": DROP, "seed": DROP},
                           optim={"batch_size": 50, "eval_batch_size": 200})


def test_val_acc_is_the_agreement_with_the_teachers_predictions(config, tmp_path):
    cfg = load_config(config, STUDENT + [f"run.output={tmp_path / 'run'}"])
    trainer = Trainer(cfg, "student")
    trainer.prepare()
    try:
        row = trainer.evaluate()
        student = predictions(trainer.model, trainer.val_src, trainer.eval_replayer, trainer.policy)
        assert row["val_acc"] == pytest.approx(float(np.mean(student == trainer.val_teacher_pred)))
        assert not np.array_equal(trainer.val_teacher_pred, trainer.val_src.labels)  # a weak teacher errs somewhere
    finally:
        trainer.close()


def test_the_run_records_the_epoch_the_teacher_labels_select(config, tmp_path):
    args = ["train-student", str(config), *(x for kv in STUDENT for x in ("--set", kv)),
            "--set", f"run.output={tmp_path / 'run'}"]
    ok(args)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["val_labels"] == "teacher" and result["val_samples"] == 150  # a quarter of the 600 training images
    assert {"best_epoch", "best_val_acc", "test_acc_at_best"} <= result.keys()


def test_teacher_labels_need_a_held_out_part(config, tmp_path):
    fails(["train-student", str(config), "--set", "objective.name=kd", "--set", "teacher.mode=online",
           "--set", "teacher.label_val=true", "--set", f"run.output={tmp_path / 'r'}"],
          "teacher.label_val scores a held-out part of the training images against the teacher's predictions")
