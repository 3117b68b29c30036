"""The few-shot scenario: episodic evaluation of an encoder and Meta-Baseline fine-tuning with a weak teacher.

The scenario has three steps (docs/scenarios/few_shot.md):

1. **classifier stage**: the ordinary ``w2s train-teacher`` / ``infer-teacher`` / ``train-student``
   on the base classes (``data.classes``, or miniImageNet's ``train_phase_train``);
2. **meta stage** (:func:`meta_train`, ``w2s few-shot meta``): Meta-Baseline. The classifier
   stage's encoder is fine-tuned on N-way K-shot episodes of the base classes with a cosine
   classifier over class prototypes and a learnable scale; a weak teacher encoder scores the same
   episodes with its own prototypes, and the student's episode logits learn from the teacher's
   through KD or AdaptConf (``pipeline.objectives``), the ground-truth query labels through CE;
3. **evaluation** (:func:`evaluate`, ``w2s few-shot eval``): cosine nearest-centroid accuracy over
   seeded episodes of the novel classes, mean and 95% confidence half-width per shot count.

Images reach the models as the fixed view 0 (whole image, resized to the model's input size,
normalized with the model's own mean/std from its model.json), replayed by the same DALI code as
the two pipeline stages. Few-shot commands run in one process (no torchrun).

The commands read their own YAML schema, :class:`FewShotConfig`, parsed by the same strict loader
as the pipeline's configs: an unknown key is an error listing its section's valid keys.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from pipeline.checkpoint import (CheckpointError, atomic_write, load_model, load_state, load_state_strict,
                                 save_model, save_state, write_json)
from pipeline.config import ConfigError, DataConfig, apply_file_and_overrides
from pipeline.fewshot_eval import cosine_logits, evaluate_episodes, prototypes, sample_episode
from pipeline.loader import Batch, ViewReplayer, crop_size_for, stream
from pipeline.nonfinite import check_step, check_weights
from pipeline.objectives import WARMUP_STYLES, Objective, build_objective
from pipeline.runtime import RunError, RunLock, setup
from pipeline.sources.base import Source
from pipeline.sources.registry import load_split
from pipeline.specs import dataset_record, teacher_spec
from pipeline.views import ViewPolicy, sample_params

META_OBJECTIVES = ("none", "kd", "adaptconf")
TEACHER_SCALE = 10.0  # the teacher's fixed cosine scale; the student's learnable scale starts here too
FIXED_VIEW = ViewPolicy(kind="none")  # only view 0 is used: the whole image (crop_pct 1), no flip


# -- configuration ------------------------------------------------------------------------------

@dataclass
class EncoderConfig:
    """The encoder to evaluate or fine-tune: a ``w2s train-teacher`` / ``train-student`` / ``few-shot meta``
    run directory (or its model.safetensors)."""

    checkpoint: str | None = None


@dataclass
class FewShotTeacherConfig:
    """The weak teacher of the meta stage: a classifier-stage run directory (or its model.safetensors)."""

    checkpoint: str | None = None


@dataclass
class EpisodesConfig:
    """Evaluation episodes: ``episodes`` seeded ``n_way``-way episodes per shot count in ``shots``.

    ``batch_size`` is the number of images embedded at once.
    """

    n_way: int = 5
    shots: list[int] = field(default_factory=lambda: [1, 5])
    n_query: int = 15
    episodes: int = 2000
    seed: int = 0
    batch_size: int = 256


@dataclass
class MetaConfig:
    """Meta-Baseline training: ``epochs`` x ``batches_per_epoch`` SGD steps of ``episodes_per_batch`` episodes.

    ``objective``: none (plain Meta-Baseline, query CE only), kd or adaptconf (the arguments of
    ``pipeline.objectives.build_objective``; ``warmup_rate``/``warmup_style`` are AdaptConf's beta warm-up).
    """

    epochs: int = 20
    batches_per_epoch: int = 200
    episodes_per_batch: int = 4
    n_way: int = 5
    k_shot: int = 1
    n_query: int = 15
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    objective: str = "none"
    kd_temperature: float = 10.0
    threshold: float = 0.25
    warmup_rate: float = 0.25
    warmup_style: str = "few_shot"
    kd_weight: float = 1.0
    gt_weight: float = 1.0


@dataclass
class FewShotRunConfig:
    """Where results go and how the process runs."""

    output: str = "runs/few_shot/default"
    seed: int = 0
    device: str = "cpu"
    num_threads: int = 2


@dataclass
class FewShotConfig:
    """A few-shot command's config. ``eval`` reads data (test split), encoder, episodes and run;
    ``meta`` reads data (train split), encoder, teacher, meta and run."""

    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    teacher: FewShotTeacherConfig = field(default_factory=FewShotTeacherConfig)
    episodes: EpisodesConfig = field(default_factory=EpisodesConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    run: FewShotRunConfig = field(default_factory=FewShotRunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_few_shot_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FewShotConfig:
    """Defaults, then the YAML file, then each ``key=value`` override in order (strict, like ``load_config``)."""
    cfg = apply_file_and_overrides(FewShotConfig(), path, overrides)
    if cfg.data.noise_mode != "none":
        raise ConfigError("data.noise_mode: the few-shot commands do not inject label noise; leave it at none")
    return cfg


def _positive(section: str, **values: int | float) -> None:
    """ConfigError naming the first of ``values`` that is not > 0."""
    for key, value in values.items():
        if value <= 0:
            raise ConfigError(f"{section}.{key} must be > 0, got {value}")


def _check_episodes(e: EpisodesConfig) -> None:
    _positive("episodes", n_way=e.n_way, n_query=e.n_query, episodes=e.episodes, batch_size=e.batch_size)
    if not e.shots or any(k < 1 for k in e.shots):
        raise ConfigError(f"episodes.shots must be a non-empty list of shot counts >= 1, got {e.shots}")


def _check_meta(m: MetaConfig) -> None:
    if m.objective not in META_OBJECTIVES:
        raise ConfigError(f"meta.objective must be one of {', '.join(META_OBJECTIVES)}, got {m.objective!r}")
    if m.warmup_style not in WARMUP_STYLES:
        raise ConfigError(f"meta.warmup_style must be one of {', '.join(WARMUP_STYLES)}, got {m.warmup_style!r}")
    _positive("meta", epochs=m.epochs, batches_per_epoch=m.batches_per_epoch, episodes_per_batch=m.episodes_per_batch,
              k_shot=m.k_shot, n_query=m.n_query, lr=m.lr)
    if m.n_way < 2:
        raise ConfigError(f"meta.n_way must be >= 2, got {m.n_way}")


# -- data and models ----------------------------------------------------------------------------

def _split(data: DataConfig, split: str, train: bool) -> Source:
    """One split through the shared selection (``pipeline.sources.registry.load_split``): ``data.classes``
    kept and relabelled, then the subset/limit (training) or ``test_limit`` (test); only this split is read."""
    d = data
    common = dict(data_dir=d.data_dir, image_size=d.image_size, skip_corrupt=d.skip_corrupt, classes=d.classes)
    if train:
        return load_split(d.source, split, training=True, subset=d.subset, subset_seed=d.subset_seed, limit=d.limit,
                          noise_mode=d.noise_mode, noise_rate=d.noise_rate, noise_seed=d.noise_seed, **common)
    return load_split(d.source, split, training=False, limit=d.test_limit, **common)


def _load_encoder(path: str | None, role: str, source: Source, device: torch.device) -> tuple[nn.Module, dict[str, Any], str]:
    """A saved model on ``device``, checked against the data's channels: (model, model.json, sha256)."""
    if not path:
        raise RunError(f"{role}.checkpoint is not set (a w2s train-teacher / train-student / few-shot meta run directory)")
    model, meta, sha = load_model(path)
    if int(meta["in_chans"]) != source.channels:
        raise RunError(f"{role} {path} takes {meta['in_chans']} channel(s) but {source.name} images have {source.channels}")
    return model.to(device), meta, sha


def embed(model: nn.Module, x: Tensor) -> Tensor:
    """Pooled, flattened pre-logit features ``[B, D]``: timm's ``forward_head(forward_features(x), pre_logits=True)``.

    For the few-shot backbones and the small models this is ``forward_features`` itself; for timm
    models whose ``forward_features`` returns a feature map, ``forward_head`` pools it.
    """
    feats = model.forward_features(x)  # type: ignore[operator]
    if hasattr(model, "forward_head"):
        feats = model.forward_head(feats, pre_logits=True)  # type: ignore[operator]
    return feats.reshape(feats.shape[0], -1)


def _fixed_views(source: Source, specs: list[Any], batches: list[np.ndarray], batch_size: int, device: torch.device,
                 num_threads: int) -> Iterator[Batch]:
    """Stream the fixed view of ``batches`` of sample indices, one normalized tensor per input spec."""
    replayer = ViewReplayer(source.image_hw, specs, batch_size, crop_size_for(FIXED_VIEW, source), str(device),
                            num_threads, decode=source.encoded)
    return stream(source, batches, replayer, lambda idx: sample_params(FIXED_VIEW, idx, 0, source.sizes_of(idx)))


@torch.no_grad()
def embed_source(model: nn.Module, meta: dict[str, Any], source: Source, batch_size: int, device: torch.device,
                 num_threads: int) -> Tensor:
    """Features ``[N, D]`` (float32, CPU) of every image's fixed view, in the model's own normalization."""
    model.eval()
    order = np.arange(len(source), dtype=np.int64)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    feats = [embed(model, b.inputs[0]).float().cpu()
             for b in _fixed_views(source, [teacher_spec(source, meta)], batches, batch_size, device, num_threads)]
    return torch.cat(feats)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=not console.is_terminal)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch single-threaded inside: episodes are tiny matrix products, and worker threads only add
    synchronization (the 2,000-episode loop ran 10x slower with 2 threads on 2 busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _single_process() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RunError("the few-shot commands run in one process; start them without torchrun")


def _save_config(cfg: FewShotConfig, out: Path) -> None:
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write(out / "config.yaml", lambda p: Path(p).write_text(text))


# -- evaluation ---------------------------------------------------------------------------------

def evaluate(cfg: FewShotConfig, console: Console | None = None) -> dict[str, Any]:
    """Episodic accuracy of ``encoder.checkpoint`` on ``data.test_split`` (with ``data.classes``).

    Every image is embedded once; each shot count in ``episodes.shots`` then gets
    ``episodes.episodes`` episodes drawn from ``episodes.seed`` (same config, same episodes, same
    numbers). Writes ``config.yaml`` and ``result.json`` (accuracies as fractions) to ``run.output``.
    """
    console = console or Console(stderr=True)
    _check_episodes(cfg.episodes)
    _single_process()
    out = Path(cfg.run.output)
    with RunLock(out):
        device, _ = setup(cfg.run.device, cfg.run.num_threads, cfg.run.seed)
        source = _split(cfg.data, cfg.data.test_split, train=False)
        model, meta, sha = _load_encoder(cfg.encoder.checkpoint, "encoder", source, device)
        e = cfg.episodes
        start = time.perf_counter()
        feats = embed_source(model, meta, source, e.batch_size, device, cfg.run.num_threads)
        shots: dict[str, dict[str, float]] = {}
        for k in e.shots:
            with _one_thread():
                r = evaluate_episodes(lambda x: x, feats, source.labels, e.n_way, k, e.n_query, e.episodes, e.seed,
                                      batch_size=len(feats))
            shots[str(k)] = {"mean": float(r["mean"]), "ci95": float(r["ci95"])}  # type: ignore[arg-type]
            console.print(f"{e.n_way}-way {k}-shot: {100 * r['mean']:.2f} +- {100 * r['ci95']:.2f} %  "  # type: ignore[operator]
                          f"({e.episodes} episodes)")
        result: dict[str, Any] = {
            "encoder": str(cfg.encoder.checkpoint), "encoder_sha256": sha, "model": meta["model"],
            "feature_dim": int(feats.shape[1]), "dataset": {"source": source.name, "split": source.split,
                                                            "num_samples": len(source), "num_classes": source.num_classes},
            "n_way": e.n_way, "n_query": e.n_query, "episodes": e.episodes, "seed": e.seed, "shots": shots,
            "seconds": time.perf_counter() - start,
        }
        _save_config(cfg, out)
        write_json(out / "result.json", result)
    return result


# -- meta stage ---------------------------------------------------------------------------------

class CosinePrototypeHead(nn.Module):
    """Meta-Baseline's classifier: scaled cosine similarity between query features and class prototypes.

    ``scale`` is learnable (initialized at 10) for the student; the teacher uses a fixed 10.
    Support and query features of each episode are class-major (see ``fewshot_eval.sample_episode``).
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

    def run(self) -> dict[str, Any]:
        _check_meta(self.cfg.meta)
        _single_process()
        with RunLock(self.out):
            self._prepare()
            start, history = self._restore()
            _save_config(self.cfg, self.out)
            for epoch in range(start, self.cfg.meta.epochs):
                row = self._train_epoch(epoch)  # stops at a non-finite loss, before this epoch's checkpoint
                check_weights([self.model, self.head], epoch, self.cfg.meta.epochs, self.device, lr_key="meta.lr")
                history.append(row)
                self._write_metrics(history)
                self._checkpoint(epoch, history)
                self.console.print(_epoch_line(row, self.cfg.meta.epochs))
            return self._finish(history)

    def _prepare(self) -> None:
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

    def _train_epoch(self, epoch: int) -> dict[str, float]:
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
        if self.objective.name == "adaptconf":
            row.update(align=s[3], weight_mean=s[4])
        return row

    def _restore(self) -> tuple[int, list[dict[str, float]]]:
        state_path = self.out / "checkpoints" / "state.pt"
        if (self.out / "result.json").exists() and not self.resume:
            raise RunError(f"{self.out} already holds a finished run; choose another run.output")
        if not state_path.exists():
            if self.resume:
                self.console.print(f"no checkpoint in {self.out}; starting from scratch")
            return 0, []
        if not self.resume:
            raise RunError(f"{self.out} holds an unfinished run; pass --resume to continue it or choose another run.output")
        state = load_state(state_path)
        try:
            load_state_strict(self.model, state["model"], str(state_path))
            load_state_strict(self.head, state["head"], str(state_path))
        except CheckpointError as exc:
            raise RunError(f"cannot resume: {exc}") from exc
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.console.print(f"resuming {self.out} after epoch {state['epoch'] + 1}")
        return int(state["epoch"]) + 1, json.loads(state["history"])

    def _checkpoint(self, epoch: int, history: list[dict[str, float]]) -> None:
        save_state(self.out / "checkpoints" / "state.pt", {
            "epoch": epoch, "model": self.model.state_dict(), "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
            "history": json.dumps(history)})

    def _write_metrics(self, history: list[dict[str, float]]) -> None:
        lines = "".join(json.dumps(r) + "\n" for r in history)
        atomic_write(self.out / "metrics.jsonl", lambda p: Path(p).write_text(lines))

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
        write_json(self.out / "result.json", result)
        return result


def _epoch_line(row: dict[str, float], epochs: int) -> str:
    parts = [f"epoch {int(row['epoch']) + 1}/{epochs}", f"loss {row['loss']:.4f}", f"train {row['train_acc']:.4f}",
             f"scale {row['scale']:.2f}"]
    if "weight_mean" in row:
        parts.append(f"weight {row['weight_mean']:.3f}")
    if "train_agreement" in row:
        parts.append(f"agree {row['train_agreement']:.4f}")
    parts.append(f"{row['episodes_per_s']:.1f} episodes/s")
    return "  ".join(parts)


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
