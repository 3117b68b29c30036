"""Sel-CL's kNN confident-example selection and confident-pair selection, and their metrics.

Upstream: ggjy/vision_weak_to_strong noisy_labels_learning/utils_sel/utils_noise.py
``pair_selection`` (same as ShikunLi/Sel-CL utils/utils_noise.py), run after every epoch from the
end of the warm-up on, on the L2-normalized embeddings of the whole training set (query model,
eval mode, test transform). What the code does, which differs in places from the paper's prose:

1. Neighbours: the ``k`` (250) most cosine-similar training examples of each example.
2. First vote: each example's label is corrected to the majority noisy label of its neighbours
   (plain counts: upstream sets every neighbour weight to 1).
3. Second vote: over the same neighbours' *corrected* labels; ``soft[i]`` = vote fractions.
   ``confidence[i] = soft[i, noisy_label[i]]``; ``agree[i] = argmax soft[i] == noisy_label[i]``.
4. Class-balanced selection: ``quota`` = the ``alpha``-quantile over classes of the per-class
   number of agreeing examples (alpha 0.5 is ``torch.median``, the lower median); every class
   keeps its ``min(quota, class size)`` most confident examples (confidence clamped to
   ``[0.01, 0.99]`` as upstream's ``-log`` discrepancy is). So alpha is not a confidence threshold.
5. Pairs: ``threshold`` = the ``beta``-quantile (numpy linear) of the cosine similarities of all
   same-label pairs among selected examples (self-pairs included). A pair ``(i, j)`` is confident
   when the noisy labels agree and either both are selected or ``sim(i, j) >= threshold``.

The ``N x N`` pair matrix is never built: :class:`PairSelection` answers any block of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

CONF_CLAMP = 0.01  # upstream clamps the vote to [1e-2, 1 - 1e-2] before -log


def knn_neighbours(features: Tensor, k: int, *, chunk_size: int = 256, exclude_self: bool = True) -> Tensor:
    """``[N, k]`` indices of each row's ``k`` most cosine-similar rows, computed ``chunk_size`` queries at a time.

    ``exclude_self=True`` is what upstream intends (its own row set to -1). Note: upstream's code
    writes the -1 at column ``r`` of the ``r``-th row *of each 100-row batch*, so beyond the first
    batch an example is in fact its own nearest neighbour; ``exclude_self=False`` reproduces that
    for all examples.
    """
    f = F.normalize(features.float(), dim=1)
    n = f.shape[0]
    if not 0 < k <= n - int(exclude_self):
        raise ValueError(f"k={k} neighbours impossible among {n} examples (exclude_self={exclude_self})")
    out = torch.empty(n, k, dtype=torch.long, device=f.device)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        sims = f[start:stop] @ f.T
        if exclude_self:
            rows = torch.arange(stop - start, device=f.device)
            sims[rows, rows + start] = float("-inf")
        out[start:stop] = sims.topk(k, dim=1).indices
    return out


def neighbour_vote(neighbours: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``[N, C]`` fraction of each row's neighbours carrying each label (unweighted, as upstream)."""
    nb = labels.long()[neighbours]
    counts = torch.zeros(nb.shape[0], num_classes, device=nb.device)
    counts.scatter_add_(1, nb, torch.ones_like(nb, dtype=counts.dtype))
    return counts / neighbours.shape[1]


def knn_soft_labels(features: Tensor, labels: Tensor, k: int, num_classes: int, *, chunk_size: int = 256,
                    exclude_self: bool = True) -> Tensor:
    """One kNN vote: ``[N, C]`` fractions of the ``k`` nearest neighbours' ``labels``."""
    return neighbour_vote(knn_neighbours(features, k, chunk_size=chunk_size, exclude_self=exclude_self),
                          labels, num_classes)


def class_quota(agree: Tensor, labels: Tensor, num_classes: int, alpha: float) -> float:
    """Examples to keep per class: the ``alpha``-quantile over classes of the agreeing counts.

    Upstream's special cases: 0.5 -> ``torch.median`` (lower median), 1 -> max, 0 -> min, else
    ``torch.quantile`` (linear interpolation). The caller truncates with ``int``, as upstream does.
    """
    counts = torch.zeros(num_classes, dtype=torch.float64)
    counts.scatter_add_(0, labels.long().cpu(), agree.double().cpu())
    if alpha == 0.5:
        return float(counts.median())
    if alpha == 1.0:
        return float(counts.max())
    if alpha == 0.0:
        return float(counts.min())
    return float(torch.quantile(counts, alpha))


def select_confident(soft_labels: Tensor, noisy_labels: Tensor, alpha: float,
                     num_classes: int | None = None) -> tuple[Tensor, Tensor]:
    """Class-balanced confident examples: ``(mask [N] bool, confidence [N])``.

    ``confidence = soft_labels[i, noisy_labels[i]]``. Each class keeps its ``min(int(quota), size)``
    examples of highest clamped confidence (:func:`class_quota`); ties go to the lower index
    (upstream's ``topk`` leaves them unspecified).
    """
    c = soft_labels.shape[1] if num_classes is None else num_classes
    y = noisy_labels.long().to(soft_labels.device)
    conf = soft_labels.gather(1, y[:, None]).squeeze(1)
    agree = soft_labels.argmax(dim=1) == y
    quota = int(class_quota(agree, y, c, alpha))
    key = conf.clamp(CONF_CLAMP, 1 - CONF_CLAMP)
    order = torch.sort(-key, stable=True).indices           # by confidence, ties by index
    order = order[torch.sort(y[order], stable=True).indices]  # then grouped by class
    sizes = torch.bincount(y, minlength=c)
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.arange(len(y), device=y.device) - starts[y[order]]
    mask = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    mask[order[rank < quota]] = True
    return mask, conf


@dataclass
class ExampleSelection:
    """One epoch's example selection (all ``[N]`` except ``soft_labels`` ``[N, C]``)."""

    mask: Tensor
    confidence: Tensor
    soft_labels: Tensor
    corrected_labels: Tensor
    agree: Tensor
    quota: float


def select_examples(features: Tensor, noisy_labels: Tensor, num_classes: int, *, k: int = 250, alpha: float = 0.5,
                    chunk_size: int = 256, exclude_self: bool = True) -> ExampleSelection:
    """Upstream's two-vote kNN selection (steps 1-4 of the module doc) on the training set's embeddings."""
    y = noisy_labels.long().to(features.device)
    nb = knn_neighbours(features, k, chunk_size=chunk_size, exclude_self=exclude_self)
    corrected = neighbour_vote(nb, y, num_classes).argmax(dim=1)
    soft = neighbour_vote(nb, corrected, num_classes)
    mask, conf = select_confident(soft, y, alpha, num_classes)
    agree = soft.argmax(dim=1) == y
    return ExampleSelection(mask, conf, soft, corrected, agree, class_quota(agree, y, num_classes, alpha))


def linear_quantile(values: Tensor, q: float) -> float:
    """Exact numpy-style (linear) quantile of a 1-D tensor of any size (``torch.quantile`` caps at 2^24)."""
    v = values.flatten()
    if v.numel() == 0:
        raise ValueError("quantile of an empty set")
    pos = q * (v.numel() - 1)
    lo, hi = int(pos // 1), min(int(pos // 1) + 1, v.numel() - 1)
    a = float(v.kthvalue(lo + 1).values)
    b = float(v.kthvalue(hi + 1).values) if hi != lo else a
    return a + (b - a) * (pos - lo)


def pair_threshold(features: Tensor, noisy_labels: Tensor, selected: Tensor, beta: float, *,
                   chunk_size: int = 1024) -> float:
    """``beta``-quantile of ``sim(i, j)`` over same-label pairs of selected examples (self-pairs included)."""
    f = F.normalize(features.float(), dim=1)
    y = noisy_labels.long().to(f.device)
    sel = selected.bool().to(f.device)
    values = []
    for c in torch.unique(y[sel]).tolist():
        fc = f[sel & (y == c)]
        for start in range(0, fc.shape[0], chunk_size):
            values.append((fc[start:start + chunk_size] @ fc.T).flatten())
    return linear_quantile(torch.cat(values), beta)


@dataclass
class PairSelection:
    """The epoch's confident pairs, answered block by block (upstream's ``final_selected_pairs``)."""

    features: Tensor  # [N, d] L2-normalized embeddings the selection was made on
    labels: Tensor    # [N] noisy labels
    selected: Tensor  # [N] bool, confident examples
    threshold: float

    def mask(self, rows: Tensor, cols: Tensor) -> Tensor:
        """``[len(rows), len(cols)]`` bool: same label and (both selected or ``sim >= threshold``)."""
        rows, cols = rows.long().to(self.labels.device), cols.long().to(self.labels.device)
        same = self.labels[rows][:, None] == self.labels[cols][None, :]
        close = (self.features[rows] @ self.features[cols].T) >= self.threshold
        both = self.selected[rows][:, None] & self.selected[cols][None, :]
        return same & (close | both)

    def state_dict(self) -> dict[str, Any]:
        return {"features": self.features, "labels": self.labels, "selected": self.selected,
                "threshold": self.threshold}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "PairSelection":
        return cls(state["features"], state["labels"], state["selected"], float(state["threshold"]))


def select_pairs(features: Tensor, noisy_labels: Tensor, selected: Tensor, beta: float) -> PairSelection:
    """Confident pairs with similarity threshold from ``beta`` (step 5 of the module doc)."""
    f = F.normalize(features.float(), dim=1)
    y = noisy_labels.long().to(f.device)
    sel = selected.bool().to(f.device)
    return PairSelection(f, y, sel, pair_threshold(f, y, sel, beta))


def all_pairs(noisy_labels: Tensor) -> PairSelection:
    """Every same-noisy-label pair (upstream's ``warmup_way='sup'`` warm-up; not the default)."""
    y = noisy_labels.long()
    return PairSelection(torch.zeros(len(y), 1, device=y.device), y, torch.ones_like(y, dtype=torch.bool), 0.0)


def selection_precision_recall(selected_mask: Tensor, noisy_labels: Tensor, clean_labels: Tensor) -> tuple[float, float]:
    """``(precision, recall)``: clean share of the selected; selected share of the clean (0.0 when empty)."""
    sel = selected_mask.bool().cpu()
    clean = noisy_labels.long().cpu() == clean_labels.long().cpu()
    hit = int((sel & clean).sum())
    n_sel, n_clean = int(sel.sum()), int(clean.sum())
    return (hit / n_sel if n_sel else 0.0, hit / n_clean if n_clean else 0.0)
