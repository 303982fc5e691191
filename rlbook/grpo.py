"""GRPO (Shao et al. 2024, DeepSeekMath): PPO's clipped ratio with a group-relative advantage
instead of a critic, the drift KL as a k3 term in the loss, and the variants that change how
token terms are averaged (DAPO's token mean, Dr. GRPO's constant normaliser).

For G completions o_1..o_G of one prompt with rewards R_i, advantage
A_i = (R_i - mean R) / std R (`advantages.group_advantages`), ratio r_it = pi_theta / pi_old
and per-token term

    l_it = -min( r_it A_i, clip(r_it, 1 - eps, 1 + eps_high) A_i )  +  beta * k3_it,
    k3_it = pi_ref/pi_theta - 1 - log(pi_ref/pi_theta)        (`kl.k3`)

the loss is sum_it w_it l_it with weights w from the aggregation (`aggregation_weights`):

    "grpo"     1/B * 1/|o_i|      mean over each sequence's tokens, then over sequences (the seed's)
    "token"    1/sum_j |o_j|      mean over all tokens of the batch (DAPO)
    "dr_grpo"  1/(B * L)          token sum over a constant L (Dr. GRPO; L = the generation budget)

Per-token tensors are `[B, T]` with a `mask` (1 = completion token); rows are laid out group
after group. `algorithms.GRPO` is the whole algorithm for `train.on_policy`.
"""

from __future__ import annotations

import torch

from rlbook.checks import check_choice, check_log_probs, check_mask, check_nonnegative, check_same_shape
from rlbook.kl import ESTIMATORS, kl_estimate
from rlbook.ppo import ppo_clip_loss

AGGREGATIONS = ("grpo", "token", "dr_grpo")


def aggregation_weights(mask: torch.Tensor, aggregation: str = "grpo", max_length: int | None = None) -> torch.Tensor:
    """Weights w_it with loss = sum_it w_it l_it; 0 at masked positions. mask: `[B, T]`.

    "grpo":    w_it = 1 / (B |o_i|)        every sequence counts the same, whatever its length
    "token":   w_it = 1 / sum_j |o_j|      every token counts the same
    "dr_grpo": w_it = 1 / (B L)            L = max_length (None: T, the mask's width)

    Under "grpo" a token of a long completion weighs less than one of a short completion:
    a long wrong answer is penalised less per token (Dr. GRPO's length bias).

    >>> aggregation_weights(torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]), "grpo")
    tensor([[0.1250, 0.1250, 0.1250, 0.1250],
            [0.2500, 0.2500, 0.0000, 0.0000]])
    >>> aggregation_weights(torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]), "dr_grpo", max_length=8)
    tensor([[0.0625, 0.0625, 0.0625, 0.0625],
            [0.0625, 0.0625, 0.0000, 0.0000]])
    """
    if mask.dim() != 2:
        raise ValueError(f"mask must be [B, T], got shape {tuple(mask.shape)}")
    m = check_mask(mask, mask if mask.is_floating_point() else mask.float(), "mask")
    lengths = m.sum(1, keepdim=True)
    if (lengths == 0).any():
        raise ValueError("mask has a row with no completion token")
    B, T = m.shape
    if aggregation == "grpo":
        return m / (B * lengths)
    if aggregation == "token":
        return m / lengths.sum()
    if aggregation == "dr_grpo":
        L = T if max_length is None else max_length
        if L < lengths.max():
            raise ValueError(f"max_length={max_length} is shorter than the longest completion ({int(lengths.max())} tokens)")
        return m / (B * L)
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor | None, eps: float = 0.2, beta: float = 0.04, kl_estimator: str = "k3",
              aggregation: str = "grpo", reduction: str = "mean", eps_high: float | None = None,
              max_length: int | None = None) -> torch.Tensor:
    """-J_GRPO = sum_it w_it [ -min(r_it A_it, clip(r_it, 1 - eps, 1 + eps_high) A_it) + beta * KL_it ]

    r_it = exp(logp - old_logp) (`ppo.ppo_clip_loss`), KL_it = kl_estimator(logp, ref_logp)
    (k3 = GRPO's; differentiated through logp: the KL is in the loss), w_it from
    `aggregation_weights(mask, aggregation, max_length)`.

    logp, old_logp, ref_logp, mask: `[B, T]`; ref_logp may be None when beta = 0.
    advantages: `[B]`, `[B, 1]` or `[B, T]` (e.g. `group_advantages(rewards, G)`).
    eps_high: upper clip (None: = eps); eps_high > eps is DAPO's clip-higher.
    reduction: "mean" (the aggregated loss above) or "none" (the per-token terms l_it `[B, T]`,
    unweighted, 0 at masked positions; `(aggregation_weights(...) * l).sum()` gives "mean").

    At the first step (theta = theta_old = theta_ref) r = 1 and k3 = 0, so with "grpo" the loss
    is -1/B sum_i A_i = 0 (group advantages sum to 0), while its gradient is not.

    >>> A = torch.tensor([1.0, -1.0])
    >>> logp = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 0.0, 0.0]])
    >>> mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    >>> grpo_loss(logp, logp, None, A, mask, beta=0.0).item()
    0.0
    >>> round(grpo_loss(logp, logp, None, A, mask, beta=0.0, aggregation="token").item(), 4)  # -(3 - 1) / 4
    -0.5
    """
    check_choice("reduction", reduction, ("mean", "none"))
    check_choice("aggregation", aggregation, AGGREGATIONS)
    check_choice("kl_estimator", kl_estimator, ESTIMATORS)
    check_nonnegative(beta=beta)
    m = check_mask(mask, logp, "logp")
    per_token = ppo_clip_loss(logp, old_logp, advantages, m, eps=eps, reduction="none", eps_high=eps_high)
    if beta > 0:
        if ref_logp is None:
            raise ValueError("ref_logp is None but beta > 0: the KL term needs pi_ref's log-probs")
        check_same_shape(logp=logp, ref_logp=ref_logp)
        check_log_probs(ref_logp=ref_logp)
        kl = kl_estimate(logp, ref_logp, kl_estimator)
        per_token = per_token + beta * torch.where(m.bool(), kl, torch.zeros_like(kl))
    if reduction == "none":
        return per_token
    return (aggregation_weights(m, aggregation, max_length) * per_token).sum()
