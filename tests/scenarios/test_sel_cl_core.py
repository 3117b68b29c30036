"""Sel-CL core (pipeline.scenarios.sel_cl) against references written here from the definitions, with explicit loops."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.scenarios.sel_cl import (
    RUN_SETTINGS,
    KeyMemory,
    QueueBatch,
    SelCLDefaults,
    SelCLPlusDefaults,
    SupQueue,
    ViewMix,
    adaptconf_kd,
    batch_masks,
    class_quota,
    corrected_targets,
    knn_neighbours,
    knn_soft_labels,
    label_correction_active,
    linear_quantile,
    memory_masks,
    mix_inputs,
    mixup_ce,
    momentum_update,
    sel_cl_backward,
    sel_cl_losses,
    sel_cl_plus_ce,
    sel_cl_plus_losses,
    select_confident,
    select_examples,
    select_pairs,
    selection_precision_recall,
    similarity_loss,
    sup_contrastive_loss,
    unsup_contrastive_loss,
    use_sup_queue,
)

B, D, C, T = 5, 4, 3, 0.1


def _unit(g: torch.Generator, *shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _pairs(n: int, seed: int) -> torch.Tensor:
    """Symmetric random pair matrix with a True diagonal; sample 0 paired with nobody but itself."""
    g = np.random.default_rng(seed)
    p = g.random((n, n)) < 0.4
    p = p | p.T
    np.fill_diagonal(p, True)
    p[0, 1:] = p[1:, 0] = False
    return torch.from_numpy(p)


@pytest.fixture
def setup():
    """A batch of B samples (dataset ids 0..B-1) in two mixed views, and a queue of N-sample entries."""
    g = torch.Generator().manual_seed(0)
    n = 9
    pairs_all = _pairs(n, 1)
    mix = ViewMix(torch.tensor([2, 0, 1, 4, 3]), torch.tensor([3, 2, 4, 1, 0]), 0.7, 0.6)
    anchors = _unit(g, 2 * B, D)
    probs = torch.softmax(torch.randn(2 * B, C, generator=g, dtype=torch.float64), 1)
    start, q = 4, 16
    qidx = torch.randint(0, n, (q,), generator=g)
    qidx[start:start + 2 * B] = torch.cat([torch.arange(B), torch.arange(B)])
    qfeats = _unit(g, q, D)
    qprobs = torch.softmax(torch.randn(q, C, generator=g, dtype=torch.float64), 1)
    return dict(pairs_all=pairs_all, mix=mix, anchors=anchors, probs=probs, qidx=qidx, qfeats=qfeats,
                qprobs=qprobs, slot=(start, start + 2 * B))


def _key_weights(r, keys, pairs_all, mix):
    """Per key j of row r: (in denominator, major weight, minor weight, major sup weight), from the definitions.

    ``keys[j] = (dataset sample, batch position or None)``; batch positions are 0..2B-1 (view A, view B).
    """
    i, view = r % B, r // B
    perm, lam = (mix.perm_a, mix.lam_a) if view == 0 else (mix.perm_b, mix.lam_b)
    m = int(perm[i])
    out = []
    for s, pos in keys:
        if pos == r:
            out.append((False, 0.0, 0.0, 0.0))
            continue
        unsup = 1.0 if pos is not None and pos % B == i else 0.0
        if pos is not None:
            sup = float(pairs_all[i, s]) if s != i else 0.0
        else:
            sup = float(pairs_all[i, s])
        unsup2 = 1.0 if pos is not None and pos % B == m else 0.0
        sup2 = float(pairs_all[m, s])
        out.append((True, sup + unsup, sup2 + unsup2, sup))
    return out, lam


def _ref_supcon(anchors, kfeats, keys, pairs_all, mix):
    a, k = anchors.numpy(), kfeats.numpy()
    per_row, has_pos = [], []
    for r in range(2 * B):
        w, lam = _key_weights(r, keys, pairs_all, mix)
        s = [float(a[r] @ k[j]) / T for j in range(len(keys))]
        lse = math.log(sum(math.exp(s[j]) for j in range(len(keys)) if w[j][0]))
        n1 = sum(w[j][1] * (s[j] - lse) for j in range(len(keys)))
        n2 = sum(w[j][2] * (s[j] - lse) for j in range(len(keys)))
        d1, d2 = sum(x[1] for x in w), sum(x[2] for x in w)
        per_row.append(-(lam * n1 / d1 + (1 - lam) * n2 / d2))
        has_pos.append(sum(x[3] for x in w))
    total = 0.0
    for i in range(B):
        total += 0.5 * (per_row[i] + per_row[B + i]) * (1.0 if has_pos[i] > 0 else 0.0)
    return total / B, has_pos[:B]


def _ref_sim(probs, kprobs, keys, pairs_all, mix, eps=1e-7):
    p, kp = probs.numpy(), kprobs.numpy()
    total = 0.0
    for r in range(2 * B):
        w, lam = _key_weights(r, keys, pairs_all, mix)
        for j in range(len(keys)):
            if not w[j][0]:
                continue
            s = float(p[r] @ kp[j])
            bce = lambda t: -t * math.log(s + eps) - (1 - t) * math.log(1 - s + eps)  # noqa: E731
            total += lam * bce(w[j][1]) + (1 - lam) * bce(w[j][2])
    return total / (2 * B * len(keys))


def _batch_keys():
    return [(j % B, j) for j in range(2 * B)]


def _queue_keys(qidx, slot):
    return [(int(qidx[c]), c - slot[0] if slot[0] <= c < slot[1] else None) for c in range(len(qidx))]


# ---------------------------------------------------------------- loss terms


def test_unsup_infonce_matches_loop():
    g = torch.Generator().manual_seed(1)
    q, k, mem = _unit(g, 3, D), _unit(g, 3, D), _unit(g, 7, D)
    got = unsup_contrastive_loss(q, k, mem, T)
    for i in range(3):
        logits = [float(q[i] @ k[i]) / T] + [float(q[i] @ mem[j]) / T for j in range(7)]
        ref = -logits[0] + math.log(sum(math.exp(x) for x in logits))
        assert got[i].item() == pytest.approx(ref, rel=1e-10)


def test_batch_supcon_and_similarity_match_loops(setup):
    s = setup
    bm = batch_masks(s["pairs_all"][:B, :B], s["mix"])
    got = sup_contrastive_loss(s["anchors"], s["anchors"], bm, s["mix"], T)
    ref, has_pos = _ref_supcon(s["anchors"], s["anchors"], _batch_keys(), s["pairs_all"], s["mix"])
    assert has_pos[0] == 0 and any(h > 0 for h in has_pos)  # sample 0 has no confident positive: dropped
    assert got.item() == pytest.approx(ref, rel=1e-10)
    got_sim = similarity_loss(s["probs"], s["probs"], bm, s["mix"])
    assert got_sim.item() == pytest.approx(_ref_sim(s["probs"], s["probs"], _batch_keys(), s["pairs_all"], s["mix"]),
                                           rel=1e-10)


def test_queue_supcon_and_similarity_match_loops(setup):
    s = setup
    bm = batch_masks(s["pairs_all"][:B, :B], s["mix"])
    mm = memory_masks(s["pairs_all"][:B][:, s["qidx"]], bm, s["mix"], s["slot"])
    keys = _queue_keys(s["qidx"], s["slot"])
    got = sup_contrastive_loss(s["anchors"], s["qfeats"], mm, s["mix"], T)
    ref, _ = _ref_supcon(s["anchors"], s["qfeats"], keys, s["pairs_all"], s["mix"])
    assert got.item() == pytest.approx(ref, rel=1e-10)
    got_sim = similarity_loss(s["probs"], s["qprobs"], mm, s["mix"])
    assert got_sim.item() == pytest.approx(_ref_sim(s["probs"], s["qprobs"], keys, s["pairs_all"], s["mix"]), rel=1e-10)
    with pytest.raises(ValueError, match="slot"):
        memory_masks(s["pairs_all"][:B][:, s["qidx"]], bm, s["mix"], (0, 3))


def test_mixup_ce_matches_loop():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2 * B, C, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1, 0])
    mix = ViewMix(torch.tensor([4, 3, 2, 1, 0]), torch.tensor([1, 0, 3, 2, 4]), 0.8, 0.55)
    ref = 0.0
    for r in range(2 * B):
        i, perm, lam = (r, mix.perm_a, mix.lam_a) if r < B else (r - B, mix.perm_b, mix.lam_b)
        lse = math.log(sum(math.exp(float(x)) for x in logits[r]))
        ref += lam * (lse - float(logits[r, y[i]])) + (1 - lam) * (lse - float(logits[r, y[perm[i]]]))
    assert mixup_ce(logits, y, mix).item() == pytest.approx(ref / (2 * B), rel=1e-10)


def test_sel_cl_losses_combines_terms(setup):
    s = setup
    g = torch.Generator().manual_seed(3)
    uns = torch.rand(B, generator=g, dtype=torch.float64) + 1
    cls_logits = torch.randn(2 * B, C, generator=g, dtype=torch.float64)
    cls_y = torch.tensor([1, 0, 2, 2, 1])
    cls_mix = ViewMix(torch.tensor([1, 2, 3, 4, 0]), torch.tensor([0, 1, 2, 3, 4]), 0.9, 1.0)
    qb = QueueBatch(s["qfeats"], s["qprobs"], s["pairs_all"][:B][:, s["qidx"]], s["slot"])
    out = sel_cl_losses(uns_per_sample=uns, embeds=s["anchors"], probs=s["probs"], pairs=s["pairs_all"][:B, :B],
                        mix=s["mix"], cls_logits=cls_logits, cls_labels=cls_y, cls_mix=cls_mix, queue=qb,
                        lambda_c=0.5, lambda_s=0.01)
    sup_b, pos_b = _ref_supcon(s["anchors"], s["anchors"], _batch_keys(), s["pairs_all"], s["mix"])
    sup_q, pos_q = _ref_supcon(s["anchors"], s["qfeats"], _queue_keys(s["qidx"], s["slot"]), s["pairs_all"], s["mix"])
    keep = [pos_b[i] + pos_q[i] < 2 for i in range(B)]
    assert keep[0]  # no confident pair: keeps the unsupervised term
    uns_ref = sum(float(uns[i]) for i in range(B) if keep[i]) / B
    sim_ref = _ref_sim(s["probs"], s["probs"], _batch_keys(), s["pairs_all"], s["mix"]) + \
        _ref_sim(s["probs"], s["qprobs"], _queue_keys(s["qidx"], s["slot"]), s["pairs_all"], s["mix"])
    ce = mixup_ce(cls_logits, cls_y, cls_mix).item()
    assert out["uns"].item() == pytest.approx(uns_ref, rel=1e-10)
    assert out["sup_con"].item() == pytest.approx(sup_b + sup_q, rel=1e-10)
    assert out["sim"].item() == pytest.approx(sim_ref, rel=1e-10)
    assert out["total"].item() == pytest.approx(uns_ref + sup_b + sup_q + 0.5 * ce, rel=1e-10)
    assert out["sim_weighted"].item() == pytest.approx(0.01 * sim_ref, rel=1e-10)
    no_q = sel_cl_losses(uns_per_sample=uns, embeds=s["anchors"], probs=s["probs"], pairs=s["pairs_all"][:B, :B],
                         mix=s["mix"], cls_logits=cls_logits, cls_labels=cls_y, cls_mix=cls_mix)
    assert no_q["uns"].item() == pytest.approx(sum(float(uns[i]) for i in range(B) if pos_b[i] < 1) / B, rel=1e-10)
    assert not use_sup_queue(2) and use_sup_queue(3)  # upstream epoch > 3


def test_sel_cl_backward_clips_only_the_similarity_gradient():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)

    def losses():
        z = lin(x)
        return {"sim_weighted": 100.0 * z.pow(2).sum(), "total": z.sum()}

    l1 = losses()
    g_sim = torch.autograd.grad(l1["sim_weighted"], list(lin.parameters()), retain_graph=True)
    g_tot = torch.autograd.grad(l1["total"], list(lin.parameters()))
    norm = torch.sqrt(sum(g.pow(2).sum() for g in g_sim))
    assert norm > 0.25
    sel_cl_backward(losses(), lin.parameters(), lambda_s=0.01, sim_clip=0.25)
    for p, gs, gt in zip(lin.parameters(), g_sim, g_tot):
        torch.testing.assert_close(p.grad, gs * 0.25 / (norm + 1e-6) + gt)


def test_mix_inputs_keeps_the_major_image():
    rng = np.random.default_rng(0)
    x = torch.arange(12, dtype=torch.float64).view(6, 2)
    mixed, perm, lam = mix_inputs(x, 1.0, rng)
    assert 0.5 <= lam <= 1.0 and sorted(perm.tolist()) == list(range(6))
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[perm])
    same, _, lam0 = mix_inputs(x, 0.0, rng)
    assert lam0 == 1.0 and torch.equal(same, x)


# ---------------------------------------------------------------- selection


def _clusters(seed: int = 0):
    """3 well separated clusters of 20; points 0, 1 of each cluster carry the next cluster's label."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(16)[:3] * 5
    feats = torch.cat([centers[c] + 0.3 * torch.randn(20, 16, generator=g) for c in range(3)])
    clean = torch.arange(3).repeat_interleave(20)
    noisy = clean.clone()
    for c in range(3):
        noisy[20 * c:20 * c + 2] = (c + 1) % 3
    return F.normalize(feats, dim=1), noisy, clean


def test_knn_excludes_self_and_is_chunk_invariant():
    f, noisy, _ = _clusters()
    nb = knn_neighbours(f, 5, chunk_size=7)
    assert not (nb == torch.arange(60)[:, None]).any()
    assert torch.equal(nb, knn_neighbours(f, 5, chunk_size=1000))
    assert torch.equal(knn_neighbours(f, 5, exclude_self=False)[:, 0], torch.arange(60))
    sims = f @ f.T
    for i in (0, 33):  # neighbours are the top-5 by cosine among the others, by brute force
        order = [j for j in sorted(range(60), key=lambda j: -float(sims[i, j])) if j != i][:5]
        assert set(nb[i].tolist()) == set(order)
    soft = knn_soft_labels(f, noisy, 5, 3, chunk_size=11)
    for i in (0, 25, 59):
        votes = [0.0] * 3
        for j in nb[i].tolist():
            votes[int(noisy[j])] += 1 / 5
        assert soft[i].tolist() == pytest.approx(votes)
    with pytest.raises(ValueError):
        knn_neighbours(f, 60)


def test_select_examples_drops_the_mislabelled():
    f, noisy, clean = _clusters()
    sel = select_examples(f, noisy, 3, k=5, alpha=0.5)
    assert torch.equal(sel.corrected_labels, clean)
    assert sel.quota == 18  # 18 agreeing examples in each class
    assert torch.equal(sel.mask, noisy == clean)
    assert selection_precision_recall(sel.mask, noisy, clean) == (1.0, 1.0)
    assert float(sel.confidence[0]) == 0.0 and float(sel.confidence[5]) == 1.0


def test_class_quota_follows_upstream_quantiles():
    labels = torch.arange(4).repeat_interleave(10)
    agree = torch.zeros(40, dtype=torch.bool)
    for c, n in enumerate([2, 5, 7, 10]):
        agree[10 * c:10 * c + n] = True
    assert class_quota(agree, labels, 4, 0.5) == 5            # torch.median: lower median of 2, 5, 7, 10
    assert class_quota(agree, labels, 4, 1.0) == 10
    assert class_quota(agree, labels, 4, 0.0) == 2
    assert class_quota(agree, labels, 4, 0.75) == pytest.approx(np.quantile([2, 5, 7, 10], 0.75))  # 7.75 -> 7


def test_select_confident_is_class_balanced():
    # class 0: 6 examples, class 1: 3; agreeing: 4 in class 0, 1 in class 1 -> quota = max = 4
    y = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1])
    conf = [0.9, 0.995, 0.45, 0.7, 0.2, 0.999, 0.8, 0.3, 0.1]
    soft = torch.zeros(9, 2)
    for i, (c, p) in enumerate(zip(y.tolist(), conf)):
        soft[i, c], soft[i, 1 - c] = p, 1 - p
    mask, got = select_confident(soft, y, alpha=1.0)
    torch.testing.assert_close(got, torch.tensor(conf))
    # class 0: top 4 by confidence clamped to 0.99 (0.995 and 0.999 tie: both kept), class 1: all 3 (< quota)
    assert mask.tolist() == [True, True, False, True, False, True, True, True, True]
    mask2, _ = select_confident(soft, y, alpha=0.0)  # quota = min = 1: ties at 0.99 go to the lower index
    assert mask2.nonzero().flatten().tolist() == [1, 6]


def test_pairs_match_loops():
    g = torch.Generator().manual_seed(4)
    f = F.normalize(torch.randn(30, 6, generator=g), dim=1)
    y = torch.randint(0, 3, (30,), generator=g)
    sel = torch.rand(30, generator=g) < 0.5
    ps = select_pairs(f, y, sel, beta=0.35)
    sims = (f @ f.T).numpy()
    vals = [sims[i, j] for i in range(30) for j in range(30) if sel[i] and sel[j] and y[i] == y[j]]
    assert ps.threshold == pytest.approx(float(np.quantile(np.array(vals, dtype=np.float64), 0.35)), abs=1e-6)
    rows, cols = torch.arange(0, 30, 2), torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    got = ps.mask(rows, cols)
    for a, i in enumerate(rows.tolist()):
        for b, j in enumerate(cols.tolist()):
            want = bool(y[i] == y[j]) and (bool(sel[i] and sel[j]) or sims[i, j] >= ps.threshold)
            assert bool(got[a, b]) == want
    assert type(ps).from_state_dict(ps.state_dict()).threshold == ps.threshold


def test_linear_quantile_is_numpy_linear():
    v = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 9.0])
    for q in (0.0, 0.25, 0.35, 0.5, 0.9, 1.0):
        assert linear_quantile(v, q) == pytest.approx(float(np.quantile(v.numpy(), q)))


def test_precision_recall_by_hand():
    noisy = torch.tensor([0, 1, 1, 2, 0, 2])
    clean = torch.tensor([0, 1, 0, 2, 1, 2])  # clean examples: 0, 1, 3, 5
    selected = torch.tensor([True, True, True, False, False, False])
    assert selection_precision_recall(selected, noisy, clean) == (pytest.approx(2 / 3), pytest.approx(2 / 4))
    assert selection_precision_recall(torch.zeros(6, dtype=torch.bool), noisy, clean) == (0.0, 0.0)


# ---------------------------------------------------------------- memories and EMA


def test_sup_queue_upstream_wraparound():
    q = SupQueue(10, 2, 3)
    for n, want_ptr, want_slot in ((4, 4, (0, 4)), (4, 8, (4, 8))):
        q.enqueue(torch.full((n, 2), float(want_ptr)), torch.zeros(n, 3), torch.arange(n) + want_ptr)
        assert (q.ptr, q.last_slot, q.is_full) == (want_ptr, want_slot, False)
    assert q.get()[0].shape[0] == 8
    q.enqueue(torch.full((4, 2), 12.0), torch.ones(4, 3), torch.tensor([20, 21, 22, 23]))  # 8 + 4 > 10: last 4 slots
    assert (q.ptr, q.last_slot, q.is_full) == (0, (6, 10), True)
    assert q.indices.tolist() == [4, 5, 6, 7, 8, 9, 20, 21, 22, 23]
    assert q.get()[0].shape[0] == 10 and q.get()[1][6:].sum() == 12
    q.enqueue(torch.zeros(2, 2), torch.zeros(2, 3), torch.tensor([30, 31]))
    assert (q.ptr, q.last_slot) == (2, (0, 2)) and q.indices[:2].tolist() == [30, 31]
    r = SupQueue(10, 2, 3)
    r.load_state_dict(q.state_dict())
    assert (r.ptr, r.last_slot) == (q.ptr, q.last_slot) and torch.equal(r.indices, q.indices)
    # exactly full: ptr reaches size, the next write still goes to the last slots
    e = SupQueue(8, 1, 2)
    for _ in range(2):
        e.enqueue(torch.zeros(4, 1), torch.zeros(4, 2), torch.arange(4))
    assert (e.ptr, e.is_full, e.last_slot) == (8, True, (4, 8))
    e.enqueue(torch.ones(4, 1), torch.zeros(4, 2), torch.arange(4) + 10)
    assert (e.ptr, e.last_slot) == (0, (4, 8)) and e.indices.tolist() == [0, 1, 2, 3, 10, 11, 12, 13]
    assert SupQueue.for_classes(100, 100, 128).size == SupQueue.for_classes(1000, 10, 128).size == 20000


def test_key_memory_wraps_modulo():
    m = KeyMemory(4, 5, generator=torch.Generator().manual_seed(0))
    s = 1 / math.sqrt(4 / 3)
    assert m.memory.abs().max() <= s
    m.enqueue(torch.ones(3, 4))
    m.enqueue(torch.full((3, 4), 2.0))
    assert m.index == 1 and m.memory[:, 0].tolist() == [2.0, 1.0, 1.0, 2.0, 2.0]
    r = KeyMemory(4, 5)
    r.load_state_dict(m.state_dict())
    assert r.index == 1 and torch.equal(r.memory, m.memory)


def test_momentum_update_params_only():
    torch.manual_seed(0)
    key, query = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)), \
        torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    query[1].running_mean.fill_(3.0)
    before = [p.clone() for p in key.parameters()]
    momentum_update(key, query, 0.9)
    for pk, p0, pq in zip(key.parameters(), before, query.parameters()):
        torch.testing.assert_close(pk, 0.9 * p0 + 0.1 * pq)
    assert key[1].running_mean.abs().sum() == 0
    momentum_update(key, query, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(key.parameters(), query.parameters()))


# ---------------------------------------------------------------- Sel-CL+


def test_label_correction_matches_upstream_boot_loss():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, C, generator=g, dtype=torch.float64)
    clean = torch.randn(4, C, generator=g, dtype=torch.float64)
    y, perm, lam = torch.tensor([0, 1, 2, 0]), torch.tensor([2, 3, 0, 1]), 0.7
    z = clean.argmax(1)

    def ce(i, t):
        return math.log(sum(math.exp(float(v)) for v in logits[i])) - float(logits[i, t])

    plain = sum(lam * ce(i, y[i]) + (1 - lam) * ce(i, y[perm[i]]) for i in range(4)) / 4
    boot = sum(lam * 0.8 * ce(i, y[i]) + lam * 0.2 * ce(i, z[i]) + (1 - lam) * 0.8 * ce(i, y[perm[i]])
               + (1 - lam) * 0.2 * ce(i, z[perm[i]]) for i in range(4)) / 4
    assert not label_correction_active(29) and label_correction_active(30)  # upstream epoch > 30
    assert sel_cl_plus_ce(logits, clean, y, perm, lam, epoch=29).item() == pytest.approx(plain, rel=1e-10)
    assert sel_cl_plus_ce(logits, clean, y, perm, lam, epoch=30).item() == pytest.approx(boot, rel=1e-10)
    t = corrected_targets(y, clean, 30)
    assert t.sum(1).tolist() == pytest.approx([1.0] * 4) and t[0, int(y[0])] >= 0.8


def test_adaptconf_kd_matches_upstream_formula():
    g = torch.Generator().manual_seed(6)
    zs = torch.randn(6, 5, generator=g, dtype=torch.float64) * 2
    zt = torch.randn(6, 5, generator=g, dtype=torch.float64) * 2
    temp, th, w, epochs = 10.0, 0.5, 1.0, 70

    def upstream(epoch1: int) -> float:
        total, out_kd, out_al = epochs + 1, 0.0, 0.0
        for i in range(6):
            s, t = zs[i].tolist(), zt[i].tolist()
            lse = math.log(sum(math.exp(v) for v in s))
            ce_self, ce_t = lse - max(s), lse - s[int(np.argmax(t))]
            a = math.exp(ce_self / th) / (math.exp(ce_self / th) + math.exp(ce_t / th))
            if epoch1 < int(total * 0.25):
                a = epoch1 / (total * 0.25) * a
            ps = [math.exp(v / temp) for v in s]
            pt = [math.exp(v / temp) for v in t]
            ps, pt = [v / sum(ps) for v in ps], [v / sum(pt) for v in pt]
            kl = sum(b * (math.log(b) - math.log(c)) for b, c in zip(pt, ps)) * temp ** 2
            out_kd += (1 - a) * kl / 6
            out_al += a * ce_self / 6
        return w * (out_kd + out_al)

    for epoch in (0, 15, 16, 17, 69):  # 0-based; int(71 * 0.25) = 17 -> ramp while upstream epoch < 17
        kd, _ = adaptconf_kd(zs, zt, epoch, epochs, temperature=temp, threshold=th, weight=w)
        assert kd.item() == pytest.approx(upstream(epoch + 1), rel=1e-6)
    out = sel_cl_plus_losses(logits=zs, clean_logits=zs, labels=torch.zeros(6, dtype=torch.long),
                             perm=torch.arange(6), lam=1.0, epoch=40, teacher_logits=zt, kd_temperature=temp)
    assert out["total"].item() == pytest.approx(out["ce"].item() + upstream(41), rel=1e-6)


def test_defaults_table():
    d, p = SelCLDefaults(), SelCLPlusDefaults()
    assert (d.epochs, d.lr, d.lr_decay_epochs, d.weight_decay, d.batch_size, d.low_dim) == (250, 0.1, (125, 200), 1e-4,
                                                                                              128, 128)
    assert (d.uns_t, d.sup_t, d.k_val, d.queue_per_class, d.warmup_epochs, d.lambda_s, d.lambda_c) == \
        (0.1, 0.1, 250, 1000, 1, 0.01, 1.0)
    assert (p.epochs, p.lr, p.weight_decay, p.start_label_correction, p.bootstrap) == (70, 0.001, 1e-4, 30, 0.2)
    assert (RUN_SETTINGS[("cifar100", "symmetric", 0.2)].alpha, RUN_SETTINGS[("cifar100", "symmetric", 0.2)].beta) == \
        (0.75, 0.35)
    assert (RUN_SETTINGS[("cifar100", "asymmetric", 0.4)].alpha, RUN_SETTINGS[("cifar100", "asymmetric", 0.4)].beta) == \
        (0.25, 0.0)
