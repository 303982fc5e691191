"""kl.py against enumeration: the expectation of each estimator over every outcome of a
categorical pi_theta, compared with the exact KL summed by hand."""

import math

import pytest
import torch

from rlbook.kl import k1, k2, k3, kl_divergence


def _pair(seed, n=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(5))
def test_kl_divergence_matches_a_loop(seed):
    p_logits, q_logits = _pair(seed)
    p, q = p_logits.softmax(0).tolist(), q_logits.softmax(0).tolist()
    by_hand = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert kl_divergence(p_logits, q_logits).item() == pytest.approx(by_hand, rel=1e-12)


def test_kl_divergence_is_not_symmetric():
    p, q = torch.tensor([0.9, 0.1]).log(), torch.tensor([0.5, 0.5]).log()
    assert kl_divergence(p, q).item() == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2))
    assert kl_divergence(q, p).item() == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(5))


def test_kl_divergence_handles_zero_probabilities():
    p = torch.tensor([0.0, float("-inf")])  # p = (1, 0)
    assert kl_divergence(p, torch.zeros(2)).item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("seed", range(5))
def test_k1_and_k3_are_unbiased_on_policy_and_k2_is_not(seed):
    logits, ref_logits = _pair(seed)
    logp, ref_logp = logits.log_softmax(0), ref_logits.log_softmax(0)
    p = logp.exp()
    exact = kl_divergence(logits, ref_logits)
    assert (p * k1(logp, ref_logp)).sum().item() == pytest.approx(exact.item(), rel=1e-10)
    assert (p * k3(logp, ref_logp)).sum().item() == pytest.approx(exact.item(), rel=1e-10)
    assert (p * k2(logp, ref_logp)).sum().item() != pytest.approx(exact.item(), rel=1e-3)


def test_k3_with_the_seed_ratio_estimates_the_forward_kl_from_reference_samples():
    logits, ref_logits = _pair(11)
    logp, ref_logp = logits.log_softmax(0), ref_logits.log_softmax(0)
    q = ref_logp.exp()
    # swapping the arguments gives (pi/pi_ref - 1) - log(pi/pi_ref): unbiased for KL(pi_ref || pi) under pi_ref
    assert (q * k3(ref_logp, logp)).sum().item() == pytest.approx(kl_divergence(ref_logits, logits).item(), rel=1e-10)


def test_estimators_stay_finite_and_k3_nonnegative_at_extreme_log_ratios():
    logp = torch.tensor([-30.0, -1e-3, 0.0, -15.0])
    ref_logp = torch.tensor([0.0, -30.0, -1e-12, -15.0])
    for k in (k1, k2, k3):
        assert torch.isfinite(k(logp, ref_logp)).all()
    assert (k3(logp, ref_logp) >= 0).all()
    # near r = 1, k3 ~ (log r)^2 / 2 without cancellation error
    tiny = torch.tensor([1e-9], dtype=torch.float64)
    assert k3(torch.zeros(1, dtype=torch.float64), -tiny).item() == pytest.approx(0.5e-18, rel=1e-6)


def test_estimators_are_differentiable_through_logp():
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    ref_logp = torch.tensor([-1.5, -1.0])
    k3(logp, ref_logp).sum().backward()
    # d/dlogp [(e^{ref - logp} - 1) - (ref - logp)] = 1 - r
    assert torch.allclose(logp.grad, 1 - (ref_logp - logp.detach()).exp())


@pytest.mark.parametrize("k", [k1, k2, k3])
def test_bad_input_is_rejected(k):
    with pytest.raises(ValueError, match="ref_logp"):
        k(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="logp"):
        k(torch.tensor([float("nan")]), torch.zeros(1))
    with pytest.raises(ValueError, match="q_logits"):
        kl_divergence(torch.zeros(3), torch.zeros(2))


# ---------------------------------------------------------------- placements and exact expected gradients

from rlbook import exact  # noqa: E402
from rlbook.kl import exact_kl_gradients, gradient_table, kl_penalty_loss, kl_penalty_rewards  # noqa: E402
from rlbook.ppo import shaped_rewards  # noqa: E402


def _rel(u, v):
    return ((u - v).norm() / v.norm()).item()


@pytest.mark.parametrize("seed", range(4))
def test_categorical_gradients_match_closed_forms(seed):
    logits, ref_logits = _pair(seed, n=6)
    pi, ref = logits.softmax(0), ref_logits.softmax(0)
    log_ratio = pi.log() - ref.log()
    reverse = pi * (log_ratio - (pi * log_ratio).sum())  # d/dlogits sum pi log(pi/ref)
    forward = pi - ref  # d/dlogits sum ref log(ref/pi)
    g = exact_kl_gradients(logits, ref_logits)
    assert torch.allclose(g["KL(pi||ref)"], reverse, atol=1e-12)
    assert torch.allclose(g["KL(ref||pi)"], forward, atol=1e-12)
    # the identities of chapter 06, exactly
    assert torch.allclose(g["k1/reward"], reverse, atol=1e-12)
    assert torch.allclose(g["k2/loss"], reverse, atol=1e-12)
    assert torch.allclose(g["k1/loss"], torch.zeros(6, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(g["k3/loss"], forward, atol=1e-12)
    # in the reward, k2 and k3 give sum_x pi(x) k(x) (e_x - pi): a loop over outcomes
    eye = torch.eye(6, dtype=torch.float64)
    for name, k in (("k2", lambda x: 0.5 * log_ratio[x] ** 2), ("k3", lambda x: ref[x] / pi[x] - 1 + log_ratio[x])):
        by_hand = sum(pi[x] * k(x) * (eye[x] - pi) for x in range(6))
        assert torch.allclose(g[f"{name}/reward"], by_hand, atol=1e-12)
        assert _rel(g[f"{name}/reward"], reverse) > 0.05 and _rel(g[f"{name}/reward"], forward) > 0.05


def _seq_kl(logits, pi, ref_logp):
    """KL(P || P_ref) of sequences from a fresh logit table (for finite differences)."""
    q = exact.TabularPolicy(pi.vocab_size, pi.length, logits=logits)
    logp = q.log_prob(q.sequences())
    return (logp.exp() * (logp - ref_logp)).sum()


def test_sequence_gradients_match_finite_differences_and_score_function_sums():
    pi, ref = exact.TabularPolicy(3, 3, seed=0), exact.TabularPolicy(3, 3, seed=1)
    g = exact_kl_gradients(pi, ref)
    seqs = pi.sequences()
    with torch.no_grad():
        ref_logp = ref.log_prob(seqs)
        P, Pref = pi.probs(), ref_logp.exp()
    base = pi.logits.detach().clone()
    fd = torch.zeros(base.numel(), dtype=torch.float64)
    h = 1e-6
    for i in range(base.numel()):
        e = torch.zeros(base.numel(), dtype=torch.float64)
        e[i] = h
        fd[i] = (_seq_kl(base + e.view_as(base), pi, ref_logp) - _seq_kl(base - e.view_as(base), pi, ref_logp)) / (2 * h)
    assert torch.allclose(g["KL(pi||ref)"], fd, atol=1e-7)
    # score-function forms over the enumeration, token by token
    scores = exact.token_score_gradients(pi, seqs).detach()  # [N, T, P]
    with torch.no_grad():
        logp_t, ref_t = pi.token_logprobs(seqs), ref.token_logprobs(seqs)
    forward = -(Pref[:, None] * scores.sum(1)).sum(0)
    assert torch.allclose(g["KL(ref||pi)"], forward, atol=1e-10)
    k1_t = logp_t - ref_t
    assert torch.allclose(g["k1/reward"], g["KL(pi||ref)"], atol=1e-10)  # unbiased
    assert g["k1/loss"].abs().max() < 1e-12  # zero mean
    # in the loss each token only sees its own term: sum_t k1_t grad log pi_t, not the future ones
    k2_loss = (P[:, None] * torch.einsum("ntp,nt->np", scores, k1_t)).sum(0)
    assert torch.allclose(g["k2/loss"], k2_loss, atol=1e-10)
    k3_loss = (P[:, None] * torch.einsum("ntp,nt->np", scores, 1 - (ref_t - logp_t).exp())).sum(0)
    assert torch.allclose(g["k3/loss"], k3_loss, atol=1e-10)
    # ... so at sequence level k2 and k3 in the loss follow neither KL exactly
    for name in ("k2/loss", "k3/loss", "k3/reward", "k2/reward"):
        assert _rel(g[name], g["KL(pi||ref)"]) > 0.05 and _rel(g[name], g["KL(ref||pi)"]) > 0.05, name


def test_gradient_table_rows_and_cosines():
    rows = gradient_table(*_pair(0, n=5))
    assert [(r["estimator"], r["placement"]) for r in rows] == [
        ("k1", "reward"), ("k1", "loss"), ("k2", "reward"), ("k2", "loss"), ("k3", "reward"), ("k3", "loss")]
    by = {(r["estimator"], r["placement"]): r for r in rows}
    assert by["k1", "reward"]["cos_reverse"] == pytest.approx(1.0) and by["k2", "loss"]["cos_reverse"] == pytest.approx(1.0)
    assert by["k3", "loss"]["cos_forward"] == pytest.approx(1.0)
    assert by["k1", "loss"]["norm"] == 0.0 and math.isnan(by["k1", "loss"]["cos_reverse"])


def test_kl_penalty_rewards_detaches_and_masks():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    ref_logp = torch.tensor([[-1.5, -1.0, -0.5]])
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    mask = torch.tensor([[1, 1, 0]])
    for name, k in (("k1", k1), ("k3", k3)):
        out = kl_penalty_rewards(rewards, logp, ref_logp, 0.2, mask, name)
        assert not out.requires_grad
        expected = rewards - 0.2 * k(logp.detach(), ref_logp)
        assert torch.allclose(out[0, :2], expected[0, :2]) and out[0, 2] == 0
    with pytest.raises(ValueError, match="estimator"):
        kl_penalty_rewards(rewards, logp, ref_logp, 0.2, estimator="k4")
    with pytest.raises(ValueError, match="beta"):
        kl_penalty_rewards(rewards, logp, ref_logp, -1.0)
    with pytest.raises(ValueError, match="rewards"):
        kl_penalty_rewards(rewards[:, :2], logp, ref_logp, 0.2)


def test_shaped_rewards_with_k3_matches_the_formula():
    logp, ref_logp = torch.tensor([[-1.0, -0.5, -2.0]]), torch.tensor([[-1.5, -0.5, -1.0]])
    mask = torch.tensor([[1, 1, 1]])
    out = shaped_rewards(torch.tensor([2.0]), logp, ref_logp, beta=0.1, mask=mask, estimator="k3")
    r = (ref_logp - logp).exp()
    by_hand = -0.1 * ((r - 1) - (ref_logp - logp))
    by_hand[0, 2] += 2.0
    assert torch.allclose(out, by_hand)


def test_kl_penalty_loss_sums_tokens_and_differentiates():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -0.2]], requires_grad=True)
    ref_logp = torch.tensor([[-1.5, -1.0, -0.5], [-0.2, -0.9, -3.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    per_seq = kl_penalty_loss(logp, ref_logp, 0.5, mask, "k3", reduction="none")
    by_hand = [0.5 * sum(((ref_logp[i, t] - logp[i, t]).exp() - 1 - (ref_logp[i, t] - logp[i, t])).item()
                         for t in range(3) if mask[i, t]) for i in range(2)]
    assert per_seq.tolist() == pytest.approx(by_hand, rel=1e-6)
    kl_penalty_loss(logp, ref_logp, 0.5, mask, "k3").backward()
    grad = 0.5 * (1 - (ref_logp - logp.detach()).exp()) * mask / 2  # d/dlogp, mean over 2 sequences
    assert torch.allclose(logp.grad, grad)
    with pytest.raises(ValueError, match="reduction"):
        kl_penalty_loss(logp, ref_logp, 0.5, reduction="sum")


def test_placements_stay_finite_at_extreme_log_ratios():
    logp = torch.tensor([[-30.0, -1e-3]], requires_grad=True)
    ref_logp = torch.tensor([[0.0, -30.0]])
    for e in ("k1", "k2", "k3"):
        assert torch.isfinite(kl_penalty_rewards(torch.zeros(1, 2), logp, ref_logp, 0.1, estimator=e)).all()
        assert torch.isfinite(kl_penalty_loss(logp, ref_logp, 0.1, estimator=e)).all()
    with pytest.raises(ValueError, match="ref_logp"):
        kl_penalty_loss(logp, torch.tensor([[float("nan"), 0.0]]), 0.1)


@pytest.mark.parametrize("policies", [
    lambda: _pair(5, n=5),
    lambda: (exact.TabularPolicy(3, 3, seed=2), exact.TabularPolicy(3, 3, seed=3)),
])
def test_k3_in_the_reward_is_k1_in_the_reward_minus_k3_in_the_loss(policies):
    # k3 = k1 + (r - 1) and E[(r_t - 1) grad log pi_t] = -E[grad k3_t]: an identity at token and sequence level
    g = exact_kl_gradients(*policies())
    assert torch.allclose(g["k3/reward"], g["k1/reward"] - g["k3/loss"], atol=1e-12)


def test_k3_in_the_reward_of_a_categorical_is_the_difference_of_the_two_kl_gradients():
    g = exact_kl_gradients(*_pair(6, n=5))
    assert torch.allclose(g["k3/reward"], g["KL(pi||ref)"] - g["KL(ref||pi)"], atol=1e-12)


def test_missing_reference_is_rejected():
    logp = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="ref_logp"):
        kl_penalty_loss(logp, None, 0.1)
    with pytest.raises(ValueError, match="ref_logp"):
        kl_penalty_rewards(torch.zeros(1, 2), logp, None, 0.1)


def test_a_nan_beta_is_rejected_everywhere():
    from rlbook.kl import kl_penalised_rewards, kl_penalty_loss, kl_penalty_rewards
    from rlbook.ppo import shaped_rewards
    logp, ref_logp = torch.full((1, 2), -1.0), torch.full((1, 2), -2.0)
    nan = float("nan")
    for call in (lambda: kl_penalty_rewards(torch.zeros(1, 2), logp, ref_logp, nan),
                 lambda: kl_penalty_loss(logp, ref_logp, nan),
                 lambda: kl_penalised_rewards(torch.zeros(1), logp, ref_logp, nan),
                 lambda: shaped_rewards(torch.zeros(1), logp, ref_logp, nan)):
        with pytest.raises(ValueError, match="beta"):
            call()


def test_kl_penalised_rewards_is_the_sum_of_the_per_token_penalties():
    from rlbook.kl import kl_penalised_rewards
    g = torch.Generator().manual_seed(3)
    logp, ref_logp = -torch.rand(4, 5, generator=g) * 3, -torch.rand(4, 5, generator=g) * 3
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    R = torch.randn(4, generator=g)
    for name, k in (("k1", k1), ("k2", k2), ("k3", k3)):
        by_hand = [R[i] - 0.3 * sum(k(logp[i, t:t + 1], ref_logp[i, t:t + 1]).item()
                                    for t in range(5) if mask[i, t]) for i in range(4)]
        got = kl_penalised_rewards(R, logp, ref_logp, 0.3, mask, name)
        assert torch.allclose(got, torch.tensor(by_hand), atol=1e-6)


@pytest.mark.parametrize("log_ratio", [100.0, -100.0, 88.0, 25.0])
def test_k3_and_its_gradient_stay_finite_at_extreme_log_ratios(log_ratio):
    """float32's exp overflows above ~88: without the cap, k3 = inf and its gradient NaN at +100."""
    logp = torch.tensor([-1.0 - log_ratio, -1.0], requires_grad=True)  # log r = ref - logp
    ref_logp = torch.tensor([-1.0, -1.0])
    value = k3(logp, ref_logp)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(logp.grad).all()
    assert value[1] == 0 and logp.grad[1] == 0
    if log_ratio <= 20:  # below the cap k3 is exact: e^{log r} - 1 - log r
        assert value[0].item() == pytest.approx(math.expm1(log_ratio) - log_ratio, rel=1e-6)


def test_k3_below_the_cap_is_exact_in_float64():
    log_r = torch.linspace(-50, 19.9, 200, dtype=torch.float64)
    got = k3(torch.zeros_like(log_r) - 60, log_r - 60)
    expected = torch.tensor([math.expm1(x) - x for x in log_r.tolist()], dtype=torch.float64)
    assert torch.allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_per_state_sequence_kl_averages_to_the_sequence_kl_by_enumeration(seed):
    from rlbook.exact import TabularPolicy
    from rlbook.kl import sequence_kl_per_state

    pi, ref = TabularPolicy(3, 3, seed=seed), TabularPolicy(3, 3, seed=seed + 10)
    seqs = pi.sequences()
    with torch.no_grad():
        per_state = sequence_kl_per_state(pi.token_logits(seqs), ref.token_logits(seqs))
        exact = (pi.probs() * (pi.log_prob(seqs) - ref.log_prob(seqs))).sum()   # sum over all 27 sequences
        assert (pi.probs() * per_state).sum().item() == pytest.approx(exact.item(), rel=1e-12)
        # per sequence it is not the log-ratio (that is k1): only their expectations agree
        assert not torch.allclose(per_state, pi.log_prob(seqs) - ref.log_prob(seqs))


def test_per_state_sequence_kl_skips_masked_states_and_checks_shapes():
    from rlbook.kl import sequence_kl_per_state

    logits, ref_logits = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    per_state = kl_divergence(logits, ref_logits)
    expected = torch.stack([per_state[0, :2].sum(), per_state[1, 0]])
    assert torch.allclose(sequence_kl_per_state(logits, ref_logits, mask), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="logits"):
        sequence_kl_per_state(logits[0], ref_logits[0])
    with pytest.raises(ValueError, match="mask"):
        sequence_kl_per_state(logits, ref_logits, mask[:, :2])
