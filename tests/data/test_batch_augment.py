"""The shared batched augmentations (``pipeline.data.batch_augment``): torchvision's values, and a pure function of
the step's generator (what makes ``w2s pretrain`` and ``w2s sel-cl`` resume to the same weights)."""
from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from pipeline.data.batch_augment import ContrastiveAugment, color_jitter, crop_boxes, resized_crops, step_rng, to_float


def test_crop_flip_and_jitter_match_torchvision():
    rng = np.random.default_rng(0)
    x = to_float(rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), torch.device("cpu"))
    boxes = crop_boxes(6, (32, 32), (0.2, 1.0), (3 / 4, 4 / 3), rng)
    flips = np.array([0, 1, 0, 1, 1, 0], bool)
    out = resized_crops(x, boxes, flips, (32, 32))
    factors = np.array([[1.2, 0.7, 1.3, 0.08]] * 6)
    order = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1], [0, 1, 2, 3], [0, 1, 2, 3]])
    apply = np.array([1, 1, 1, 1, 1, 0], bool)
    jittered = color_jitter(x, factors, order, apply)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for k in range(6):
        t, left, h, w = (int(v) for v in boxes[k])
        ref = TF.resized_crop(x[k], t, left, h, w, [32, 32], antialias=False)
        torch.testing.assert_close(out[k], TF.horizontal_flip(ref) if flips[k] else ref, rtol=0, atol=1e-6)
        ref = x[k]
        for op in order[k] if apply[k] else ():
            ref = ops[op](ref, float(factors[k, op]))
        torch.testing.assert_close(jittered[k], ref, rtol=0, atol=1e-5)


def test_augment_is_a_function_of_its_generator():
    images = np.random.default_rng(1).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    aug = ContrastiveAugment((28, 28), (0.5,), (0.25,), scale=(0.2, 1.0))
    dev = torch.device("cpu")
    a = aug(images, step_rng(0, 1, 2, 0), dev)
    assert a.shape == (8, 1, 28, 28) and torch.equal(a, aug(images, step_rng(0, 1, 2, 0), dev))
    assert not torch.equal(a, aug(images, step_rng(0, 1, 3, 0), dev))
    plain = ContrastiveAugment((28, 28), (0.5,), (0.25,), scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0, jitter_p=0)
    torch.testing.assert_close(plain(images, step_rng(0, 0, 0, 0), dev), (to_float(images, dev) - 0.5) / 0.25)
