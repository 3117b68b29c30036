"""``w2s few-shot meta`` (:func:`meta_train`): the Meta-Baseline stage.

The classifier stage's encoder is fine-tuned on N-way K-shot episodes of the base classes with a
cosine classifier over class prototypes and a learnable scale (:class:`CosinePrototypeHead`); a weak
teacher encoder scores the same episodes with its own prototypes and a fixed scale, and the student's
episode logits learn from the teacher's through KD or AdaptConf (``pipeline.objectives``), the
ground-truth query labels through CE.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import Tensor, nn

from pipeline.engine.checkpoint import CheckpointError

from pipeline.models.files import load_state_strict, save_model
from pipeline.scenarios.few_shot.config import FewShotConfig
from pipeline.scenarios.few_shot.data import _fixed_views, _load_encoder, _single_process, _split, embed
from pipeline.scenarios.few_shot.episodes import cosine_logits, prototypes, sample_episode
from pipeline.models.ghost_bn import set_bn_batch
from pipeline.objectives import Objective, build_objective
from pipeline.engine.run_loop import Epoch, RunLoop, StepOut, Task
from pipeline.engine.runtime import RunError, setup, stderr_console
from pipeline.student.specs import dataset_record, teacher_spec

TEACHER_SCALE = 10.0  # the teacher's fixed cosine scale; the student's learnable scale starts here too


class CosinePrototypeHead(nn.Module):
    """Meta-Baseline's classifier: scaled cosine similarity between query features and class prototypes.

    ``scale`` is learnable (initialized at 10) for the student; the teacher uses a fixed 10.
    Support and query features of each episode are class-major (see
    ``pipeline.scenarios.few_shot.episodes.sample_episode``).
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


class MetaTrainer(Task):
    """One Meta-Baseline run as a task of the run loop (see :func:`meta_train`)."""

    lr_key = "meta.lr"

    def __init__(self, cfg: FewShotConfig, console: Console) -> None:
        self.cfg, self.console = cfg, console
        self.output, self.epochs = Path(cfg.run.output), cfg.meta.epochs
        self.checkpoint_every_steps, self.trackers = cfg.run.checkpoint_every_steps, cfg.run.log
        self.epoch_line = EPOCH_LINE

    def prepare(self) -> None:
        cfg, m = self.cfg, self.cfg.meta
        self.device, self.dist = setup(cfg.run.device, cfg.run.num_threads, cfg.run.seed)
        self.source = _split(cfg.data, cfg.data.train_split, train=True)
        self.by_class = {int(c): np.flatnonzero(self.source.labels == c) for c in np.unique(self.source.labels)}
        self.layout = EpisodeLayout(m.episodes_per_batch, m.n_way, m.k_shot, m.n_query)
        self.model, self.meta, self.encoder_sha = _load_encoder(cfg.encoder.checkpoint, "encoder", self.source,
                                                                self.device)
        # the paper's 2-GPU DataParallel BN statistic: ghost batches of whole episodes (ghost_bn)
        set_bn_batch(self.model, m.bn_episodes * self.layout.per_episode, "meta.bn_episodes")
        self.head = CosinePrototypeHead().to(self.device)
        self.objective: Objective = build_objective(
            "vanilla" if m.objective == "none" else m.objective, kd_temperature=m.kd_temperature,
            threshold=m.threshold, gt_weight=m.gt_weight, kd_weight=m.kd_weight, warmup_rate=m.warmup_rate,
            warmup_style=m.warmup_style, **m.params)
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
        self.labels = self.layout.query_labels(self.device)

    def modules(self) -> list[nn.Module]:
        return [self.model, self.head]

    def epoch(self, epoch: int, start_step: int) -> Epoch:
        batches = epoch_batches(self.by_class, self.layout, self.cfg.meta.batches_per_epoch, self.cfg.run.seed, epoch)
        self.model.train()
        return Epoch(len(batches), _fixed_views(self.source, self.specs, batches[start_step:], self.layout.images,
                                                self.device, self.cfg.run.num_threads))

    def train_step(self, b: Any, epoch: int, step: int) -> StepOut:
        """One step over a batch of episodes; each metric is a per-step mean, averaged over the epoch's steps."""
        layout, labels = self.layout, self.labels
        support, query = layout.split(embed(self.model, b.inputs[0]))
        zs = self.head(support, query, layout.n_way, layout.k_shot)
        zt = None
        if self.teacher is not None:
            with torch.no_grad():
                ts, tq = layout.split(embed(self.teacher, b.inputs[1]))
                zt = TEACHER_SCALE * episode_logits(ts, tq, layout.n_way, layout.k_shot)
        out = self.objective(zs, zt, labels, epoch=epoch, epochs=self.epochs)
        self.optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        self.optimizer.step()
        loss = out.total.item()  # the metrics below sync every step anyway
        pred = zs.detach().argmax(1)
        metrics: dict[str, tuple[Any, float]] = {name: (term.item(), 1) for name, term in out.terms.items()}
        metrics.update(loss=(loss, 1), train_acc=((pred == labels).float().mean().item(), 1))
        if zt is not None:
            metrics["train_agreement"] = ((pred == zt.argmax(1)).float().mean().item(), 1)
        if out.sample_weight is not None:
            metrics["weight_mean"] = (out.sample_weight.mean().item(), 1)
        return StepOut(loss, metrics)

    def epoch_row(self, epoch: int, means: dict[str, Any], elapsed: float) -> dict[str, Any]:
        m = self.cfg.meta
        row = {"epoch": epoch, "loss": means["loss"], "gt": means["gt"], "train_acc": means["train_acc"],
               "scale": float(self.head.scale.item()),
               "episodes_per_s": m.batches_per_epoch * m.episodes_per_batch / elapsed, "epoch_s": elapsed}
        row.update({term: means[term] for term in self.objective.terms})  # each objective's declared terms
        if self.teacher is not None:
            row.update(train_agreement=means["train_agreement"])
        if self.objective.sample_weight is not None:
            row.update(weight_mean=means["weight_mean"])
        return row

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "head": self.head.state_dict(),
                "optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any], origin: Path) -> None:
        try:
            load_state_strict(self.model, state["model"], str(origin))
            load_state_strict(self.head, state["head"], str(origin))
        except CheckpointError as exc:
            raise RunError(f"cannot resume: {exc}") from exc
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])

    def finish(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        m, last = self.cfg.meta, history[-1]
        scale = float(self.head.scale.item())
        meta = dict(self.meta, dataset=dataset_record(self.source), stage="meta", cosine_scale=scale,
                    encoder_init={"checkpoint": str(self.cfg.encoder.checkpoint), "sha256": self.encoder_sha})
        save_model(self.model, self.output, meta)
        return {
            "role": "meta", "objective": m.objective, "model": self.meta["model"], "epochs": m.epochs,
            "episodes": m.epochs * m.batches_per_epoch * m.episodes_per_batch, "n_way": m.n_way, "k_shot": m.k_shot,
            "n_query": m.n_query, "bn_episodes": m.bn_episodes, "train_acc": last["train_acc"],
            "train_agreement": last.get("train_agreement"),
            "cosine_scale": scale, "encoder_sha256": self.encoder_sha, "teacher_sha256": self.teacher_sha,
            "train_samples": len(self.source), "train_classes": self.source.num_classes,
        }


EPOCH_LINE = (("loss", "loss {:.4f}"), ("train_acc", "train {:.4f}"), ("scale", "scale {:.2f}"),
              ("weight_mean", "weight {:.3f}"), ("train_agreement", "agree {:.4f}"),
              ("episodes_per_s", "{:.1f} episodes/s"))


def meta_train(cfg: FewShotConfig, resume: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Meta-Baseline fine-tuning of ``encoder.checkpoint`` on episodes of ``data.train_split`` (base classes).

    Each step embeds ``meta.episodes_per_batch`` episodes (support then queries, one forward in
    train mode; with ``meta.bn_episodes`` its BatchNorm statistics are per group of that many episodes,
    as the paper's 2-GPU DataParallel computes them: ``pipeline.models.ghost_bn``); the student's
    logits are its learnable-scale cosine similarities to the support prototypes, the teacher's
    (``meta.objective`` kd/adaptconf) the same with its own encoder and a fixed scale 10. Loss:
    ``build_objective(...)(student, teacher, query labels, epoch, epochs)``, i.e.
    ``gt_weight * CE + kd_weight * (KD | AdaptConf)``. Every epoch ends with an atomic
    checkpoint (``--resume`` continues to the same result); the end writes ``model.safetensors``
    + ``model.json`` (loadable by :func:`evaluate` and ``load_model``) and ``result.json``.
    """
    _single_process()
    console = console or stderr_console()
    return RunLoop(MetaTrainer(cfg, console), resume, console).run()
