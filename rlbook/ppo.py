"""PPO (Schulman et al. 2017): the probability ratio, the clipped objective (PPO-CLIP), the
KL-penalised objective with its adaptive coefficient (PPO-KLPEN), and the drift-KL reward
shaping of RLHF that feeds both.

Per-token tensors are `[B, T]` with a `mask` (1 = completion token). `logp` is
log pi_theta(a_t | s_t) (with grad), `old_logp` the same tokens under pi_old, the policy that
sampled them. `advantages` are `[B]` (broadcast over tokens) or `[B, T]`. The losses are the
negated objectives (we minimise), averaged over all unmasked tokens.

`PPOLoss` puts the pieces together for `train.on_policy`: shaped rewards, the critic's
values, GAE, the policy loss and the clipped value loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from rlbook.advantages import gae, per_token, whiten
from rlbook.checks import (check_choice, check_finite, check_log_probs, check_mask, check_nonnegative,
                           check_positive, check_same_shape, check_unit_interval)
from rlbook.kl import k3, kl_divergence, kl_penalty_rewards, sequence_kl
from rlbook.lm import completion_logits
from rlbook.masked import masked_mean, masked_reduce
from rlbook.value import explained_variance, value_loss, values


def probability_ratio(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """r_t(theta) = pi_theta(a_t | s_t) / pi_old(a_t | s_t) = exp(logp - old_logp), per token.

    Computed from log-probs, so a token whose probability underflows in float32 still has a
    ratio. Masked positions (logp = old_logp = 0) give 1.

    >>> probability_ratio(torch.log(torch.tensor([0.3])), torch.log(torch.tensor([0.2])))
    tensor([1.5000])
    """
    check_same_shape(logp=logp, old_logp=old_logp)
    check_log_probs(logp=logp, old_logp=old_logp)
    return torch.exp(logp - old_logp)


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
    if (m.sum(1) == 0).any():
        raise ValueError("mask has a row with no completion token: there is no last token to reward")
    # the last unmasked position of each row: where the running count reaches the row's total
    last = (m.cumsum(1) == m.sum(1, keepdim=True)) & m.bool()
    rewards = last.to(logp.dtype) * scores.to(logp.dtype).unsqueeze(1)
    if beta > 0:
        if ref_logp is None:
            raise ValueError("ref_logp is None but beta > 0: the drift penalty needs pi_ref's log-probs")
        check_same_shape(logp=logp, ref_logp=ref_logp)
        rewards = kl_penalty_rewards(rewards, logp, ref_logp, beta, estimator, m)
    return torch.where(m.bool(), rewards, torch.zeros_like(rewards))


# ---------------------------------------------------------------- the full PPO loss for train.on_policy

@dataclass
class PPOLoss:
    """PPO for language models as `train.on_policy`'s loss_fn: call it as
    `on_policy(policy, tok, world, loss_fn=ppo_loss, ref=ref, extra_params=critic.parameters(),
    with_logits=True, callback=ppo_loss.end_of_round, ...)`.

    Once per rollout (the first inner step that sees it):
      rewards_t  = shaped_rewards(R, old_logp, ref_logp, drift_beta)   R = rollout.rewards (the reward model)
      V_old      = values(critic, batch)                                the critic before this round
      A, returns = gae(rewards, V_old, gamma, lam); A whitened over the batch's tokens
    Every inner step (PPO epoch) on the same samples:
      loss = ppo_clip_loss (variant="clip") or ppo_klpen_loss with the exact trust-region KL
             (variant="klpen")  +  vf_coef * value_loss(values(critic), V_old, returns, value_clip)

    `end_of_round` (the callback) measures the exact KL(pi_old || pi_theta) that the round's
    updates produced and, for "klpen", feeds it to the AdaptiveKLController.
    """

    critic: torch.nn.Module
    variant: str = "clip"
    """"clip" (PPO-CLIP) or "klpen" (PPO-KLPEN)."""
    eps: float = 0.2
    """Clip range of the ratio (PPO-CLIP)."""
    kl_controller: AdaptiveKLController | None = None
    """beta and target of PPO-KLPEN's trust-region penalty (required for "klpen")."""
    drift_beta: float = 0.1
    """Coefficient of the drift-KL penalty log(pi/pi_ref) in the per-token reward (0 = none)."""
    gamma: float = 1.0
    """Discount (1: an episode is one short completion)."""
    lam: float = 0.95
    """GAE lambda."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    value_clip: float | None = 0.2
    """Clip range of the value update (None: plain squared error)."""
    rollout_metrics: Callable | None = None
    """Optional rollout -> {name: number}, logged once per round (e.g. a world's grammaticality)."""
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        check_unit_interval(gamma=self.gamma, lam=self.lam)
        check_positive(eps=self.eps)
        check_nonnegative(drift_beta=self.drift_beta, vf_coef=self.vf_coef)
        check_choice("variant", self.variant, ("clip", "klpen"))
        if self.variant == "klpen" and self.kl_controller is None:
            raise ValueError("variant='klpen' needs a kl_controller (AdaptiveKLController)")

    def prepare(self, rollout) -> dict:
        """Rewards, old values, advantages and returns of a rollout (computed once, no grad)."""
        if self._cache.get("rollout") is rollout:
            return self._cache
        mask = rollout.mask
        with torch.no_grad():
            rewards = shaped_rewards(rollout.rewards, rollout.old_logp, rollout.ref_logp, self.drift_beta, mask)
            old_values = values(self.critic, rollout.batch)
            advantages, returns = gae(rewards, old_values, self.gamma, self.lam, mask)
            advantages = whiten(advantages, mask)
        metrics = {}
        if rollout.ref_logp is not None:
            metrics["drift_kl"] = sequence_kl(rollout.old_logp, rollout.ref_logp, mask).item()
        if self.rollout_metrics is not None:
            metrics.update({k: float(v) for k, v in self.rollout_metrics(rollout).items()})
        self._cache = dict(rollout=rollout, old_values=old_values, advantages=advantages, returns=returns,
                           metrics=metrics)
        return self._cache

    def __call__(self, logp: torch.Tensor, rollout, logits: torch.Tensor | None = None):
        c = self.prepare(rollout)
        mask, old_logp, adv = rollout.mask, rollout.old_logp, c["advantages"]
        metrics = dict(c["metrics"])
        if self.variant == "clip":
            policy_loss = ppo_clip_loss(logp, old_logp, adv, mask, eps=self.eps)
        else:
            if logits is None or rollout.old_logits is None:
                raise ValueError("PPO-KLPEN needs the full next-token logits: run on_policy(..., with_logits=True)")
            kl = trust_region_kl(rollout.old_logits, logits, mask)
            policy_loss = ppo_klpen_loss(logp, old_logp, adv, kl, self.kl_controller.beta, mask)
            metrics["trust_region_kl"] = masked_mean(kl.detach(), mask).item()
        new_values = values(self.critic, rollout.batch)
        v_loss = value_loss(new_values, c["old_values"], c["returns"], mask, clip_eps=self.value_clip)
        metrics.update(policy_loss=policy_loss.item(), value_loss=v_loss.item(),
                       clip_frac=clip_fraction(logp.detach(), old_logp, adv, mask, self.eps).item(),
                       approx_kl=approx_kl(logp, old_logp, mask).item(),
                       explained_variance=explained_variance(c["old_values"], c["returns"], mask))
        return policy_loss + self.vf_coef * v_loss, metrics

    @torch.no_grad()
    def end_of_round(self, iteration: int, policy, history: dict) -> None:
        """Callback for `on_policy`: log the exact KL(pi_old || pi_theta) of the round just
        finished ("kl_old_new") and, for PPO-KLPEN, update and log beta ("beta")."""
        rollout = self._cache.get("rollout")
        if rollout is None:
            return
        old_logits = rollout.old_logits
        if old_logits is None:
            return
        kl = masked_mean(trust_region_kl(old_logits, completion_logits(policy, rollout.batch), rollout.mask),
                         rollout.mask).item()
        history.setdefault("kl_old_new", []).append(kl)
        if self.kl_controller is not None:
            history.setdefault("beta", []).append(self.kl_controller.beta)  # the beta this round used
            self.kl_controller.update(kl)
