"""kl.exact_ratio_weighted_gradient (TRL's use_bias_correction_kl) against exact KL gradients
computed another way: autograd through the exact KL over the vocabulary."""

import torch

from rlbook.exact import TabularPolicy, flat_grad
from rlbook.kl import exact_kl_gradients, exact_ratio_weighted_gradient, kl_divergence


def test_one_token_k3_times_ratio_is_the_reverse_kl_gradient():
    g = torch.Generator().manual_seed(0)
    logits, ref = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    theta = logits.clone().requires_grad_(True)
    reverse = torch.autograd.grad(kl_divergence(theta, ref), theta)[0]
    forward = torch.autograd.grad(kl_divergence(ref, theta), theta)[0]
    assert torch.allclose(exact_ratio_weighted_gradient(logits, ref, "k3"), reverse, atol=1e-12)
    assert torch.allclose(exact_ratio_weighted_gradient(logits, ref, "k1"), reverse, atol=1e-12)
    assert torch.allclose(exact_kl_gradients(logits, ref)["k3/loss"], forward, atol=1e-12)  # without the ratio
    assert not torch.allclose(reverse, forward, atol=1e-3)


def test_sequence_k3_times_ratio_is_the_per_state_kl_gradient_with_states_held():
    pi, ref = TabularPolicy(3, 3, seed=1), TabularPolicy(3, 3, seed=2)
    seqs = pi.sequences()
    p_fixed = pi.log_prob(seqs).exp().detach()
    per_state = kl_divergence(pi.token_logits(seqs), ref.token_logits(seqs).detach())  # [N, T], exact over V
    expected = flat_grad((p_fixed * per_state.sum(-1)).sum(), pi.logits)
    got = exact_ratio_weighted_gradient(pi, ref, "k3")
    assert torch.allclose(got, expected, atol=1e-12)
    reverse = exact_kl_gradients(pi, ref)["KL(pi||ref)"]
    assert (got - reverse).norm() > 1e-3 * reverse.norm()  # not the sequence-level reverse-KL gradient
