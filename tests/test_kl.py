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
