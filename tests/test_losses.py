"""Every loss in dwc_core.models.losses against values worked out by hand (plain Python math on tiny fixed tensors)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dwc_core.models import losses


def unit(*xs: float) -> list[float]:
    n = math.sqrt(sum(x * x for x in xs))
    return [x / n for x in xs]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def softmax(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(x - m) for x in row]
    s = sum(e)
    return [x / s for x in e]


Q = [unit(1.0, 0.0), unit(0.6, 0.8), unit(0.0, 1.0)]
T = [unit(0.8, 0.6), unit(0.0, 1.0), unit(1.0, 1.0)]


def tensor(rows: list[list[float]], grad: bool = False) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


# ------------------------------------------------------------------------------------------------------ SSG
def ssg_by_hand(q, t, labels, tau, alpha) -> float:
    b = len(q)
    total = 0.0
    for i in range(b):
        matches = [1.0 if labels[i] == labels[j] else 0.0 for j in range(b)]
        hard = [m / sum(matches) for m in matches]
        soft = softmax([dot(t[i], t[j]) / tau for j in range(b)])
        mix = [alpha * s + (1 - alpha) * h for s, h in zip(soft, hard, strict=True)]
        logp = [math.log(p) for p in softmax([dot(q[i], t[j]) / tau for j in range(b)])]
        total += -sum(m * lp for m, lp in zip(mix, logp, strict=True))
    return total / b


@pytest.mark.parametrize("labels", [[0, 1, 2], [5, 5, 7]])
@pytest.mark.parametrize("tau,alpha", [(0.07, 0.2), (0.5, 0.0), (1.0, 1.0)])
def test_ssg_matches_hand_computation(labels, tau, alpha):
    got = losses.ssg_contrastive(tensor(Q), tensor(T), torch.tensor(labels), tau=tau, alpha=alpha)
    assert got.item() == pytest.approx(ssg_by_hand(Q, T, labels, tau, alpha), rel=1e-9)


def test_ssg_two_rows_explicit_numbers():
    # q = t = e1, e2 (orthogonal); tau = 1, alpha = 0.5, distinct labels.
    # soft rows = softmax([1, 0]) = [e/(e+1), 1/(e+1)]; hard = identity; log p_ii = log(e/(e+1)), log p_ij = log(1/(e+1))
    e = math.e
    s_ii, s_ij = e / (e + 1), 1 / (e + 1)
    y_ii, y_ij = 0.5 * s_ii + 0.5, 0.5 * s_ij
    expected = -(y_ii * math.log(e / (e + 1)) + y_ij * math.log(1 / (e + 1)))
    eye = torch.eye(2, dtype=torch.float64)
    got = losses.ssg_contrastive(eye, eye, torch.tensor([0, 1]), tau=1.0, alpha=0.5)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_ssg_alpha_zero_is_cross_entropy_over_duplicate_aware_labels():
    labels = torch.tensor([3, 3, 4])
    tau = 0.1
    q, t = tensor(Q), tensor(T)
    logits = q @ t.t() / tau
    # rows 0 and 1 share a label: each has two positives with weight 1/2; row 2 has one
    target = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    expected = F.cross_entropy(logits, target)
    got = losses.ssg_contrastive(q, t, labels, tau=tau, alpha=0.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    # and with distinct labels it is the ordinary diagonal cross-entropy
    got = losses.ssg_contrastive(q, t, torch.arange(3), tau=tau, alpha=0.0)
    assert got.item() == pytest.approx(F.cross_entropy(logits, torch.arange(3)).item(), rel=1e-12)


def test_ssg_soft_labels_carry_gradient_unless_detached():
    labels = torch.arange(3)
    q = tensor(Q)
    t1, t2 = tensor(T, grad=True), tensor(T, grad=True)
    losses.ssg_contrastive(q, t1, labels, alpha=0.2).backward()
    losses.ssg_contrastive(q, t2, labels, alpha=0.2, detach_soft=True).backward()
    assert not torch.allclose(
        t1.grad, t2.grad
    )  # the soft-label path contributes gradient (official behaviour)
    t3 = tensor(T, grad=True)
    losses.ssg_contrastive(q, t3, labels, alpha=0.0).backward()
    assert torch.allclose(t2.grad, 0.8 * t3.grad + 0.2 * _grad_of_fixed_soft(q, labels))


def _grad_of_fixed_soft(q, labels):
    """Gradient wrt t of −mean Σ S_ij log p_ij with S held fixed (S from the unperturbed targets)."""
    t = tensor(T, grad=True)
    soft = torch.softmax(tensor(T) @ tensor(T).t() / 0.07, dim=1)
    logp = torch.log_softmax(q @ t.t() / 0.07, dim=1)
    (-(soft * logp).sum(1).mean()).backward()
    return t.grad


# -------------------------------------------------------------------------------------------------- mutual KL
def test_mutual_kl_matches_hand_computation():
    q_o = [unit(1.0, 2.0), unit(-1.0, 0.5), unit(0.3, 0.3)]
    t_o = [unit(0.0, 1.0), unit(1.0, 0.0), unit(1.0, -1.0)]
    scale = 10.0
    expected = 0.0
    for i in range(3):
        p_self = softmax([scale * dot(Q[i], T[j]) for j in range(3)])
        p_other = softmax([scale * dot(q_o[i], t_o[j]) for j in range(3)])
        expected += sum(po * (math.log(po) - math.log(ps)) for po, ps in zip(p_other, p_self, strict=True))
    expected /= 3  # batchmean
    got = losses.mutual_kl(tensor(Q), tensor(T), tensor(q_o), tensor(t_o), scale=scale)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_mutual_kl_is_zero_for_identical_streams_and_blocks_teacher_gradient():
    q_s, t_s = tensor(Q, grad=True), tensor(T, grad=True)
    q_o, t_o = tensor(Q, grad=True), tensor(T, grad=True)
    loss = losses.mutual_kl(q_s, t_s, q_o, t_o)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    loss = losses.mutual_kl(q_s, t_s, q_o, tensor([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]], grad=True))
    loss.backward()
    assert q_o.grad is None and t_o.grad is None
    assert q_s.grad is not None and q_s.grad.abs().sum() > 0 and t_s.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------ batch-based classification
def test_batch_based_classification_two_rows():
    q = [[1.0, 0.0], [0.0, 2.0]]
    t = [[0.5, 0.0], [1.0, 1.0]]
    # logits (scale 3): row0 = 3·[0.5, 1] = [1.5, 3]; row1 = 3·[0, 2] = [0, 6]
    row0 = -math.log(math.exp(1.5) / (math.exp(1.5) + math.exp(3.0)))
    row1 = -math.log(math.exp(6.0) / (math.exp(0.0) + math.exp(6.0)))
    got = losses.batch_based_classification(tensor(q), tensor(t), scale=3.0)
    assert got.item() == pytest.approx((row0 + row1) / 2, rel=1e-12)


# --------------------------------------------------------------------------------------------------- soft triplet
def soft_triplet_by_hand(q, t) -> float:
    """B = 2: every anchor has 1 positive and exactly 2 negatives (all other-label items), so nothing is random."""
    items = [q[0], q[1], t[0], t[1]]
    labels = [0, 1, 0, 1]

    def d2(a, b):
        return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))

    terms = []
    for a in range(4):
        pos = (a + 2) % 4
        for n in range(4):
            if labels[n] != labels[a]:
                terms.append(math.log1p(math.exp(d2(items[a], items[pos]) - d2(items[a], items[n]))))
    return sum(terms) / len(terms)


def test_soft_triplet_matches_hand_computation():
    q = [[0.0, 0.0], [1.0, 2.0]]
    t = [[0.5, 0.0], [1.0, 1.0]]
    expected = soft_triplet_by_hand(q, t)
    for original in (True, False):
        got = losses.soft_triplet(tensor(q), tensor(t), triplets_per_anchor=3, original_gradient=original)
        assert got.item() == pytest.approx(expected, rel=1e-9)


def test_soft_triplet_original_gradient_is_half():
    q = [[0.0, 0.0], [1.0, 2.0]]
    t = [[0.5, 0.0], [1.0, 1.0]]
    grads = {}
    for original in (True, False):
        qt, tt = tensor(q, grad=True), tensor(t, grad=True)
        losses.soft_triplet(qt, tt, original_gradient=original).backward()
        grads[original] = torch.cat([qt.grad, tt.grad])
    assert torch.isfinite(grads[False]).all() and grads[False].abs().sum() > 0
    assert torch.allclose(grads[True], 0.5 * grads[False], rtol=1e-12, atol=1e-15)
    # the full gradient equals autograd through the hand formula
    qt, tt = tensor(q, grad=True), tensor(t, grad=True)
    x = torch.cat([qt, tt])
    total = x.new_zeros(())
    count = 0
    for a in range(4):
        for n in range(4):
            if n % 2 != a % 2:
                d_ap = ((x[a] - x[(a + 2) % 4]) ** 2).sum()
                d_an = ((x[a] - x[n]) ** 2).sum()
                total = total + F.softplus(d_ap - d_an)
                count += 1
    (total / count).backward()
    assert torch.allclose(grads[False], torch.cat([qt.grad, tt.grad]), rtol=1e-9, atol=1e-12)


def test_soft_triplet_samples_only_negatives():
    g = torch.Generator().manual_seed(0)
    q, t = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    # with one negative per anchor the value must be one of the per-negative terms averaged: check bounds
    loss = losses.soft_triplet(q, t, triplets_per_anchor=1, generator=g)
    x = torch.cat([q, t])
    d = torch.cdist(x, x) ** 2
    labels = torch.arange(4).repeat(2)
    lo, hi = 0.0, 0.0
    for a in range(8):
        pos = (a + 4) % 8
        vals = [F.softplus(d[a, pos] - d[a, n]).item() for n in range(8) if labels[n] != labels[a]]
        lo += min(vals) / 8
        hi += max(vals) / 8
    assert lo - 1e-9 <= loss.item() <= hi + 1e-9


# ------------------------------------------------------------------------------------------------------ gram MSE
def test_gram_mse_two_rows():
    c = [[3.0, 4.0], [1.0, 0.0]]  # normalised: [0.6, 0.8], [1, 0] → off-diagonal cosine 0.6
    t = [[0.0, 2.0], [0.0, -1.0]]  # normalised: [0, 1], [0, -1] → off-diagonal cosine -1
    # diagonals are 1 − 1 = 0; two off-diagonal entries of (0.6 − (−1))² = 2.56; mean over 4 entries
    expected = 2 * (0.6 + 1.0) ** 2 / 4
    got = losses.gram_mse(tensor(c), tensor(t))
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_gram_mse_zero_when_similarities_agree():
    c = tensor([[1.0, 0.0], [0.0, 3.0]])
    t = tensor([[0.0, 5.0], [-2.0, 0.0]])  # also orthogonal pair
    assert losses.gram_mse(c, t).item() == pytest.approx(0.0, abs=1e-15)
