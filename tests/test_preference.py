"""preference.py against hand-written formulas, grid searches and autograd-free derivatives."""

import math

import pytest
import torch

from rlbook.dpo import dpo_loss
from rlbook.preference import (ipo_loss, ipo_noisy_margin, kto_balanced_lambdas, kto_class_ratio, kto_loss,
                               kto_reference_point, log_ratio_margin, simpo_loss)

NAN = float("nan")


def rand(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(n, generator=g, dtype=torch.float64) * 10) for _ in range(4)]


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------ IPO

def test_ipo_against_the_formula_written_out():
    cw, cl, rw, rl = rand()
    beta = 0.3
    got = ipo_loss(cw, cl, rw, rl, beta, reduction="none")
    for i in range(6):
        h = math.log(math.exp(cw[i]) / math.exp(rw[i])) - math.log(math.exp(cl[i]) / math.exp(rl[i]))
        assert got[i].item() == pytest.approx((h - 1 / (2 * beta)) ** 2, rel=1e-9)
    assert ipo_loss(cw, cl, rw, rl, beta).item() == pytest.approx(sum(got.tolist()) / 6)
    assert torch.allclose(log_ratio_margin(cw, cl, rw, rl), cw - rw - cl + rl)


def test_length_normalised_ipo_is_trls_per_token_form():
    """TRL's DPOTrainer(loss_type="ipo"): each log-ratio divided by its answer's token count."""
    cw, cl, rw, rl = rand(5, seed=3)
    lw = torch.tensor([1.0, 2, 3, 4, 5], dtype=torch.float64)
    ll = torch.tensor([5.0, 3, 3, 1, 2], dtype=torch.float64)
    beta = 0.2
    got = ipo_loss(cw, cl, rw, rl, beta, chosen_len=lw, rejected_len=ll, reduction="none")
    for i in range(5):
        delta = (cw[i].item() - rw[i].item()) / lw[i].item() - (cl[i].item() - rl[i].item()) / ll[i].item()
        assert got[i].item() == pytest.approx((delta - 1 / (2 * beta)) ** 2, rel=1e-9)
    summed = ipo_loss(cw, cl, rw, rl, beta, reduction="none")
    assert not torch.allclose(got, summed)  # the two forms differ as soon as |y| != 1


def test_ipo_gradient_is_zero_at_the_target_margin_while_dpos_never_is():
    beta = 0.25
    target = 1 / (2 * beta)
    zero = torch.zeros(1, dtype=torch.float64)
    for h in (target, target + 1.0, 0.0, 20.0):
        cw = torch.tensor([h], dtype=torch.float64, requires_grad=True)
        ipo_loss(cw, zero, zero, zero, beta).backward()
        assert cw.grad.item() == pytest.approx(2 * (h - target), abs=1e-12)  # d/dh (h - t)^2
        cw = torch.tensor([h], dtype=torch.float64, requires_grad=True)
        dpo_loss(cw, zero, zero, zero, beta).backward()
        assert cw.grad.item() == pytest.approx(-beta * sigmoid(-beta * h), rel=1e-9) and cw.grad.item() < 0


def test_ipo_minimum_found_by_grid_search():
    """A pitfall: writing beta * (h - 1/2)^2 or (beta h - 1/2)^2 moves the minimum."""
    h = torch.linspace(-5, 10, 3001, dtype=torch.float64)
    z = torch.zeros_like(h)
    for beta in (0.1, 0.5, 2.0):
        best = h[ipo_loss(h, z, z, z, beta, reduction="none").argmin()]
        assert best.item() == pytest.approx(1 / (2 * beta), abs=5e-3)


@pytest.mark.parametrize("p", [0.5, 0.6, 0.75, 0.9, 1.0])
def test_noisy_ipo_minimiser_against_a_grid_search(p):
    """E[loss] when the label is right with probability p: p L(h) + (1 - p) L(-h)."""
    beta = 0.4
    h = torch.linspace(-4, 4, 80001, dtype=torch.float64)
    z = torch.zeros_like(h)
    expected = p * ipo_loss(h, z, z, z, beta, reduction="none") + (1 - p) * ipo_loss(-h, z, z, z, beta, reduction="none")
    assert ipo_noisy_margin(p, beta) == pytest.approx(h[expected.argmin()].item(), abs=2e-4)
    # DPO's expected loss has its minimum at beta h = log(p / (1 - p)): unbounded as p -> 1
    if p < 1:
        h = 2.5 * h  # beta h up to 4
        dpo_expected = p * dpo_loss(h, z, z, z, beta, reduction="none") + (1 - p) * dpo_loss(-h, z, z, z, beta, reduction="none")
        assert beta * h[dpo_expected.argmin()].item() == pytest.approx(math.log(p / (1 - p)), abs=1e-3)


def test_ipo_edge_cases():
    z = torch.zeros(2, dtype=torch.float64)
    assert torch.allclose(ipo_loss(z, z, z, z, beta=0.5, reduction="none"), torch.ones(2, dtype=torch.float64))
    big = torch.tensor([1e4, -1e4], dtype=torch.float64)
    assert ipo_loss(big, z, z, z, beta=0.5, reduction="none").tolist() == [(1e4 - 1) ** 2, (1e4 + 1) ** 2]


def test_ipo_bad_inputs():
    cw, cl, rw, rl = rand()
    for beta in (0.0, -1.0, NAN):
        with pytest.raises(ValueError, match="beta"):
            ipo_loss(cw, cl, rw, rl, beta=beta)
    with pytest.raises(ValueError, match="rejected_logp"):
        ipo_loss(cw, cl[:3], rw, rl)
    with pytest.raises(ValueError, match="NaN"):
        ipo_loss(cw, cl * NAN, rw, rl)
    with pytest.raises(ValueError, match=r"\[B\]"):
        ipo_loss(cw[None], cl[None], rw[None], rl[None])
    with pytest.raises(ValueError, match="both"):
        ipo_loss(cw, cl, rw, rl, chosen_len=torch.ones(6))
    with pytest.raises(ValueError, match="chosen_len"):
        ipo_loss(cw, cl, rw, rl, chosen_len=torch.zeros(6), rejected_len=torch.ones(6))
    with pytest.raises(ValueError, match="rejected_len"):
        ipo_loss(cw, cl, rw, rl, chosen_len=torch.ones(6), rejected_len=torch.full((6,), NAN))
    for p in (-0.1, 1.1, NAN):
        with pytest.raises(ValueError, match="p must"):
            ipo_noisy_margin(p, 1.0)


# ------------------------------------------------------------------ KTO

def test_kto_against_a_per_example_loop():
    logp, ref_logp, _, _ = rand(8, seed=1)
    desirable = torch.tensor([True, False] * 4)
    beta, ld, lu, z0 = 0.5, 1.0, 1.33, 0.7
    got = kto_loss(logp, ref_logp, desirable, beta, ld, lu, z0=z0, reduction="none")
    for i in range(8):
        r = logp[i].item() - ref_logp[i].item()
        v = ld * sigmoid(beta * (r - z0)) if desirable[i] else lu * sigmoid(beta * (z0 - r))
        lam = ld if desirable[i] else lu
        assert got[i].item() == pytest.approx(lam - v, rel=1e-9)


def test_kto_reference_point_mean_clamp_and_no_gradient():
    # hand-computed: mean of (-1+2, -2+2) = 0.5; a negative mean is clamped to 0
    assert kto_reference_point(torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.0])).item() == 0.5
    assert kto_reference_point(torch.tensor([-3.0, -4.0]), torch.tensor([-2.0, -2.0])).item() == 0.0
    mismatched = torch.tensor([-1.0, -2.5, -0.5], dtype=torch.float64, requires_grad=True)
    z0 = kto_reference_point(mismatched, torch.full((3,), -2.0, dtype=torch.float64))
    assert not z0.requires_grad and z0.item() == pytest.approx((1.0 - 0.5 + 1.5) / 3)


def test_kto_gradient_treats_z0_as_a_constant():
    """With z0 from the same tensors (the fallback), d loss / d logp_i is the per-example
    derivative of lambda sigma(-+beta(r_i - z0)) / B written out, as if z0 were a number."""
    logp = torch.tensor([-1.0, -2.0, -3.0, -0.5], dtype=torch.float64, requires_grad=True)
    ref_logp = torch.tensor([-1.5, -1.0, -3.5, -1.5], dtype=torch.float64)
    desirable = torch.tensor([True, False, True, False])
    beta, ld, lu = 1.5, 2.0, 0.5
    kto_loss(logp, ref_logp, desirable, beta, ld, lu).backward()
    r = (logp - ref_logp).tolist()
    z0 = max(sum(r) / 4, 0.0)
    for i in range(4):
        s = sigmoid(beta * (r[i] - z0))
        expect = -ld * beta * s * (1 - s) / 4 if desirable[i] else lu * beta * s * (1 - s) / 4
        assert logp.grad[i].item() == pytest.approx(expect, rel=1e-9)


def test_kto_pushes_desirable_up_and_undesirable_down():
    logp = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    kto_loss(logp - 1, torch.full((2,), -1.0, dtype=torch.float64), torch.tensor([True, False]), z0=0.0).backward()
    assert logp.grad[0] < 0 < logp.grad[1]  # gradient descent raises logp[0], lowers logp[1]


def test_kto_edge_cases():
    z = torch.zeros(2, dtype=torch.float64)
    # r = z0: both halves of the value function sit at sigma(0) = 1/2
    assert kto_loss(z, z, torch.tensor([True, False]), 0.1, 3.0, 2.0, z0=0.0, reduction="none").tolist() == [1.5, 1.0]
    big = torch.tensor([1e4, -1e4], dtype=torch.float64)
    got = kto_loss(big, z, torch.tensor([True, True]), beta=1.0, z0=0.0, reduction="none")
    assert got.tolist() == [0.0, 1.0]


def test_kto_class_ratio_and_balanced_lambdas():
    # 1 desirable : 4 undesirable, as in the KTO paper's imbalance experiments
    lambda_d, lambda_u = kto_balanced_lambdas(100, 400, ratio=4 / 3)
    assert lambda_u == 1.0 and lambda_d * 100 / (lambda_u * 400) == pytest.approx(4 / 3)
    assert kto_class_ratio(100, 400) == 0.25
    assert kto_class_ratio(100, 400, lambda_d=4.0, lambda_u=1.0) == 1.0
    for bad in (0, -3, NAN):
        with pytest.raises(ValueError, match="n_desirable"):
            kto_class_ratio(bad, 10)
    with pytest.raises(ValueError, match="ratio"):
        kto_balanced_lambdas(1, 4, ratio=NAN)


def test_kto_bad_inputs():
    logp, ref_logp, desirable = torch.zeros(3), torch.zeros(3), torch.tensor([True, False, True])
    with pytest.raises(ValueError, match="desirable"):
        kto_loss(logp, ref_logp, torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="desirable"):
        kto_loss(logp, ref_logp, desirable[:2])
    for beta in (-1.0, 0.0, NAN):
        with pytest.raises(ValueError, match="beta"):
            kto_loss(logp, ref_logp, desirable, beta=beta)
    for name in ("lambda_d", "lambda_u"):
        for bad in (-1.0, NAN):
            with pytest.raises(ValueError, match=name):
                kto_loss(logp, ref_logp, desirable, **{name: bad})
    with pytest.raises(ValueError, match="z0"):
        kto_loss(logp, ref_logp, desirable, z0=NAN)
    with pytest.raises(ValueError, match="z0"):
        kto_loss(logp, ref_logp, desirable, z0=torch.zeros(3))
    with pytest.raises(ValueError, match="ref_logp"):
        kto_loss(logp, ref_logp[:2], desirable)
    with pytest.raises(ValueError, match="NaN"):
        kto_reference_point(torch.tensor([NAN, 0.0]), torch.zeros(2))


# ------------------------------------------------------------------ SimPO

def test_simpo_against_the_formula_and_the_seed_special_case():
    cw, cl, _, _ = rand(5, seed=2)
    lw, ll = torch.tensor([1.0, 2, 3, 4, 5], dtype=torch.float64), torch.tensor([5.0, 4, 3, 2, 1], dtype=torch.float64)
    got = simpo_loss(cw, cl, lw, ll, beta=2.5, gamma=0.7, reduction="none")
    for i in range(5):
        m = 2.5 * cw[i].item() / lw[i].item() - 2.5 * cl[i].item() / ll[i].item() - 0.7
        assert got[i].item() == pytest.approx(-math.log(sigmoid(m)), rel=1e-9)
    # the seed's form, written without beta: -log sigma(log pi(y_w)/|y_w| - log pi(y_l)/|y_l| - gamma)
    seed_form = [-math.log(sigmoid(cw[i].item() / lw[i].item() - cl[i].item() / ll[i].item() - 0.7)) for i in range(5)]
    assert simpo_loss(cw, cl, lw, ll, beta=1.0, gamma=0.7, reduction="none").tolist() == pytest.approx(seed_form, rel=1e-9)
    assert simpo_loss(cw, cl, lw, ll, beta=2.0, gamma=0.7, reduction="none").tolist() != pytest.approx(seed_form, rel=1e-3)


def test_simpo_is_length_normalised_where_a_summed_margin_is_not():
    """Repeat each answer k times at the same per-token log-prob: SimPO's loss does not move,
    DPO's (reference-free, summed) does."""
    per_token_w, per_token_l = torch.tensor([-0.5]), torch.tensor([-0.6])
    z = torch.zeros(1)
    simpo, dpo = [], []
    for k in (1, 2, 5):
        simpo.append(simpo_loss(per_token_w * 3 * k, per_token_l * 2 * k, torch.tensor([3.0 * k]), torch.tensor([2.0 * k])).item())
        dpo.append(dpo_loss(per_token_w * 3 * k, per_token_l * 2 * k, z, z, beta=1.0).item())
    assert max(simpo) - min(simpo) < 1e-6
    assert dpo[0] < dpo[1] < dpo[2]  # 3k tokens at -0.5 vs 2k at -0.6: the longer chosen answer loses ever more


def test_simpo_is_finite_at_extreme_margins_and_rejects_bad_input():
    big = torch.tensor([1e4])
    one = torch.ones(1)
    assert simpo_loss(-big, torch.tensor([0.0]), one, one, beta=1.0, gamma=0.0).item() == pytest.approx(1e4)
    assert simpo_loss(torch.tensor([0.0]), -big, one, one).item() == 0.0
    equal = simpo_loss(torch.tensor([-2.0]), torch.tensor([-2.0]), one, one, beta=2.0, gamma=0.5).item()
    assert equal == pytest.approx(-math.log(sigmoid(-0.5)))
    with pytest.raises(ValueError, match="len"):
        simpo_loss(torch.zeros(2), torch.zeros(2), torch.tensor([1.0, 0.0]), torch.ones(2))
    with pytest.raises(ValueError, match="rejected_len"):
        simpo_loss(torch.zeros(2), torch.zeros(2), torch.ones(2), torch.tensor([1.0, NAN]))
    with pytest.raises(ValueError, match="chosen_len"):
        simpo_loss(torch.zeros(2), torch.zeros(2), torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="gamma"):
        simpo_loss(torch.zeros(2), torch.zeros(2), torch.ones(2), torch.ones(2), gamma=NAN)
    with pytest.raises(ValueError, match="beta"):
        simpo_loss(torch.zeros(2), torch.zeros(2), torch.ones(2), torch.ones(2), beta=NAN)
