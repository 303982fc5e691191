"""Exact Q, V and estimator moments of exact.py (chapter 03), against brute-force loops."""

import pytest
import torch

from rlbook.advantages import gae
from rlbook.exact import TabularPolicy, action_values, estimator_moments, exact_gradient, token_score_gradients


def setting(seed=0):
    pi = TabularPolicy(vocab_size=3, length=3, seed=seed)
    seqs = pi.sequences()
    R = torch.randn(len(seqs), generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64)
    return pi, seqs, R


def test_action_values_against_a_loop_over_continuations():
    pi, seqs, R = setting()
    Q, V = action_values(pi, R)
    with torch.no_grad():
        p = pi.probs()
    for n, seq in enumerate(seqs.tolist()):
        for t in range(3):
            def cond(k):  # E[R | first k tokens of seq], by listing the sequences that share them
                same = [i for i, s in enumerate(seqs.tolist()) if s[:k] == seq[:k]]
                return sum(p[i] * R[i] for i in same) / sum(p[i] for i in same)
            assert V[n, t].item() == pytest.approx(cond(t).item(), abs=1e-12)
            assert Q[n, t].item() == pytest.approx(cond(t + 1).item(), abs=1e-12)
    assert torch.allclose(Q[:, -1], R)
    assert torch.allclose(V[:, 0], pi.expectation(R).detach().expand(len(seqs)))


def test_td_error_with_exact_values_is_the_exact_advantage():
    """Deterministic transitions (append a token): Q(s_t, a_t) = r_t + V(s_{t+1}), so GAE with
    lambda = 0 and the exact V returns Q - V for every token."""
    pi, seqs, R = setting(1)
    Q, V = action_values(pi, R)
    rewards = torch.zeros_like(Q)
    rewards[:, -1] = R
    adv, _ = gae(rewards, V, gamma=1.0, lam=0.0)
    assert torch.allclose(adv, Q - V, atol=1e-12)


def test_token_score_gradients_match_the_softmax_formula():
    """d log softmax(z)_a / dz = onehot(a) - softmax(z), in the row of the state."""
    pi, seqs, _ = setting(2)
    G = token_score_gradients(pi, seqs[:5])
    rows = pi.state_index(seqs[:5])
    with torch.no_grad():
        probs = torch.softmax(pi.logits, -1)
    for n in range(5):
        for t in range(3):
            expected = torch.zeros_like(pi.logits)
            expected[rows[n, t]] = -probs[rows[n, t]]
            expected[rows[n, t], seqs[n, t]] += 1
            assert torch.allclose(G[n, t], expected.reshape(-1), atol=1e-12)


def test_estimator_moments_against_a_loop_and_the_exact_gradient():
    pi, seqs, R = setting(3)
    G = token_score_gradients(pi, seqs)
    est = G.sum(1) * R.unsqueeze(1)  # REINFORCE with the total reward: unbiased
    mean, var = estimator_moments(pi, est)
    with torch.no_grad():
        p = pi.probs()
    loop_mean = sum(p[i] * est[i] for i in range(len(seqs)))
    loop_var = sum(p[i] * ((est[i] - loop_mean) ** 2).sum() for i in range(len(seqs)))
    assert torch.allclose(mean, loop_mean, atol=1e-12) and var.item() == pytest.approx(loop_var.item(), rel=1e-10)
    assert torch.allclose(mean, exact_gradient(pi, R), atol=1e-10)
    with pytest.raises(ValueError, match="estimates"):
        estimator_moments(pi, est[:5])
    with pytest.raises(ValueError, match="returns"):
        action_values(pi, R[:5])
