"""Objectives against golden values computed here in float64 numpy, and their properties."""
import math

import numpy as np
import pytest
import torch

from pipeline.objectives import build_objective
from tests.objectives.test_baseline_objectives import BASELINE_GOLDEN_TESTS


def _softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    e = np.exp((z - z.max(axis=1, keepdims=True)) / t)
    return e / e.sum(axis=1, keepdims=True)


def _ce(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    return -np.log(_softmax(z)[np.arange(len(y)), y])


def _kl(zs: np.ndarray, zt: np.ndarray, t: float) -> np.ndarray:
    ps, pt = _softmax(zs, t), _softmax(zt, t)
    return (pt * (np.log(pt) - np.log(ps))).sum(axis=1)


@pytest.fixture
def batch():
    g = np.random.default_rng(0)
    zs = g.normal(size=(6, 5)) * 2
    zt = g.normal(size=(6, 5)) * 2
    zt[0] = zs[0] + 0.3  # argmax agrees on sample 0
    y = g.integers(0, 5, size=6)
    return zs, zt, y


def _t(a):
    return torch.tensor(a, dtype=torch.float32)


def test_vanilla_golden(batch):
    zs, _, y = batch
    out = build_objective("vanilla", gt_weight=0.7)(_t(zs), None, torch.tensor(y))
    assert out.total.item() == pytest.approx(0.7 * _ce(zs, y).mean(), rel=1e-5)
    assert out.sample_weight is None


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kd_golden(batch, temp):
    zs, zt, y = batch
    out = build_objective("kd", kd_temperature=temp, gt_weight=0.5, kd_weight=2.0)(_t(zs), _t(zt), torch.tensor(y))
    expect = 0.5 * _ce(zs, y).mean() + 2.0 * temp**2 * _kl(zs, zt, temp).mean()
    assert out.total.item() == pytest.approx(expect, rel=1e-5)
    assert out.terms["kd"].item() == pytest.approx(temp**2 * _kl(zs, zt, temp).mean(), rel=1e-5)


def test_augconf_golden(batch):
    zs, zt, y = batch
    e, E, r, theta, temp = 3, 20, 0.3, 0.75, 2.0
    out = build_objective("augconf", kd_temperature=temp, rate=r, max_weight=theta)(
        _t(zs), _t(zt), torch.tensor(y), epoch=e, epochs=E)
    alpha = e / (E * r) * theta
    c_s = _ce(zs, zs.argmax(1))
    expect = _ce(zs, y).mean() + (1 - alpha) * temp**2 * _kl(zs, zt, temp).mean() + alpha * c_s.mean()
    assert out.total.item() == pytest.approx(expect, rel=1e-5)
    assert torch.allclose(out.sample_weight, torch.full((6,), alpha))


def test_augconf_alpha_schedule():
    obj = build_objective("augconf", rate=0.3, max_weight=0.75)
    E = 10  # int(E r) = 3
    assert obj.augconf_alpha(0, E) == 0.0
    assert obj.augconf_alpha(2, E) == pytest.approx(2 / 3 * 0.75)
    assert obj.augconf_alpha(3, E) == 0.75
    assert obj.augconf_alpha(9, E) == 0.75


@pytest.mark.parametrize("theta,temp,wgt", [(0.5, 1.0, 1.0), (4.0, 2.0, 0.0), (8.0, 10.0, 1.0)])
def test_adaptconf_golden(batch, theta, temp, wgt):
    zs, zt, y = batch
    out = build_objective("adaptconf", kd_temperature=temp, threshold=theta, gt_weight=wgt)(
        _t(zs), _t(zt), torch.tensor(y))
    c_s = _ce(zs, zs.argmax(1))
    c_t = _ce(zs, zt.argmax(1))
    beta = np.exp(c_s / theta) / (np.exp(c_s / theta) + np.exp(c_t / theta))  # the paper's form
    expect = wgt * _ce(zs, y).mean() + ((1 - beta) * temp**2 * _kl(zs, zt, temp) + beta * c_s).mean()
    assert out.total.item() == pytest.approx(expect, rel=1e-5)
    np.testing.assert_allclose(out.sample_weight.numpy(), beta, rtol=1e-5)


def test_adaptconf_beta_range_and_agreement():
    g = torch.Generator().manual_seed(1)
    zs = torch.randn(512, 10, generator=g) * 3
    zt = torch.randn(512, 10, generator=g) * 3
    out = build_objective("adaptconf", threshold=0.5)(zs, zt, torch.zeros(512, dtype=torch.long))
    beta = out.sample_weight
    assert (beta > 0).all() and (beta <= 0.5).all()
    agree = zs.argmax(1) == zt.argmax(1)
    assert agree.any() and (~agree).any()
    assert (beta[agree] == 0.5).all()
    assert (beta[~agree] < 0.5).all()


def _upstream_beta_factor(epoch: int, total_epochs: int) -> float:
    """The beta scale of the paper's ``adapt_conf_loss``, transcribed independently of pipeline.objectives:
    few_shot_leaerning/utils/__init__.py lines 208-211 (and the same lines 25-28 of
    noisy_labels_learning/utils_sel/kd_loss.py):
        if epoch < int(total_epochs * 0.25): alpha = epoch / (total_epochs * 0.25) * alpha
        else: alpha = alpha
    """
    if epoch < int(total_epochs * 0.25):
        return epoch / (total_epochs * 0.25)
    return 1.0


# (warmup_style, the upstream epochs of a run of E epochs, the total_epochs upstream passes)
UPSTREAM_CALLS = {
    # train_classifier.py: `for epoch in range(1, max_epoch + 1 + 1)` (the extra epoch only with epoch_ex,
    # unset in the paper's configs) and train_meta.py: `for epoch in range(1, max_epoch + 1)`; both call
    # get_kd_loss(config, logits, teacher_logits, epoch, max_epoch, ...) (utils/kd_utils.py).
    "few_shot": lambda E: (range(1, E + 1), E),
    # noisy_labels_learning/CIFAR/train_Sel-CL_fine-tuning.py: `for epoch in range(args.initial_epoch, args.epoch + 1)`
    # (initial_epoch defaults to 1), `train_mixup(args, model, ..., epoch, args.epoch + 1, teacher_model, kd_config)`.
    "sel_cl": lambda E: (range(1, E + 1), E + 1),
}


@pytest.mark.parametrize("style", sorted(UPSTREAM_CALLS))
@pytest.mark.parametrize("E", [5, 20, 100])
def test_adaptconf_warmup_matches_upstream(style: str, E: int):
    """Golden: the factor at every (0-based) epoch of an E-epoch run equals upstream's at the same epoch."""
    obj = build_objective("adaptconf", warmup_rate=0.25, warmup_style=style)
    epochs, total = UPSTREAM_CALLS[style](E)
    expect = [_upstream_beta_factor(n, total) for n in epochs]
    got = [obj.adaptconf_warmup(e, E) for e in range(E)]
    assert got == pytest.approx(expect, abs=1e-12)
    assert got[-1] == 1.0
    if E == 5:  # int(5 * 0.25) = 1 (few_shot) and int(6 * 0.25) = 1 (sel_cl): upstream never ramps
        assert got == [1.0] * 5
    if E == 20 and style == "few_shot":
        assert got[:6] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])


def test_adaptconf_warmup_scales_beta():
    zs, zt = torch.randn(16, 7), torch.randn(16, 7)
    full = build_objective("adaptconf", threshold=0.5)(zs, zt, torch.zeros(16, dtype=torch.long))
    obj = build_objective("adaptconf", threshold=0.5, warmup_rate=0.25)
    out = obj(zs, zt, torch.zeros(16, dtype=torch.long), epoch=2, epochs=20)
    torch.testing.assert_close(out.sample_weight, full.sample_weight * 0.6)
    assert build_objective("adaptconf").adaptconf_warmup(0, 20) == 1.0  # warmup_rate 0: no warm-up
    with pytest.raises(ValueError, match="warmup_style must be one of few_shot, sel_cl"):
        build_objective("adaptconf", warmup_rate=0.25, warmup_style="linear")
    from pipeline.config.schema import ConfigError, load_config


    with pytest.raises(ConfigError, match="objective.warmup_style must be one of few_shot, sel_cl, got 'linear'"):
        load_config(None, ["objective.name=adaptconf", "objective.warmup_style=linear"])  # refused at load


def test_defaults_are_the_papers():
    """classification train.py: --superalignment-rate 0.3, --superalignment-threshold 0.5, --kd-temperature 1."""
    from pipeline.config.schema import ObjectiveConfig

    obj, cfg = build_objective("augconf"), ObjectiveConfig()
    assert (obj.rate, obj.max_weight, obj.kd_temperature) == (0.3, 0.5, 1.0)
    assert build_objective("adaptconf").threshold == 0.5
    assert (cfg.rate, cfg.max_weight, cfg.threshold, cfg.kd_temperature) == (0.3, 0.5, 0.5, 1.0)


def test_augconf_alpha_matches_upstream():
    """classification/distillers/adaptconf.py AugConf lines 22-25, transcribed, at 0-based train.py epochs."""
    obj = build_objective("augconf")
    for E in (10, 240):
        for e in range(E):
            rate, threshold = 0.3, 0.5
            if e < int(E * rate):
                alpha = e / (E * rate) * threshold
            else:
                alpha = threshold
            assert obj.augconf_alpha(e, E) == pytest.approx(alpha, abs=1e-12)


ALL = ["vanilla", "kd", "augconf", "adaptconf", "logconf", "product", "bootstrap_soft", "bootstrap_hard", "dkd"]
WITH_TEACHER = ALL[1:]


@pytest.mark.parametrize("name", ALL)
def test_huge_logits_finite(name):
    g = torch.Generator().manual_seed(2)
    zs = (torch.randn(8, 10, generator=g) * 1e4).requires_grad_()
    zt = torch.randn(8, 10, generator=g) * 1e4
    out = build_objective(name, threshold=0.5, kd_temperature=4.0)(zs, zt, torch.arange(8) % 10, epoch=5, epochs=10)
    out.total.backward()
    assert torch.isfinite(out.total)
    assert torch.isfinite(zs.grad).all()


@pytest.mark.parametrize("name", WITH_TEACHER)
def test_gt_weight_zero_drops_ground_truth(batch, name):
    zs, zt, y = batch
    obj = build_objective(name, gt_weight=0.0, dkd_target="teacher")
    a = obj(_t(zs), _t(zt), torch.tensor(y), epoch=1, epochs=4).total
    b = obj(_t(zs), _t(zt), torch.tensor((y + 1) % 5), epoch=1, epochs=4).total
    assert a.item() == b.item()


def test_soft_target_matches_hard(batch):
    zs, zt, y = batch
    onehot = torch.nn.functional.one_hot(torch.tensor(y), 5).float()
    obj = build_objective("kd")
    assert obj(_t(zs), _t(zt), onehot).total.item() == pytest.approx(obj(_t(zs), _t(zt), torch.tensor(y)).total.item())


def test_float16_teacher_accepted(batch):
    zs, zt, y = batch
    out = build_objective("adaptconf")(_t(zs), torch.tensor(zt, dtype=torch.float16), torch.tensor(y))
    assert math.isfinite(out.total.item())


def test_bad_objective_name():
    with pytest.raises(ValueError, match="valid: vanilla, kd, augconf, adaptconf, logconf, product, bootstrap_soft, "
                                         "bootstrap_hard, dkd"):
        build_objective("dkd2")


# -- the registry -----------------------------------------------------------------------------

GOLDEN_TESTS = {"vanilla": test_vanilla_golden, "kd": test_kd_golden, "augconf": test_augconf_golden,
                "adaptconf": test_adaptconf_golden, **BASELINE_GOLDEN_TESTS}


def test_every_registered_objective_has_a_golden_test_and_declares_itself():
    from dataclasses import fields

    from pipeline.objectives import OBJECTIVES, Objective

    assert set(OBJECTIVES) == set(GOLDEN_TESTS)  # a new objective comes with its golden values
    for name, cls in OBJECTIVES.items():
        assert issubclass(cls, Objective) and cls.name == name
        assert cls.terms[0] == "gt" and len(set(cls.terms)) == len(cls.terms)
        for f in fields(cls):  # every parameter is documented, with a range or a list of choices
            assert f.metadata["doc"] and (f.metadata["choices"] or any(v is not None for v in f.metadata["range"][:2]))


def test_logged_terms_and_weights_are_what_each_objective_declares(batch):
    from pipeline.objectives import OBJECTIVES

    zs, zt, y = batch
    for name, cls in OBJECTIVES.items():
        out = build_objective(name)(_t(zs), _t(zt), torch.tensor(y), epoch=5, epochs=10)
        assert tuple(out.terms) == cls.terms
        assert (out.sample_weight is None) == (cls.sample_weight is None)


def test_config_section_comes_from_the_registry():
    """The objective section's keys and checks are the objectives' own declarations."""
    from dataclasses import fields

    from pipeline.config.schema import ConfigError, ObjectiveConfig, load_config
    from pipeline.objectives import objective_params

    params = objective_params()
    assert [f.name for f in fields(ObjectiveConfig)] == ["name", *params]
    assert all(getattr(ObjectiveConfig(), n) == f.default for n, f in params.items())
    with pytest.raises(ConfigError, match=r"objective.threshold must be > 0, got 0"):
        load_config(None, ["objective.threshold=0"])
    with pytest.raises(ConfigError, match=r"objective.name must be one of vanilla, kd, augconf, adaptconf, logconf"):
        load_config(None, ["objective.name=dkd2"])
    with pytest.raises(ValueError, match="unknown objective parameter 'tau'"):
        build_objective("kd", tau=2.0)


def test_a_new_objective_is_one_class(batch):
    """Registering a class is all it takes for build_objective to make it."""
    from dataclasses import dataclass
    from typing import ClassVar

    from pipeline.objectives import KD, OBJECTIVES, ObjectiveOutput, register_objective

    @register_objective
    @dataclass
    class HalfKD(KD):
        name: ClassVar[str] = "half_kd_test"

        def combine(self, zs, zt, gt, terms, epoch, epochs):
            return ObjectiveOutput(gt + 0.5 * self.kd_term(zs, zt, terms).mean(), terms, None)

    try:
        zs, zt, y = batch
        out = build_objective("half_kd_test", kd_temperature=2.0, gt_weight=0.0)(_t(zs), _t(zt), torch.tensor(y))
        assert out.total.item() == pytest.approx(0.5 * 4.0 * _kl(zs, zt, 2.0).mean(), rel=1e-5)
        with pytest.raises(ValueError, match="needs a new name"):
            register_objective(HalfKD)
    finally:
        del OBJECTIVES["half_kd_test"]
