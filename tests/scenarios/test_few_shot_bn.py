"""Ghost-batch BatchNorm (``pipeline.models.ghost_bn``): the paper's per-GPU DataParallel BN statistic on one device.

The layer maths against explicit DataParallel-style replicas (outputs, gradients, running statistics),
then the two stages that use it: the classifier stage (``model.bn_batch``, train-teacher) and the meta stage
(``meta.bn_episodes``), whose BatchNorm layers must see chunks of the ghost size, and the paper configs' values.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from pipeline.models.files import load_model
from pipeline.config.schema import ConfigError, load_config
from pipeline.scenarios.few_shot import EpisodeLayout, ghost_batch_norm, load_few_shot_config, meta_train
from pipeline.scenarios.few_shot.data import embed
from pipeline.models import create
from pipeline.engine.runtime import RunError
from pipeline.train_student import train

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "few_shot"
QUIET = Console(quiet=True)


def _net() -> nn.Module:
    torch.manual_seed(0)
    model = create("fs_convnet4", 0, 3, img_size=16)  # four conv-BN-ReLU-pool blocks, 64-d features at 16x16
    for m in model.modules():  # non-trivial affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.train()


def _bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def _replicas(model: nn.Module, chunks: list[torch.Tensor]) -> tuple[list[nn.Module], torch.Tensor]:
    """What nn.DataParallel computes: one copy of the module per chunk (replica 0 first), outputs gathered."""
    reps = [copy.deepcopy(model) for _ in chunks]
    return reps, torch.cat([r(c) for r, c in zip(reps, chunks)])


@pytest.mark.parametrize("n,size", [(12, 4), (10, 4)], ids=["even", "uneven"])
def test_ghost_bn_equals_per_replica_bn(n: int, size: int) -> None:
    plain = _net()
    x = torch.randn(n, 3, 16, 16) * 2 + 0.5
    chunks = list(torch.chunk(x, -(-n // size)))  # DataParallel's scatter over ceil(n / size) GPUs
    assert [len(c) for c in chunks] == [len(c) for c in x.split(size)]
    reps, want = _replicas(plain, chunks)
    whole = copy.deepcopy(plain)(x)
    ghost = copy.deepcopy(plain)
    assert ghost_batch_norm(ghost, size) == 4
    got = ghost(x)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, whole, atol=1e-3)  # whole-batch statistics differ
    # gradients: DataParallel sums the replicas' gradients into the module's parameters
    w = torch.randn_like(want)
    (got * w).sum().backward()
    (want * w).sum().backward()
    for (name, p), *rp in zip(ghost.named_parameters(), *(r.parameters() for r in reps)):
        assert torch.allclose(p.grad, sum(q.grad for q in rp), atol=1e-4), name
    # running statistics: only replica 0's updates are kept (its buffers share the module's storage)
    for g, r0, r1 in zip(_bn_layers(ghost), _bn_layers(reps[0]), _bn_layers(reps[1])):
        assert torch.allclose(g.running_mean, r0.running_mean, atol=1e-6)
        assert torch.allclose(g.running_var, r0.running_var, atol=1e-5)
        assert not torch.allclose(g.running_mean, r1.running_mean, atol=1e-4)
        assert int(g.num_batches_tracked) == 1
    # state dict unchanged (same keys, loadable into the plain model); eval mode is plain BN
    assert ghost.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(ghost.state_dict())
    assert torch.equal(ghost.eval()(x), plain.eval()(x))


def test_ghost_bn_edge_cases() -> None:
    model = _net()
    x = torch.randn(6, 3, 16, 16)
    ghost_batch_norm(model, 6)  # a batch of at most the ghost size: plain BN
    plain = _net()
    assert torch.equal(model(x), plain(x))
    ghost_batch_norm(model, 2)
    assert not torch.allclose(model(x), plain(x), atol=1e-3)
    assert ghost_batch_norm(model, 0) == 0  # back to whole-batch statistics
    assert torch.allclose(model(x), plain(x), atol=1e-6)
    with pytest.raises(ValueError, match="no BatchNorm"):
        ghost_batch_norm(nn.Sequential(nn.Linear(3, 3)), 4)
    with pytest.raises(ValueError, match="SyncBatchNorm"):
        ghost_batch_norm(nn.Sequential(nn.SyncBatchNorm(3)), 4)
    with pytest.raises(ValueError, match=">= 0"):
        ghost_batch_norm(model, -1)
    with pytest.raises(ConfigError, match="model.bn_batch must be >= 0"):
        load_config(None, ["model.bn_batch=-1"])
    with pytest.raises(ConfigError, match="meta.bn_episodes must be >= 0"):
        load_few_shot_config(None, ["meta.bn_episodes=-1"])


class _BatchNormCalls:
    """Records the batch size of every training-mode ``F.batch_norm`` call (BatchNorm layers and ghost chunks)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        original = F.batch_norm

        def spy(input: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
            training = kwargs["training"] if "training" in kwargs else (args[4] if len(args) > 4 else False)
            if training:
                self.sizes.append(int(input.shape[0]))
            return original(input, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(torch.nn.functional, "batch_norm", spy)


@pytest.fixture(scope="module")
def classifier_run(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """The classifier stage (train-teacher, fmnist_cnn: 4 BN layers) with batch 24 in ghost batches of 8: 4 steps."""
    out = tmp_path_factory.mktemp("bn_classifier") / "run"
    cfg = load_config(CONFIGS / "fmnist_ceiling_cnn.yaml", [
        f"data.data_dir={fmnist_dir}", "data.limit=96", "data.test_limit=64", "optim.epochs=1", "optim.batch_size=24",
        "optim.warmup_epochs=0", "optim.eval_batch_size=64", "model.bn_batch=8", f"run.output={out}"])
    with pytest.MonkeyPatch.context() as mp:
        calls = _BatchNormCalls(mp)
        result = train(cfg, role="teacher", console=QUIET)
    assert result["train_samples"] == 96
    return out, calls.sizes


def test_classifier_stage_normalizes_ghost_batches(classifier_run: tuple[Path, list[int]]) -> None:
    out, sizes = classifier_run
    assert sizes == [8] * (4 * 3 * 4)  # 4 steps x 3 ghost batches x 4 BN layers, none over the whole batch of 24
    assert "bn_batch: 8" in (out / "config.yaml").read_text()
    model, _, _ = load_model(out)  # the saved model is plain BatchNorm
    assert all(type(m) is nn.BatchNorm2d for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    assert all(int(m.num_batches_tracked) == 4 for m in _bn_layers(model))  # one running-stat update per step


def test_meta_stage_normalizes_groups_of_whole_episodes(classifier_run: tuple[Path, list[int]], fmnist_dir: Path,
                                                        tmp_path: Path) -> None:
    encoder, _ = classifier_run
    layout = EpisodeLayout(episodes=4, n_way=3, k_shot=1, n_query=2)  # 9 images per episode, 36 per batch
    common = [f"data.data_dir={fmnist_dir}", "data.source=fashion_mnist", "data.classes=[0, 1, 2, 3, 4, 5]",
              f"encoder.checkpoint={encoder}", "meta.epochs=1", "meta.batches_per_epoch=2", "meta.episodes_per_batch=4",
              "meta.n_way=3", "meta.k_shot=1", "meta.n_query=2", "meta.objective=none"]
    cfg = load_few_shot_config(None, common + ["meta.bn_episodes=2", f"run.output={tmp_path / 'ghost'}"])
    with pytest.MonkeyPatch.context() as mp:
        calls = _BatchNormCalls(mp)
        result = meta_train(cfg, console=QUIET)
    assert result["bn_episodes"] == 2
    assert calls.sizes == [2 * layout.per_episode] * (2 * 2 * 4)  # 2 steps x 2 groups of 2 episodes x 4 BN layers
    cfg = load_few_shot_config(None, common + [f"run.output={tmp_path / 'whole'}"])
    with pytest.MonkeyPatch.context() as mp:
        calls = _BatchNormCalls(mp)
        meta_train(cfg, console=QUIET)
    assert calls.sizes == [layout.images] * (2 * 4)  # default: BN over the whole batch of 4 episodes


def test_meta_ghost_batches_are_the_papers_data_parallel_replicas(classifier_run: tuple[Path, list[int]]) -> None:
    """The paper's train_meta.py: DataParallel(MetaBaseline) on 2 GPUs scatters x_shot [E, way, shot] and x_query
    [E, way * query] along the episode dim; each replica's encoder sees torch.cat([its shots, its queries])."""
    encoder, _ = classifier_run
    plain, _, _ = load_model(encoder)
    plain.train()
    layout = EpisodeLayout(episodes=4, n_way=3, k_shot=1, n_query=2)
    torch.manual_seed(1)
    x = torch.randn(layout.images, 1, 28, 28)  # this project's layout: per episode, its support then its queries
    ep = x.reshape(layout.episodes, layout.per_episode, 1, 28, 28)
    s = layout.n_way * layout.k_shot
    reps, outs = [], []
    for r in range(2):  # upstream replica r: episodes 2r, 2r+1; shots of both, then queries of both
        part = ep[2 * r:2 * r + 2]
        rep = copy.deepcopy(plain)
        reps.append(rep)
        f = embed(rep, torch.cat([part[:, :s].reshape(-1, 1, 28, 28), part[:, s:].reshape(-1, 1, 28, 28)]))
        shots, queries = f[:2 * s].reshape(2, s, -1), f[2 * s:].reshape(2, -1, f.shape[1])
        outs.append(torch.cat([shots, queries], dim=1).reshape(2 * layout.per_episode, -1))  # back to our layout
    ghost = copy.deepcopy(plain)
    ghost_batch_norm(ghost, 2 * layout.per_episode)
    assert torch.allclose(embed(ghost, x), torch.cat(outs), atol=1e-4)
    assert not torch.allclose(embed(copy.deepcopy(plain), x), torch.cat(outs), atol=1e-3)
    for g, r0 in zip(_bn_layers(ghost), _bn_layers(reps[0])):  # replica 0's running statistics are kept
        assert torch.allclose(g.running_mean, r0.running_mean, atol=1e-5)
        assert torch.allclose(g.running_var, r0.running_var, atol=1e-5)


def test_paper_configs_use_the_per_gpu_batch() -> None:
    """32 images (128 over 4 GPUs) in the classifier stage, 2 episodes (4 over 2 GPUs) in the meta stage; the
    Fashion-MNIST demo keeps whole-batch BN."""
    for path in sorted(CONFIGS.glob("mini_*.yaml")):
        if "meta" in path.name:
            assert load_few_shot_config(path).meta.bn_episodes == 2, path.name
        elif "eval" not in path.name:
            cfg = load_config(path)
            assert cfg.model.bn_batch == 32 and cfg.optim.batch_size == 128, path.name
    for path in sorted(CONFIGS.glob("fmnist_*.yaml")):
        if "meta" in path.name:
            assert load_few_shot_config(path).meta.bn_episodes == 0, path.name
        elif "eval" not in path.name:
            assert load_config(path).model.bn_batch == 0, path.name


def test_bn_batch_on_a_model_without_batch_norm_is_refused(fmnist_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "fmnist_teacher_mlp.yaml", [f"data.data_dir={fmnist_dir}", "data.limit=64",
                                                            "model.bn_batch=8", f"run.output={tmp_path / 'mlp'}"])
    with pytest.raises(RunError, match="model.bn_batch: .*no BatchNorm layer"):
        train(cfg, role="teacher", console=QUIET)
