"""``w2s pretrain``: self-supervised pre-training of a strong student on the training images, their labels unread.

**SimCLR** (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations"), as a task of the shared run loop. Each step draws two views of every image of
the batch with the shared batched augmentations (``pipeline.data.batch_augment``): a random
resized crop of scale (0.2, 1) (the usual choice for 32-pixel images; SimCLR's ImageNet range is
(0.08, 1)), a flip, and SimCLR's colour distortion of strength 0.5 (its CIFAR-10 setting: jitter
0.4/0.4/0.4/0.1 with p 0.8, grayscale with p 0.2), of which grey images keep brightness and
contrast: without them the crops of one image share their grey-level histogram, the shortcut that
SimCLR's section 3 (Figure 6) shows crops alone fall for (Fashion-MNIST, 4 epochs on 6,000 images:
the kNN accuracy fell from the random network's 0.71 to 0.56 with crop and flip only, and stayed at
0.71-0.73 with them). The backbone is ``model.name`` built as every stage builds it, with its
classifier removed (timm's ``reset_classifier(0)``: it returns the pooled pre-logit features
``h``); a 2-layer MLP ``g(h) = W2 ReLU(W1 h)`` (hidden = feature dim, out ``pretrain.proj_dim``)
projects them, and :func:`nt_xent` at ``pretrain.temperature`` compares the projections. Both
views go through the network as one batch of 2N, as google-research/simclr does, so BatchNorm sees
both. Optimizer, schedule, epochs and batch are the ``optim`` section's (timm's optimizer, warm-up
+ cosine or multistep), as for supervised runs.

Labels: training reads pixels only (``Source.read``); the labels enter the per-epoch **kNN
monitor** alone (:func:`knn_accuracy`: the backbone's features of the training images' fixed view
are the bank and its labels the votes, the test split's fixed view is classified), so they change
the reported accuracy and never a weight. The run directory ends with ``model.safetensors`` +
``model.json``: the backbone with a zero-initialized classifier for the training classes
(SimCLR's ``zero_init_logits_layer`` for linear evaluation; the record's ``stage`` is
``pretrain``), which ``model.pretrained`` loads, and ``result.json`` with the last kNN accuracy.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import Tensor, nn

from pipeline.config.schema import Config
from pipeline.data.batch_augment import ContrastiveAugment, step_rng
from pipeline.data.loader import epoch_order
from pipeline.data.sources.base import Source
from pipeline.data.sources.registry import load_run_splits
from pipeline.engine.checkpoint import CheckpointError, load_training_state, training_state
from pipeline.engine.resource_checks import check_batch
from pipeline.engine.run_loop import Epoch, RunLoop, StepOut, Task
from pipeline.engine.runtime import RunError, setup, stderr_console
from pipeline.models.files import load_state_strict, save_model
from pipeline.student.accuracy import fixed_view_replayer, fixed_view_stream
from pipeline.student.setup import build_model, build_optimizer
from pipeline.student.specs import dataset_record, input_spec, view_policy
from pipeline.student.step import Precision

METRIC_KEYS = ("epoch", "lr", "loss", "knn_acc", "val_knn_acc", "images_per_s", "epoch_s")
EPOCH_LINE = (("loss", "loss {:.4f}"), ("knn_acc", "knn {:.4f}"), ("images_per_s", "{:.0f} img/s"))
CROP_SCALE = (0.2, 1.0)
KNN_T = 0.07  # the vote weight exp(cos / T) of DINO's weighted kNN (facebookresearch/dino eval_knn.py --temperature)
VIEWS = 0  # the random stream of a step's two views (step_rng)
PRIOR_STAGE = "pretrain"  # model.json "stage" of a prior


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent loss of two views' projections ``[N, d]`` (the paper's eq. 1 averaged over the 2N anchors).

    For each anchor i of the 2N, ``-log(exp(s_ij / t) / sum_{k != i} exp(s_ik / t))`` with ``s`` the
    cosine similarity and ``j`` the other view of the same image; the mean over anchors. (The
    official google-research/simclr ``objective.py`` returns the sum of its two directions' means,
    twice this.) Written here rather than taken from ``lightly``, whose install brings
    pytorch-lightning and hydra-core. Computed in float32 whatever the autocast.
    """
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))  # an anchor is not its own candidate
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def knn_accuracy(bank: Tensor, bank_labels: Tensor, queries: Tensor, labels: Tensor, k: int, num_classes: int,
                 chunk: int) -> float:
    """Top-1 accuracy of DINO's weighted kNN: each query's ``k`` most cosine-similar bank rows vote ``exp(cos / 0.07)``.

    ``bank`` and ``queries`` hold L2-normalized features; queries are classified ``chunk`` at a time.
    """
    correct = 0
    for start in range(0, len(queries), chunk):
        sims, idx = (queries[start:start + chunk] @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(sims), num_classes, device=sims.device)
        votes.scatter_add_(1, bank_labels[idx], (sims / KNN_T).exp())
        correct += int((votes.argmax(1) == labels[start:start + chunk]).sum())
    return correct / len(queries)


class SimCLRNet(nn.Module):
    """The backbone (classifier removed) and SimCLR's projection head; ``forward`` gives the projections."""

    def __init__(self, backbone: nn.Module, proj_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        dim = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
        self.projection = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, proj_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(self.backbone(x))


def check_config(cfg: Config) -> None:
    """Refusals from the config alone, before a run directory is touched."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RunError("w2s pretrain runs in one process (NT-Xent over one batch); start it without torchrun")
    if cfg.model.freeze_backbone:
        raise RunError("model.freeze_backbone trains a classifier alone, and w2s pretrain trains no classifier; "
                       "unset model.freeze_backbone")


class SimCLRTask(Task):
    """One SimCLR pre-training run (see the module docstring)."""

    csv_keys = METRIC_KEYS
    epoch_line = EPOCH_LINE

    def __init__(self, cfg: Config, console: Console) -> None:
        self.cfg, self.console = cfg, console
        self.output, self.epochs = Path(cfg.run.output), cfg.optim.epochs
        self.checkpoint_every_steps, self.trackers = cfg.run.checkpoint_every_steps, cfg.run.log

    def prepare(self) -> None:
        cfg = self.cfg
        self.device, self.dist = setup(cfg.run.device, cfg.run.num_threads, cfg.run.seed, cfg.run.deterministic)
        splits = load_run_splits(**dataclasses.asdict(cfg.data), run_seed=cfg.run.seed)
        self.train_src, self.val_src, self.test_src = splits.train, splits.val, splits.test
        train = self.train_src
        if train.encoded:
            raise RunError(f"w2s pretrain needs images held in memory; {train.name} is read as encoded files")
        if cfg.pretrain.knn_k > len(train):
            raise RunError(f"pretrain.knn_k={cfg.pretrain.knn_k} neighbours need as many training samples, "
                           f"but there are {len(train)}; lower pretrain.knn_k")
        self.spec = input_spec(train, cfg.model.mean, cfg.model.std, cfg.model.input_size)
        side = max(*train.image_hw, *self.spec.size)
        check_batch("optim.batch_size", cfg.optim.batch_size, train.channels, side, len(train))
        check_batch("optim.eval_batch_size", cfg.optim.eval_batch_size, train.channels, side, len(self.test_src))
        self.augment = ContrastiveAugment(self.spec.size, self.spec.mean, self.spec.std, scale=CROP_SCALE)
        placed = build_model(cfg.model, cfg.run, 0, train.channels, self.device, self.dist, self.console)
        self.memory_format, self.scaler = placed.memory_format, placed.scaler
        self.net = SimCLRNet(placed.model, cfg.pretrain.proj_dim).to(self.device, memory_format=self.memory_format)
        self.step_net: nn.Module = (torch.compile(self.net, backend=cfg.run.compile_backend) if cfg.run.compile
                                    else self.net)
        opt = build_optimizer(self.net, cfg.optim, 1, len(train))
        self.optimizer, self.scheduler = opt.optimizer, opt.scheduler
        self.batch, self.steps_per_epoch = opt.global_batch, opt.steps_per_epoch
        self.precision = Precision(self.device, cfg.run.amp)
        self.policy = view_policy(cfg)
        self.eval_replayer = fixed_view_replayer(self.test_src, self.spec, cfg.optim.eval_batch_size, self.policy,
                                                 cfg.run.device, cfg.run.num_threads)

    def modules(self) -> list[nn.Module]:
        return [self.net]

    def grad_scaler(self) -> torch.amp.GradScaler:
        return self.scaler

    # -- an epoch ----------------------------------------------------------------------------
    def epoch(self, epoch: int, start_step: int) -> Epoch:
        self.scheduler.step(epoch)  # a schedule stepped per epoch sets this epoch's lr; per update: no-op
        self.net.train()
        order = epoch_order(len(self.train_src), epoch, self.cfg.run.seed, shuffle=True)
        return Epoch(self.steps_per_epoch, self._batches(order, start_step))

    def _batches(self, order: np.ndarray, start: int) -> Iterator[np.ndarray]:
        for step in range(start, self.steps_per_epoch):
            yield order[step * self.batch:(step + 1) * self.batch]

    def train_step(self, rows: np.ndarray, epoch: int, step: int) -> StepOut:
        """Two views of each image (one generator per step), one forward of both, NT-Xent, one update."""
        images = self.train_src.read(rows)  # pixels only: the labels are never read here
        rng = step_rng(self.cfg.run.seed, epoch, step, VIEWS)
        x = torch.cat([self.augment(images, rng, self.device), self.augment(images, rng, self.device)])
        n = len(rows)
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            z = self.step_net(x.contiguous(memory_format=self.memory_format))
        loss = nt_xent(z[:n], z[n:], self.cfg.pretrain.temperature)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step_update(epoch * self.steps_per_epoch + step + 1)
        value = loss.item()
        return StepOut(value, {"loss": (value * n, n)})

    def epoch_row(self, epoch: int, means: dict[str, Any], elapsed: float) -> dict[str, Any]:
        return {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], "loss": means["loss"],
                "images_per_s": self.steps_per_epoch * self.batch / elapsed, "epoch_s": elapsed}

    # -- the kNN monitor ---------------------------------------------------------------------
    def _features(self, src: Source) -> tuple[Tensor, Tensor]:
        """L2-normalized backbone features of ``src``'s fixed view, with its labels (for evaluation only)."""
        feats: list[Tensor] = []
        labels: list[Tensor] = []
        with torch.no_grad(), self.precision.autocast():
            for b in fixed_view_stream(src, self.eval_replayer, self.policy):
                x = b.inputs[0].contiguous(memory_format=self.memory_format)
                feats.append(F.normalize(self.net.backbone(x).float(), dim=1))
                labels.append(b.labels.to(self.device))
        return torch.cat(feats), torch.cat(labels)

    def evaluate(self) -> dict[str, Any]:
        """kNN accuracy (``pretrain.knn_k``) of the test split, and of the validation part when one is held out."""
        self.net.eval()
        bank, bank_labels = self._features(self.train_src)
        row = {}
        for key, src in (("val_knn_acc", self.val_src), ("knn_acc", self.test_src)):
            if src is not None:
                queries, labels = self._features(src)
                row[key] = knn_accuracy(bank, bank_labels, queries, labels, self.cfg.pretrain.knn_k,
                                        self.train_src.num_classes, self.cfg.optim.eval_batch_size)
        return row

    # -- state and files ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.net.backbone.state_dict(), "projection": self.net.projection.state_dict(),
                **training_state(self.optimizer, self.scheduler, self.scaler)}

    def load_state_dict(self, state: dict[str, Any], origin: Path) -> None:
        try:
            load_state_strict(self.net.backbone, state["model"], str(origin))
            load_state_strict(self.net.projection, state["projection"], str(origin))
        except CheckpointError as exc:
            raise RunError(f"cannot resume: {exc}") from exc
        load_training_state(state, self.optimizer, self.scheduler, self.scaler)

    def finish(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """Write the prior (backbone + zero classifier) and return the result: the last epoch's kNN accuracy."""
        m, spec, train, last = self.cfg.model, self.spec, self.train_src, history[-1]
        if self.dist.is_main:
            save_model(prior(self.net.backbone, train.num_classes), self.output, {
                "model": m.name, "kwargs": m.kwargs, "num_classes": train.num_classes, "in_chans": train.channels,
                "mean": list(spec.mean), "std": list(spec.std), "input_size": spec.size[0],
                "dataset": dataset_record(train), "stage": PRIOR_STAGE})
        result = {"role": "pretrain", "method": self.cfg.pretrain.method, "model": m.name, "epochs": self.epochs,
                  "knn_acc": last["knn_acc"], "knn_k": self.cfg.pretrain.knn_k, "train_samples": len(train),
                  "test_samples": len(self.test_src),
                  "images_per_s": float(np.mean([r["images_per_s"] for r in history]))}
        if self.val_src is not None:
            result.update(val_knn_acc=last["val_knn_acc"], val_samples=len(self.val_src))
        return result


def prior(backbone: nn.Module, num_classes: int) -> nn.Module:
    """A copy of ``backbone`` (on the CPU) with a zero-initialized classifier for ``num_classes`` classes."""
    model = copy.deepcopy(backbone).cpu()
    model.reset_classifier(num_classes)
    with torch.no_grad():
        for p in model.get_classifier().parameters():
            p.zero_()
    return model


METHODS = {"simclr": SimCLRTask}  # pretrain.method -> its task (the schema's PRETRAIN_METHODS)


def pretrain(cfg: Config, resume: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run ``pretrain.method`` on the training images (see the module docstring); returns ``result.json``'s contents."""
    check_config(cfg)
    console = console or stderr_console()
    return RunLoop(METHODS[cfg.pretrain.method](cfg, console), resume, console).run()
