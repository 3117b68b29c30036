"""The student's augmentations reproduce timm's recipes: RandAugment / AutoAugment strengths and
sampling, the view resize (antialiased like PIL), and random erasing's place around mixup.

Reference values come from timm itself (its level functions, policies and ops), never from copies.
Pixel comparisons use real images: Fashion-MNIST test images, three per RGB image, upscaled with
PIL (skipped when the dataset is not installed).
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import timm.data.auto_augment as ta
import torch
from PIL import Image, ImageFilter
from timm.data.random_erasing import RandomErasing

from pipeline.config.schema import load_config
from pipeline.data.loader import Batch, ViewReplayer
from pipeline.data.mixing import MixConfig, batch_rng, draw, mix_images
from pipeline.data.sources.fashion_mnist import DEBIAN_DIR, load_fashion_mnist
from pipeline.objectives import build_objective
from pipeline.student.specs import student_augment
from pipeline.student.step import Precision, StudentStep
from pipeline.data.timm_augment import (
    AUTO_AUGMENT_ORIGINAL,
    BINS_PER_LEVEL,
    MAX_LEVEL,
    NUM_LEVEL_BINS,
    RAND_OP_PROB,
    RAND_OPS,
    RAND_OPS_INCREASING,
    StudentAugment,
    _TimmOp,
    augment_draws,
    augment_names,
    op_negated,
    op_param_table,
)
from pipeline.data.views import InputSpec, ViewPolicy, pixel_boxes, sample_params

ROOT = Path(__file__).resolve().parents[2]
ALL_OPS = sorted(set(RAND_OPS) | set(RAND_OPS_INCREASING) | set(augment_names(StudentAugment("auto_augment"))))
FILL = (124, 116, 104)  # timm's img_mean for the ImageNet mean
HPARAMS = dict(translate_const=100, img_mean=FILL)  # what timm's create_transform passes (no translate_pct)


def _rgb_photos(n: int, size: int, channels: int = 3) -> np.ndarray:
    """``n`` real images ``[n, size, size, channels]``: Fashion-MNIST test images (as the channels of an RGB
    image when ``channels`` is 3), upscaled with PIL's bicubic."""
    if not (DEBIAN_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    g = load_fashion_mnist("test").images[:channels * n, :, :, 0]
    img = np.stack([g[c * n:(c + 1) * n] for c in range(channels)], -1)
    up = [np.asarray(Image.fromarray(x if channels == 3 else x[:, :, 0]).resize((size, size), Image.BICUBIC))
          for x in img]
    return np.ascontiguousarray(np.stack(up).reshape(n, size, size, channels))


def _timm_param(name: str, level: float, negate: bool, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """timm's own argument of op ``name`` at ``level``, with its random sign forced."""
    monkeypatch.setattr(ta, "_randomly_negate", (lambda v: -v) if negate else (lambda v: v))
    fn = ta.LEVEL_TO_ARG[name]
    return fn(level, HPARAMS) if fn is not None else ()


# -- RandAugment / AutoAugment: what is drawn, and how strong --------------------------------------

def test_rand_augment_is_timms_rand_m9_mstd05_inc1():
    """The MAE recipe's ``rand-m9-mstd0.5-inc1``: timm's op list, p = 0.5, m = 9 of 10, mstd 0.5, n = 2."""
    aug = StudentAugment("rand_augment")
    assert aug.timm_string() == "rand-m9-n2-mstd0.5-inc1"
    for text, increasing in (("rand-m9-mstd0.5-inc1", True), ("rand-m9-mstd0.5", False)):
        ra = ta.rand_augment_transform(text, dict(HPARAMS))
        ours = StudentAugment("rand_augment", increasing=increasing)
        assert [op.name for op in ra.ops] == augment_names(ours)
        assert ra.num_layers == ours.num_ops and ra.choice_weights is None
        assert {(op.prob, op.magnitude, op.magnitude_std) for op in ra.ops} == {(RAND_OP_PROB, 9, 0.5)}
    assert ta._LEVEL_DENOM == MAX_LEVEL


def test_auto_augment_is_timms_original_policy():
    """Op by op, probability and magnitude: timm's ``original`` (not DALI's image_net, which is timm's v0)."""
    timm_original = [[(op.name, op.prob, op.magnitude) for op in sub] for sub in ta.auto_augment_policy("original")]
    assert [list(sub) for sub in AUTO_AUGMENT_ORIGINAL] == timm_original
    aa = ta.auto_augment_transform("original-mstd0.5", dict(HPARAMS))
    assert {op.magnitude_std for sub in aa.policy for op in sub} == {StudentAugment("auto_augment").magnitude_std}
    assert StudentAugment("auto_augment").timm_string() == "original-mstd0.5"

    from nvidia.dali.auto_aug.auto_augment import get_image_net_policy
    to_timm = {"equalize": "Equalize", "shear_x": "ShearX", "shear_y": "ShearY", "color": "Color", "rotate": "Rotate",
               "solarize": "Solarize", "solarize_add": "SolarizeAdd", "invert": "Invert", "posterize": "Posterize",
               "auto_contrast": "AutoContrast", "translate_y": "TranslateYRel"}
    dali = [[(to_timm[aug.name], p) for aug, p, _ in sub] for sub in get_image_net_policy().sub_policies]
    v0 = [[(op.name, op.prob) for op in sub if op.prob > 0] for sub in ta.auto_augment_policy("v0")]
    assert dali == v0  # DALI's auto_augment_image_net is timm's v0 ...
    assert dali != [[(n, p) for n, p, _ in sub if p > 0] for sub in AUTO_AUGMENT_ORIGINAL]  # ... not 'original'


def test_recipe_configs_spell_the_papers_timm_strings():
    """CIFAR v1 rows: the paper's ``aa: original-mstd0.5``; ImageNet: ``rand-m9-mstd0.5-inc1`` (n = 2)."""
    v1 = sorted((ROOT / "configs/cifar100").glob("*_v1_*.yaml"))
    assert v1
    for path in v1:
        assert student_augment(load_config(path)).timm_string() == "original-mstd0.5"
    imagenet = student_augment(load_config(ROOT / "configs/imagenet/vitb_mae_res50_adaptconf.yaml"))
    assert imagenet.timm_string() == "rand-m9-n2-mstd0.5-inc1"


@pytest.mark.parametrize("name", ALL_OPS)
def test_every_op_parameter_equals_timms_at_every_level(name, monkeypatch):
    """DALI's parameter at bin b (level b / 100) and sign s equals timm's LEVEL_TO_ARG(level) with that sign.

    Rotate degrees, shear factor, translate fraction (timm's pct of the side), enhancement factor,
    Sharpness as the 3x3 kernel of PIL's blend with its SMOOTH filter, Posterize as the bit mask of
    PIL's posterize, Solarize threshold, SolarizeAdd increment.
    """
    table = op_param_table(name)
    if ta.LEVEL_TO_ARG[name] is None:
        assert table is None
        return
    assert table.shape[0] == 2 * NUM_LEVEL_BINS
    smooth = ImageFilter.SMOOTH.filterargs
    smooth_kernel = np.array(smooth[3], dtype=np.float64).reshape(3, 3) / smooth[1]
    identity = np.zeros((3, 3))
    identity[1, 1] = 1.0
    values = np.arange(256, dtype=np.uint8)
    for b in range(NUM_LEVEL_BINS):
        level = b / BINS_PER_LEVEL
        for sign in (0, 1):
            negate = sign == 1 and op_negated(name)
            (arg,) = _timm_param(name, level, negate, monkeypatch)
            ours = table[2 * b + sign]
            if name in ("ShearX", "TranslateXRel"):
                np.testing.assert_array_equal(ours, np.float32([arg, 0.0]))
            elif name in ("ShearY", "TranslateYRel"):
                np.testing.assert_array_equal(ours, np.float32([0.0, arg]))
            elif name.startswith("Sharpness"):
                kernel = arg * identity + (1 - arg) * smooth_kernel  # PIL: blend(smoothed, image, factor)
                np.testing.assert_allclose(ours, kernel, rtol=0, atol=1e-6)
            elif name.startswith("Posterize"):
                if arg == 0:  # keep no bit: a black image (Pillow 13 refuses 0 bits, older Pillow masked all)
                    assert ours == 0
                    continue
                lut = np.asarray(ta.posterize(Image.fromarray(values[None]), arg))[0]
                np.testing.assert_array_equal(values & ours, lut)
            else:  # Rotate, Color/Contrast/Brightness, Solarize, SolarizeAdd: the same number
                assert ours == np.array(arg, dtype=ours.dtype), (name, level, sign)


def _draws(aug: StudentAugment, batch: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    from nvidia.dali import pipeline_def

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None, seed=11, exec_async=False, exec_pipelined=False)
    def graph():  # type: ignore[no-untyped-def]
        return augment_draws(aug)

    pipe = graph()
    pipe.build()
    idx, param = (o.as_array() for o in pipe.run())
    return idx, param


def _timm_levels(mean: np.ndarray, std: float, n: int = 400_000) -> np.ndarray:
    """timm's AugmentOp level: gauss(m, mstd) clipped to [0, 10] (Monte Carlo, fixed seed)."""
    rng = np.random.default_rng(0)
    return np.clip(rng.normal(np.asarray(mean)[rng.integers(0, len(mean), n)], std), 0, MAX_LEVEL)


def test_rand_augment_draws_follow_timms_sampling():
    aug = StudentAugment("rand_augment")
    idx, param = _draws(aug)
    k = len(augment_names(aug))
    skip = idx == k
    assert abs(skip.mean() - (1 - RAND_OP_PROB)) < 0.015
    assert abs(np.corrcoef(skip[:, 0], skip[:, 1])[0, 1]) < 0.05
    freq = np.bincount(idx[~skip], minlength=k)[:k] / (~skip).sum()
    np.testing.assert_allclose(freq, 1 / k, atol=0.012)  # uniform, with replacement
    level, sign = param // 2 / BINS_PER_LEVEL, param % 2
    ref = _timm_levels(np.array([9.0]), 0.5)
    assert abs(level.mean() - ref.mean()) < 0.02 and abs(level.std() - ref.std()) < 0.02
    assert abs((level == MAX_LEVEL).mean() - (ref == MAX_LEVEL).mean()) < 0.01  # clipped at 10 like timm
    assert abs(sign.mean() - 0.5) < 0.015
    _, fixed = _draws(StudentAugment("rand_augment", magnitude=7, magnitude_std=0), 64)
    assert set((fixed // 2).ravel()) == {7 * BINS_PER_LEVEL}


def test_auto_augment_draws_follow_the_policy():
    aug = StudentAugment("auto_augment")
    idx, param = _draws(aug)
    names = augment_names(aug)
    for stage in range(2):
        expect = np.zeros(len(names) + 1)
        for sub in AUTO_AUGMENT_ORIGINAL:
            name, p, _ = sub[stage]
            expect[names.index(name)] += p / len(AUTO_AUGMENT_ORIGINAL)
        expect[-1] = 1 - expect.sum()
        freq = np.bincount(idx[:, stage], minlength=len(names) + 1) / len(idx)
        np.testing.assert_allclose(freq, expect, atol=0.015)
        level = param[:, stage] // 2 / BINS_PER_LEVEL
        ref = _timm_levels(np.array([sub[stage][2] for sub in AUTO_AUGMENT_ORIGINAL], dtype=float), 0.5)
        assert abs(level.mean() - ref.mean()) < 0.08 and abs(level.std() - ref.std()) < 0.08


def _apply_op(name: str, images: np.ndarray, param_index: int, fill: tuple[int, ...]) -> np.ndarray:
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=len(images), num_threads=1, device_id=None, seed=1, exec_async=False, exec_pipelined=False)
    def graph():  # type: ignore[no-untyped-def]
        x = fn.external_source(name="x", layout="HWC")
        i = fn.external_source(name="i")
        return _TimmOp(name, images.shape[1:3], fill)(x, i), i

    pipe = graph()
    pipe.build()
    pipe.feed_input("x", images)
    pipe.feed_input("i", np.full(len(images), param_index, dtype=np.int32))
    return pipe.run()[0].as_array().astype(np.float32)


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name", [n for n in ALL_OPS if n != "Equalize"])
def test_op_pixels_match_timm_at_m9(name, channels, monkeypatch):
    """Each op at level 9 on real RGB / grayscale images against timm's PIL op (bilinear, fill = img_mean).

    Exact: Posterize*, Solarize*, SolarizeAdd, Invert. Enhancements and AutoContrast: rounding (and
    Contrast's center: PIL rounds the gray mean), mean below 0.75, at most 2 away from the 1-pixel
    border (Sharpness: DALI filters the border, PIL keeps it). Color leaves gray images as they
    are, as PIL's does. Geometric ops: the same
    transform, the signs pair up; pixels differ along the warped image's edges (DALI blends the
    edge pixel with the fill, PIL does not), mean abs diff below 1.5. Equalize is not compared:
    DALI's follows OpenCV's formula, not PIL's (docs/cached_teacher.md).
    """
    images = _rgb_photos(24, 64, channels)
    fill = FILL[:channels]
    level = 9
    signs = (0, 1) if op_negated(name) else (0,)
    for sign in signs:
        ours = _apply_op(name, images, 2 * level * BINS_PER_LEVEL + sign, fill)
        diffs = {}
        for negate in ((False, True) if op_negated(name) else (False,)):
            monkeypatch.setattr(ta, "_randomly_negate", (lambda v: -v) if negate else (lambda v: v))
            hparams = dict(HPARAMS, img_mean=fill if channels == 3 else fill[0], interpolation=Image.BILINEAR)
            op = ta.AugmentOp(name, prob=1.0, magnitude=level, hparams=hparams)
            pil = [Image.fromarray(x if channels == 3 else x[:, :, 0]) for x in images]
            ref = np.stack([np.asarray(op(x)) for x in pil]).reshape(images.shape).astype(np.float32)
            diffs[negate] = np.abs(ours - ref)
        best = min(diffs.values(), key=lambda d: d.mean())
        if name.startswith(("Posterize", "Solarize")) or name == "Invert":
            assert best.max() == 0, name
        elif name in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
            assert best.mean() < 1.5, (name, best.mean())
            worst = max(diffs.values(), key=lambda d: d.mean())
            assert worst.mean() > 3 * best.mean(), name  # the other sign is clearly another transform
        else:
            assert best.mean() < 0.75 and best[:, 1:-1, 1:-1].max() <= 2, (name, best.mean(), best.max())


def test_replay_identity_stage_keeps_the_flipped_view():
    """A skipped stage leaves the student's view exactly as replayed (flip before the augmentation, as in timm)."""
    images = _rgb_photos(128, 32)
    params = sample_params(ViewPolicy("random_resized_crop", num_views=1, seed=2), np.arange(128), 1, (32, 32))
    spec = InputSpec((24, 24), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    plain = ViewReplayer((32, 32), [spec], 128, None)(images, params)[0]
    aug = StudentAugment("rand_augment", num_ops=1)
    a = ViewReplayer((32, 32), [spec], 128, None, augment=aug, seed=3)(images, params)[0]
    again = ViewReplayer((32, 32), [spec], 128, None, augment=aug, seed=3)(images, params)[0]
    other = ViewReplayer((32, 32), [spec], 128, None, augment=aug, seed=4)(images, params)[0]
    assert torch.equal(a, again) and not torch.equal(a, other)
    same = np.array([torch.equal(a[i], plain[i]) for i in range(128)])
    assert 0.4 < same.mean() < 0.75  # P(skip) = 0.5, plus ops that change nothing


# -- the view resize -------------------------------------------------------------------------------

@pytest.mark.parametrize("out", [24, 32, 56, 160])
def test_replay_resize_matches_pil_bilinear(out):
    """Random-resized-crop views of real 112 x 112 images against PIL ``crop().resize(BILINEAR)`` (timm's).

    Measured (0..255 units), boxes of 35..112 px: downscale to 24 / 32 / 56 px: mean abs diff 0.21 /
    0.15 / 0.11, max 1 away from the outermost row and column; on that border DALI replicates the
    edge pixel where PIL renormalizes the truncated filter (max 15 / 11 / 5). Upscale (160 px):
    mean 0.11, max 1 everywhere. Without antialiasing, 24 px gave mean 3.2, max 75.
    """
    images = _rgb_photos(32, 112)
    params = sample_params(ViewPolicy("random_resized_crop", num_views=1, seed=3), np.arange(32), 1, (112, 112))
    params[:, 4] = 0
    replayed = ViewReplayer((112, 112), [InputSpec((out, out), (0.0,) * 3, (1 / 255,) * 3)], 32, None)(images, params)
    got = replayed[0].numpy().transpose(0, 2, 3, 1)
    anchor, shape, _ = pixel_boxes(params, (112, 112))
    ref = []
    for img, (y, x), (h, w) in zip(images, anchor.astype(int), shape.astype(int)):
        ref.append(np.asarray(Image.fromarray(img).crop((x, y, x + w, y + h)).resize((out, out), Image.BILINEAR)))
    diff = np.abs(got - np.stack(ref).astype(np.float32))
    assert diff.mean() < 0.25, diff.mean()
    assert diff[:, 1:-1, 1:-1].max() <= 1
    assert diff.max() <= 16


# -- random erasing and mixing ----------------------------------------------------------------------

def _step_inputs(erase_before_mix: bool) -> tuple[StudentStep, Batch, torch.Tensor]:
    """A student step on CPU: mixup only, erasing with probability 1, a recording net, lr 0."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3 * 16 * 16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen = x.detach().clone()
            return self.fc(x.flatten(1))

    net = Net()
    step = StudentStep(net, build_objective("vanilla"), torch.optim.SGD(net.parameters(), lr=0.0),
                       torch.amp.GradScaler("cuda", enabled=False), Precision(torch.device("cpu"), "none"),
                       torch.contiguous_format, num_classes=4, epochs=1, seed=0, mix=MixConfig(mixup=1.0),
                       erasing=RandomErasing(1.0, mode="pixel", device="cpu"), erase_before_mix=erase_before_mix)
    x = torch.arange(1.0, 5.0).mul(25).view(4, 1, 1, 1).expand(4, 3, 16, 16).contiguous()  # constant images
    batch = Batch(np.arange(4), [x.clone()], torch.arange(4), None)
    return step, batch, x


def _seeded(fn):  # type: ignore[no-untyped-def]
    random.seed(5)
    torch.manual_seed(5)
    return fn()


@pytest.mark.parametrize("erase_before_mix", [True, False])
def test_random_erasing_order_around_mixup(erase_before_mix):
    """Before mixing (default, timm's per-sample transform): sample i's erased patch is mixed with
    sample j's pixels, not a pure noise patch. After (timm's train.py prefetcher): pure noise."""
    student_step, batch, x = _step_inputs(erase_before_mix)
    step = 3
    mix = draw(student_step.mix, batch_rng(0, 0, step))
    assert 0 < mix.lam < 1
    _seeded(lambda: student_step.optimizer_step(batch, 0, step))
    seen = student_step.net.seen
    eraser = RandomErasing(1.0, mode="pixel", device="cpu")
    erased = _seeded(lambda: eraser(x.clone()))
    before = mix_images(erased, mix)[0]
    after = _seeded(lambda: eraser(mix_images(x.clone(), mix)[0]))
    assert torch.equal(seen, before if erase_before_mix else after)
    assert not torch.equal(before, after)
    i, j = 0, 3  # mixup pairs sample i with the reversed batch's, j = B - 1 - i
    patch = (erased[i] != x[i]) & (erased[j] == x[j])
    assert patch.any()
    mixed = mix.lam * erased[i] + (1 - mix.lam) * x[j]
    if erase_before_mix:
        torch.testing.assert_close(seen[i][patch], mixed[patch])
    else:
        patch_after = after[i] != mix_images(x, mix)[0][i]
        assert abs(seen[i][patch_after].mean().item()) < 0.5  # N(0, 1) noise, nothing of sample j
