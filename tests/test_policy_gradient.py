"""The log-derivative trick and REINFORCE (chapters 01-02), against enumeration, brute-force
loops and sampling statistics."""

import itertools
import math

import pytest
import torch

from rlbook.advantages import rloo_advantages
from rlbook.exact import (TabularPolicy, batch_estimator_moments, estimator_moments, exact_gradient, flat_grad,
                          sequence_index, token_score_gradients)
from rlbook.policy_gradient import (gradient_of_probabilities, leave_one_out_baseline,
                                    log_derivative_form, mean_baseline, objective, reinforce_loss,
                                    score_function_gradient, sequence_logprob, total_reward, weights)
from rlbook.tasks import SortWorld, sort_token_rewards
from rlbook.lm import make_batch


def setting(seed=0, V=3, T=3):
    pi = TabularPolicy(vocab_size=V, length=T, seed=seed)
    seqs = pi.sequences()
    # r_t is a function of the prefix a_<=t only (a table over state and action): the reward
    # of token t cannot depend on later tokens, which rewards-to-go rely on
    g = torch.Generator().manual_seed(seed + 100)
    table = torch.randn(pi.num_states, V, generator=g, dtype=torch.float64) + 1.0 / T
    token_rewards = table[pi.state_index(seqs), seqs]
    return pi, seqs, token_rewards


# ---------------------------------------------------------------- the derivation, line by line

def test_objective_is_the_probability_weighted_sum_by_hand():
    pi, seqs, r = setting()
    R = r.sum(1)
    table = torch.softmax(pi.logits.detach(), -1)
    rows = {(): 0}
    for t in range(1, 3):
        for prefix in itertools.product(range(3), repeat=t):
            rows[prefix] = len(rows)
    by_hand = sum(math.prod(table[rows[s[:t]], s[t]].item() for t in range(3)) * R[i].item()
                  for i, s in enumerate(itertools.product(range(3), repeat=3)))
    assert objective(pi, R).item() == pytest.approx(by_hand, rel=1e-12)


def test_each_line_of_the_derivation_gives_the_same_gradient():
    pi, _, r = setting(1)
    R = r.sum(1)
    g_exact = exact_gradient(pi, R)  # autograd through sum_tau P(tau) R(tau)
    assert torch.allclose(gradient_of_probabilities(pi, R), g_exact, atol=1e-12)
    assert torch.allclose(log_derivative_form(pi, R), g_exact, atol=1e-12)


def test_sequence_logprob_is_the_log_of_the_product():
    pi, seqs, _ = setting(2)
    probs_by_token = pi.token_logprobs(seqs).exp()
    assert torch.allclose(sequence_logprob(pi.token_logprobs(seqs)).exp(), probs_by_token.prod(1), atol=1e-12)
    mask = torch.tensor([[1, 1, 0]]).expand(len(seqs), 3)
    assert torch.allclose(sequence_logprob(pi.token_logprobs(seqs), mask).exp(), probs_by_token[:, :2].prod(1))


def test_score_function_gradient_is_the_average_of_per_sequence_sums():
    """1/N sum_i sum_t Phi_it grad log pi(a_it | s_it), each grad taken on its own."""
    pi, _, _ = setting(3)
    samples = pi.sample(6, torch.Generator().manual_seed(0))
    phi = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = score_function_gradient(pi.token_logprobs(samples), phi, pi.logits)
    expected = torch.zeros_like(got)
    for i in range(6):
        for t in range(3):
            logp_it = pi.token_logprobs(samples[i:i + 1])[0, t]
            expected += phi[i, t] * flat_grad(logp_it, pi.logits) / 6
    assert torch.allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("kind", ["total", "rewards_to_go"])
def test_estimator_mean_is_within_a_few_standard_errors_of_the_exact_gradient(kind):
    pi, seqs, r = setting(4)
    g_exact = exact_gradient(pi, r.sum(1))
    gen = torch.Generator().manual_seed(5)
    estimates = []
    for _ in range(400):
        samples = pi.sample(16, gen)
        phi = weights(r[sequence_index(pi, samples)], kind)
        estimates.append(score_function_gradient(pi.token_logprobs(samples), phi, pi.logits))
    estimates = torch.stack(estimates)
    se = estimates.std(0) / math.sqrt(len(estimates))
    z = (estimates.mean(0) - g_exact) / se.clamp(min=1e-12)
    assert z.abs().max() < 4.5          # 39 coordinates, none off by more than ~4.5 standard errors
    assert z.pow(2).mean() < 2.0        # and on average about one standard error (chi-square / dof ~ 1)


def test_sequence_index_finds_each_sequence():
    pi, seqs, _ = setting()
    assert torch.equal(sequence_index(pi, seqs), torch.arange(len(seqs)))
    assert torch.equal(seqs[sequence_index(pi, seqs.flip(0))], seqs.flip(0))


# ---------------------------------------------------------------- baselines and rewards-to-go, exactly

def _one_sample_moments(pi, seqs, phi):
    G = token_score_gradients(pi, seqs)
    return estimator_moments(pi, torch.einsum("ntp,nt->np", G, phi))


def test_action_independent_baselines_leave_the_expected_gradient_unchanged_exactly():
    pi, seqs, r = setting(6, V=3, T=4)
    R = r.sum(1)
    g_exact = exact_gradient(pi, R)
    T = seqs.shape[1]
    b_state = torch.randn(pi.num_states, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cases = {
        "constant": R.unsqueeze(1).expand(-1, T) - 3.7,
        "b(s_t)": R.unsqueeze(1) - b_state[pi.state_index(seqs)],          # any function of the state
        "rewards-to-go": weights(r, "rewards_to_go"),
        "rewards-to-go - b(s_t)": weights(r, "rewards_to_go") - b_state[pi.state_index(seqs)],
    }
    for name, phi in cases.items():
        mean, _ = _one_sample_moments(pi, seqs, phi)
        assert torch.allclose(mean, g_exact, atol=1e-10), name
    # a "baseline" that looks at the action a_t itself is biased: the test can fail
    mean, _ = _one_sample_moments(pi, seqs, R.unsqueeze(1) - seqs.double())
    assert (mean - g_exact).norm() > 1e-2
    # and so are rewards-to-go when a reward depends on tokens after its own
    non_causal = r.flip(1)
    mean, _ = _one_sample_moments(pi, seqs, weights(non_causal, "rewards_to_go"))
    assert (mean - exact_gradient(pi, non_causal.sum(1))).norm() > 1e-2


def test_rewards_to_go_lower_the_variance_for_rewards_spread_over_tokens():
    pi, seqs, r = setting(7, V=3, T=4)
    _, var_total = _one_sample_moments(pi, seqs, weights(r, "total"))
    _, var_rtg = _one_sample_moments(pi, seqs, weights(r, "rewards_to_go"))
    assert var_rtg < var_total


@pytest.mark.parametrize("n", [2, 3])
def test_batch_baselines_by_enumerating_every_batch(n):
    """RLOO is unbiased; the plain batch mean includes the sample itself and shrinks the
    expected gradient by exactly (n - 1)/n."""
    pi, seqs, r = setting(8, V=3, T=3)
    r[:, -1] += 3.0                       # rewards far from 0: where a baseline earns its keep
    G = token_score_gradients(pi, seqs)
    g_exact = exact_gradient(pi, r.sum(1))
    mean_none, var_none = batch_estimator_moments(pi, G, r, lambda x: weights(x, "total"), n)
    _, var_one = _one_sample_moments(pi, seqs, weights(r, "total"))
    assert torch.allclose(mean_none, g_exact, atol=1e-10)
    assert var_none.item() == pytest.approx(var_one.item() / n, rel=1e-9)   # iid: variance / n
    mean_rloo, var_rloo = batch_estimator_moments(pi, G, r, lambda x: weights(x, "total", "rloo", group_size=n), n)
    assert torch.allclose(mean_rloo, g_exact, atol=1e-10)
    assert var_rloo < var_none
    mean_avg, _ = batch_estimator_moments(pi, G, r, lambda x: weights(x, "total", "group_mean", group_size=n), n)
    assert torch.allclose(mean_avg, (n - 1) / n * g_exact, atol=1e-10)


# ---------------------------------------------------------------- weights against brute-force loops

MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]])


def test_weights_against_brute_force_loops():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(4, 4, generator=g) * MASK
    lengths = MASK.sum(1).tolist()
    gamma = 0.9
    rtg = weights(r, "rewards_to_go", mask=MASK, gamma=gamma)
    tot = weights(r, "total", mask=MASK)
    for b in range(4):
        for t in range(4):
            if t >= lengths[b]:
                assert rtg[b, t] == 0 and tot[b, t] == 0
                continue
            assert rtg[b, t].item() == pytest.approx(sum(gamma ** (k - t) * r[b, k].item()
                                                         for k in range(t, lengths[b])), abs=1e-5)
            assert tot[b, t].item() == pytest.approx(r[b, :lengths[b]].sum().item(), abs=1e-5)
    # baselines: per position, over the rows that have a token there
    for baseline, group_size in [("mean", None), ("group_mean", 2), ("rloo", 2)]:
        got = weights(r, "rewards_to_go", baseline, MASK, group_size, gamma)
        G = group_size or 4
        for b in range(4):
            for t in range(lengths[b]):
                group = range(b // G * G, b // G * G + G)
                pool = [j for j in group if t < lengths[j] and (baseline != "rloo" or j != b)]
                base = sum(rtg[j, t].item() for j in pool) / len(pool) if pool else 0.0
                assert got[b, t].item() == pytest.approx(rtg[b, t].item() - base, abs=1e-5), (baseline, b, t)


def test_leave_one_out_on_sequence_rewards_is_rloo_advantages():
    R = torch.tensor([1.0, 0.0, 3.0, 2.0, 2.0, -1.0])
    got = leave_one_out_baseline(R.unsqueeze(1).expand(6, 3).clone(), group_size=3)
    assert torch.allclose(got, rloo_advantages(R, 3).unsqueeze(1).expand(6, 3))
    assert torch.allclose(mean_baseline(R.unsqueeze(1), group_size=3)[:, 0],
                          (R.view(2, 3) - R.view(2, 3).mean(1, keepdim=True)).reshape(-1))


def test_total_reward_broadcasts_the_sum():
    assert total_reward(torch.tensor([[1.0, 2.0, 5.0]]), torch.tensor([[1, 1, 0]])).tolist() == [[3.0, 3.0, 0.0]]


# ---------------------------------------------------------------- the loss

def test_reinforce_loss_per_token_and_reductions():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(4, 4, generator=g) * MASK
    adv = torch.randn(4, generator=g)
    none = reinforce_loss(logp, adv, MASK, reduction="none")
    for b in range(4):
        for t in range(4):
            assert none[b, t].item() == pytest.approx(-adv[b].item() * logp[b, t].item() * MASK[b, t].item(), abs=1e-6)
    n_tokens = MASK.sum().item()
    assert reinforce_loss(logp, adv, MASK).item() == pytest.approx(none.sum().item() / n_tokens, rel=1e-5)
    assert reinforce_loss(logp, adv, MASK, "sum").item() == pytest.approx(none.sum().item(), rel=1e-5)
    assert reinforce_loss(logp, adv, MASK, "sequence").item() == pytest.approx(none.sum().item() / 4, rel=1e-5)
    per_token = adv.unsqueeze(1).expand(4, 4)
    assert torch.allclose(reinforce_loss(logp, per_token, MASK, "none"), none)


def test_reinforce_loss_does_not_differentiate_the_weights():
    logp = torch.tensor([[-0.5, -1.0]], requires_grad=True)
    adv = torch.tensor([2.0], requires_grad=True)
    reinforce_loss(logp, adv, reduction="sum").backward()
    assert adv.grad is None and logp.grad.tolist() == [[-2.0, -2.0]]


def test_bad_inputs_raise_value_errors_naming_the_argument():
    logp = -torch.rand(2, 3)
    with pytest.raises(ValueError, match="logp"):
        reinforce_loss(torch.rand(2, 3) + 0.01, torch.ones(2))            # probabilities, not log-probs
    with pytest.raises(ValueError, match="advantages"):
        reinforce_loss(logp, torch.ones(3))
    with pytest.raises(ValueError, match="advantages"):
        reinforce_loss(logp, torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="mask"):
        reinforce_loss(logp, torch.ones(2), mask=torch.ones(3, 2))
    with pytest.raises(ValueError, match="reduction"):
        reinforce_loss(logp, torch.ones(2), reduction="avg")
    with pytest.raises(ValueError, match="kind"):
        weights(torch.zeros(2, 3), "advantage")
    with pytest.raises(ValueError, match="baseline"):
        weights(torch.zeros(2, 3), baseline="median")
    with pytest.raises(ValueError, match="group_size"):
        weights(torch.zeros(2, 3), baseline="rloo")
    with pytest.raises(ValueError, match="group_size"):
        weights(torch.zeros(6, 3), baseline="rloo", group_size=4)
    with pytest.raises(ValueError, match="group_size"):
        leave_one_out_baseline(torch.zeros(2, 3), group_size=1)
    with pytest.raises(ValueError, match="rewards"):
        total_reward(torch.tensor([[float("inf")]]))
    with pytest.raises(ValueError, match="returns"):
        gradient_of_probabilities(TabularPolicy(2, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="world"):
        sort_token_rewards(object(), None, None)


# ---------------------------------------------------------------- per-token sort rewards and training

def test_sort_token_rewards_sum_to_the_position_reward_and_sit_on_their_tokens():
    world = SortWorld(n_digits=4, reward_type="position")
    tok = world.tokenizer()
    prompt = ["sort", "3", "1", "2", "1", ":"]
    completions = [["1", "1", "2", "3"], ["1", "1", "3", "2"], ["1", "2"], ["1", "1", "2", "3", "3"]]
    batch = make_batch(tok, [prompt] * 4, completions)
    r = sort_token_rewards(world, batch, tok)
    assert torch.allclose(r.sum(1), world.score(batch, tok))
    assert r[1].tolist() == [0.25, 0.25, 0.0, 0.0, 0.0, 0.0]                  # right, right, wrong, wrong, <eos>
    assert r[2].tolist()[:3] == [0.25, 0.0, -0.25]                            # malformed: the last token takes it back
    penalised = sort_token_rewards(world, batch, tok, correct=1.0, wrong=-5.0)
    assert penalised[1].tolist()[:5] == [1.0, 1.0, -5.0, -5.0, 0.0]
    assert penalised[3].sum().item() == pytest.approx(-20.0)                   # malformed = as bad as all wrong


def test_sampled_reinforce_raises_the_exact_objective():
    pi, seqs, r = setting(9)
    R = r.sum(1)
    before = objective(pi, R).item()
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        samples = pi.sample(16, gen)
        phi = weights(r[sequence_index(pi, samples)], "rewards_to_go", "rloo", group_size=16)
        step = 0.5 * score_function_gradient(pi.token_logprobs(samples), phi, pi.logits)
        with torch.no_grad():
            pi.logits += step.view_as(pi.logits)
    after = objective(pi, R).item()
    assert after > before + 0.5 and after <= R.max().item()
