"""Every noisy-label stage of the paper's recipe, end to end on generated CIFAR-100 pickles.

The configs in configs/noisy/sel_cl/ (CIFAR-100, symmetric 20%) with their sizes shrunk: Sel-CL
pre-training of the teacher and the student, Sel-CL+ fine-tuning, and its AdaptConf variant with the
teacher online and from a store written for the selected examples.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.cli_run import ok
from tests.formats import write_cifar100

ROOT = Path(__file__).resolve().parents[2]
CFG = ROOT / "configs" / "noisy" / "sel_cl"
TINY = ["run.device=cpu", "model.name=fmnist_cnn", "model.kwargs={width: 4}", "optim.epochs=2", "optim.batch_size=40",
        "optim.eval_batch_size=100"]
TINY_SELCL = TINY + ["sel_cl.k=5", "sel_cl.queue_per_class=2", "sel_cl.uns_queue_size=200", "sel_cl.lr_warmup_epochs=1",
                     "sel_cl.select_batch_size=100", "optim.milestones=[1]"]


def _args(config: str, overrides: list[str]) -> list[str]:
    out = [str(CFG / config)]
    for o in overrides:
        out += ["--set", o]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    tmp = tmp_path_factory.mktemp("selcl_cifar")
    data = [f"data.data_dir={write_cifar100(tmp / 'cifar', n_train=400, n_test=100)}"]
    for net in ("pr18", "pr34"):
        res = ok(["sel-cl", *_args(f"cifar100_sym20_{net}_selcl.yaml",
                                   data + TINY_SELCL + [f"run.output={tmp / (net + '_selcl')}"])])
        assert res["role"] == "sel_cl" and 0 < res["selected"] <= 400
    return tmp, data


def _fine_tuning(tmp: Path, data: list[str], name: str) -> list[str]:
    return data + TINY + [f"model.pretrained={tmp / 'pr34_selcl' / 'model.safetensors'}",
                          f"noisy.selection={tmp / 'pr34_selcl'}", "noisy.label_correction_from=1",
                          f"run.output={tmp / name}"]


def test_sel_cl_plus_fine_tunes_on_the_selected_examples(runs: tuple[Path, list[str]]) -> None:
    tmp, data = runs
    selected = int(np.load(tmp / "pr34_selcl" / "selection.npz")["mask"].sum())
    res = ok(["train-teacher", *_args("cifar100_sym20_pr34_selcl_plus.yaml", _fine_tuning(tmp, data, "plus"))])
    assert res["train_samples"] == selected and res["epochs"] == 2


@pytest.mark.parametrize("mode", ["online", "store"])
def test_weak_to_strong_fine_tuning_from_the_sel_cl_teacher(runs: tuple[Path, list[str]], mode: str) -> None:
    tmp, data = runs
    over = _fine_tuning(tmp, data, f"kd_{mode}") + [f"teacher.checkpoint={tmp / 'pr18_selcl'}", f"teacher.mode={mode}"]
    config = "cifar100_sym20_pr34_selcl_plus_adaptconf.yaml"
    if mode == "store":
        over += [f"teacher.store={tmp / 'store'}", "teacher.chunk_samples=64"]
        ok(["infer-teacher", *_args(config, over)])
    res = ok(["train-student", *_args(config, over)])
    assert res["objective"] == "adaptconf" and res["teacher_mode"] == mode and res["test_agreement"] is not None
