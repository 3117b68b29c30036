"""``w2s few-shot meta`` (:func:`meta_train`): the Meta-Baseline stage.

The classifier stage's encoder is fine-tuned on N-way K-shot episodes of the base classes with a
cosine classifier over class prototypes and a learnable scale (:class:`CosinePrototypeHead`); a weak
teacher encoder scores the same episodes with its own prototypes and a fixed scale, and the student's
episode logits learn from the teacher's through KD or AdaptConf (``pipeline.objectives``), the
ground-truth query labels through CE.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from pipeline.checkpoint import CheckpointError, load_state_strict, save_model
from pipeline.few_shot.config import FewShotConfig, _check_meta, _save_config
from pipeline.few_shot.data import _fixed_views, _load_encoder, _single_process, _split, embed
from pipeline.few_shot.episodes import cosine_logits, prototypes, sample_episode
from pipeline.nonfinite import check_step, check_weights
from pipeline.objectives import Objective, build_objective
from pipeline.run_dir import RunDir, epoch_line
from pipeline.runtime import RunError, RunLock, setup
from pipeline.specs import dataset_record, teacher_spec

TEACHER_SCALE = 10.0  # the teacher's fixed cosine scale; the student's learnable scale starts here too


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=not console.is_terminal)


class CosinePrototypeHead(nn.Module):
    """Meta-Baseline's classifier: scaled cosine similarity between query features and class prototypes.

    ``scale`` is learnable (initialized at 10) for the student; the teacher uses a fixed 10.
    Support and query features of each episode are class-major (see
    ``pipeline.few_shot.episodes.sample_episode``).
    """

    def __init__(self, scale: float = TEACHER_SCALE) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, support: Tensor, query: Tensor, n_way: int, k_shot: int) -> Tensor:
        """``support [E, n_way*k_shot, D]``, ``query [E, Q, D]`` -> logits ``[E*Q, n_way]``."""
        return self.scale * episode_logits(support, query, n_way, k_shot)


def episode_logits(support: Tensor, query: Tensor, n_way: int, k_shot: int) -> Tensor:
    """Unscaled cosine logits of every episode's queries against its prototypes, stacked ``[E*Q, n_way]``."""
    return torch.cat([cosine_logits(q, prototypes(s, n_way, k_shot)) for s, q in zip(support, query)])


@dataclass
class EpisodeLayout:
    """How one training batch is laid out: per episode, its support block then its query block."""

    episodes: int
    n_way: int
    k_shot: int
    n_query: int

    @property
    def per_episode(self) -> int:
        return self.n_way * (self.k_shot + self.n_query)

    @property
    def images(self) -> int:
        return self.episodes * self.per_episode

    def split(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """Features of a batch ``[images, D]`` -> support ``[E, n_way*k, D]`` and query ``[E, n_way*q, D]``."""
        f = feats.reshape(self.episodes, self.per_episode, -1)
        s = self.n_way * self.k_shot
        return f[:, :s], f[:, s:]

    def query_labels(self, device: torch.device) -> Tensor:
        """Episode labels of the stacked queries: ``j // n_query`` within each episode."""
        one = torch.arange(self.n_way, device=device).repeat_interleave(self.n_query)
        return one.repeat(self.episodes)


def epoch_batches(by_class: dict[int, np.ndarray], layout: EpisodeLayout, batches: int, seed: int,
                  epoch: int) -> list[np.ndarray]:
    """The sample indices of every batch of an epoch; batch ``b`` draws its episodes from ``rng([seed, epoch, b])``.

    So a resumed run sees the same episodes as an uninterrupted one.
    """
    out = []
    for b in range(batches):
        rng = np.random.default_rng([seed, epoch, b])
        parts = []
        for _ in range(layout.episodes):
            support, query, _ = sample_episode(by_class, layout.n_way, layout.k_shot, layout.n_query, rng)
            parts += [support, query]
        out.append(np.concatenate(parts))
    return out


class MetaTrainer:
    """One Meta-Baseline run (see :func:`meta_train`)."""

    def __init__(self, cfg: FewShotConfig, resume: bool, console: Console) -> None:
        self.cfg, self.resume, self.console = cfg, resume, console
        self.out = Path(cfg.run.output)
        self.run_dir = RunDir(self.out, resume, console)

    def run(self) -> dict[str, Any]:
        _check_meta(self.cfg.meta)
        _single_process()
        with RunLock(self.out):
            self.prepare()
            start, history = self._restore()
            _save_config(self.cfg, self.out)
            for epoch in range(start, self.cfg.meta.epochs):
                row = self.train_epoch(epoch)  # stops at a non-finite loss, before this epoch's checkpoint
                check_weights([self.model, self.head], epoch, self.cfg.meta.epochs, self.device, lr_key="meta.lr")
                history.append(row)
                self.run_dir.write_metrics(history)
                self._checkpoint(epoch, history)
                self.console.print(epoch_line(row, self.cfg.meta.epochs, EPOCH_LINE))
            return self._finish(history)

    def prepare(self) -> None:
        cfg, m = self.cfg, self.cfg.meta
        self.device, _ = setup(cfg.run.device, cfg.run.num_threads, cfg.run.seed)
        self.source = _split(cfg.data, cfg.data.train_split, train=True)
        self.by_class = {int(c): np.flatnonzero(self.source.labels == c) for c in np.unique(self.source.labels)}
        self.layout = EpisodeLayout(m.episodes_per_batch, m.n_way, m.k_shot, m.n_query)
        self.model, self.meta, self.encoder_sha = _load_encoder(cfg.encoder.checkpoint, "encoder", self.source,
                                                                self.device)
        self.head = CosinePrototypeHead().to(self.device)
        self.objective: Objective = build_objective(
            "vanilla" if m.objective == "none" else m.objective, kd_temperature=m.kd_temperature,
            threshold=m.threshold, gt_weight=m.gt_weight, kd_weight=m.kd_weight, warmup_rate=m.warmup_rate,
            warmup_style=m.warmup_style)
        specs = [teacher_spec(self.source, self.meta)]
        self.teacher: nn.Module | None = None
        self.teacher_sha: str | None = None
        if self.objective.needs_teacher:
            self.teacher, tmeta, self.teacher_sha = _load_encoder(cfg.teacher.checkpoint, "teacher", self.source,
                                                                  self.device)
            self.teacher.eval().requires_grad_(False)
            specs.append(teacher_spec(self.source, tmeta))
        self.specs = specs
        # Meta-Baseline's optimizer: plain SGD over every parameter, the cosine scale included.
        self.optimizer = torch.optim.SGD(list(self.model.parameters()) + list(self.head.parameters()), lr=m.lr,
                                         momentum=m.momentum, weight_decay=m.weight_decay)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        m, layout = self.cfg.meta, self.layout
        batches = epoch_batches(self.by_class, layout, m.batches_per_epoch, self.cfg.run.seed, epoch)
        labels = layout.query_labels(self.device)
        self.model.train()
        sums = np.zeros(7)  # loss gt kd align weight correct agree
        start = time.perf_counter()
        with _progress(self.console) as bar:
            task = bar.add_task(f"epoch {epoch + 1}/{m.epochs}", total=len(batches))
            for step, b in enumerate(_fixed_views(self.source, self.specs, batches, layout.images, self.device,
                                                  self.cfg.run.num_threads)):
                support, query = layout.split(embed(self.model, b.inputs[0]))
                zs = self.head(support, query, layout.n_way, layout.k_shot)
                zt = None
                if self.teacher is not None:
                    with torch.no_grad():
                        ts, tq = layout.split(embed(self.teacher, b.inputs[1]))
                        zt = TEACHER_SCALE * episode_logits(ts, tq, layout.n_way, layout.k_shot)
                out = self.objective(zs, zt, labels, epoch=epoch, epochs=m.epochs)
                self.optimizer.zero_grad(set_to_none=True)
                out.total.backward()
                self.optimizer.step()
                loss = out.total.item()  # the metrics below sync every step anyway
                check_step(loss, None, epoch, m.epochs, step, len(batches), self.device, lr_key="meta.lr")
                pred = zs.detach().argmax(1)
                sums += [loss, out.terms["gt"].item(), float(out.terms.get("kd", torch.zeros(())).item()),
                         float(out.terms.get("align", torch.zeros(())).item()),
                         0.0 if out.sample_weight is None else out.sample_weight.mean().item(),
                         (pred == labels).float().mean().item(),
                         0.0 if zt is None else (pred == zt.argmax(1)).float().mean().item()]
                bar.advance(task)
        elapsed = time.perf_counter() - start
        s = sums / len(batches)
        row = {"epoch": epoch, "loss": s[0], "gt": s[1], "train_acc": s[5], "scale": float(self.head.scale.item()),
               "episodes_per_s": len(batches) * layout.episodes / elapsed, "epoch_s": elapsed}
        if self.teacher is not None:
            row.update(kd=s[2], train_agreement=s[6])
        if self.objective.sample_weight is not None:
            row.update(align=s[3], weight_mean=s[4])
        return row

    def _restore(self) -> tuple[int, list[dict[str, float]]]:
        if not self.run_dir.check_start(self.run_dir.state_path.exists()):
            return 0, []
        state, start, history = self.run_dir.load_epoch_state()
        try:
            load_state_strict(self.model, state["model"], str(self.run_dir.state_path))
            load_state_strict(self.head, state["head"], str(self.run_dir.state_path))
        except CheckpointError as exc:
            raise RunError(f"cannot resume: {exc}") from exc
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        return start, history

    def _checkpoint(self, epoch: int, history: list[dict[str, float]]) -> None:
        self.run_dir.save_epoch_state(epoch, {
            "model": self.model.state_dict(), "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, history)

    def _finish(self, history: list[dict[str, float]]) -> dict[str, Any]:
        m, last = self.cfg.meta, history[-1]
        scale = float(self.head.scale.item())
        meta = dict(self.meta, dataset=dataset_record(self.source), stage="meta", cosine_scale=scale,
                    encoder_init={"checkpoint": str(self.cfg.encoder.checkpoint), "sha256": self.encoder_sha})
        save_model(self.model, self.out, meta)
        result: dict[str, Any] = {
            "role": "meta", "objective": m.objective, "model": self.meta["model"], "epochs": m.epochs,
            "episodes": m.epochs * m.batches_per_epoch * m.episodes_per_batch, "n_way": m.n_way, "k_shot": m.k_shot,
            "n_query": m.n_query, "train_acc": last["train_acc"], "train_agreement": last.get("train_agreement"),
            "cosine_scale": scale, "encoder_sha256": self.encoder_sha, "teacher_sha256": self.teacher_sha,
            "train_samples": len(self.source), "train_classes": self.source.num_classes,
        }
        self.run_dir.write_result(result)
        return result


EPOCH_LINE = (("loss", "loss {:.4f}"), ("train_acc", "train {:.4f}"), ("scale", "scale {:.2f}"),
              ("weight_mean", "weight {:.3f}"), ("train_agreement", "agree {:.4f}"),
              ("episodes_per_s", "{:.1f} episodes/s"))


def meta_train(cfg: FewShotConfig, resume: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Meta-Baseline fine-tuning of ``encoder.checkpoint`` on episodes of ``data.train_split`` (base classes).

    Each step embeds ``meta.episodes_per_batch`` episodes (support then queries, one forward in
    train mode); the student's logits are its learnable-scale cosine similarities to the support
    prototypes, the teacher's (``meta.objective`` kd/adaptconf) the same with its own encoder and a
    fixed scale 10. Loss: ``build_objective(...)(student, teacher, query labels, epoch, epochs)``,
    i.e. ``gt_weight * CE + kd_weight * (KD | AdaptConf)``. Every epoch ends with an atomic
    checkpoint (``--resume`` continues to the same result); the end writes ``model.safetensors``
    + ``model.json`` (loadable by :func:`evaluate` and ``load_model``) and ``result.json``.
    """
    return MetaTrainer(cfg, resume, console or Console(stderr=True)).run()
