"""Episodic few-shot evaluation: episode sampling, prototypes, cosine nearest-centroid, 95% CIs.

Protocol (as in Prototypical Networks / Meta-Baseline): embed every image once with a frozen
encoder, then for each N-way K-shot episode average the K support features of each class into
a prototype, label each query by the prototype with the highest cosine similarity, and report
the mean episode accuracy with a 95% confidence half-width.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "sample_episode",
    "episode_sampler",
    "prototypes",
    "cosine_logits",
    "mean_confidence_interval",
    "evaluate_episodes",
]

Episode = tuple[np.ndarray, np.ndarray, np.ndarray]


def _index_by_class(labels: Mapping[int, np.ndarray] | np.ndarray) -> dict[int, np.ndarray]:
    """Normalize ``labels`` (a label array, or class -> sample indices) into class -> int64 indices."""
    if isinstance(labels, Mapping):
        return {int(c): np.asarray(idx, dtype=np.int64).ravel() for c, idx in labels.items()}
    arr = np.asarray(labels).ravel()
    return {int(c): np.flatnonzero(arr == c).astype(np.int64) for c in np.unique(arr)}


def _check_sizes(by_class: Mapping[int, np.ndarray], n_way: int, k_shot: int, n_query: int) -> None:
    """Raise ValueError unless ``n_way`` classes exist and every class holds ``k_shot + n_query`` samples."""
    if n_way < 1 or k_shot < 1 or n_query < 0:
        raise ValueError(f"need n_way >= 1, k_shot >= 1, n_query >= 0; got {n_way}, {k_shot}, {n_query}")
    if len(by_class) < n_way:
        raise ValueError(f"{n_way}-way episodes need at least {n_way} classes, only {len(by_class)} available")
    need = k_shot + n_query
    short = {c: len(idx) for c, idx in by_class.items() if len(idx) < need}
    if short:
        shown = ", ".join(f"class {c}: {n}" for c, n in sorted(short.items())[:5])
        raise ValueError(
            f"every class needs k_shot + n_query = {need} samples; {len(short)} class(es) have fewer ({shown})"
        )


def sample_episode(
    labels_by_class: Mapping[int, np.ndarray] | np.ndarray,
    n_way: int,
    k_shot: int,
    n_query: int,
    rng: np.random.Generator,
) -> Episode:
    """Draw one episode: ``n_way`` distinct classes, ``k_shot`` support and ``n_query`` query samples each.

    ``labels_by_class`` is either the dataset's label array or a mapping class -> sample indices.
    Per class, ``k_shot + n_query`` distinct samples are drawn without replacement, so support and
    query are disjoint. Both index arrays are class-major in the order of the returned ``classes``
    (support ``[c0 x k, c1 x k, ...]``), so query ``j`` has episode label ``j // n_query``.

    Every class must hold at least ``k_shot + n_query`` samples (checked up front, so the error
    does not depend on which classes happen to be drawn); otherwise ValueError.
    """
    by_class = _index_by_class(labels_by_class)
    _check_sizes(by_class, n_way, k_shot, n_query)
    return _draw(by_class, sorted(by_class), n_way, k_shot, n_query, rng)


def _draw(
    by_class: Mapping[int, np.ndarray],
    class_ids: list[int],
    n_way: int,
    k_shot: int,
    n_query: int,
    rng: np.random.Generator,
) -> Episode:
    """Sample one episode from pre-validated per-class indices."""
    classes = rng.choice(np.asarray(class_ids, dtype=np.int64), size=n_way, replace=False)
    support, query = [], []
    for c in classes:
        picked = rng.choice(by_class[int(c)], size=k_shot + n_query, replace=False)
        support.append(picked[:k_shot])
        query.append(picked[k_shot:])
    return (
        np.concatenate(support).astype(np.int64),
        np.concatenate(query).astype(np.int64),
        classes.astype(np.int64),
    )


def episode_sampler(
    labels: Mapping[int, np.ndarray] | np.ndarray,
    n_way: int,
    k_shot: int,
    n_query: int,
    episodes: int,
    seed: int,
) -> Iterator[Episode]:
    """Yield ``episodes`` episodes from one ``np.random.default_rng(seed)``; same seed, same episodes.

    Sizes are validated before the first episode is yielded.
    """
    by_class = _index_by_class(labels)
    _check_sizes(by_class, n_way, k_shot, n_query)
    class_ids = sorted(by_class)
    rng = np.random.default_rng(seed)
    for _ in range(episodes):
        yield _draw(by_class, class_ids, n_way, k_shot, n_query, rng)


def prototypes(features: torch.Tensor, n_way: int, k_shot: int) -> torch.Tensor:
    """Class prototypes ``[n_way, D]``: the mean support feature of each class (support is class-major)."""
    if features.shape[0] != n_way * k_shot:
        raise ValueError(f"expected {n_way * k_shot} support features, got {features.shape[0]}")
    return features.reshape(n_way, k_shot, -1).mean(dim=1)


def cosine_logits(query_feats: torch.Tensor, protos: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Cosine similarity ``[n_query_total, n_way]`` between queries and prototypes, times ``scale``."""
    return scale * (F.normalize(query_feats, dim=-1) @ F.normalize(protos, dim=-1).T)


def mean_confidence_interval(accs: np.ndarray | list[float]) -> tuple[float, float]:
    """Mean and 95% confidence half-width of per-episode accuracies.

    half_width = 1.96 * std(accs, ddof=1) / sqrt(n), the normal-approximation convention used
    throughout the few-shot literature (reported as ``mean +- half_width``). Units follow the
    input (fractions in, fractions out). With a single episode the half-width is NaN.
    """
    a = np.asarray(accs, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError("mean_confidence_interval needs at least one accuracy")
    if a.size == 1:
        return float(a[0]), float("nan")
    return float(a.mean()), float(1.96 * a.std(ddof=1) / math.sqrt(a.size))


@torch.no_grad()
def _embed(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    batch_size: int,
    device: torch.device | str | None,
) -> torch.Tensor:
    """Encode ``images`` in batches; returns float32 CPU features ``[N, D]`` (extra dims flattened)."""
    feats = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start:start + batch_size]
        if device is not None:
            batch = batch.to(device)
        out = encoder(batch)
        feats.append(out.reshape(out.shape[0], -1).float().cpu())
    return torch.cat(feats) if feats else torch.empty(0, 0)


def evaluate_episodes(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor | np.ndarray,
    labels: np.ndarray,
    n_way: int,
    k_shot: int,
    n_query: int,
    episodes: int,
    seed: int,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> dict[str, object]:
    """Cosine nearest-centroid accuracy over ``episodes`` seeded episodes.

    All images are embedded once (batched, under ``torch.no_grad``; put the encoder in eval mode
    beforehand), then each episode's query accuracy is computed against its support prototypes.
    ``images`` must already be in the encoder's input format; batches are moved to ``device`` if
    given. Returns ``{"mean", "ci95", "episodes", "accs"}`` with accuracies as fractions.
    """
    labels = np.asarray(labels).ravel()
    x = torch.as_tensor(images)
    if x.shape[0] != labels.shape[0]:
        raise ValueError(f"{x.shape[0]} images but {labels.shape[0]} labels")
    if episodes < 1 or n_query < 1:
        raise ValueError(f"need episodes >= 1 and n_query >= 1, got {episodes}, {n_query}")
    feats = _embed(encoder, x, batch_size, device)
    query_labels = torch.arange(n_way).repeat_interleave(n_query)
    accs = np.empty(episodes, dtype=np.float64)
    for i, (s_idx, q_idx, _) in enumerate(episode_sampler(labels, n_way, k_shot, n_query, episodes, seed)):
        protos = prototypes(feats[torch.from_numpy(s_idx)], n_way, k_shot)
        pred = cosine_logits(feats[torch.from_numpy(q_idx)], protos).argmax(dim=1)
        accs[i] = (pred == query_labels).double().mean().item()
    mean, ci95 = mean_confidence_interval(accs)
    return {"mean": mean, "ci95": ci95, "episodes": episodes, "accs": accs}
