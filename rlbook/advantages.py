"""Returns and advantages: the weights Phi_t that multiply grad log pi(a_t | s_t).

Per-token tensors are `[B, T]` (or `[T]` for one episode) with an optional `mask`
(1 = a step of the episode). An episode ends after its last unmasked step: nothing is
bootstrapped past it. Sequence-level rewards are `[N]`, laid out group after group.
"""

from __future__ import annotations

import torch

from rlbook.checks import check_choice, check_finite, check_mask, check_unit_interval
from rlbook.masked import masked_whiten


def _as_batch(x: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    if x.dim() == 1:
        return x.unsqueeze(0), True
    if x.dim() == 2:
        return x, False
    raise ValueError(f"{name} must be [T] or [B, T], got shape {tuple(x.shape)}")


def discounted_returns(rewards: torch.Tensor, gamma: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Rewards-to-go G_t = sum_{k >= t} gamma^(k-t) r_k, per episode.

    rewards: [T] or [B, T]; masked steps contribute nothing and get G = 0.

    >>> discounted_returns(torch.tensor([1., 0., 2.]), gamma=0.5)
    tensor([1.5000, 1.0000, 2.0000])
    """
    check_unit_interval(gamma=gamma)
    check_finite(rewards=rewards)
    r, single = _as_batch(rewards, "rewards")
    m = check_mask(mask if mask is None or not single else mask.unsqueeze(0), r, "rewards")
    r = torch.where(m.bool(), r, torch.zeros_like(r))
    out = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        running = r[:, t] + gamma * running
        out[:, t] = running
    out = out * m
    return out[0] if single else out


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float = 1.0, lam: float = 0.95,
        mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2015, Eq. 16).

    delta_t = r_t + gamma * V(s_{t+1}) - V(s_t),  with V = 0 after the episode's last step
    A_t     = sum_{l >= 0} (gamma * lam)^l delta_{t+l}
    returns = A_t + V(s_t)  (the critic's regression target)

    lam = 0 gives the one-step TD error; lam = 1 gives the Monte-Carlo return minus V.
    rewards, values: [T] or [B, T] with values[t] = V(s_t). Returns (advantages, returns),
    both 0 at masked steps.

    >>> adv, ret = gae(torch.tensor([0., 0., 1.]), torch.tensor([.5, .5, .5]), gamma=1.0, lam=1.0)
    >>> adv
    tensor([0.5000, 0.5000, 0.5000])
    """
    check_unit_interval(gamma=gamma, lam=lam)
    check_finite(rewards=rewards, values=values)
    if rewards.shape != values.shape:
        raise ValueError(f"values has shape {tuple(values.shape)} but rewards has shape {tuple(rewards.shape)}")
    r, single = _as_batch(rewards, "rewards")
    v, _ = _as_batch(values, "values")
    m = check_mask(mask if mask is None or not single else mask.unsqueeze(0), r, "rewards")
    r, v = r * m, v * m
    advantages = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    next_value = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        # a masked step (padding after the episode) passes on nothing: V = 0, A = 0
        delta = r[:, t] + gamma * next_value - v[:, t]
        running = (delta + gamma * lam * running) * m[:, t]
        advantages[:, t] = running
        next_value = v[:, t]
    returns = (advantages + v) * m
    if single:
        return advantages[0], returns[0]
    return advantages, returns


def whiten(x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the unmasked entries: how PPO implementations normalise advantages."""
    return masked_whiten(x, mask, shift_mean=shift_mean)


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [N], got shape {tuple(rewards.shape)}")
    check_finite(rewards=rewards)
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"group_size={group_size} does not divide the {rewards.numel()} rewards")
    return rewards.view(-1, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "std", eps: float = 1e-6) -> torch.Tensor:
    """GRPO's group-relative advantage A_i = (R_i - mean(R_group)) / (std(R_group) + eps).

    rewards: [N], laid out group after group (G = group_size samples of one prompt each).
    scale="std": divide by the Bessel-corrected std of the group plus eps, as GRPO does;
    a group whose rewards are all equal gets zeros (not NaN).
    scale="none": only subtract the mean (Dr. GRPO: no difficulty re-weighting).

    >>> group_advantages(torch.tensor([1., 0., 0., 0., 1., 1.]), group_size=3, scale="none")
    tensor([ 0.6667, -0.3333, -0.3333, -0.6667,  0.3333,  0.3333])
    """
    check_choice("scale", scale, ("std", "none"))
    g = _groups(rewards, group_size)
    centred = g - g.mean(dim=1, keepdim=True)
    if scale == "std":
        std = g.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(g[:, :1])
        centred = centred / (std + eps)
    return centred.reshape(-1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out: A_i = R_i - mean of the other G - 1 rewards in the group.

    The baseline of sample i does not depend on sample i, so the gradient stays unbiased.
    Equals G/(G-1) times the mean-centred reward.

    >>> rloo_advantages(torch.tensor([1., 0., 0., 3.]), group_size=2)
    tensor([ 1., -1., -3.,  3.])
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for a leave-one-out baseline, got {group_size}")
    g = _groups(rewards, group_size)
    baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - baseline).reshape(-1)


def per_token(advantages: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Advantages `[B]` (one per sequence), `[B, 1]` or `[B, T]` as `[B, T]`, shaped like `logp`.

    >>> per_token(torch.tensor([1.0, -1.0]), torch.zeros(2, 3)).tolist()
    [[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]
    """
    if advantages.shape == logp.shape:
        return advantages
    if advantages.dim() == 1 and advantages.shape[0] == logp.shape[0]:
        return advantages.unsqueeze(1).expand_as(logp)
    if advantages.shape == (logp.shape[0], 1):
        return advantages.expand_as(logp)
    raise ValueError(f"advantages has shape {tuple(advantages.shape)}; expected [B], [B, 1] or "
                     f"{list(logp.shape)} to match logp")


def last_token_rewards(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sequence rewards `[B]` placed on each row's last completion token (its EOS when the
    answer finished): `[B, T]`, 0 elsewhere. The return from any token is then the score.

    >>> last_token_rewards(torch.tensor([2.0, 3.0]), torch.tensor([[1, 1, 0], [1, 1, 1]]))
    tensor([[0., 2., 0.],
            [0., 0., 3.]])
    """
    if mask.dim() != 2 or scores.shape != (mask.shape[0],):
        raise ValueError(f"scores must be [B] and mask [B, T] with the same B, got {tuple(scores.shape)} "
                         f"and {tuple(mask.shape)}")
    check_finite(scores=scores)
    m = check_mask(mask, mask.float(), "mask")
    if (m.sum(1) == 0).any():
        raise ValueError("mask has a row with no completion token: there is no last token to reward")
    # the last unmasked position of each row: where the running count reaches the row's total
    last = (m.cumsum(1) == m.sum(1, keepdim=True)) & m.bool()
    return last.to(scores.dtype if scores.is_floating_point() else torch.float32) * scores.unsqueeze(1)
