"""The on-policy algorithms of chapters 02-07, behind the one seam `train.on_policy` calls.

The loop owns the round: it samples, scores, runs the reference model, keeps the optimizer,
clips gradients, logs and calls back. An algorithm owns the maths, through this protocol
(every member but `loss` has a do-nothing default in `Algorithm`):

    parameters()                               extra trainable parameters (PPO's critic): the loop
                                               adds them to the optimizer and clips them apart
    needs_reference                            the loop runs pi_ref (and refuses to start without it)
    needs_logits                               the loop keeps the full `[B, T, V]` logits (exact KLs)
    prepare(rollout) -> (state, metrics)       once per round, under no_grad: advantages and the like
    loss(logp, rollout, state, logits) -> (loss, metrics)     every inner step
    end_of_round(policy, rollout, history)     after the round's updates (PPO-KLPEN's beta rule)

`rollout.old_logp` is the first inner step's `logp`, detached: the policy that sampled is the
policy before its first update, so no separate forward pass is needed. Metrics are numbers or
0-dim tensors; the loop logs `prepare`'s once per round and `loss`'s averaged over the inner steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from rlbook.advantages import gae, group_advantages, last_token_rewards, whiten
from rlbook.checks import check_choice, check_nonnegative, check_positive, check_unit_interval
from rlbook.grpo import AGGREGATIONS, grpo_loss
from rlbook.kl import ESTIMATORS, PLACEMENTS, k3, kl_divergence, kl_penalised_rewards, kl_penalty_loss, sequence_kl
from rlbook.lm import Batch, completion_logits
from rlbook.masked import masked_mean, masked_sum
from rlbook.policy_gradient import BASELINES, WEIGHTS, reinforce_loss, weights
from rlbook.ppo import (AdaptiveKLController, approx_kl, clip_fraction, ppo_clip_loss, ppo_klpen_loss,
                        shaped_rewards, trust_region_kl)
from rlbook.value import explained_variance, value_loss, values


@dataclass
class Rollout:
    """One round of samples and what was measured on them before the update.

    batch: the sampled `Batch` (G rows per prompt, group after group); rewards `[B]`: what the
    algorithm maximises (the world's true reward, or a learned reward model's score);
    old_logp `[B, T]`: log pi_old, the sampling policy; ref_logp `[B, T]` under pi_ref (None
    when the algorithm needs no reference); true_rewards `[B]` (= rewards when None).
    """

    batch: Batch
    rewards: torch.Tensor
    old_logp: torch.Tensor
    ref_logp: torch.Tensor | None = None
    group_size: int = 1
    true_rewards: torch.Tensor | None = None
    old_logits: torch.Tensor | None = None
    """[B, T, V] next-token logits under pi_old (only when the algorithm needs_logits)."""
    ref_logits: torch.Tensor | None = None
    """[B, T, V] under pi_ref (only when the algorithm needs_logits and a reference)."""

    @property
    def mask(self) -> torch.Tensor:
        return self.batch.completion_mask


class Algorithm:
    """Do-nothing defaults of the protocol; subclasses implement `loss` (and usually `prepare`)."""

    needs_reference: bool = False
    needs_logits: bool = False

    def parameters(self):
        return ()

    def prepare(self, rollout: Rollout) -> tuple[dict, dict]:
        return {}, {}

    def loss(self, logp: torch.Tensor, rollout: Rollout, state: dict, logits: torch.Tensor | None = None):
        raise NotImplementedError

    def end_of_round(self, policy, rollout: Rollout, history: dict) -> None:
        pass


def _extra_metrics(fn: Callable | None, rollout: Rollout) -> dict:
    return {} if fn is None else {k: float(v) for k, v in fn(rollout).items()}


def _drift_kl(rollout: Rollout) -> dict:
    """k1 estimate of the sequence-level KL(pi_old || pi_ref) of the round's samples."""
    if rollout.ref_logp is None:
        return {}
    return {"drift_kl": sequence_kl(rollout.old_logp, rollout.ref_logp, rollout.mask)}


# ---------------------------------------------------------------- REINFORCE (chapter 02)

@dataclass
class REINFORCE(Algorithm):
    """REINFORCE: per-token rewards r `[B, T]` (`token_rewards(rollout)`, or the sequence
    reward at each row's last token), weights Phi = `policy_gradient.weights(r, kind, baseline,
    group_size=G)`, loss `reinforce_loss(logp, Phi, mask, reduction)`; with the default
    "sequence" reduction one step follows -1/N sum_i sum_t Phi_it log pi(a_it | s_it).
    Logs "phi_mean" and "phi_std" (the spread of the weights over tokens)."""

    kind: str = "total"
    """"total" (Phi_t = R) or "rewards_to_go" (Phi_t = sum_{k >= t} gamma^(k-t) r_k)."""
    baseline: str | None = None
    """None, "mean" (batch), "group_mean" (per prompt) or "rloo" (leave-one-out per prompt)."""
    gamma: float = 1.0
    """Discount of the rewards-to-go."""
    token_rewards: Callable | None = None
    """rollout -> per-token rewards `[B, T]`; None: rollout.rewards at each row's last token."""
    reduction: str = "sequence"
    """How `reinforce_loss` reduces (see there); "sequence" is the seed's estimator."""

    def __post_init__(self):
        check_choice("kind", self.kind, WEIGHTS)
        check_choice("baseline", self.baseline, BASELINES)
        check_choice("reduction", self.reduction, ("mean", "sum", "sequence"))
        check_unit_interval(gamma=self.gamma)

    def rewards(self, rollout: Rollout) -> torch.Tensor:
        """Per-token rewards `[B, T]` of a rollout."""
        if self.token_rewards is None:
            return last_token_rewards(rollout.rewards, rollout.mask).to(rollout.old_logp.dtype)
        r = self.token_rewards(rollout)
        if r.shape != rollout.mask.shape:
            raise ValueError(f"token_rewards returned shape {tuple(r.shape)}; expected {tuple(rollout.mask.shape)}")
        return r.to(rollout.old_logp.dtype)

    def phi(self, rollout: Rollout) -> torch.Tensor:
        """The weights Phi_t `[B, T]` of a rollout."""
        return weights(self.rewards(rollout), self.kind, self.baseline, rollout.mask, rollout.group_size, self.gamma)

    def prepare(self, rollout):
        phi = self.phi(rollout)
        tokens = phi[rollout.mask.bool()]
        return {"phi": phi}, {"phi_mean": tokens.mean(), "phi_std": tokens.std() if tokens.numel() > 1 else 0.0}

    def loss(self, logp, rollout, state, logits=None):
        return reinforce_loss(logp, state["phi"], rollout.mask, self.reduction), {}


# ---------------------------------------------------------------- a drift-KL penalty in either placement (05-06)

@dataclass
class KLPlacement(Algorithm):
    """REINFORCE with a drift-KL penalty placed in the reward or in the loss. Per sequence i:

        placement="reward":  R'_i = R_i - beta * sum_t stopgrad(k_it)           (kl_penalised_rewards)
                             loss = -mean_i A_i sum_t log pi(a_it|s_it)
        placement="loss":    R'_i = R_i
                             loss = -mean_i A_i sum_t log pi(a_it|s_it) + beta * mean_i sum_t k_it   (kl_penalty_loss)

    with A_i = R'_i - mean of its group (a group-mean baseline, `advantages.group_advantages`
    with scale="none"). Always runs the reference, so that a beta = 0 baseline is measured too:
    logs "k1_kl" (the k1 estimate of the sequence KL(pi_old || pi_ref)) and, with `exact_kl`,
    "exact_kl": mean over sequences of sum_t KL[pi_old(.|s_t) || pi_ref(.|s_t)] from the full
    next-token distributions (an unbiased estimate of the sequence-level KL).
    """

    estimator: str = "k1"
    """"k1", "k2" or "k3"."""
    placement: str = "reward"
    """"reward" (value detached, subtracted from the reward) or "loss" (differentiated)."""
    beta: float = 0.1
    """Penalty coefficient (0: no penalty)."""
    exact_kl: bool = True
    """Keep the full logits to log the exact KL (cheap for the book's vocabularies)."""

    needs_reference = True

    def __post_init__(self):
        check_choice("estimator", self.estimator, ESTIMATORS)
        check_choice("placement", self.placement, PLACEMENTS)
        check_nonnegative(beta=self.beta)

    @property
    def needs_logits(self) -> bool:
        return self.exact_kl

    def prepare(self, rollout):
        mask = rollout.mask
        beta_in_reward = self.beta if self.placement == "reward" else 0.0
        returns = kl_penalised_rewards(rollout.rewards, rollout.old_logp, rollout.ref_logp, beta_in_reward, mask,
                                       self.estimator)
        metrics = {"k1_kl": sequence_kl(rollout.old_logp, rollout.ref_logp, mask)}
        if rollout.old_logits is not None and rollout.ref_logits is not None:
            per_state = kl_divergence(rollout.old_logits, rollout.ref_logits)
            metrics["exact_kl"] = masked_sum(per_state, mask, dim=1).mean()
        return {"advantages": group_advantages(returns, rollout.group_size, scale="none")}, metrics

    def loss(self, logp, rollout, state, logits=None):
        mask = rollout.mask
        loss = -(state["advantages"] * masked_sum(logp, mask, dim=1)).mean()
        if self.placement == "loss" and self.beta > 0:
            loss = loss + kl_penalty_loss(logp, rollout.ref_logp, self.beta, mask, self.estimator)
        return loss, {}


# ---------------------------------------------------------------- PPO (chapter 04)

@dataclass
class PPO(Algorithm):
    """PPO for language models, with a critic and a drift-KL penalty in the reward.

    Once per round (`prepare`):
      rewards_t  = shaped_rewards(R, old_logp, ref_logp, drift_beta)   R = rollout.rewards (e.g. a reward model)
      V_old      = values(critic, batch)                                the critic before this round
      A, returns = gae(rewards, V_old, gamma, lam); A whitened over the batch's tokens
    Every inner step (PPO epoch) on the same samples:
      loss = ppo_clip_loss (variant="clip") or ppo_klpen_loss with the exact trust-region KL
             (variant="klpen")  +  vf_coef * value_loss(values(critic), V_old, returns, value_clip)
    After the round (`end_of_round`): with variant="klpen" or `log_kl_old_new`, the exact
    KL(pi_old || pi_theta) the round's updates produced is logged as "kl_old_new"; for
    "klpen" it feeds the AdaptiveKLController, and the beta the round used is logged as "beta".

    The critic's forward in `prepare` keeps its graph, so the first inner step reuses it
    instead of running the critic again on the same batch.
    """

    critic: torch.nn.Module
    variant: str = "clip"
    """"clip" (PPO-CLIP) or "klpen" (PPO-KLPEN)."""
    eps: float = 0.2
    """Clip range of the ratio (PPO-CLIP)."""
    kl_controller: AdaptiveKLController | None = None
    """beta and target of PPO-KLPEN's trust-region penalty (required for "klpen")."""
    drift_beta: float = 0.1
    """Coefficient of the drift-KL penalty log(pi/pi_ref) in the per-token reward (0 = none, no reference)."""
    gamma: float = 1.0
    """Discount (1: an episode is one short completion)."""
    lam: float = 0.95
    """GAE lambda."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    value_clip: float | None = 0.2
    """Clip range of the value update (None: plain squared error)."""
    log_kl_old_new: bool = False
    """Also measure the round's exact KL(pi_old || pi_theta) with PPO-CLIP (one more forward per round)."""
    rollout_metrics: Callable | None = None
    """Optional rollout -> {name: number}, logged once per round (e.g. a world's grammaticality)."""

    def __post_init__(self):
        check_unit_interval(gamma=self.gamma, lam=self.lam)
        check_positive(eps=self.eps)
        check_nonnegative(drift_beta=self.drift_beta, vf_coef=self.vf_coef)
        if self.value_clip is not None:
            check_positive(value_clip=self.value_clip)
        check_choice("variant", self.variant, ("clip", "klpen"))
        if self.variant == "klpen" and self.kl_controller is None:
            raise ValueError("kl_controller: variant='klpen' needs an AdaptiveKLController")

    @property
    def needs_reference(self) -> bool:
        return self.drift_beta > 0

    @property
    def needs_logits(self) -> bool:
        return self.variant == "klpen" or self.log_kl_old_new

    def parameters(self):
        return self.critic.parameters()

    def prepare(self, rollout):
        mask = rollout.mask
        rewards = shaped_rewards(rollout.rewards, rollout.old_logp, rollout.ref_logp, self.drift_beta, mask)
        with torch.enable_grad():
            fresh_values = values(self.critic, rollout.batch)
        old_values = fresh_values.detach()
        advantages, returns = gae(rewards, old_values, self.gamma, self.lam, mask)
        state = dict(fresh_values=fresh_values, old_values=old_values, advantages=whiten(advantages, mask),
                     returns=returns)
        metrics = {**_drift_kl(rollout), "explained_variance": explained_variance(old_values, returns, mask),
                   **_extra_metrics(self.rollout_metrics, rollout)}
        return state, metrics

    def loss(self, logp, rollout, state, logits=None):
        mask, old_logp, adv = rollout.mask, rollout.old_logp, state["advantages"]
        metrics = {}
        if self.variant == "clip":
            policy_loss = ppo_clip_loss(logp, old_logp, adv, mask, eps=self.eps)
        else:
            kl = trust_region_kl(rollout.old_logits, logits, mask)
            policy_loss = ppo_klpen_loss(logp, old_logp, adv, kl, self.kl_controller.beta, mask)
            metrics["trust_region_kl"] = masked_mean(kl.detach(), mask)
        new_values = state.pop("fresh_values", None)  # the first step's critic forward came from prepare
        if new_values is None:
            new_values = values(self.critic, rollout.batch)
        v_loss = value_loss(new_values, state["old_values"], state["returns"], mask, clip_eps=self.value_clip)
        metrics.update(policy_loss=policy_loss.detach(), value_loss=v_loss.detach(),
                       clip_frac=clip_fraction(logp.detach(), old_logp, adv, mask, self.eps),
                       approx_kl=approx_kl(logp, old_logp, mask))
        return policy_loss + self.vf_coef * v_loss, metrics

    @torch.no_grad()
    def end_of_round(self, policy, rollout, history):
        if rollout.old_logits is None:
            return
        kl = masked_mean(trust_region_kl(rollout.old_logits, completion_logits(policy, rollout.batch), rollout.mask),
                         rollout.mask).item()
        history["kl_old_new"].append(kl)
        if self.kl_controller is not None:
            history["beta"].append(self.kl_controller.beta)  # the beta this round used
            self.kl_controller.update(kl)


# ---------------------------------------------------------------- GRPO (chapter 07)

@dataclass
class GRPO(Algorithm):
    """GRPO, with G = config.group_size samples per prompt and no critic.

    Once per round (`prepare`):
      R'  = R                                                   kl_in="loss"
          = R - beta * sum_t k(old_logp, ref_logp)               kl_in="reward" (`kl_penalised_rewards`)
      A   = group_advantages(R', G, scale)
    Every inner step on the same samples (old log-probs kept, so the ratio leaves 1):
      loss = grpo_loss(logp, old_logp, ref_logp, A, mask, eps, beta (0 if kl_in="reward"), ...)

    With kl_in="reward" and scale="std", a group whose task rewards all tie has advantages
    -(K_i - mean K) / std K with K_i = sum_t k_it: beta cancels, so in such groups the penalty
    acts at full strength whatever beta is. scale="none" keeps beta's meaning.
    """

    beta: float = 0.04
    """Drift-KL coefficient (0: no reference model)."""
    eps: float = 0.2
    """Lower clip of the ratio (and upper, unless eps_high is set)."""
    eps_high: float | None = None
    """Upper clip (DAPO's clip-higher uses 0.28 with eps = 0.2); None: = eps."""
    aggregation: str = "grpo"
    """"grpo", "token" (DAPO) or "dr_grpo": see `grpo.aggregation_weights`."""
    scale: str | None = None
    """Advantage scaling: "std" (GRPO) or "none" (Dr. GRPO); None: "none" for aggregation
    "dr_grpo", else "std"."""
    kl_in: str = "loss"
    """"loss" (GRPO: beta * k differentiated) or "reward" (beta * sum_t k subtracted from R)."""
    kl_estimator: str | None = None
    """"k1", "k2" or "k3"; None: "k3" in the loss (GRPO's), "k1" in the reward (RLHF's)."""
    max_length: int | None = None
    """Dr. GRPO's constant L (None: the width of each batch's completions, which changes when no
    answer uses the whole budget; pass the world's max_new_tokens for a true constant)."""
    rollout_metrics: Callable | None = None
    """Optional rollout -> {name: number}, logged once per round."""

    def __post_init__(self):
        check_positive(eps=self.eps)
        if self.eps_high is not None:
            check_positive(eps_high=self.eps_high)
        check_nonnegative(beta=self.beta)
        check_choice("aggregation", self.aggregation, AGGREGATIONS)
        if self.scale is None:
            self.scale = "none" if self.aggregation == "dr_grpo" else "std"
        check_choice("scale", self.scale, ("std", "none"))
        check_choice("kl_in", self.kl_in, ("loss", "reward"))
        if self.kl_estimator is None:
            self.kl_estimator = "k3" if self.kl_in == "loss" else "k1"
        check_choice("kl_estimator", self.kl_estimator, ESTIMATORS)

    @property
    def needs_reference(self) -> bool:
        return self.beta > 0

    def prepare(self, rollout):
        mask, rewards = rollout.mask, rollout.rewards
        if self.kl_in == "reward":
            rewards = kl_penalised_rewards(rewards, rollout.old_logp, rollout.ref_logp, self.beta, mask,
                                           self.kl_estimator)
        groups = rollout.rewards.view(-1, rollout.group_size)
        metrics = {"zero_adv_groups": (groups == groups[:, :1]).all(1).float().mean(), **_drift_kl(rollout),
                   **_extra_metrics(self.rollout_metrics, rollout)}
        return {"advantages": group_advantages(rewards, rollout.group_size, self.scale)}, metrics

    def loss(self, logp, rollout, state, logits=None):
        mask, old_logp, adv = rollout.mask, rollout.old_logp, state["advantages"]
        beta = self.beta if self.kl_in == "loss" else 0.0
        loss = grpo_loss(logp, old_logp, rollout.ref_logp, adv, mask, eps=self.eps, beta=beta,
                         kl_estimator=self.kl_estimator, aggregation=self.aggregation, eps_high=self.eps_high,
                         max_length=self.max_length)
        metrics = {"policy_loss": loss.detach(),
                   "clip_frac": clip_fraction(logp.detach(), old_logp, adv, mask, self.eps, self.eps_high),
                   "approx_kl": approx_kl(logp, old_logp, mask)}
        if rollout.ref_logp is not None:
            metrics["k3_per_token"] = masked_mean(k3(logp.detach(), rollout.ref_logp), mask)
        return loss, metrics
