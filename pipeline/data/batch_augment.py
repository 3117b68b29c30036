"""Batched, seeded image augmentations on in-memory uint8 images, torch-side: the contrastive methods' views.

SimCLR's augmentation (Chen et al. 2020, appendix A; google-research/simclr ``data_util.py``
``preprocess_for_train``), which Sel-CL's ``--DA complex`` reuses (ggjy/vision_weak_to_strong
noisy_labels_learning/CIFAR/train_Sel-CL.py, torchvision per image): ``RandomResizedCrop`` ->
``RandomHorizontalFlip(0.5)`` -> ``RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)`` ->
``RandomGrayscale(0.2)`` -> normalize. Here every random parameter of a batch is drawn from one
numpy ``Generator`` (seeded by ``[run seed, epoch, step, stream]``, :func:`step_rng`), so a resumed
run repeats the same crops; crop, resize and flip are one ``grid_sample`` call. What differs from
torchvision: float arithmetic throughout (PIL rounds to uint8 after each operation) and no
antialiasing when a crop is shrunk (never the case for crops of an image of the output size).
Grey (1-channel) images get brightness and contrast only, and no grayscale step. Users: ``w2s
pretrain`` (``pipeline.pretrain``) and the Sel-CL scenario.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
ATTEMPTS = 10  # torchvision RandomResizedCrop.get_params tries this many boxes before a central crop


def step_rng(seed: int, epoch: int, step: int, stream: int) -> np.random.Generator:
    """The generator of one step's draws of one kind (views, mixing, classification batch)."""
    return np.random.default_rng([seed, epoch, step, stream])


def to_float(images: np.ndarray, device: torch.device) -> Tensor:
    """uint8 ``[n, H, W, C]`` -> float ``[n, C, H, W]`` in ``[0, 1]``."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def normalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def plain_view(images: np.ndarray, size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...],
               device: torch.device) -> Tensor:
    """The un-augmented input (upstream's test transform): resized to ``size`` when it differs, normalized."""
    x = to_float(images, device)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return normalize(x, mean, std)


def crop_boxes(n: int, hw: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float],
               rng: np.random.Generator) -> np.ndarray:
    """``[n, 4]`` int boxes ``(top, left, height, width)`` drawn as torchvision's ``RandomResizedCrop.get_params``."""
    h_in, w_in = hw
    area = h_in * w_in
    target = area * rng.uniform(scale[0], scale[1], size=(n, ATTEMPTS))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(n, ATTEMPTS)))
    w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
    h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    ok = (w > 0) & (w <= w_in) & (h > 0) & (h <= h_in)
    first = ok.argmax(axis=1)
    rows = np.arange(n)
    h, w = h[rows, first], w[rows, first]
    u = rng.random((n, 2))
    top = np.floor(u[:, 0] * (h_in - h + 1)).astype(np.int64)
    left = np.floor(u[:, 1] * (w_in - w + 1)).astype(np.int64)
    fallback = ~ok.any(axis=1)
    if fallback.any():  # torchvision's central crop at the closest allowed aspect ratio
        in_ratio = w_in / h_in
        fw, fh = w_in, h_in
        if in_ratio < min(ratio):
            fh = int(round(fw / min(ratio)))
        elif in_ratio > max(ratio):
            fw = int(round(fh * max(ratio)))
        h[fallback], w[fallback] = fh, fw
        top[fallback], left[fallback] = (h_in - fh) // 2, (w_in - fw) // 2
    return np.stack([top, left, h, w], axis=1)


def resized_crops(x: Tensor, boxes: np.ndarray, flips: np.ndarray, size: tuple[int, int]) -> Tensor:
    """Each box of ``x`` resized to ``size`` (bilinear, half-pixel centres, sampling clamped inside the box), then flipped.

    Same values as torchvision's ``resized_crop(..., antialias=False)`` followed by ``hflip`` where flagged.
    """
    n, _, h_in, w_in = x.shape
    b = torch.as_tensor(boxes, dtype=x.dtype, device=x.device)
    top, left, bh, bw = (b[:, i:i + 1] for i in range(4))
    ho, wo = size
    j = torch.arange(wo, dtype=x.dtype, device=x.device).expand(n, wo)
    flip = torch.as_tensor(flips, device=x.device)[:, None]
    j = torch.where(flip, wo - 1 - j, j)
    i = torch.arange(ho, dtype=x.dtype, device=x.device).expand(n, ho)
    u = left + torch.minimum(((j + 0.5) * bw / wo - 0.5).clamp_min(0), bw - 1)  # source pixel coordinates
    v = top + torch.minimum(((i + 0.5) * bh / ho - 0.5).clamp_min(0), bh - 1)
    gx = ((2 * u + 1) / w_in - 1)[:, None, :].expand(n, ho, wo)
    gy = ((2 * v + 1) / h_in - 1)[:, :, None].expand(n, ho, wo)
    return F.grid_sample(x, torch.stack([gx, gy], dim=-1), mode="bilinear", padding_mode="border",
                         align_corners=False)


def grayscale(x: Tensor) -> Tensor:
    """``[n, 1, H, W]`` luma of RGB (the image itself when it has one channel)."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _blend(x: Tensor, other: Tensor, f: Tensor) -> Tensor:
    return (f * x + (1 - f) * other).clamp(0, 1)


def shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """RGB ``[n, 3, H, W]`` with hue rotated by ``shift`` (fractions of a turn), as torchvision's ``adjust_hue``."""
    r, g, b = x.unbind(1)
    maxc, minc = x.max(dim=1).values, x.min(dim=1).values
    cr = maxc - minc
    eq = cr == 0
    s = cr / torch.where(eq, torch.ones_like(maxc), maxc)
    crd = torch.where(eq, torch.ones_like(cr), cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    is_r, is_g = maxc == r, (maxc == g) & (maxc != r)
    h = torch.where(is_r, bc - gc, torch.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.fmod(torch.fmod(h / 6.0 + 1.0, 1.0) + shift.view(-1, 1, 1) + 1.0, 1.0)
    v = maxc
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p = (v * (1 - s)).clamp(0, 1)
    q = (v * (1 - s * f)).clamp(0, 1)
    t = (v * (1 - s * (1 - f))).clamp(0, 1)
    table = torch.stack([torch.stack(c, 0) for c in ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))], 1)
    return table.gather(0, i[None, None].expand(1, 3, *i.shape)).squeeze(0).permute(1, 0, 2, 3)


def color_jitter(x: Tensor, factors: np.ndarray, order: np.ndarray, apply: np.ndarray) -> Tensor:
    """torchvision's ``ColorJitter`` per sample: ``factors[:, k]`` of op ``k`` (brightness, contrast, saturation, hue)
    applied in the sample's ``order`` (a permutation of 0..3) where ``apply``; grey images skip ops 2 and 3."""
    x = x.clone()
    ops = 2 if x.shape[1] == 1 else 4
    fac = torch.as_tensor(factors, dtype=x.dtype, device=x.device)
    for pos in range(4):
        for op in range(ops):
            sel = torch.as_tensor(np.flatnonzero(apply & (order[:, pos] == op)), device=x.device)
            if sel.numel() == 0:
                continue
            xs, f = x[sel], fac[sel, op].view(-1, 1, 1, 1)
            if op == 0:
                out = (xs * f).clamp(0, 1)
            elif op == 1:
                out = _blend(xs, grayscale(xs).mean(dim=(1, 2, 3), keepdim=True), f)
            elif op == 2:
                out = _blend(xs, grayscale(xs), f)
            else:
                out = shift_hue(xs, f.view(-1))
            x[sel] = out
    return x


@dataclass(frozen=True)
class ContrastiveAugment:
    """SimCLR's training transform (Sel-CL's ``complex``) of a batch: :meth:`__call__` gives normalized ``[n, C, h, w]``.

    The defaults are SimCLR's colour distortion of strength 0.5 (its CIFAR-10 setting) after a crop of scale (0.08, 1).
    """

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    gray_p: float = 0.2

    def __call__(self, images: np.ndarray, rng: np.random.Generator, device: torch.device) -> Tensor:
        """One augmented view of each uint8 ``[n, H, W, C]`` image; every draw comes from ``rng``."""
        x = to_float(images, device)
        n = x.shape[0]
        boxes = crop_boxes(n, (x.shape[2], x.shape[3]), self.scale, self.ratio, rng)
        flips = rng.random(n) < self.flip_p
        b, c, s, h = self.jitter
        lo = np.array([1 - b, 1 - c, 1 - s, -h])
        hi = np.array([1 + b, 1 + c, 1 + s, h])
        factors = lo + (hi - lo) * rng.random((n, 4))
        order = rng.permuted(np.tile(np.arange(4), (n, 1)), axis=1)
        apply = rng.random(n) < self.jitter_p
        gray = rng.random(n) < self.gray_p
        x = color_jitter(resized_crops(x, boxes, flips, self.size), factors, order, apply)
        if x.shape[1] == 3 and gray.any():
            g = torch.as_tensor(gray, device=x.device).view(-1, 1, 1, 1)
            x = torch.where(g, grayscale(x).expand_as(x), x)
        return normalize(x, self.mean, self.std)
