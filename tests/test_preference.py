import math

import pytest
import torch

from rlbook.preference import ipo_loss, kto_loss, kto_reference_point, log_ratio_margin, simpo_loss


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
    assert ipo_loss(cw, cl, rw, rl, beta).item() == pytest.approx(got.mean().item())


def test_ipo_stops_at_the_target_margin_while_dpo_never_does():
    beta = 0.25
    target = 1 / (2 * beta)
    for h, expect_zero in [(target, True), (target + 1.0, False), (0.0, False)]:
        cw = torch.tensor([h], dtype=torch.float64, requires_grad=True)
        loss = ipo_loss(cw, torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
                        torch.zeros(1, dtype=torch.float64), beta)
        loss.backward()
        assert (cw.grad.abs().item() < 1e-12) == expect_zero
        # d/dh (h - t)^2 = 2 (h - t): past the target IPO pulls the margin back down
        assert cw.grad.item() == pytest.approx(2 * (h - target))
    # DPO's -log sigma(beta h) has gradient -beta sigma(-beta h) < 0 for every finite h
    assert all(-beta * sigmoid(-beta * h) < 0 for h in (0.0, 2.0, 20.0))


def test_ipo_beta_sets_the_margin_not_the_scale():
    """A pitfall: writing beta * (h - 1/2)^2 or (beta h - 1/2)^2 moves the minimum."""
    h = torch.linspace(-5, 10, 3001, dtype=torch.float64)
    z = torch.zeros_like(h)
    for beta in (0.1, 0.5, 2.0):
        best = h[ipo_loss(h, z, z, z, beta, reduction="none").argmin()]
        assert best.item() == pytest.approx(1 / (2 * beta), abs=5e-3)


def test_margin_and_bad_inputs():
    cw, cl, rw, rl = rand()
    assert torch.allclose(log_ratio_margin(cw, cl, rw, rl), cw - rw - cl + rl)
    with pytest.raises(ValueError, match="beta"):
        ipo_loss(cw, cl, rw, rl, beta=0.0)
    with pytest.raises(ValueError, match="rejected_logp"):
        ipo_loss(cw, cl[:3], rw, rl)
    with pytest.raises(ValueError, match="NaN"):
        ipo_loss(cw, cl * float("nan"), rw, rl)
    with pytest.raises(ValueError, match=r"\[B\]"):
        ipo_loss(cw[None], cl[None], rw[None], rl[None])


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


def test_kto_batch_reference_point_is_clamped_and_detached():
    logp = torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64, requires_grad=True)
    ref_logp = torch.tensor([-1.5, -1.0, -3.5], dtype=torch.float64)
    desirable = torch.tensor([True, False, True])
    # mean log-ratio = (0.5 - 1.0 + 0.5) / 3 = 0 -> z0 = 0; shift the ratios down: clamped at 0
    auto = kto_loss(logp, ref_logp, desirable, beta=1.0, reduction="none")
    given = kto_loss(logp, ref_logp, desirable, beta=1.0, z0=0.0, reduction="none")
    assert torch.allclose(auto, given)
    low = kto_loss(logp - 5, ref_logp, desirable, beta=1.0, reduction="none")
    assert torch.allclose(low, kto_loss(logp - 5, ref_logp, desirable, beta=1.0, z0=0.0, reduction="none"))
    # gradient: z0 detached, so d loss_i / d logp_j = 0 for i != j
    kto_loss(logp, ref_logp + 0.3, desirable, beta=1.0, reduction="none")[0].backward()
    assert logp.grad[1].item() == 0.0 and logp.grad[2].item() == 0.0 and logp.grad[0].item() < 0


def test_kto_pushes_desirable_up_and_undesirable_down():
    logp = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    kto_loss(logp - 1, torch.full((2,), -1.0, dtype=torch.float64), torch.tensor([True, False]), z0=0.0).backward()
    assert logp.grad[0] < 0 < logp.grad[1]  # gradient descent raises logp[0], lowers logp[1]


def test_kto_reference_point_and_bad_inputs():
    assert kto_reference_point(torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.0])).item() == 0.5
    assert kto_reference_point(torch.tensor([-3.0]), torch.tensor([-2.0])).item() == 0.0
    logp, ref_logp = torch.zeros(3), torch.zeros(3)
    with pytest.raises(ValueError, match="desirable"):
        kto_loss(logp, ref_logp, torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="beta"):
        kto_loss(logp, ref_logp, torch.tensor([True, False, True]), beta=-1)


# ------------------------------------------------------------------ SimPO

def test_simpo_against_the_formula_and_the_seed_special_case():
    cw, cl, _, _ = rand(5, seed=2)
    lw, ll = torch.tensor([1.0, 2, 3, 4, 5], dtype=torch.float64), torch.tensor([5.0, 4, 3, 2, 1], dtype=torch.float64)
    got = simpo_loss(cw, cl, lw, ll, beta=2.5, gamma=0.7, reduction="none")
    for i in range(5):
        m = 2.5 * cw[i].item() / lw[i].item() - 2.5 * cl[i].item() / ll[i].item() - 0.7
        assert got[i].item() == pytest.approx(-math.log(sigmoid(m)), rel=1e-9)
    seed_form = -torch.log(torch.sigmoid(cw / lw - cl / ll - 0.7))
    assert torch.allclose(simpo_loss(cw, cl, lw, ll, beta=1.0, gamma=0.7, reduction="none"), seed_form)


def test_simpo_is_length_normalised_where_a_summed_margin_is_not():
    """Repeat each answer k times at the same per-token log-prob: SimPO's loss does not move."""
    per_token_w, per_token_l = torch.tensor([-0.5]), torch.tensor([-0.6])
    losses = [simpo_loss(per_token_w * 3 * k, per_token_l * 2 * k, torch.tensor([3.0 * k]),
                         torch.tensor([2.0 * k])).item() for k in (1, 2, 5)]
    assert max(losses) - min(losses) < 1e-6
    summed = [(per_token_w * 3 * k - per_token_l * 2 * k).item() for k in (1, 2, 5)]
    assert len(set(round(s, 6) for s in summed)) == 3


def test_simpo_is_finite_at_extreme_margins_and_rejects_bad_lengths():
    big = torch.tensor([1e4])
    assert torch.isfinite(simpo_loss(-big, torch.tensor([0.0]), torch.ones(1), torch.ones(1))).all()
    assert simpo_loss(torch.tensor([0.0]), -big, torch.ones(1), torch.ones(1)).item() == 0.0
    with pytest.raises(ValueError, match="len"):
        simpo_loss(torch.zeros(2), torch.zeros(2), torch.tensor([1.0, 0.0]), torch.ones(2))
    with pytest.raises(ValueError, match="chosen_len"):
        simpo_loss(torch.zeros(2), torch.zeros(2), torch.ones(3), torch.ones(2))
