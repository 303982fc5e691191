import math

import pytest
import torch

from rlbook.exact import TabularPolicy, flat_grad
from rlbook.ppo import (AdaptiveKLController, approx_kl, clip_fraction, ppo_clip_loss, ppo_klpen_loss,
                        probability_ratio, shaped_rewards, trust_region_kl)
from rlbook.kl import sequence_kl

MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])


def logps(seed=0, shape=(3, 4), spread=0.5):
    """(logp, old_logp) of tokens with ratios spread around 1, masked entries 0."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(shape, generator=g) * 3 - 0.05
    logp = (old + spread * torch.randn(shape, generator=g)).clamp(max=0.0)
    return logp * MASK, old * MASK


# ---------------------------------------------------------------- ratio and PPO-CLIP

def test_probability_ratio_is_pi_over_pi_old():
    p, q = torch.tensor([[0.3, 1e-30]]), torch.tensor([[0.2, 1e-31]])
    r = probability_ratio(torch.log(p.double()), torch.log(q.double()))
    assert r.tolist()[0] == pytest.approx([1.5, 10.0])
    with pytest.raises(ValueError, match="logp"):
        probability_ratio(torch.tensor([[0.3]]), torch.tensor([[-1.0]]))  # a probability, not a log-prob


@pytest.mark.parametrize("eps", [0.1, 0.2, 0.5])
@pytest.mark.parametrize("per_token", [False, True])
def test_ppo_clip_loss_against_the_formula_token_by_token(eps, per_token):
    logp, old = logps()
    g = torch.Generator().manual_seed(1)
    adv = torch.randn(3, 4, generator=g) if per_token else torch.tensor([1.5, -0.7, 2.0])
    got = ppo_clip_loss(logp, old, adv, MASK, eps=eps, reduction="none")
    terms = []
    for b in range(3):
        for t in range(4):
            if not MASK[b, t]:
                assert got[b, t] == 0
                continue
            a = adv[b, t].item() if per_token else adv[b].item()
            r = math.exp(logp[b, t].item() - old[b, t].item())
            expected = -min(r * a, min(max(r, 1 - eps), 1 + eps) * a)
            assert got[b, t].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
            terms.append(expected)
    assert ppo_clip_loss(logp, old, adv, MASK, eps=eps).item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert ppo_clip_loss(logp, old, adv, MASK, eps=eps, reduction="sum").item() == pytest.approx(sum(terms), rel=1e-5)


def test_clipped_gradient_equals_the_policy_gradient_at_ratio_one():
    """At theta = theta_old the clip is inactive: grad of -L^CLIP is the plain policy gradient
    -mean_t A_t grad log pi(a_t|s_t), here on an enumerable policy's parameters."""
    pi = TabularPolicy(vocab_size=3, length=3, seed=0)
    seqs = pi.sample(16, torch.Generator().manual_seed(0))
    adv = torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    logp = pi.token_logprobs(seqs)
    g_clip = flat_grad(ppo_clip_loss(logp, logp.detach(), adv), pi.logits, retain_graph=True)
    g_pg = flat_grad(-(adv * logp).sum() / logp.numel(), pi.logits)
    assert torch.allclose(g_clip, g_pg, atol=1e-12)


def test_gradient_is_zero_exactly_where_clipped_and_clip_fraction_counts_those_tokens():
    logp, old = logps(spread=0.6)
    adv = torch.tensor([[1.0, -1.0, 2.0, -0.5], [-1.0, 1.0, 0.0, 0.0], [0.3, 0.0, 0.0, 0.0]])
    leaf = logp.clone().requires_grad_(True)
    ppo_clip_loss(leaf, old, adv, MASK, eps=0.2, reduction="sum").backward()
    ratio = torch.exp(logp - old)
    n_zero = 0
    for b in range(3):
        for t in range(4):
            if not MASK[b, t]:
                continue
            r, a = ratio[b, t].item(), adv[b, t].item()
            clipped = (a > 0 and r > 1.2) or (a < 0 and r < 0.8)
            # d/dlogp of -r A is -r A; of a constant, 0
            expected = 0.0 if clipped else -r * a
            assert leaf.grad[b, t].item() == pytest.approx(expected, abs=1e-6)
            n_zero += clipped
    assert 0 < n_zero < MASK.sum()  # the example exercises both cases
    assert clip_fraction(logp, old, adv, MASK, eps=0.2).item() == pytest.approx(n_zero / MASK.sum().item())


def test_ppo_clip_loss_rejects_bad_input():
    logp, old = logps()
    adv = torch.ones(3)
    with pytest.raises(ValueError, match="old_logp"):
        ppo_clip_loss(logp, old[:, :3], adv)
    with pytest.raises(ValueError, match="advantages"):
        ppo_clip_loss(logp, old, torch.ones(4))
    with pytest.raises(ValueError, match="mask"):
        ppo_clip_loss(logp, old, adv, mask=torch.ones(4, 3))
    with pytest.raises(ValueError, match="eps"):
        ppo_clip_loss(logp, old, adv, eps=0.0)
    with pytest.raises(ValueError, match="advantages"):
        ppo_clip_loss(logp, old, torch.tensor([1.0, float("inf"), 0.0]))
    with pytest.raises(ValueError, match="logp"):
        ppo_clip_loss(logp.exp(), old, adv)  # probabilities
    extreme = ppo_clip_loss(torch.full((1, 2), -80.0), torch.full((1, 2), -1e-3), torch.ones(1))
    assert torch.isfinite(extreme)


# ---------------------------------------------------------------- KL terms

def test_approx_kl_is_unbiased_for_kl_old_to_new_by_enumeration():
    """E_{tau ~ pi_old}[sum_t k3_t] = KL(pi_old || pi_theta) over whole sequences, both exact."""
    old, new = TabularPolicy(3, 3, seed=0), TabularPolicy(3, 3, seed=1, scale=0.7)
    seqs = old.sequences()
    with torch.no_grad():
        p_old, lo, ln = old.probs(), old.token_logprobs(seqs), new.token_logprobs(seqs)
        per_seq = torch.stack([approx_kl(ln[i:i + 1], lo[i:i + 1]) * 3 for i in range(len(seqs))])
        exact = (p_old * (old.log_prob(seqs) - new.log_prob(seqs))).sum()
    assert (p_old * per_seq).sum().item() == pytest.approx(exact.item(), rel=1e-9)


def test_trust_region_kl_against_torch_distributions():
    g = torch.Generator().manual_seed(0)
    old_logits, logits = 3 * torch.randn(3, 4, 7, generator=g), 3 * torch.randn(3, 4, 7, generator=g)
    got = trust_region_kl(old_logits, logits, MASK)
    expected = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=old_logits),
                                                 torch.distributions.Categorical(logits=logits))
    assert torch.allclose(got, expected * MASK, atol=1e-5)
    assert (got[~MASK.bool()] == 0).all()
    # forward KL with pi_old first: not the reverse one
    reverse = trust_region_kl(logits, old_logits, MASK)
    assert not torch.allclose(got, reverse, atol=1e-3)
    # minimised (zero, zero gradient) at pi_theta = pi_old
    leaf = old_logits.clone().requires_grad_(True)
    kl = trust_region_kl(old_logits, leaf, MASK)
    kl.sum().backward()
    assert kl.abs().max() < 1e-5 and leaf.grad.abs().max() < 1e-5
    with pytest.raises(ValueError, match="logits"):
        trust_region_kl(old_logits, logits[..., :6])


def test_ppo_klpen_loss_against_the_formula():
    logp, old = logps(2)
    kl = torch.rand(3, 4, generator=torch.Generator().manual_seed(3)) * MASK
    adv = torch.tensor([1.0, -2.0, 0.5])
    got = ppo_klpen_loss(logp, old, adv, kl, beta=0.7, mask=MASK, reduction="none")
    r = torch.exp(logp - old)
    for b in range(3):
        for t in range(4):
            expected = -(r[b, t].item() * adv[b].item() - 0.7 * kl[b, t].item()) if MASK[b, t] else 0.0
            assert got[b, t].item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="beta"):
        ppo_klpen_loss(logp, old, adv, kl, beta=0.0, mask=MASK)
    with pytest.raises(ValueError, match="kl"):
        ppo_klpen_loss(logp, old, adv, kl[:, :3], beta=1.0, mask=MASK)


@pytest.mark.parametrize("kl, expected", [
    (0.01, 1.0),                      # on target
    (0.01 / 1.5 + 1e-6, 1.0),         # just inside the band
    (0.01 / 1.5 - 1e-6, 0.5),         # just below target / 1.5: halve
    (0.015 - 1e-6, 1.0),
    (0.015 + 1e-6, 2.0),              # just above 1.5 * target: double
    (0.0, 0.5), (10.0, 2.0),
])
def test_adaptive_kl_rule_at_the_papers_thresholds(kl, expected):
    assert AdaptiveKLController(beta=1.0, target=0.01).update(kl) == expected


def test_adaptive_kl_controller_compounds_and_rejects_bad_input():
    c = AdaptiveKLController(beta=0.8, target=0.02)
    trace = [c.update(k) for k in [0.1, 0.1, 0.001, 0.02, 0.0]]
    assert trace == pytest.approx([1.6, 3.2, 1.6, 1.6, 0.8])
    with pytest.raises(ValueError, match="beta"):
        AdaptiveKLController(beta=0.0, target=0.01)
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(beta=1.0, target=-1.0)
    with pytest.raises(ValueError, match="kl"):
        c.update(float("nan"))


# ---------------------------------------------------------------- drift-KL reward shaping

def test_shaped_rewards_place_the_score_on_the_last_real_token():
    logp, _ = logps(4)
    ref = logps(5)[0]
    scores = torch.tensor([2.0, -1.0, 0.5])
    beta = 0.3
    got = shaped_rewards(scores, logp, ref, beta, MASK)
    lengths = MASK.sum(1).tolist()
    for b in range(3):
        for t in range(4):
            expected = 0.0
            if t < lengths[b]:
                expected = -beta * (logp[b, t].item() - ref[b, t].item()) + (scores[b].item() if t == lengths[b] - 1 else 0)
            assert got[b, t].item() == pytest.approx(expected, abs=1e-6)
    # the return from the first token: R - beta * log pi(y|x) / pi_ref(y|x)
    seq_log_ratio = ((logp - ref) * MASK).sum(1)
    assert torch.allclose(got.sum(1), scores - beta * seq_log_ratio, atol=1e-6)
    assert sequence_kl(logp, ref, MASK).item() == pytest.approx(seq_log_ratio.mean().item(), abs=1e-6)


def test_shaped_rewards_without_penalty_and_bad_input():
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])  # any mask: the last unmasked entry gets the score
    got = shaped_rewards(torch.tensor([3.0, 4.0]), torch.zeros(2, 3), None, 0.0, mask)
    assert got.tolist() == [[0.0, 3.0, 0.0], [0.0, 0.0, 4.0]]
    with pytest.raises(ValueError, match="ref_logp"):
        shaped_rewards(torch.ones(2), torch.zeros(2, 3), None, 0.1, mask)
    with pytest.raises(ValueError, match="beta"):
        shaped_rewards(torch.ones(2), torch.zeros(2, 3), torch.zeros(2, 3), -0.1, mask)
    with pytest.raises(ValueError, match="scores"):
        shaped_rewards(torch.ones(3), torch.zeros(2, 3), torch.zeros(2, 3), 0.1, mask)
    with pytest.raises(ValueError, match="mask"):
        shaped_rewards(torch.ones(2), torch.zeros(2, 3), None, 0.0, torch.tensor([[1, 1, 0], [0, 0, 0]]))


@pytest.mark.parametrize("log_ratio", [100.0, -100.0])
def test_clipped_loss_and_gradient_stay_finite_at_log_ratios_of_100(log_ratio):
    """Without the cap exp(100) overflows float32: the loss is inf and the gradient NaN even
    though the token is clipped."""
    old = torch.tensor([[-101.0, -1.0]]) if log_ratio > 0 else torch.tensor([[-1.0, -1.0]])
    logp = (old + torch.tensor([[log_ratio, 0.0]])).requires_grad_(True)
    for adv in (torch.tensor([1.0]), torch.tensor([-1.0])):
        logp.grad = None
        loss = ppo_clip_loss(logp, old, adv, reduction="sum")
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
        assert logp.grad[0, 1].item() == pytest.approx(-adv.item())  # the ordinary token keeps its gradient
    assert torch.isfinite(probability_ratio(logp.detach(), old)).all()
    assert ppo_clip_loss(logp.detach(), old, torch.tensor([1.0]), reduction="none")[0, 0].item() == pytest.approx(
        -(1.2 if log_ratio > 0 else math.exp(log_ratio)))
