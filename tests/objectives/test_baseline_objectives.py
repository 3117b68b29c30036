"""The comparison objectives (``pipeline/objectives/baselines.py``) against independent float64 numpy
transcriptions of their sources, value and gradient, on fixed inputs.

Sources: openai/weak-to-strong ``weak_to_strong/loss.py`` (``logconf_loss_fn``, ``product_loss_fn``);
Reed et al. 2015 eqs. 5-6 (bootstrapping); megvii-research/mdistiller ``mdistiller/distillers/DKD.py``
(``dkd_loss``, ``DKD.forward_train``) with ``mdistiller/engine/cfg.py``'s defaults.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.objectives import build_objective


def _softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    e = np.exp((z - z.max(axis=1, keepdims=True)) / t)
    return e / e.sum(axis=1, keepdims=True)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def _soft_ce(z: np.ndarray, target: np.ndarray) -> np.ndarray:
    return -(target * _log_softmax(z)).sum(axis=1)


def _onehot(idx: np.ndarray, c: int) -> np.ndarray:
    return np.eye(c)[idx]


def _run(name: str, zs: np.ndarray, zt: np.ndarray, y: np.ndarray, epoch: int = 0, epochs: int = 1, **params):
    z = torch.tensor(zs, dtype=torch.float32, requires_grad=True)
    out = build_objective(name, **params)(z, torch.tensor(zt, dtype=torch.float32), torch.tensor(y), epoch=epoch,
                                          epochs=epochs)
    out.total.backward()
    return out, z.grad.numpy()


@pytest.fixture
def batch():
    g = np.random.default_rng(7)
    zs, zt = g.normal(size=(8, 5)) * 2, g.normal(size=(8, 5)) * 2
    zt[:3] = zs[:3] + 0.2  # the two argmaxes agree on three samples
    return zs, zt, g.integers(0, 5, size=8)


# -- OpenAI's auxiliary confidence loss -------------------------------------------------------------------------

def _logconf_upstream(zs: np.ndarray, labels: np.ndarray, step_frac: float, aux_coef: float = 0.5,
                      warmup_frac: float = 0.1) -> tuple[float, np.ndarray]:
    """logconf_loss_fn.__call__ line by line (binary), returning the loss and its target (treated as constant)."""
    coef = 1.0 if step_frac > warmup_frac else step_frac
    coef = coef * aux_coef
    preds = _softmax(zs)
    mean_weak = labels.mean(axis=0)
    threshold = np.quantile(preds[:, 0], mean_weak[1])
    strong_preds = np.stack([preds[:, 0] >= threshold, preds[:, 0] < threshold], axis=1).astype(float)
    target = labels * (1 - coef) + strong_preds * coef
    return float(_soft_ce(zs, target).mean()), target


@pytest.mark.parametrize("epoch,epochs", [(0, 10), (1, 10), (3, 10), (1, 20)])
def test_logconf_golden_binary_as_upstream(epoch, epochs):
    g = np.random.default_rng(3)
    zs, zt = g.normal(size=(16, 2)) * 1.5, g.normal(size=(16, 2)) + np.array([0.8, 0.0])  # unbalanced weak labels
    labels = _softmax(zt)
    expect, target = _logconf_upstream(zs, labels, epoch / epochs)
    out, grad = _run("logconf", zs, zt, np.zeros(16, dtype=np.int64), epoch, epochs, gt_weight=0.0)
    assert out.total.item() == pytest.approx(expect, rel=1e-5)
    # d/dz mean CE(z, target) with the target constant (upstream detaches the student's part)
    np.testing.assert_allclose(grad, (_softmax(zs) - target) / 16, rtol=1e-4, atol=1e-7)
    coef = 0.5 * (1.0 if epoch / epochs > 0.1 else epoch / epochs)
    assert torch.allclose(out.sample_weight, torch.full((16,), coef))


def test_logconf_multiclass_hardens_with_the_argmax(batch):
    zs, zt, y = batch
    coef = 0.3  # aux_coef 0.3 past the warm-up
    target = _softmax(zt) * (1 - coef) + _onehot(zs.argmax(1), 5) * coef
    out, grad = _run("logconf", zs, zt, y, 5, 10, aux_coef=coef, gt_weight=0.7)
    expect = 0.7 * _soft_ce(zs, _onehot(y, 5)).mean() + _soft_ce(zs, target).mean()
    assert out.total.item() == pytest.approx(expect, rel=1e-5)
    np.testing.assert_allclose(grad, (0.7 * (_softmax(zs) - _onehot(y, 5)) + _softmax(zs) - target) / 8,
                               rtol=1e-4, atol=1e-7)


def test_logconf_defaults_and_warmup_are_upstreams():
    obj = build_objective("logconf")
    assert (obj.aux_coef, obj.aux_warmup) == (0.5, 0.1)  # logconf_loss_fn(aux_coef=0.5, warmup_frac=0.1)
    # step_frac 0.05 -> 0.05 x 0.5; 0.1 is not past the warm-up -> 0.1 x 0.5; past it -> the full 0.5
    assert [obj.aux_weight(e, 20) for e in (1, 2, 3)] == pytest.approx([0.025, 0.05, 0.5])


# -- OpenAI's product loss ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (2.0, 0.5)])
def test_product_golden(batch, alpha, beta):
    zs, zt, y = batch
    target = np.power(_softmax(zs), beta) * np.power(_softmax(zt), alpha)  # product_loss_fn
    target /= target.sum(axis=-1, keepdims=True)
    out, grad = _run("product", zs, zt, y, product_alpha=alpha, product_beta=beta, gt_weight=0.0, kd_weight=2.0)
    assert out.total.item() == pytest.approx(2.0 * _soft_ce(zs, target).mean(), rel=1e-5)
    np.testing.assert_allclose(grad, 2.0 * (_softmax(zs) - target) / 8, rtol=1e-4, atol=1e-7)  # target detached
    obj = build_objective("product")
    assert (obj.product_alpha, obj.product_beta) == (1.0, 1.0)  # product_loss_fn's defaults


# -- Reed et al. 2015 -----------------------------------------------------------------------------------------------

def test_bootstrap_soft_golden(batch):
    zs, zt, y = batch
    b, q, t = 0.95, _softmax(zs), _onehot(zt.argmax(1), 5)
    expect = -((b * t + (1 - b) * q) * np.log(q)).sum(axis=1).mean()  # eq. 5, q inside the target too
    out, grad = _run("bootstrap_soft", zs, zt, y, gt_weight=0.0)
    assert out.total.item() == pytest.approx(expect, rel=1e-5)
    entropy = -(q * np.log(q)).sum(axis=1, keepdims=True)
    # d/dz_j [b CE(z, t) + (1 - b) H(q)] = b (q_j - t_j) - (1 - b) q_j (log q_j + H)
    np.testing.assert_allclose(grad, (b * (q - t) - (1 - b) * q * (np.log(q) + entropy)) / 8, rtol=1e-4, atol=1e-7)


def test_bootstrap_hard_golden(batch):
    zs, zt, y = batch
    b, q, t, z = 0.8, _softmax(zs), _onehot(zt.argmax(1), 5), _onehot(zs.argmax(1), 5)
    expect = -((b * t + (1 - b) * z) * np.log(q)).sum(axis=1).mean()  # eq. 6
    out, grad = _run("bootstrap_hard", zs, zt, y, gt_weight=0.0)
    assert out.total.item() == pytest.approx(expect, rel=1e-5)
    np.testing.assert_allclose(grad, (q - (b * t + (1 - b) * z)) / 8, rtol=1e-4, atol=1e-7)


# -- DKD --------------------------------------------------------------------------------------------------------------

def _dkd_upstream(zs: np.ndarray, zt: np.ndarray, target: np.ndarray, alpha: float, beta: float,
                  temperature: float) -> float:
    """dkd_loss line by line: masks, cat_mask, the -1000 offset, KL(sum) / batch."""
    gt_mask = _onehot(target, zs.shape[1]).astype(bool)
    other_mask = ~gt_mask
    ps, pt = _softmax(zs, temperature), _softmax(zt, temperature)

    def cat_mask(p):
        return np.stack([(p * gt_mask).sum(1), (p * other_mask).sum(1)], axis=1)

    bs, bt = cat_mask(ps), cat_mask(pt)
    tckd = (bt * (np.log(bt) - np.log(bs))).sum() * temperature ** 2 / len(target)
    pt2 = _softmax(zt / temperature - 1000.0 * gt_mask)
    log_ps2 = _log_softmax(zs / temperature - 1000.0 * gt_mask)
    kl = np.where(pt2 > 0, pt2 * (np.log(np.where(pt2 > 0, pt2, 1.0)) - log_ps2), 0.0)
    nckd = kl.sum() * temperature ** 2 / len(target)
    return alpha * tckd + beta * nckd


@pytest.mark.parametrize("epoch,alpha,beta,temp", [(0, 1.0, 8.0, 4.0), (24, 1.0, 8.0, 4.0), (9, 0.5, 2.0, 1.0)])
def test_dkd_golden(batch, epoch, alpha, beta, temp):
    zs, zt, y = batch
    warm = min((epoch + 1) / 20, 1.0)  # forward_train's min(epoch / WARMUP, 1), epoch counted from 1
    expect = _soft_ce(zs, _onehot(y, 5)).mean() + warm * _dkd_upstream(zs, zt, y, alpha, beta, temp)
    out, grad = _run("dkd", zs, zt, y, epoch, 240, dkd_alpha=alpha, dkd_beta=beta, dkd_temperature=temp)
    assert out.total.item() == pytest.approx(expect, rel=1e-5)

    def loss(z: np.ndarray) -> float:
        return _soft_ce(z, _onehot(y, 5)).mean() + warm * _dkd_upstream(z, zt, y, alpha, beta, temp)

    numeric = np.zeros_like(zs)
    for idx in np.ndindex(*zs.shape):  # central differences of the transcription, float64
        d = np.zeros_like(zs)
        d[idx] = 1e-5
        numeric[idx] = (loss(zs + d) - loss(zs - d)) / 2e-5
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=1e-6)


def test_dkd_defaults_are_mdistillers_and_it_refuses_to_read_labels_when_told_not_to(batch):
    obj = build_objective("dkd")
    assert (obj.dkd_alpha, obj.dkd_beta, obj.dkd_temperature, obj.dkd_warmup) == (1.0, 8.0, 4.0, 20.0)
    assert obj.gt_weight == 1.0 and obj.dkd_target == "label"  # CFG.DKD.CE_WEIGHT 1.0
    with pytest.raises(ValueError, match="set objective.dkd_target=teacher"):
        build_objective("dkd", gt_weight=0.0)
    zs, zt, y = batch  # with dkd_target=teacher the target class is the teacher's argmax, whatever the labels
    teacher = build_objective("dkd", gt_weight=0.0, dkd_target="teacher")
    out, _ = _run("dkd", zs, zt, y, 30, 240, gt_weight=0.0, dkd_target="teacher")
    assert out.total.item() == pytest.approx(_dkd_upstream(zs, zt, zt.argmax(1), 1.0, 8.0, 4.0), rel=1e-5)
    again = teacher(torch.tensor(zs, dtype=torch.float32), torch.tensor(zt, dtype=torch.float32),
                    torch.tensor((y + 1) % 5), epoch=30, epochs=240)
    assert again.total.item() == pytest.approx(out.total.item())


BASELINE_GOLDEN_TESTS = {"logconf": test_logconf_golden_binary_as_upstream, "product": test_product_golden,
                         "bootstrap_soft": test_bootstrap_soft_golden, "bootstrap_hard": test_bootstrap_hard_golden,
                         "dkd": test_dkd_golden}
