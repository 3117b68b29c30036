"""The Sel-CL configs feed every model upstream's normalization, not this project's CIFAR defaults.

Upstream's Sel-CL scripts (github.com/ggjy/vision_weak_to_strong noisy_labels_learning/CIFAR/train_Sel-CL.py and
noisy_labels_learning/CIFAR/train_Sel-CL_fine-tuning.py, ``main``) normalize train and test images alike with the
CIFAR-10 mean (0.4914, 0.4822, 0.4465) / std (0.2023, 0.1994, 0.2010) and the CIFAR-100 mean (0.5071, 0.4867,
0.4408) / std (0.2675, 0.2565, 0.2761); this project's dataset defaults differ (CIFAR-10 std (0.2470, 0.2435,
0.2616), CIFAR-100 (0.5071, 0.4865, 0.4409) / (0.2673, 0.2564, 0.2762)). On generated CIFAR pickles, the tensors
the models of configs/noisy/sel_cl/ receive are checked against upstream's numbers: Sel-CL pre-training (its
test/selection input and its augmented views), the Sel-CL+ model's training and test batches, and the PR18
Sel-CL teacher fed online (its run records the normalization it was trained with).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.student.accuracy import fixed_view_stream
from pipeline.config.schema import load_config
from pipeline.engine.runtime import stderr_console
from pipeline.scenarios.sel_cl.pretrain import SelCLTrainer
from pipeline.train_student import Trainer
from tests.cli_run import ok
from tests.formats import dump_py2

ROOT = Path(__file__).resolve().parents[2]
CFG = ROOT / "configs" / "noisy" / "sel_cl"
UPSTREAM = {  # noisy_labels_learning/CIFAR/train_Sel-CL.py and train_Sel-CL_fine-tuning.py, main
    "cifar10": (np.array([0.4914, 0.4822, 0.4465]), np.array([0.2023, 0.1994, 0.2010])),
    "cifar100": (np.array([0.5071, 0.4867, 0.4408]), np.array([0.2675, 0.2565, 0.2761]))}
N_TRAIN, N_TEST = 200, 50
TINY = ["run.device=cpu", "model.name=fmnist_cnn", "model.kwargs={width: 4}", "optim.epochs=1", "optim.batch_size=40",
        "optim.eval_batch_size=20"]
TINY_SELCL = TINY + ["sel_cl.k=5", "sel_cl.queue_per_class=10", "sel_cl.uns_queue_size=200", "sel_cl.lr_warmup_epochs=1",
                     "sel_cl.select_batch_size=100", "optim.milestones=[1]"]


def _write_cifar(root: Path, dataset: str, black_train: bool, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` or ``root/cifar-100-python`` with random test pixels (and train pixels unless black)."""
    rng = np.random.default_rng(seed)
    classes = 10 if dataset == "cifar10" else 100
    train = np.zeros((N_TRAIN, 3072), np.uint8) if black_train else rng.integers(0, 256, (N_TRAIN, 3072), dtype=np.uint8)
    test = rng.integers(0, 256, (N_TEST, 3072), dtype=np.uint8)
    if dataset == "cifar10":
        d = root / "cifar-10-batches-py"
        d.mkdir(parents=True)
        parts = np.array_split(np.arange(N_TRAIN), 5)
        for i, rows in enumerate(parts, 1):
            dump_py2({b"batch_label": b"training batch", b"labels": [int(r) % 10 for r in rows], b"data": train[rows],
                      b"filenames": [b"x.png"] * len(rows)}, d / f"data_batch_{i}")
        dump_py2({b"batch_label": b"testing batch", b"labels": [i % 10 for i in range(N_TEST)], b"data": test,
                  b"filenames": [b"t.png"] * N_TEST}, d / "test_batch")
        dump_py2({b"num_cases_per_batch": N_TRAIN // 5, b"label_names": [b"c%d" % i for i in range(10)],
                  b"num_vis": 3072}, d / "batches.meta")
        return root
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    for split, data in (("train", train), ("test", test)):
        fine = np.arange(len(data)) % classes
        dump_py2({b"filenames": [b"x.png"] * len(data), b"batch_label": b"batch", b"data": data,
                  b"fine_labels": [int(f) for f in fine], b"coarse_labels": [int(f) // 5 for f in fine]}, d / split)
    dump_py2({b"fine_label_names": [b"fine%02d" % i for i in range(100)],
              b"coarse_label_names": [b"coarse%02d" % i for i in range(20)]}, d / "meta")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One data root with random images, one whose training images are black (CIFAR-10 and CIFAR-100 in each)."""
    tmp = tmp_path_factory.mktemp("selcl_norm")
    roots = {"random": tmp / "random", "black_train": tmp / "black_train"}
    for kind, root in roots.items():
        for ds in ("cifar10", "cifar100"):
            _write_cifar(root, ds, black_train=kind == "black_train")
    return roots


def _expected(images: np.ndarray, dataset: str) -> torch.Tensor:
    """uint8 ``[n, H, W, C]`` -> ``[n, C, H, W]`` normalized as upstream's ``ToTensor()`` + ``Normalize(mean, std)``."""
    mean, std = UPSTREAM[dataset]
    x = images.astype(np.float64).transpose(0, 3, 1, 2) / 255.0
    return torch.from_numpy((x - mean[:, None, None]) / std[:, None, None]).float()


def _assert_pixels_of(x: torch.Tensor, images: np.ndarray, dataset: str) -> None:
    """Every value of ``x[i]`` is ``(p / 255 - mean_c) / std_c`` for a pixel value ``p`` of ``images[i]`` or 0 (padding).

    Holds for crops, flips and zero padding of the image, normalized with upstream's values; any other
    normalization leaves ``255 * (x * std + mean)`` off the integers.
    """
    mean, std = UPSTREAM[dataset]
    u = 255.0 * (x.double().cpu().numpy() * std[None, :, None, None] + mean[None, :, None, None])
    assert np.abs(u - np.rint(u)).max() < 2e-3
    values = np.rint(u).astype(np.int64)
    for i in range(len(x)):
        for c in range(x.shape[1]):
            allowed = set(np.unique(images[i, :, :, c]).tolist()) | {0}
            assert set(np.unique(values[i, c]).tolist()) <= allowed


def _config(name: str, overrides: list[str]):  # noqa: ANN202
    return load_config(CFG / name, overrides)


def _first(batches):  # noqa: ANN001, ANN202
    """The first batch of an epoch's stream, the stream closed (its prefetch thread stopped)."""
    it = iter(batches)
    try:
        return next(it)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


@pytest.mark.parametrize("name", ["cifar10_sym20_pr18_selcl.yaml", "cifar100_sym20_pr18_selcl.yaml"])
def test_sel_cl_pretraining_feeds_upstreams_normalization(data: dict[str, Path], tmp_path: Path, name: str) -> None:
    """The test/selection input (upstream's test transform) and the two augmented views of a black image."""
    dataset = name.split("_")[0]
    cfg = _config(name, TINY_SELCL + [f"data.data_dir={data['black_train']}", f"run.output={tmp_path / 'run'}"])
    trainer = SelCLTrainer(cfg, stderr_console())
    trainer.prepare()
    seen: list[torch.Tensor] = []
    hook = trainer.net.backbone.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        trainer.evaluate()
    finally:
        hook.remove()
    got = torch.cat(seen)
    torch.testing.assert_close(got, _expected(trainer.test_src.read(np.arange(N_TEST)), dataset), atol=1e-5, rtol=0)
    batch = _first(trainer.epoch(0, 0).batches)  # epoch 0: the unsupervised warm-up, two "complex" views
    mean, std = UPSTREAM[dataset]
    black = torch.from_numpy(-mean / std).float().view(1, 3, 1, 1)
    for view in batch.views:  # crops, flips, colour jitter and greying keep a black image black
        torch.testing.assert_close(view, black.expand_as(view), atol=1e-5, rtol=0)


def test_sel_cl_plus_model_gets_upstreams_normalization(data: dict[str, Path], tmp_path: Path) -> None:
    """A Sel-CL+ model (train-teacher) on CIFAR-100: its test batches and its pad-crop + flip training batches."""
    cfg = _config("cifar100_sym20_pr18_selcl_plus.yaml",
                  TINY + [f"data.data_dir={data['random']}", "noisy.selection=null", "model.pretrained=null",
                          f"run.output={tmp_path / 'plus'}"])
    trainer = Trainer(cfg, "teacher")
    trainer.prepare()
    try:
        _check_student_batches(trainer, "cifar100")
    finally:
        trainer.close()


def test_weak_to_strong_student_and_its_online_sel_cl_teacher_get_upstreams_normalization(
        data: dict[str, Path], tmp_path: Path) -> None:
    """CIFAR-10 AdaptConf: the PR18 Sel-CL run records upstream's values, and teacher and student see the same input."""
    root = data["random"]
    run = tmp_path / "pr18_selcl"
    ok(["sel-cl", str(CFG / "cifar10_sym20_pr18_selcl.yaml"),
        *[a for o in TINY_SELCL + [f"data.data_dir={root}", f"run.output={run}"] for a in ("--set", o)]])
    meta = json.loads((run / "model.json").read_text())
    mean, std = UPSTREAM["cifar10"]
    np.testing.assert_allclose(meta["mean"], mean, rtol=0, atol=1e-7)
    np.testing.assert_allclose(meta["std"], std, rtol=0, atol=1e-7)
    cfg = _config("cifar10_sym20_pr34_selcl_plus_adaptconf.yaml",
                  TINY + [f"data.data_dir={root}", f"noisy.selection={run}", f"model.pretrained={run / 'model.safetensors'}",
                          f"teacher.checkpoint={run}", "teacher.mode=online", f"run.output={tmp_path / 'kd'}"])
    trainer = Trainer(cfg, "student")
    trainer.prepare()
    try:
        batch = _check_student_batches(trainer, "cifar10")
        assert len(batch.inputs) == 2  # upstream feeds the teacher the student's (mixed) batch
        torch.testing.assert_close(batch.inputs[1], batch.inputs[0], atol=0, rtol=0)
    finally:
        trainer.close()


def _check_student_batches(trainer: Trainer, dataset: str):  # noqa: ANN202
    """The trainer's test batches equal upstream's test transform; its first training batch is upstream-normalized."""
    got = torch.cat([b.inputs[0].cpu() for b in fixed_view_stream(trainer.test_src, trainer.eval_replayer, trainer.policy)])
    torch.testing.assert_close(got, _expected(trainer.test_src.read(np.arange(N_TEST)), dataset), atol=1e-5, rtol=0)
    batch = _first(trainer.epoch(0, 0).batches)
    _assert_pixels_of(batch.inputs[0], trainer.train_src.read(batch.indices), dataset)
    return batch
