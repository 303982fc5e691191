"""PPO (Schulman et al. 2017): the probability ratio, the clipped objective (PPO-CLIP), the
KL-penalised objective with its adaptive coefficient (PPO-KLPEN), and the drift-KL reward
shaping of RLHF that feeds both.

Per-token tensors are `[B, T]` with a `mask` (1 = completion token). `logp` is
log pi_theta(a_t | s_t) (with grad), `old_logp` the same tokens under pi_old, the policy that
sampled them. `advantages` are `[B]` (broadcast over tokens) or `[B, T]`. The losses are the
negated objectives (we minimise), averaged over all unmasked tokens.

`algorithms.PPO` puts the pieces together for `train.on_policy`: shaped rewards, the
critic's values, GAE, the policy loss and the clipped value loss.
"""

from __future__ import annotations

import torch

from rlbook.advantages import last_token_rewards, per_token
from rlbook.checks import (check_finite, check_log_probs, check_mask, check_nonnegative, check_positive,
                           check_same_shape)
from rlbook.kl import MAX_LOG_RATIO, k3, kl_divergence, kl_penalty_rewards
from rlbook.masked import masked_mean, masked_reduce


def probability_ratio(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """r_t(theta) = pi_theta(a_t | s_t) / pi_old(a_t | s_t) = exp(logp - old_logp), per token.

    Computed from log-probs, so a token whose probability underflows in float32 still has a
    ratio. Masked positions (logp = old_logp = 0) give 1. The log-ratio is capped at
    `kl.MAX_LOG_RATIO` (20: r <= 4.9e8) so that exp cannot overflow float32 (at ~88) and turn
    the gradient into NaN; past the cap a token passes no gradient through r, and at such a
    ratio the clipped objective gives it none anyway.

    >>> probability_ratio(torch.log(torch.tensor([0.3])), torch.log(torch.tensor([0.2])))
    tensor([1.5000])
    """
    check_same_shape(logp=logp, old_logp=old_logp)
    check_log_probs(logp=logp, old_logp=old_logp)
    return torch.exp((logp - old_logp).clamp(max=MAX_LOG_RATIO))


def _policy_inputs(logp, old_logp, advantages, mask):
    """(ratio, per-token advantages, float mask), after checking all four."""
    ratio = probability_ratio(logp, old_logp)
    check_finite(advantages=advantages)
    return ratio, per_token(advantages, logp), check_mask(mask, logp, "logp")


def ppo_clip_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                  mask: torch.Tensor | None = None, eps: float = 0.2, reduction: str = "mean",
                  eps_high: float | None = None) -> torch.Tensor:
    """-L^CLIP, per token:  -min( r_t A_t, clip(r_t, 1 - eps, 1 + eps_high) A_t ).

    The min takes the pessimistic branch: once r_t has moved more than eps in the direction
    A_t rewards (r > 1 + eps with A > 0, r < 1 - eps with A < 0), the clipped branch is a
    constant and the token's gradient is zero. In the other direction nothing is clipped,
    so a bad step can always be undone.

    logp, old_logp: `[B, T]`; advantages `[B]`, `[B, 1]` or `[B, T]`; "mean" = mean over all
    unmasked tokens, "sum", "none" = `[B, T]` with masked entries 0. eps_high (None: = eps)
    sets the upper clip on its own ("clip-higher", DAPO).

    >>> ppo_clip_loss(torch.log(torch.tensor([[0.5]])), torch.log(torch.tensor([[0.25]])), torch.tensor([1.0]))
    tensor(-1.2000)
    """
    ratio, advantages, m = _policy_inputs(logp, old_logp, advantages, mask)
    eps_high = eps if eps_high is None else eps_high
    check_positive(eps=eps, eps_high=eps_high)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - eps, 1 + eps_high) * advantages
    return masked_reduce(-torch.minimum(unclipped, clipped), m, reduction)


def clip_fraction(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                  mask: torch.Tensor | None = None, eps: float = 0.2, eps_high: float | None = None) -> torch.Tensor:
    """Fraction of unmasked tokens whose clipped branch is active, i.e. whose gradient
    `ppo_clip_loss` sets to zero: r > 1 + eps_high with A > 0, or r < 1 - eps with A < 0
    (eps_high None: = eps).

    (Some libraries count |r - 1| > eps instead, which also counts tokens that moved the
    wrong way and still get a gradient.)
    """
    ratio, advantages, m = _policy_inputs(logp, old_logp, advantages, mask)
    eps_high = eps if eps_high is None else eps_high
    active = ((ratio > 1 + eps_high) & (advantages > 0)) | ((ratio < 1 - eps) & (advantages < 0))
    return masked_mean(active.float(), m)


def approx_kl(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sample estimate of KL(pi_old || pi_theta) per token, from tokens drawn from pi_old:

        k3 = (r - 1) - log r,   r = pi_theta / pi_old   (>= 0, unbiased since E_old[r] = 1)

    averaged over unmasked tokens: the "approx_kl" PPO implementations log to watch how far
    one round of updates moved the policy. (It is `kl.k3(old_logp, logp)`: the roles of
    sampler and target are swapped relative to the drift KL.)
    """
    check_same_shape(logp=logp, old_logp=old_logp)
    m = check_mask(mask, logp, "logp")
    return masked_mean(k3(old_logp.detach(), logp.detach()), m)


def trust_region_kl(old_logits: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The trust-region KL of PPO-KLPEN at every state, exactly, from the full next-token
    distributions:

        KL[pi_old(. | s_t) || pi_theta(. | s_t)] = sum_a pi_old(a | s_t) (log pi_old(a | s_t) - log pi_theta(a | s_t))

    This is the *forward* KL with pi_old first: pi_old is fixed, pi_theta is optimised, so
    pi_theta is pushed to keep probability wherever pi_old had it.

    old_logits, logits: `[B, T, V]` (logits, any scale: they are normalised here); mask `[B, T]`.
    Returns `[B, T]` (>= 0), 0 at masked positions; differentiable through `logits`.
    """
    check_same_shape(old_logits=old_logits, logits=logits)
    check_finite(old_logits=old_logits, logits=logits)
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    m = check_mask(mask, logits[..., 0], "logits[..., 0]")
    kl = kl_divergence(old_logits.float(), logits.float())
    return torch.where(m.bool(), kl, torch.zeros_like(kl))


def ppo_klpen_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, kl: torch.Tensor,
                   beta: float, mask: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """-L^KLPEN, per token:  -( r_t A_t - beta * KL[pi_old(. | s_t) || pi_theta(. | s_t)] ).

    No clipping: the penalty alone keeps the update near pi_old, and `AdaptiveKLController`
    tunes beta so that the measured KL stays near a target.

    kl: `[B, T]` per-token KL, e.g. `trust_region_kl(old_logits, logits, mask)` (differentiable).
    Other arguments as in `ppo_clip_loss`.

    >>> ppo_klpen_loss(torch.tensor([[-1.0]]), torch.tensor([[-1.0]]), torch.tensor([2.0]), torch.tensor([[0.5]]), beta=1.0)
    tensor(-1.5000)
    """
    ratio, advantages, m = _policy_inputs(logp, old_logp, advantages, mask)
    check_same_shape(logp=logp, kl=kl)
    check_finite(kl=kl)
    check_positive(beta=beta)
    return masked_reduce(-(ratio * advantages - beta * kl), m, reduction)


class AdaptiveKLController:
    """PPO-KLPEN's rule for beta (Schulman et al. 2017, Sec. 4), applied after each round of
    policy updates with d = the KL the round produced:

        d < target / 1.5  ->  beta / 2      (too timid: loosen)
        d > target * 1.5  ->  beta * 2      (too far: tighten)
        otherwise         ->  beta unchanged

    >>> c = AdaptiveKLController(beta=1.0, target=0.01)
    >>> c.update(0.001), c.update(0.1), c.update(0.01)
    (0.5, 1.0, 1.0)
    """

    def __init__(self, beta: float, target: float):
        check_positive(beta=beta, target=target)
        self.beta, self.target = float(beta), float(target)

    def update(self, kl: float) -> float:
        kl = float(kl)
        if not kl == kl:  # NaN: better to stop loudly than to halve or double blindly
            raise ValueError("kl is NaN")
        if kl < self.target / 1.5:
            self.beta /= 2
        elif kl > self.target * 1.5:
            self.beta *= 2
        return self.beta


def shaped_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor | None, beta: float,
                   mask: torch.Tensor | None = None, estimator: str = "k1") -> torch.Tensor:
    """Per-token RLHF rewards with the drift-KL penalty in the reward:

        r_t = -beta * log( pi(a_t | s_t) / pi_ref(a_t | s_t) )  +  [t is the last token] * R(x, y)

    The per-token log-ratio is the k1 estimate of KL(pi || pi_ref); summed over the sequence
    it is log pi(y|x) / pi_ref(y|x), so the return from the first token is
    R - beta * log(pi(y|x) / pi_ref(y|x)). Pass the sampling policy's `old_logp` (detached):
    the penalty is a reward, not a term to differentiate.

    scores: `[B]` (reward-model or true reward of each completion); logp, ref_logp, mask:
    `[B, T]`. beta = 0 (ref_logp may then be None) gives the score alone at the last token.
    `estimator` ("k1", the default and RLHF's choice; "k2"; "k3") picks the per-token estimate
    (`kl.kl_penalty_rewards`, which applies the penalty; chapter 06 shows why k3 here is biased).
    Returns `[B, T]`, 0 at masked positions. "Last token" is each row's last unmasked position
    (the EOS of a finished completion).

    >>> shaped_rewards(torch.tensor([2.0]), torch.tensor([[-1.0, -0.5, 0.0]]), torch.tensor([[-1.5, -0.5, 0.0]]),
    ...                beta=0.1, mask=torch.tensor([[1, 1, 0]]))
    tensor([[-0.0500,  2.0000,  0.0000]])
    """
    check_nonnegative(beta=beta)
    if scores.dim() != 1 or scores.shape[0] != logp.shape[0]:
        raise ValueError(f"scores must be [B] with B = {logp.shape[0]} (logp's rows), got shape {tuple(scores.shape)}")
    check_finite(scores=scores, logp=logp)
    m = check_mask(mask, logp, "logp")
    rewards = last_token_rewards(scores, m).to(logp.dtype)
    if beta > 0:
        if ref_logp is None:
            raise ValueError("ref_logp is None but beta > 0: the drift penalty needs pi_ref's log-probs")
        check_same_shape(logp=logp, ref_logp=ref_logp)
        rewards = kl_penalty_rewards(rewards, logp, ref_logp, beta, m, estimator)
    return torch.where(m.bool(), rewards, torch.zeros_like(rewards))
