import math

import pytest
import torch

from rlbook.dpo import (dpo_gradient_weight, dpo_loss, implied_reward, kl_regularised_objective, optimal_policy,
                        reward_margin)


def bandit(k=5, prompts=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref_logp = torch.log_softmax(torch.randn(prompts, k, generator=g, dtype=torch.float64), -1)
    rewards = torch.randn(prompts, k, generator=g, dtype=torch.float64) * 2
    return ref_logp, rewards


def seq_inputs(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(n, generator=g, dtype=torch.float64) * 10) for _ in range(4)]


# ------------------------------------------------------------------ Steps 1-2

def test_objective_against_the_sum_written_out():
    ref_logp, rewards = bandit(k=4, prompts=1)
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.5]], dtype=torch.float64)
    p = torch.softmax(logits, -1)[0].tolist()
    q = ref_logp.exp()[0].tolist()
    beta = 0.7
    expect = sum(p[i] * rewards[0, i].item() - beta * p[i] * math.log(p[i] / q[i]) for i in range(4))
    assert kl_regularised_objective(logits, ref_logp, rewards, beta).item() == pytest.approx(expect, rel=1e-12)


@pytest.mark.parametrize("beta", [0.1, 1.0, 5.0])
def test_closed_form_equals_the_maximiser_an_optimiser_finds(beta):
    ref_logp, rewards = bandit()
    logits = torch.zeros_like(ref_logp, requires_grad=True)
    optimizer = torch.optim.LBFGS([logits], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = -kl_regularised_objective(logits, ref_logp, rewards, beta).sum()
        loss.backward()
        return loss

    for _ in range(5):
        optimizer.step(closure)
    logp_star, log_z = optimal_policy(ref_logp, rewards, beta)
    assert torch.allclose(torch.softmax(logits.detach(), -1), logp_star.exp(), atol=1e-6)
    # the maximum value is beta log Z: J(pi*) = sum pi* (r - r + beta log Z)
    assert torch.allclose(kl_regularised_objective(logp_star, ref_logp, rewards, beta), beta * log_z)


def test_suboptimality_is_beta_times_kl_to_the_optimum():
    """J(pi*) - J(pi) = beta KL(pi || pi*) for every pi, computed by a plain sum."""
    ref_logp, rewards = bandit(k=6, prompts=4, seed=1)
    beta = 0.4
    logp_star, _ = optimal_policy(ref_logp, rewards, beta)
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        logp = torch.log_softmax(3 * torch.randn(4, 6, generator=g, dtype=torch.float64), -1)
        gap = kl_regularised_objective(logp_star, ref_logp, rewards, beta) - \
            kl_regularised_objective(logp, ref_logp, rewards, beta)
        kl = (logp.exp() * (logp - logp_star)).sum(-1)
        assert torch.allclose(gap, beta * kl, atol=1e-12)
        assert (gap > 0).all()


def test_optimal_policy_limits_and_overflow():
    ref_logp, rewards = bandit(k=4, prompts=1, seed=2)
    assert torch.allclose(optimal_policy(ref_logp, rewards, 1e6)[0], ref_logp, atol=1e-5)
    greedy = optimal_policy(ref_logp, rewards, 1e-3)[0].exp()
    assert greedy[0, rewards[0].argmax()].item() == pytest.approx(1.0)
    logp, log_z = optimal_policy(ref_logp.float(), rewards.float() * 1e3, 1e-3)  # r/beta ~ 1e6
    assert torch.isfinite(logp).all() and torch.isfinite(log_z).all()


# ------------------------------------------------------------------ Steps 3-4

def test_inversion_recovers_the_reward_and_the_pair_difference_drops_log_z():
    ref_logp, rewards = bandit(k=5, prompts=3, seed=4)
    beta = 0.3
    logp_star, log_z = optimal_policy(ref_logp, rewards, beta)
    assert torch.allclose(implied_reward(logp_star, ref_logp, beta, log_z), rewards)
    # without log Z the implied reward is off by the same constant beta log Z(x) for every answer of a prompt
    offset = rewards - implied_reward(logp_star, ref_logp, beta)
    assert torch.allclose(offset, (beta * log_z).unsqueeze(-1).expand_as(offset))
    # Step 4: all pairs (w, l) of every prompt, one row each
    x, w, l = zip(*[(i, a, b) for i in range(3) for a in range(5) for b in range(5) if a != b])
    x, w, l = map(torch.tensor, (x, w, l))
    margin = reward_margin(logp_star[x, w], logp_star[x, l], ref_logp[x, w], ref_logp[x, l], beta)
    assert torch.allclose(margin, rewards[x, w] - rewards[x, l])


# ------------------------------------------------------------------ the loss

def test_dpo_loss_against_the_formula_written_out():
    cw, cl, rw, rl = seq_inputs()
    beta = 0.2
    got = dpo_loss(cw, cl, rw, rl, beta, reduction="none")
    for i in range(7):
        m = beta * math.log(math.exp(cw[i]) / math.exp(rw[i])) - beta * math.log(math.exp(cl[i]) / math.exp(rl[i]))
        assert got[i].item() == pytest.approx(-math.log(1 / (1 + math.exp(-m))), rel=1e-9)
    assert dpo_loss(cw, cl, rw, rl, beta).item() == pytest.approx(got.mean().item())
    assert dpo_loss(cw, cl, rw, rl, beta, reduction="sum").item() == pytest.approx(got.sum().item())


def test_dpo_gradient_equals_the_weighting_formula():
    cw, cl, rw, rl = seq_inputs(seed=1)
    cw, cl = cw.clone().requires_grad_(), cl.clone().requires_grad_()
    beta = 0.5
    dpo_loss(cw, cl, rw, rl, beta, reduction="sum").backward()
    # -beta sigma(r_hat_l - r_hat_w) (grad log pi(y_w) - grad log pi(y_l)), r_hat written out by hand
    r_w, r_l = beta * (cw.detach() - rw), beta * (cl.detach() - rl)
    weight = 1 / (1 + torch.exp(-(r_l - r_w)))
    assert torch.allclose(cw.grad, -beta * weight)
    assert torch.allclose(cl.grad, beta * weight)
    assert torch.allclose(dpo_gradient_weight(cw, cl, rw, rl, beta), weight)


def test_dpo_gradient_through_a_model_matches_the_chain_rule():
    """The same identity one level down: parameters of a bandit policy shared by two pairs."""
    ref_logp, _ = bandit(k=4, prompts=1, seed=5)
    theta = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    w, l = torch.tensor([0, 2]), torch.tensor([1, 3])
    beta = 0.8
    logp = torch.log_softmax(theta, -1)
    dpo_loss(logp[w], logp[l], ref_logp[0, w], ref_logp[0, l], beta).backward()
    jac = torch.autograd.functional.jacobian(lambda t: torch.log_softmax(t, -1), theta.detach())  # [K, K]
    weight = dpo_gradient_weight(logp[w], logp[l], ref_logp[0, w], ref_logp[0, l], beta)
    expect = -beta * (weight[:, None] * (jac[w] - jac[l])).mean(0)
    assert torch.allclose(theta.grad, expect)


def test_dpo_is_finite_at_huge_margins():
    z = torch.zeros(2, dtype=torch.float64)
    for big in (1e4, -1e4):
        cw = torch.tensor([big, big / 2], dtype=torch.float64, requires_grad=True)
        loss = dpo_loss(cw, z, z, z, beta=1.0, reduction="none")
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(cw.grad).all()
        if big > 0:
            assert loss.max().item() == 0.0 and cw.grad.abs().max().item() == 0.0
        else:
            assert loss[0].item() == pytest.approx(1e4) and cw.grad[0].item() == pytest.approx(-1.0)


def test_bad_inputs_are_rejected():
    cw, cl, rw, rl = seq_inputs()
    for beta in (0.0, -0.1):
        with pytest.raises(ValueError, match="beta"):
            dpo_loss(cw, cl, rw, rl, beta=beta)
        with pytest.raises(ValueError, match="beta"):
            optimal_policy(rw, cw, beta)
        with pytest.raises(ValueError, match="beta"):
            implied_reward(cw, rw, beta)
        with pytest.raises(ValueError, match="beta"):
            kl_regularised_objective(cw, rw, cl, beta)
    with pytest.raises(ValueError, match="rejected_logp"):
        dpo_loss(cw, cl[:3], rw, rl)
    with pytest.raises(ValueError, match="ref_logp"):
        implied_reward(cw, rw[:2], 0.1)
    with pytest.raises(ValueError, match="rewards"):
        optimal_policy(torch.zeros(2, 3), torch.zeros(2, 4), 0.1)
    with pytest.raises(ValueError, match="NaN"):
        dpo_loss(cw, cl * float("nan"), rw, rl)
    with pytest.raises(ValueError, match="reduction"):
        dpo_loss(cw, cl, rw, rl, reduction="avg")
