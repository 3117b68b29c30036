"""The ImageNet recipe feeds its models the tensors of the paper's train.py (timm 0.6.12).

Upstream resolves one data config from the student (``resolve_data_config(vars(args), model=model)``:
vit_base_patch16_224's mean = std = 0.5, bicubic, crop_pct 0.9) and feeds that batch to the teacher
too; RandAugment fills with ``round(255 * 0.5)`` = 128; evaluation is resize 248 + centre crop 224,
bicubic; training resizes with ``--train-interpolation random`` (bilinear or bicubic per image).
Each test checks what the models receive, on generated image folders (tiny ViT and teacher, 32 px).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from pipeline.student.accuracy import fixed_view_replayer, fixed_view_stream
from pipeline.config.schema import load_config
from pipeline.infer_teacher import infer
from pipeline.data.loader import ViewReplayer
from pipeline.data.sources.base import ArraySource
from pipeline.data.sources.cifar import CIFAR100_MEAN, CIFAR100_STD
from pipeline.data.sources.image_folder import IMAGENET_MEAN, IMAGENET_STD, load_image_folder
from pipeline.student.specs import student_augment, student_spec, view_policy
from pipeline.data.timm_augment import fill_color
from pipeline.train_student import Trainer
from pipeline.data.views import pixel_boxes, sample_params
from store.soft_label_store import SoftLabelStore, StoreError

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/imagenet/vitb_mae_res50_adaptconf.yaml"
CLASSES = ("n01440764", "n01443537")


def _textured(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """A photo-like uint8 RGB image: random ``cell``-pixel blocks upscaled with PIL's bicubic."""
    small = rng.integers(0, 256, size=(max(2, h // cell), max(2, w // cell), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def _folder(root: Path, make: Any, per_split: dict[str, int]) -> Path:
    """``root/<split>/<class>/*.png`` with ``make(rng)`` images (PNG: the pixels are exactly known)."""
    rng = np.random.default_rng(0)
    for split, n in per_split.items():
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(make(rng)).save(root / split / c / f"{c}_{i}.png")
    return root


@pytest.fixture(scope="module")
def solid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images of one random color each, of random sizes: any view of one is that color exactly."""
    def make(rng: np.random.Generator) -> np.ndarray:
        h, w = rng.integers(36, 72, size=2)
        return np.broadcast_to(rng.integers(0, 256, size=3, dtype=np.uint8), (h, w, 3)).copy()

    return _folder(tmp_path_factory.mktemp("solid"), make, {"train": 6, "val": 2})


@pytest.fixture(scope="module")
def textured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def make(rng: np.random.Generator) -> np.ndarray:
        h, w = rng.integers(40, 80, size=2)
        return _textured(rng, int(h), int(w), 4)

    return _folder(tmp_path_factory.mktemp("textured"), make, {"train": 6, "val": 2})


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A timm-style checkpoint of a tiny teacher (the recipe's is timm's resnet50 .pth)."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.manual_seed(0)
    torch.save({"state_dict": timm.create_model("cifar_resnet8", num_classes=len(CLASSES)).state_dict()}, path)
    return path


def _tiny(root: Path, tmp: Path, teacher: Path, mode: str) -> list[str]:
    """The recipe on tiny data: 32 px, a tiny ViT, no MAE weights; the student's own augmentations off,
    so the student's tensor is the replayed view (RandAugment has its own test below)."""
    return [f"data.data_dir={root}", "data.image_size=32", "model.name=vit_tiny_patch16_224",
            "model.kwargs={img_size: 32, patch_size: 8}", "model.pretrained=null", "teacher.model=cifar_resnet8",
            f"teacher.checkpoint={teacher}", f"teacher.mode={mode}", f"teacher.store={tmp / 'store'}",
            "teacher.chunk_samples=8", "views.num_views=2", "augment.policy=none", "augment.mixup=0",
            "augment.cutmix=0", "augment.random_erasing=0", "run.device=cpu", "run.amp=none", "optim.epochs=2",
            "optim.batch_per_process=6", "optim.eval_batch_size=4", f"run.output={tmp / 'run'}"]


def _record(module: torch.nn.Module, into: list[torch.Tensor]) -> None:
    module.register_forward_pre_hook(lambda _, args: into.append(args[0].detach().clone()))


def _pixels(x: torch.Tensor, mean: float = 0.5, std: float = 0.5) -> torch.Tensor:
    """A normalized batch back on the 0..255 scale."""
    return (x * std + mean) * 255


def _colors(src: Any, indices: np.ndarray) -> torch.Tensor:
    """The color of each solid image ``[n, 3, 1, 1]``, read back with PIL."""
    rgb = [np.asarray(Image.open(src.paths[i]))[0, 0] for i in indices]
    return torch.tensor(np.stack(rgb), dtype=torch.float32)[:, :, None, None]


def test_student_and_teacher_get_the_same_tensors_normalized_with_half(solid, teacher_checkpoint, tmp_path):
    """A training step with the online teacher: the student and the teacher receive one tensor,
    ``(x * 0.5 + 0.5) * 255`` gives back each image's pixels; evaluation likewise."""
    trainer = Trainer(load_config(CONFIG, _tiny(solid, tmp_path, teacher_checkpoint, "online")), "student")
    trainer.prepare()
    student, teacher = [], []
    _record(trainer.model, student)
    _record(trainer.teacher.model, teacher)
    batches = iter(trainer.epoch(0, 0).batches)
    batch = next(batches)
    trainer.train_step(batch, 0, 0)
    assert len(student) == len(teacher) == 1 and torch.equal(student[0], teacher[0])
    expected = _colors(trainer.train_src, batch.indices).expand_as(student[0])
    torch.testing.assert_close(_pixels(student[0]), expected, atol=1e-3, rtol=0)
    # the teacher's own normalization (timm's pretrained_cfg: the ImageNet mean / std) is not what it got
    assert not torch.allclose(_pixels(teacher[0], 0.485, 0.229), expected, atol=1.0)
    batches.close()
    student.clear()
    trainer.evaluate()
    seen = torch.cat(student)
    expected = _colors(trainer.test_src, np.arange(len(trainer.test_src))).expand_as(seen)
    torch.testing.assert_close(_pixels(seen), expected, atol=1e-3, rtol=0)


def test_stage1_teacher_saw_the_tensors_the_student_replays(textured, teacher_checkpoint, tmp_path):
    """The store's logits are the teacher's on the very tensors the student trains on (views 1 and 2,
    random interpolation) and evaluates on (the fixed view, bicubic), at mean = std = 0.5."""
    overrides = _tiny(textured, tmp_path, teacher_checkpoint, "store")
    infer(load_config(CONFIG, overrides))
    store = SoftLabelStore.open(tmp_path / "store")
    assert store.attrs["teacher"]["mean"] == [0.5] * 3 and store.attrs["teacher"]["std"] == [0.5] * 3
    assert store.attrs["teacher"]["input_size"] == 32
    trainer = Trainer(load_config(CONFIG, overrides), "student")
    trainer.prepare()
    teacher, bicubic = trainer.teacher.model, []
    with torch.no_grad():
        for epoch in (0, 1):
            params_of, _ = trainer.data.epoch_sources(epoch)
            for b in trainer.epoch(epoch, 0).batches:
                torch.testing.assert_close(teacher(b.inputs[0]), b.teacher_logits.float(), atol=2e-2, rtol=2e-3)
                own = (_pixels(b.inputs[0]) / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) / \
                    torch.tensor(IMAGENET_STD)[:, None, None]
                assert (teacher(own) - b.teacher_logits.float()).abs().max() > 0.1
                bicubic.append(params_of(b.indices)[:, 5])
        src, spec = trainer.train_src, trainer.student_spec
        rep = fixed_view_replayer(src, spec, 6, trainer.policy, "cpu", 1)
        for b in fixed_view_stream(src, rep, trainer.policy):
            stored = torch.from_numpy(store.read_view(0, b.indices)[0]).float()
            torch.testing.assert_close(teacher(b.inputs[0]), stored, atol=2e-2, rtol=2e-3)
    flags = np.concatenate(bicubic)
    assert len(flags) == 24 and 0 < flags.sum() < 24  # both interpolations among the replayed views
    with pytest.raises(StoreError, match="teacher.mean"):  # a teacher fed its own normalization: another store
        Trainer(load_config(CONFIG, [*overrides, "teacher.input=own"]), "student").prepare()


def test_rand_augment_fills_with_128():
    """timm's fill for the resolved mean 0.5 is 128 (and round(255 * mean) for CIFAR's): the geometric
    ops of the recipe's RandAugment leave 128 where they move black images off the corner."""
    for mean, std in (((0.5,) * 3, (0.5,) * 3), (CIFAR100_MEAN, CIFAR100_STD)):
        tf = create_transform(32, is_training=True, auto_augment="rand-m9-mstd0.5-inc1", mean=mean, std=std)
        ra = next(t for t in tf.transforms if type(t).__name__ == "RandAugment")
        assert fill_color(mean) == ra.ops[0].hparams["img_mean"]
    cfg = load_config(CONFIG, ["data.image_size=32"])
    black = ArraySource("black", "train", np.zeros((64, 32, 32, 3), np.uint8), np.zeros(64, np.int64), 2,
                        IMAGENET_MEAN, IMAGENET_STD)
    spec = student_spec(cfg, black)
    assert fill_color(spec.mean) == (128, 128, 128)
    params = sample_params(view_policy(cfg), np.arange(64), 0, (32, 32))
    out = ViewReplayer((32, 32), [spec], 64, None, augment=student_augment(cfg), seed=1)(black.images, params)[0]
    corners = [tuple(c) for c in _pixels(out[:, :, 0, 0]).round().int().tolist()]
    assert (128, 128, 128) in corners
    assert fill_color(IMAGENET_MEAN) not in corners


def _reference(img: np.ndarray, anchor: np.ndarray, shape: np.ndarray, out: int, method: int) -> np.ndarray:
    y, x = anchor.astype(int)
    h, w = shape.astype(int)
    return np.asarray(Image.fromarray(img).crop((x, y, x + w, y + h)).resize((out, out), method)).astype(np.float32)


def test_eval_view_is_timms_resize_248_centre_crop_224_bicubic(tmp_path):
    """At 224 px: timm's eval transform of the ViT's data config is Resize(248, bicubic) + CenterCrop(224);
    the recipe's fixed view gives its tensors (exactly for a 248 px image; for a smooth 300 x 400 one within
    1.5 on average in 0..255, as the box is cut at whole source pixels; crop_pct 0.875 is 5 off) and resizes
    with bicubic (closer to PIL's bicubic than to its bilinear)."""
    data = resolve_data_config({}, model=timm.create_model("vit_base_patch16_224"))
    tf = create_transform(**data)
    resize, crop = tf.transforms[0], tf.transforms[1]
    assert (resize.size, str(resize.interpolation.value), crop.size) == (248, "bicubic", (224, 224))
    rng = np.random.default_rng(1)
    images = {"exact": _textured(rng, 248, 248, 1), "smooth": _textured(rng, 300, 400, 50),
              "sharp": _textured(rng, 320, 336, 2)}
    for name, img in images.items():
        (tmp_path / "val" / name).mkdir(parents=True)
        Image.fromarray(img).save(tmp_path / "val" / name / "a.png")
    cfg = load_config(CONFIG)
    src = load_image_folder(tmp_path, "val", output_size=cfg.data.image_size)
    policy, spec = view_policy(cfg), student_spec(cfg, src)
    b = next(fixed_view_stream(src, fixed_view_replayer(src, spec, 3, policy, "cpu", 1), policy))
    params = sample_params(policy, b.indices, 0, src.sizes_of(b.indices))
    assert (params[:, 5] == 1).all()  # bicubic
    anchor, shape, _ = pixel_boxes(params, src.sizes_of(b.indices))
    for i, name in zip(b.indices, src.class_names):
        img = images[name]
        timm_x = tf(Image.fromarray(img))
        if name == "exact":
            assert shape[i].tolist() == [224, 224] and anchor[i].tolist() == [12, 12]
            torch.testing.assert_close(b.inputs[0][i], timm_x, atol=1e-6, rtol=0)
        elif name == "smooth":
            assert (_pixels(b.inputs[0][i]) - _pixels(timm_x)).abs().mean() < 1.5
        else:
            got = _pixels(b.inputs[0][i]).numpy().transpose(1, 2, 0)[1:-1, 1:-1]
            cubic = np.abs(got - _reference(img, anchor[i], shape[i], 224, Image.BICUBIC)[1:-1, 1:-1]).mean()
            linear = np.abs(got - _reference(img, anchor[i], shape[i], 224, Image.BILINEAR)[1:-1, 1:-1]).mean()
            assert cubic < 0.5 and linear > 2 * cubic, (cubic, linear)


def test_train_interpolation_is_drawn_per_image():
    """``--train-interpolation random``: each augmented view is resized with its own draw, bilinear or
    bicubic (PIL's, which timm's RandomResizedCropAndInterpolation picks uniformly per image)."""
    cfg = load_config(CONFIG)
    rng = np.random.default_rng(2)
    images = np.stack([_textured(rng, 64, 64, 2) for _ in range(32)])
    src = ArraySource("tex", "train", images, np.zeros(32, np.int64), 2, IMAGENET_MEAN, IMAGENET_STD)
    policy, spec = view_policy(cfg), student_spec(cfg, src)  # 64 px views of 64 px images
    params = sample_params(policy, np.arange(32), 1, (64, 64))
    np.testing.assert_array_equal(params, sample_params(policy, np.arange(32), 1, (64, 64)))
    params[:, 4] = 0  # no flip, to compare with PIL's crop + resize
    flags = params[:, 5].astype(bool)
    assert 0 < flags.sum() < 32
    out = ViewReplayer((64, 64), [spec], 32, None)(images, params)[0]
    anchor, shape, _ = pixel_boxes(params, (64, 64))
    for i in range(32):
        got = _pixels(out[i]).numpy().transpose(1, 2, 0)[1:-1, 1:-1]
        diff = {m: np.abs(got - _reference(images[i], anchor[i], shape[i], 64, m)[1:-1, 1:-1]).mean()
                for m in (Image.BILINEAR, Image.BICUBIC)}
        own, other = (Image.BICUBIC, Image.BILINEAR) if flags[i] else (Image.BILINEAR, Image.BICUBIC)
        assert diff[own] < 0.5 and diff[other] > 2 * diff[own], (i, diff)
