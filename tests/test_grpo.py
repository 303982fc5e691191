import math
import statistics

import pytest
import torch

from rlbook.exact import TabularPolicy, flat_grad
from rlbook.grpo import aggregation_weights, grpo_loss
from rlbook.kl import kl_penalised_rewards
from rlbook.lm import Batch, completion_logprobs, frozen_copy
from rlbook.ppo import clip_fraction
from rlbook.tasks import sample_groups

# ragged completions: 4, 2, 1 and 3 tokens
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]])
B, T = MASK.shape


def logps(seed=0, spread=0.4):
    """(logp, old_logp, ref_logp), masked entries 0, ratios spread around 1."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 - 0.05
    logp = (old + spread * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=0.0)
    ref = (old + spread * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=0.0)
    return logp * MASK, old * MASK, ref * MASK


def by_hand(logp, old, ref, adv, eps, eps_high, beta, aggregation, L=None):
    """The GRPO objective written out sequence by sequence, token by token."""
    lengths = [int(MASK[i].sum()) for i in range(B)]
    total = 0.0
    for i in range(B):
        seq = 0.0
        for t in range(lengths[i]):
            a = float(adv[i] if adv.dim() == 1 else adv[i, 0] if adv.shape[1] == 1 else adv[i, t])
            r = math.exp(logp[i, t] - old[i, t])
            surrogate = min(r * a, min(max(r, 1 - eps), 1 + eps_high) * a)
            k3 = 0.0
            if beta:
                q = math.exp(ref[i, t] - logp[i, t])  # pi_ref / pi_theta
                k3 = q - 1 - math.log(q)
            seq += -surrogate + beta * k3
        if aggregation == "grpo":
            total += seq / lengths[i] / B
        elif aggregation == "token":
            total += seq / sum(lengths)
        else:
            total += seq / (B * (L or T))
    return total


@pytest.mark.parametrize("aggregation", ["grpo", "token", "dr_grpo"])
@pytest.mark.parametrize("adv_shape", ["[B]", "[B,1]", "[B,T]"])
@pytest.mark.parametrize("eps,eps_high,beta", [(0.2, None, 0.0), (0.2, 0.28, 0.04), (0.1, 0.1, 0.5)])
def test_grpo_loss_against_a_hand_written_loop(aggregation, adv_shape, eps, eps_high, beta):
    logp, old, ref = logps()
    g = torch.Generator().manual_seed(3)
    adv = {"[B]": torch.randn(B, generator=g, dtype=torch.float64),
           "[B,1]": torch.randn(B, 1, generator=g, dtype=torch.float64),
           "[B,T]": torch.randn(B, T, generator=g, dtype=torch.float64)}[adv_shape]
    got = grpo_loss(logp, old, ref if beta else None, adv, MASK, eps=eps, beta=beta, aggregation=aggregation,
                    eps_high=eps_high)
    expected = by_hand(logp, old, ref, adv, eps, eps_high if eps_high is not None else eps, beta, aggregation)
    assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_dr_grpo_constant_normaliser_and_per_token_terms():
    logp, old, ref = logps(seed=1)
    adv = torch.tensor([1.0, -0.5, 2.0, -1.0], dtype=torch.float64)
    got = grpo_loss(logp, old, ref, adv, MASK, beta=0.1, aggregation="dr_grpo", max_length=10)
    assert got.item() == pytest.approx(by_hand(logp, old, ref, adv, 0.2, 0.2, 0.1, "dr_grpo", L=10), rel=1e-10)
    terms = grpo_loss(logp, old, ref, adv, MASK, beta=0.1, reduction="none")
    assert terms.shape == (B, T) and (terms[MASK == 0] == 0).all()
    for i in range(B):  # each per-token term by hand: -min(r A, clip(r) A) + beta k3
        for t in range(int(MASK[i].sum())):
            r, a = math.exp(logp[i, t] - old[i, t]), adv[i].item()
            log_q = (ref[i, t] - logp[i, t]).item()
            term = -min(r * a, min(max(r, 0.8), 1.2) * a) + 0.1 * (math.exp(log_q) - 1 - log_q)
            assert terms[i, t].item() == pytest.approx(term, rel=1e-10)


def test_aggregation_weights_and_the_length_bias():
    w = aggregation_weights(MASK, "grpo")
    # every sequence's weights sum to 1/B: a 4-token answer's tokens each weigh 1/4 of a 1-token answer's
    assert torch.allclose(w.sum(1), torch.full((B,), 1 / B))
    assert w[0, 0] * 4 == pytest.approx(w[2, 0].item())
    assert torch.allclose(aggregation_weights(MASK, "token")[MASK.bool()], torch.tensor(1 / 10))
    assert torch.allclose(aggregation_weights(MASK, "dr_grpo", max_length=8).sum(), torch.tensor(10 / 32))
    with pytest.raises(ValueError, match="max_length"):
        aggregation_weights(MASK, "dr_grpo", max_length=3)
    with pytest.raises(ValueError, match="aggregation"):
        aggregation_weights(MASK, "sequence")


def test_clip_higher_keeps_the_gradient_of_tokens_between_the_two_upper_bounds():
    ratio = torch.tensor([[1.1, 1.25, 1.35, 0.75]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, 1.0, -1.0]], dtype=torch.float64)
    for eps_high, expected_zero in [(None, [False, True, True, True]), (0.28, [False, False, True, True])]:
        log_ratio = torch.log(ratio).requires_grad_(True)
        grpo_loss(log_ratio - 2.0, torch.full_like(ratio, -2.0), None, adv, None, eps=0.2, beta=0.0,
                  eps_high=eps_high).backward()
        assert (log_ratio.grad[0] == 0).tolist() == expected_zero
        assert clip_fraction(log_ratio.detach() - 2.0, torch.full_like(ratio, -2.0), adv, eps=0.2,
                             eps_high=eps_high).item() == pytest.approx(sum(expected_zero) / 4)


def test_k3_term_is_zero_at_the_reference_and_pulls_towards_it():
    logp, old, ref = logps(seed=4)
    adv = torch.zeros(B, dtype=torch.float64)
    assert grpo_loss(ref, ref, ref, adv, MASK, beta=1.0).item() == pytest.approx(0.0, abs=1e-14)
    x = logp.clone().requires_grad_(True)
    grpo_loss(x, old, ref, adv, MASK, beta=1.0, aggregation="token").backward()
    # d k3 / d logp = 1 - pi_ref / pi_theta: positive where pi_theta > pi_ref (gradient descent lowers it)
    expected = (1 - torch.exp(ref - logp)) * MASK / MASK.sum()
    assert torch.allclose(x.grad, expected, atol=1e-12)


def _reinforce_by_hand(policy, seqs, lengths, rewards, group_size, scale, weight_of):
    """-sum_i weight_of(i) * (R_i - mean of its group) [/ std of its group] * grad log pi(o_i), one
    sequence at a time; statistics.mean / stdev for the group statistics."""
    grad = None
    for i in range(len(rewards)):
        group = rewards[(i // group_size) * group_size:(i // group_size + 1) * group_size]
        a = rewards[i] - statistics.mean(group)
        if scale == "std":
            a = a / (statistics.stdev(group) + 1e-6)
        seq_logp = policy(i)[: lengths[i]].sum()
        g = flat_grad(-weight_of(i) * a * seq_logp, seqs)
        grad = g if grad is None else grad + g
    return grad


@pytest.mark.parametrize("aggregation,scale", [("grpo", "std"), ("token", "std"), ("dr_grpo", "none")])
def test_gradient_at_ratio_one_is_reinforce_with_the_group_mean_baseline(aggregation, scale):
    """theta = theta_old and beta = 0: grad of grpo_loss = -sum_i w_i A_i grad log pi(o_i), with
    the group-mean baseline inside A_i; checked on an enumerable policy with ragged lengths."""
    from rlbook.advantages import group_advantages

    pi = TabularPolicy(vocab_size=3, length=4, seed=0)
    G = 4
    seqs = pi.sample(12, torch.Generator().manual_seed(0))
    lengths = [4, 2, 3, 1, 4, 4, 2, 3, 1, 2, 4, 3]
    mask = torch.tensor([[1] * n + [0] * (4 - n) for n in lengths])
    rewards = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]  # last group: all equal
    adv = group_advantages(torch.tensor(rewards, dtype=torch.float64), G, scale)
    logp = pi.token_logprobs(seqs) * mask
    got = flat_grad(grpo_loss(logp, logp.detach(), None, adv, mask, beta=0.0, aggregation=aggregation), pi.logits)
    n = sum(lengths)
    weight_of = {"grpo": lambda i: 1 / (len(rewards) * lengths[i]), "token": lambda i: 1 / n,
                 "dr_grpo": lambda i: 1 / (len(rewards) * 4)}[aggregation]
    expected = _reinforce_by_hand(lambda i: pi.token_logprobs(seqs[i:i + 1])[0], pi.logits, lengths, rewards, G,
                                  scale, weight_of)
    assert expected.abs().max() > 1e-3
    assert torch.allclose(got, expected, atol=1e-12)


def test_first_step_loss_is_zero_but_gradient_is_not_on_a_tiny_lm(trained_sentiment):
    """On real samples of a tiny LM (ragged, EOS-terminated), policy = old = ref: the "grpo" loss is 0
    (advantages sum to 0 per group, ratios are 1, k3 is 0) and its gradient is REINFORCE's, here
    computed from each completion scored alone (no padding) with a per-sequence 1/|o_i|."""
    world, tokenizer, model = trained_sentiment
    model = frozen_copy(model)
    for p in model.parameters():
        p.requires_grad_(True)
    torch.manual_seed(0)
    batch, _ = sample_groups(world, model, tokenizer, n_prompts=3, group_size=4, seed=5)
    from rlbook.advantages import group_advantages

    adv = group_advantages(torch.tensor([1.0, 0, 0, 0, 0, 1, 1, 0, 2, 2, 2, 2]), 4)
    logp = completion_logprobs(model, batch)
    loss = grpo_loss(logp, logp.detach(), logp.detach(), adv, batch.completion_mask, beta=0.04)
    assert abs(loss.item()) < 1e-6
    params = list(model.parameters())
    got = flat_grad(loss, params)
    lengths = batch.lengths.tolist()
    expected = 0
    for i in range(len(batch)):
        n = lengths[i]
        one = Batch(batch.prompt_ids[i:i + 1], batch.prompt_mask[i:i + 1], batch.completion_ids[i:i + 1, :n],
                    batch.completion_mask[i:i + 1, :n])
        expected = expected + flat_grad(-adv[i] / (len(batch) * n) * completion_logprobs(model, one).sum(), params)
    assert got.norm() > 1e-4
    assert torch.allclose(got, expected, atol=1e-6)


def test_kl_penalised_rewards_against_the_sequence_log_ratio():
    logp, old, ref = logps(seed=5)
    R = torch.tensor([1.0, 0.0, 1.0, 0.5], dtype=torch.float64)
    got = kl_penalised_rewards(R, old, ref, 0.3, MASK)
    for i in range(B):
        log_ratio = sum(old[i, t].item() - ref[i, t].item() for t in range(T) if MASK[i, t])
        assert got[i].item() == pytest.approx(R[i].item() - 0.3 * log_ratio, rel=1e-12)
    assert not got.requires_grad


def test_bad_inputs_fail_loudly_naming_the_argument():
    logp, old, ref = logps()
    adv = torch.zeros(B)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old, None, adv, MASK, beta=0.04)
    with pytest.raises(ValueError, match="beta"):
        grpo_loss(logp, old, ref, adv, MASK, beta=-0.1)
    with pytest.raises(ValueError, match="aggregation"):
        grpo_loss(logp, old, ref, adv, MASK, aggregation="seq")
    with pytest.raises(ValueError, match="kl_estimator"):
        grpo_loss(logp, old, ref, adv, MASK, kl_estimator="k4")
    with pytest.raises(ValueError, match="reduction"):
        grpo_loss(logp, old, ref, adv, MASK, reduction="sum")
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logp, old, ref, torch.zeros(B + 1), MASK)
    with pytest.raises(ValueError, match="mask"):
        grpo_loss(logp, old, ref, adv, MASK[:, :3])
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old, ref[:, :3], adv, MASK)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old, ref.exp() * MASK, adv, MASK)  # probabilities, not log-probs
    with pytest.raises(ValueError, match="old_logp"):
        grpo_loss(logp, old.exp() * MASK, ref, adv, MASK)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logp, old, ref, torch.tensor([0.0, float("nan"), 0.0, 0.0]), MASK)
    with pytest.raises(ValueError, match="eps_high"):
        grpo_loss(logp, old, ref, adv, MASK, eps_high=0.0)
    with pytest.raises(ValueError, match="no completion token"):
        grpo_loss(logp, old, ref, adv, torch.tensor([[1, 1, 0, 0]] * 3 + [[0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="rewards"):
        kl_penalised_rewards(torch.zeros(B, 1), old, ref, 0.1, MASK)
