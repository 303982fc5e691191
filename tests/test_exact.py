import itertools
import math

import pytest
import torch

from rlbook.exact import TabularPolicy, cosine, exact_gradient, flat_grad


def test_probabilities_are_products_of_per_state_softmaxes():
    pi = TabularPolicy(vocab_size=3, length=3, seed=1)
    probs = pi.probs()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-12)
    # an independent reading of the table: walk the prefix tree by hand
    table = torch.softmax(pi.logits.detach(), -1)
    rows = {(): 0}
    for t in range(1, 3):
        for prefix in itertools.product(range(3), repeat=t):
            rows[prefix] = len(rows)
    for i, seq in enumerate(itertools.product(range(3), repeat=3)):
        expected = math.prod(table[rows[seq[:t]], seq[t]].item() for t in range(3))
        assert probs[i].item() == pytest.approx(expected, rel=1e-10)


def test_samples_follow_the_exact_distribution():
    pi = TabularPolicy(vocab_size=2, length=3, seed=2)
    n = 20000
    seqs = pi.sample(n, torch.Generator().manual_seed(0))
    codes = seqs[:, 0] * 4 + seqs[:, 1] * 2 + seqs[:, 2]
    freq = torch.bincount(codes, minlength=8).double() / n
    p = pi.probs().detach()
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-3).all()


def test_exact_gradient_matches_finite_differences():
    pi = TabularPolicy(vocab_size=3, length=2, seed=3)
    reward = torch.arange(9, dtype=torch.float64)
    g = exact_gradient(pi, reward)
    eps = 1e-6
    fd = torch.zeros_like(g)
    flat = pi.logits.data.view(-1)
    for i in range(flat.numel()):
        old = flat[i].item()
        flat[i] = old + eps
        up = pi.expectation(reward).item()
        flat[i] = old - eps
        down = pi.expectation(reward).item()
        flat[i] = old
        fd[i] = (up - down) / (2 * eps)
    assert torch.allclose(g, fd, atol=1e-6)


def test_expectation_of_a_callable_and_bad_input():
    pi = TabularPolicy(vocab_size=2, length=2, seed=0)
    assert pi.expectation(lambda s: torch.ones(s.shape[0], dtype=torch.float64)).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="values"):
        pi.expectation(torch.ones(3))
    with pytest.raises(ValueError, match="seqs"):
        pi.token_logprobs(torch.tensor([[0, 2]]))
    with pytest.raises(ValueError, match="vocab_size"):
        TabularPolicy(vocab_size=1)


def test_flat_grad_and_cosine():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    assert flat_grad((x ** 2).sum(), [x]).tolist() == [2.0, 4.0]
    assert cosine(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0])) == pytest.approx(1.0)
    assert cosine(torch.zeros(2), torch.ones(2)) == 0.0
