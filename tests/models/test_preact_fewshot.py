"""Tests for the PreAct-ResNet CIFAR models, the few-shot backbones and episodic evaluation helpers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch

import pipeline.models.fewshot_backbones  # noqa: F401  (registers fs_* models)
import pipeline.models.preact_resnet  # noqa: F401  (registers preact_resnet*)
from pipeline.scenarios.few_shot import (
    cosine_logits,
    episode_sampler,
    evaluate_episodes,
    mean_confidence_interval,
    prototypes,
    sample_episode,
)


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- PreAct-ResNet

def test_preact_registered() -> None:
    assert {"preact_resnet18", "preact_resnet34"} <= set(timm.list_models("preact*"))


@pytest.mark.parametrize(
    "name,count",
    [
        # 11,171,146 is the widely used CIFAR PreActResNet18 (no stem BN, no final BN); upstream Sel-CL's
        # (noisy_labels_learning/utils_sel/models/preact_resnet.py) adds the stem BatchNorm2d(64): 128 affine
        # parameters. Its contrastive projection ``head`` is not part of the backbone.
        ("preact_resnet18", 11_171_146 + 128),
        ("preact_resnet34", 21_279_434),  # upstream PreActResNet34 without ``head``, measured
    ],
)
def test_preact_param_count_and_shapes(name: str, count: int) -> None:
    model = timm.create_model(name, num_classes=10).eval()
    assert _n_params(model) == count
    assert _n_params(model) - _n_params(model.bn1) == count - 128
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fmap = model.forward_features(x)
        assert fmap.shape == (2, 512, 4, 4)
        assert model.forward_head(fmap, pre_logits=True).shape == (2, 512)
        assert model(x).shape == (2, 10)
    assert model.num_features == 512
    assert model.get_classifier().out_features == 10
    model.reset_classifier(100)
    with torch.no_grad():
        assert model(x).shape == (2, 100)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, 512)


def test_preact_cfg_kwargs_and_pretrained() -> None:
    model = timm.create_model("preact_resnet18", num_classes=100, in_chans=1, drop_rate=0.0)
    assert model.pretrained_cfg["input_size"] == (1, 32, 32)
    assert model.pretrained_cfg["num_classes"] == 100
    assert model.default_cfg is model.pretrained_cfg
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 100)
    cfg = timm.create_model("preact_resnet34").pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32)
    assert cfg["mean"] == pytest.approx((0.4914, 0.4822, 0.4465))
    assert timm.models.get_pretrained_cfg("preact_resnet18").input_size == (3, 32, 32)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("preact_resnet18", pretrained=True)


# ---------------------------------------------------------------- few-shot backbones

FS_DIMS = {
    "fs_convnet4": (1600, 64),  # (84x84 RGB, 28x28 grey) feature dims
    "fs_resnet12": (640, 640),
    "fs_resnet12v": (512, 512),
    "fs_resnet18v": (512, 512),
    "fs_resnet36v": (512, 512),
    "fs_resnet12_bottle": (512, 512),
    "fs_resnet18_bottle": (512, 512),
    "fs_resnet36_bottle": (512, 512),
}


def test_fs_registered() -> None:
    assert set(FS_DIMS) <= set(timm.list_models("fs_*"))


@pytest.mark.parametrize("name", sorted(FS_DIMS))
def test_fs_feature_dims(name: str) -> None:
    dim84, dim28 = FS_DIMS[name]
    model = timm.create_model(name).eval()
    assert model.num_features == dim84
    with torch.no_grad():
        x84 = torch.randn(2, 3, 84, 84)
        feats = model(x84)
        assert feats.shape == (2, dim84)
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), feats)  # no head by default

    grey = timm.create_model(name, in_chans=1, num_classes=5, img_size=28).eval()
    assert grey.num_features == dim28
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert grey.forward_features(x).shape == (2, dim28)
        assert grey(x).shape == (2, 5)
    assert grey.pretrained_cfg["input_size"] == (1, 28, 28)


def test_fs_resnet12_blocks_and_pretrained() -> None:
    model = timm.create_model("fs_resnet12")
    assert [s[0].conv1.out_channels for s in model.stages] == [64, 160, 320, 640]
    assert [len(s) for s in timm.create_model("fs_resnet36v").stages] == [2, 3, 5, 2]
    assert [len(s) for s in timm.create_model("fs_resnet18v").stages] == [1, 2, 2, 1]
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("fs_resnet12v", pretrained=True)


@pytest.mark.parametrize("name,depths", [("fs_resnet12_bottle", [1, 1, 1, 1]), ("fs_resnet18_bottle", [1, 2, 2, 1]),
                                         ("fs_resnet36_bottle", [2, 3, 5, 2])])
def test_fs_bottle_matches_the_papers_resnet(name: str, depths: list[int]) -> None:
    """few_shot_leaerning/models/resnet.py ``ResNet``: the 1x1 shortcut and the max-pool only in each stage's
    first block, three 3x3 convs per block (12/18/36 convs), widths 64-128-256-512, shapes at 80 and 84."""
    model = timm.create_model(name).eval()
    assert [len(s) for s in model.stages] == depths
    convs3 = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs3) == 3 * sum(depths) == int(name[len("fs_resnet"):].split("_")[0])
    for stage, width in zip(model.stages, (64, 128, 256, 512)):
        for j, block in enumerate(stage):
            assert block.conv3.out_channels == width
            assert isinstance(block.pool, torch.nn.MaxPool2d) == (j == 0)
            assert isinstance(block.downsample, torch.nn.Identity) == (j > 0)
    sizes = []
    hooks = [s.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:]))) for s in model.stages]
    with torch.no_grad():
        assert model(torch.randn(2, 3, 80, 80)).shape == (2, 512)
    assert sizes == [(64, 40, 40), (128, 20, 20), (256, 10, 10), (512, 5, 5)]  # Meta-Baseline's 80x80 input
    sizes.clear()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 84, 84)).shape == (1, 512)
    assert sizes[-1] == (512, 5, 5)
    for h in hooks:
        h.remove()


# ---------------------------------------------------------------- episode sampling

def _labels(n_classes: int = 8, per_class: int = 12) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.permutation(np.repeat(np.arange(n_classes), per_class))


@pytest.mark.parametrize("as_dict", [False, True])
def test_sample_episode_structure(as_dict: bool) -> None:
    labels = _labels()
    source = {c: np.flatnonzero(labels == c) for c in range(8)} if as_dict else labels
    n_way, k_shot, n_query = 5, 3, 4
    s_idx, q_idx, classes = sample_episode(source, n_way, k_shot, n_query, np.random.default_rng(1))
    assert s_idx.shape == (n_way * k_shot,) and q_idx.shape == (n_way * n_query,)
    assert classes.shape == (n_way,) and len(set(classes.tolist())) == n_way
    assert not set(s_idx.tolist()) & set(q_idx.tolist())
    assert len(set(s_idx.tolist())) == s_idx.size and len(set(q_idx.tolist())) == q_idx.size
    # class-major ordering: block i carries class classes[i]
    np.testing.assert_array_equal(labels[s_idx], np.repeat(classes, k_shot))
    np.testing.assert_array_equal(labels[q_idx], np.repeat(classes, n_query))


def test_episode_sampler_deterministic() -> None:
    labels = _labels()
    a = list(episode_sampler(labels, 5, 1, 5, episodes=6, seed=3))
    b = list(episode_sampler(labels, 5, 1, 5, episodes=6, seed=3))
    c = list(episode_sampler(labels, 5, 1, 5, episodes=6, seed=4))
    assert len(a) == 6
    for ea, eb in zip(a, b):
        for xa, xb in zip(ea, eb):
            np.testing.assert_array_equal(xa, xb)
    assert any(not np.array_equal(ea[0], ec[0]) for ea, ec in zip(a, c))
    # episodes differ from one another within a run
    assert len({tuple(e[0].tolist()) for e in a}) > 1


def test_sampler_errors() -> None:
    labels = _labels(n_classes=8, per_class=12)
    with pytest.raises(ValueError, match="samples"):
        sample_episode(labels, 5, 5, 8, np.random.default_rng(0))  # needs 13 > 12
    with pytest.raises(ValueError, match="classes"):
        sample_episode(labels, 9, 1, 1, np.random.default_rng(0))
    uneven = np.concatenate([labels, np.full(2, 99)])  # one class with only 2 samples
    with pytest.raises(ValueError, match="class 99"):
        next(episode_sampler(uneven, 5, 1, 2, episodes=1, seed=0))


# ---------------------------------------------------------------- prototypes, logits, CI

def test_prototypes_and_cosine() -> None:
    support = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    protos = prototypes(support, n_way=2, k_shot=2)
    torch.testing.assert_close(protos, torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
    q = torch.tensor([[1.0, 1.0], [5.0, 0.0]])
    logits = cosine_logits(q, protos, scale=10.0)
    torch.testing.assert_close(logits, torch.tensor([[10 / math.sqrt(2), 10 / math.sqrt(2)], [10.0, 0.0]]))
    with pytest.raises(ValueError):
        prototypes(support, n_way=3, k_shot=2)


def test_mean_confidence_interval() -> None:
    mean, hw = mean_confidence_interval([0.5, 0.6, 0.7, 0.8])
    # std(ddof=1) = sqrt(0.05 / 3); half-width = 1.96 * std / sqrt(4)
    assert mean == pytest.approx(0.65)
    assert hw == pytest.approx(1.96 * math.sqrt(0.05 / 3) / 2)
    assert hw == pytest.approx(0.1265170, abs=1e-6)
    assert mean_confidence_interval(np.full(10, 0.7)) == pytest.approx((0.7, 0.0))
    assert math.isnan(mean_confidence_interval([0.4])[1])
    with pytest.raises(ValueError):
        mean_confidence_interval([])


def test_evaluate_episodes_separated_features() -> None:
    rng = np.random.default_rng(0)
    n_classes, per_class, dim = 10, 25, 32
    labels = np.repeat(np.arange(n_classes), per_class)
    centers = rng.normal(size=(n_classes, dim)) * 10.0
    feats = (centers[labels] + rng.normal(scale=0.1, size=(labels.size, dim))).astype(np.float32)
    calls: list[int] = []

    def identity(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x

    out = evaluate_episodes(identity, feats, labels, n_way=5, k_shot=1, n_query=15,
                            episodes=20, seed=0, batch_size=64)
    assert out["mean"] == 1.0 and out["ci95"] == 0.0 and out["episodes"] == 20
    assert sum(calls) == labels.size and max(calls) <= 64  # embedded once, in batches

    # with random labels accuracy drops to near chance; same seed reproduces the result exactly
    shuffled = rng.permutation(labels)
    r1 = evaluate_episodes(identity, feats, shuffled, 5, 1, 15, episodes=30, seed=1)
    r2 = evaluate_episodes(identity, torch.from_numpy(feats), shuffled, 5, 1, 15, episodes=30, seed=1)
    assert r1["mean"] < 0.5 and r1["ci95"] > 0
    assert r1["mean"] == r2["mean"] and np.array_equal(r1["accs"], r2["accs"])
