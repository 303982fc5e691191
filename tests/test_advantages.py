import statistics

import pytest
import torch

from rlbook.advantages import discounted_returns, gae, group_advantages, rloo_advantages, whiten


def ragged(B=4, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = [T, 1, 3, 5][:B]
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    return torch.randn(B, T, generator=g), torch.randn(B, T, generator=g), mask, lengths


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9, 1.0])
def test_discounted_returns_against_a_double_loop(gamma):
    rewards, _, mask, lengths = ragged()
    got = discounted_returns(rewards, gamma, mask)
    for b, n in enumerate(lengths):
        for t in range(rewards.shape[1]):
            expected = sum(gamma ** (k - t) * rewards[b, k].item() for k in range(t, n)) if t < n else 0.0
            assert got[b, t].item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.0), (1.0, 1.0), (0.99, 0.95), (0.9, 0.5), (0.5, 0.8)])
def test_gae_against_the_definition_by_brute_force(gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l}, each delta from its definition, V = 0 past the end."""
    rewards, values, mask, lengths = ragged()
    adv, ret = gae(rewards, values, gamma, lam, mask)
    for b, n in enumerate(lengths):
        V = lambda t: values[b, t].item() if t < n else 0.0
        delta = [rewards[b, t].item() + gamma * V(t + 1) - V(t) for t in range(n)]
        for t in range(rewards.shape[1]):
            expected = sum((gamma * lam) ** (l - t) * delta[l] for l in range(t, n)) if t < n else 0.0
            assert adv[b, t].item() == pytest.approx(expected, abs=1e-5)
            assert ret[b, t].item() == pytest.approx(expected + V(t) if t < n else 0.0, abs=1e-5)


def test_gae_limits_td_error_and_monte_carlo():
    rewards, values, mask, _ = ragged()
    td, _ = gae(rewards, values, 0.9, 0.0, mask)
    nxt = torch.cat([values[:, 1:], torch.zeros(4, 1)], 1) * torch.cat([mask[:, 1:], torch.zeros(4, 1)], 1)
    assert torch.allclose(td, (rewards + 0.9 * nxt - values) * mask, atol=1e-6)
    mc, _ = gae(rewards, values, 0.9, 1.0, mask)
    assert torch.allclose(mc, discounted_returns(rewards, 0.9, mask) - values * mask, atol=1e-5)


def test_gae_single_episode_and_bad_arguments():
    adv, _ = gae(torch.tensor([0.0, 1.0]), torch.tensor([0.2, 0.4]), 1.0, 1.0)
    assert adv.tolist() == pytest.approx([0.8, 0.6])
    with pytest.raises(ValueError, match="lam"):
        gae(torch.zeros(3), torch.zeros(3), 1.0, 1.5)
    with pytest.raises(ValueError, match="gamma"):
        gae(torch.zeros(3), torch.zeros(3), -0.1, 0.5)
    with pytest.raises(ValueError, match="values"):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), 1.0, 0.5)
    with pytest.raises(ValueError, match="mask"):
        gae(torch.zeros(2, 3), torch.zeros(2, 3), 1.0, 0.5, mask=torch.ones(3, 2))
    with pytest.raises(ValueError, match="rewards"):
        discounted_returns(torch.tensor([1.0, float("nan")]))


def test_group_advantages_against_statistics_module():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0.0, 3.0, 1.0, 0.5])
    got = group_advantages(rewards, 4)
    for g in range(3):
        grp = rewards[4 * g: 4 * g + 4].tolist()
        mu, sd = statistics.mean(grp), statistics.stdev(grp)
        for i, r in enumerate(grp):
            assert got[4 * g + i].item() == pytest.approx((r - mu) / (sd + 1e-6), abs=1e-5)
    assert (got[4:8] == 0).all()  # equal rewards: zeros, not NaN
    dr = group_advantages(rewards, 4, scale="none")
    assert dr[:4].tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])


def test_rloo_against_a_leave_one_out_loop():
    rewards = torch.randn(12)
    got = rloo_advantages(rewards, 3)
    for i in range(12):
        g = i // 3
        others = [rewards[j].item() for j in range(3 * g, 3 * g + 3) if j != i]
        assert got[i].item() == pytest.approx(rewards[i].item() - sum(others) / 2, abs=1e-5)
    assert torch.allclose(got, 1.5 * group_advantages(rewards, 3, scale="none"), atol=1e-5)


def test_group_size_must_divide():
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(10), 4)
    with pytest.raises(ValueError, match="group_size"):
        rloo_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(4), 2, scale="mad")


def test_whiten_has_zero_mean_unit_std_on_kept_entries():
    x, _, mask, _ = ragged()
    w = whiten(x, mask)
    kept = w[mask.bool()]
    assert kept.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert kept.std().item() == pytest.approx(1.0, abs=1e-4)
