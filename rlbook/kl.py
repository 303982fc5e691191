"""KL divergence, exactly and by sampling.

The exact KL sums over a full next-token distribution; the estimators k1, k2, k3 (Schulman,
"Approximating KL divergence", 2020) need only the log-probs of the sampled tokens. All three
estimate the reverse KL(pi_theta || pi_ref) for tokens drawn from pi_theta. With the log-ratio
log r = log pi_ref(a|s) - log pi_theta(a|s):

    k1 = -log r                unbiased, high variance, negative for some samples
    k2 = (log r)^2 / 2         biased, low variance, >= 0
    k3 = (r - 1) - log r       unbiased, low variance, >= 0

The seed article writes k3 with pi_theta/pi_ref; that ratio is unbiased only for samples drawn
from pi_ref (chapter 06 shows the difference numerically).

An estimate enters training in one of two placements: in the reward (`kl_penalty_rewards`:
the value, detached, is subtracted from the per-token reward) or in the loss (`kl_penalty_loss`:
a differentiable term). `exact_kl_gradients` gives, by enumeration, the expected gradient of
every estimator x placement next to the true gradients of KL(pi||ref) and KL(ref||pi), for a
categorical policy or an `exact.TabularPolicy` over sequences; `algorithms.KLPlacement` trains a
tiny LM with either placement through `train.on_policy`.
"""

from __future__ import annotations

import torch

from rlbook.checks import check_choice, check_finite, check_log_probs, check_mask, check_nonnegative, check_same_shape
from rlbook.exact import TabularPolicy, cosine, flat_grad
from rlbook.masked import masked_sum

MAX_LOG_RATIO = 20.0
"""Cap on a log-ratio before exp (e^20 = 4.9e8): float32's exp overflows past ~88, and one
inf turns a whole gradient into NaN. Ratios this far from 1 mean the update has already failed."""


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Exact KL(p || q) = sum_x p(x) (log p(x) - log q(x)) over the last dim.

    p_logits, q_logits: `[..., V]` unnormalised logits (or log-probs). Returns `[...]`.
    Forward and reverse KL are the same function with the arguments swapped.

    >>> kl_divergence(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0]))
    tensor(0.)
    >>> round(kl_divergence(torch.tensor([1.0, 0.0]).log(), torch.tensor([0.5, 0.5]).log()).item(), 4)  # log 2
    0.6931
    """
    check_same_shape(p_logits=p_logits, q_logits=q_logits)
    logp = torch.log_softmax(p_logits, dim=-1)
    logq = torch.log_softmax(q_logits, dim=-1)
    check_finite(q_logits=logq)
    p = logp.exp()
    # 0 * log 0 = 0: where p(x) = 0 the term vanishes even if log p(x) = -inf
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def _log_ratio(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    check_same_shape(logp=logp, ref_logp=ref_logp)
    check_finite(logp=logp, ref_logp=ref_logp)
    return ref_logp - logp


def k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = -log r = log pi_theta(a|s) - log pi_ref(a|s), per sample; any shape.

    >>> k1(torch.tensor([-1.0]), torch.tensor([-2.0]))
    tensor([1.])
    """
    return -_log_ratio(logp, ref_logp)


def k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = (log r)^2 / 2, per sample; any shape.

    >>> k2(torch.tensor([-1.0]), torch.tensor([-2.0]))
    tensor([0.5000])
    """
    return 0.5 * _log_ratio(logp, ref_logp).square()


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = pi_ref(a|s) / pi_theta(a|s), per sample; any shape.

    expm1 keeps it accurate near r = 1 (where it is ~ (log r)^2 / 2) and >= 0 everywhere.
    log r is capped at `MAX_LOG_RATIO` (exact below it): past the cap k3 stays finite and
    passes no gradient, where exp would overflow float32 and make the gradient NaN.

    >>> k3(torch.tensor([-1.0]), torch.tensor([-1.0]))
    tensor([0.])
    >>> round(k3(torch.tensor([-1.0]), torch.tensor([-2.0])).item(), 4)  # e^-1 - 1 + 1
    0.3679
    """
    log_r = _log_ratio(logp, ref_logp).clamp(max=MAX_LOG_RATIO)
    return torch.expm1(log_r) - log_r


# ---------------------------------------------------------------- the two placements of a drift penalty

ESTIMATORS = {"k1": k1, "k2": k2, "k3": k3}
PLACEMENTS = ("reward", "loss")


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """The per-sample estimator `estimator` in {"k1", "k2", "k3"} of KL(pi_theta || pi_ref); any shape.

    >>> kl_estimate(torch.tensor([-1.0]), torch.tensor([-2.0]), "k2")
    tensor([0.5000])
    """
    check_choice("estimator", estimator, ESTIMATORS)
    if ref_logp is None:
        raise ValueError("ref_logp is None: a KL estimate needs the reference policy's log-probs")
    return ESTIMATORS[estimator](logp, ref_logp)


def kl_penalty_rewards(rewards: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, beta: float,
                       mask: torch.Tensor | None = None, estimator: str = "k1") -> torch.Tensor:
    """The drift penalty **in the reward**: r_t - beta * k(a_t), the estimate's *value* detached.

        r'_t = r_t - beta * stopgrad(k(log pi(a_t|s_t), log pi_ref(a_t|s_t)))

    The penalty reaches theta only through the policy gradient, as a (negative) reward
    multiplying grad log pi. With k1 this is RLHF's -beta log(pi/pi_ref) (`ppo.shaped_rewards`).
    rewards, logp, ref_logp, mask: `[B, T]` (or any equal shapes). Returns the same shape, 0 at masked positions.

    >>> kl_penalty_rewards(torch.tensor([[0.0, 1.0]]), torch.tensor([[-1.0, -1.0]]), torch.tensor([[-2.0, -1.0]]), beta=0.5)
    tensor([[-0.5000,  1.0000]])
    """
    check_nonnegative(beta=beta)
    check_same_shape(rewards=rewards, logp=logp)
    check_finite(rewards=rewards)
    m = check_mask(mask, logp, "logp")
    shaped = rewards - beta * kl_estimate(logp.detach(), ref_logp, estimator).detach()
    return torch.where(m.bool(), shaped, torch.zeros_like(shaped))


def kl_penalty_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float, mask: torch.Tensor | None = None,
                    estimator: str = "k3", reduction: str = "mean") -> torch.Tensor:
    """The drift penalty **in the loss** (GRPO's placement): a differentiable term to add to the loss,

        beta * sum_t k(log pi_theta(a_t|s_t), log pi_ref(a_t|s_t))     per sequence,

    summed over each sequence's tokens (the sequence-level KL is the sum of per-token ones) and,
    for reduction="mean", averaged over the B sequences; "none" returns the `[B]` per-sequence
    terms. Its gradient is E[sum_t grad k_t] with the samples held fixed, which is *not* the
    gradient of the KL for k1 or k3 (`exact_kl_gradients` shows which KL each one follows).
    logp (with grad), ref_logp, mask: `[B, T]`.

    >>> kl_penalty_loss(torch.tensor([[-1.0, -1.0]]), torch.tensor([[-2.0, -1.0]]), beta=0.5, estimator="k1")
    tensor(0.5000)
    """
    check_nonnegative(beta=beta)
    check_choice("reduction", reduction, ("mean", "none"))
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T], got shape {tuple(logp.shape)}")
    m = check_mask(mask, logp, "logp")
    per_sequence = beta * masked_sum(kl_estimate(logp, ref_logp, estimator), m, dim=1)
    return per_sequence.mean() if reduction == "mean" else per_sequence


# ---------------------------------------------------------------- exact expected gradients

def _as_policy(p, name: str) -> TabularPolicy:
    if isinstance(p, TabularPolicy):
        return p
    if isinstance(p, torch.Tensor) and p.dim() == 1:  # a categorical policy = a one-token sequence policy
        return TabularPolicy(vocab_size=p.shape[0], length=1, logits=p.detach().double().unsqueeze(0))
    raise ValueError(f"{name} must be a TabularPolicy or 1-D logits [V], got {type(p).__name__}")


def _enumerate_pair(policy, ref) -> tuple[TabularPolicy, torch.Tensor, torch.Tensor]:
    """(pi, log pi(a_t|s_t) `[N, T]` differentiable, log pi_ref(a_t|s_t) `[N, T]` without gradient)
    over every sequence of pi, for the exact gradients below."""
    pi, pi_ref = _as_policy(policy, "policy"), _as_policy(ref, "ref")
    if (pi.vocab_size, pi.length) != (pi_ref.vocab_size, pi_ref.length):
        raise ValueError("ref must have the same vocab_size and length as policy")
    seqs = pi.sequences()
    with torch.no_grad():
        ref_token_logp = pi_ref.token_logprobs(seqs)
    return pi, pi.token_logprobs(seqs), ref_token_logp


def kl_penalised_rewards(rewards: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor | None, beta: float,
                         mask: torch.Tensor | None = None, estimator: str = "k1") -> torch.Tensor:
    """The penalty in the reward at sequence level: each completion's reward minus beta times
    its summed per-token estimates (GRPO's "KL in the reward" option, chapter 06's runs),

        R'_i = R_i - beta * sum_t stopgrad(k_it)      (k1: R_i - beta * log pi(o_i|x) / pi_ref(o_i|x))

    the sum over tokens of `kl_penalty_rewards` with the reward R_i at the last token.
    rewards: `[B]`; logp (the sampling policy's, `old_logp`), ref_logp, mask: `[B, T]`. Returns `[B]`,
    detached. beta = 0 returns the rewards (ref_logp may then be None).

    >>> kl_penalised_rewards(torch.tensor([1.0]), torch.tensor([[-0.5, -1.0]]), torch.tensor([[-1.0, -2.0]]), 0.1)
    tensor([0.8500])
    """
    check_nonnegative(beta=beta)
    if rewards.dim() != 1 or rewards.shape[0] != logp.shape[0]:
        raise ValueError(f"rewards must be [B] with B = {logp.shape[0]} (logp's rows), got shape {tuple(rewards.shape)}")
    check_finite(rewards=rewards)
    if beta == 0:
        return rewards.detach()
    check_log_probs(logp=logp, ref_logp=ref_logp)
    penalties = kl_penalty_rewards(torch.zeros_like(logp), logp, ref_logp, beta, mask, estimator)
    return (rewards + masked_sum(penalties, mask, dim=1)).detach()


def sequence_kl(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over sequences of sum_t log(pi / pi_ref): the k1 estimate of the sequence-level
    drift KL(pi || pi_ref) from samples of pi. logp, ref_logp, mask: `[B, T]`; returns a scalar."""
    return masked_sum(k1(logp, ref_logp), mask, dim=1).mean()


def sequence_kl_per_state(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """sum_t KL[pi(. | s_t) || pi_ref(. | s_t)] along each sampled sequence, the per-state KLs
    exact from the full next-token distributions: `[B]`.

    By the chain rule its mean over sequences drawn from pi is an unbiased estimate of the
    sequence-level KL(pi || pi_ref) = E[sum_t log pi(a_t|s_t)/pi_ref(a_t|s_t)], with less
    variance than that k1 sum: at each visited state the next token is averaged over exactly
    instead of sampled. logits, ref_logits: `[B, T, V]`; mask `[B, T]`.

    >>> sequence_kl_per_state(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))
    tensor([0.])
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    check_finite(logits=logits)
    m = check_mask(mask, logits[..., 0], "logits[..., 0]")
    return masked_sum(kl_divergence(logits, ref_logits), m, dim=1)


def exact_kl_gradients(policy, ref) -> dict[str, torch.Tensor]:
    """Exact gradients (w.r.t. the policy's logits, flattened) of the two true KLs and the
    exact *expected* gradient of every estimator x placement, by enumerating every outcome.

    policy, ref: 1-D logits `[V]` (a categorical policy) or `exact.TabularPolicy` (a sequence
    policy; per-token estimates are summed over the sequence). With k_t = k(a_t | s_t):

        "KL(pi||ref)"  grad sum_tau P(tau) log P(tau)/P_ref(tau)              (reverse, the drift KL)
        "KL(ref||pi)"  grad sum_tau P_ref(tau) log P_ref(tau)/P(tau)          (forward)
        "kX/reward"    E_tau[ (sum_t k_t) grad log P(tau) ]                   (value detached, a reward)
        "kX/loss"      E_tau[ sum_t grad k_t ]                                (samples fixed, k differentiated)

    Returns {name: `[P]`} with P = the number of logits (V for a categorical policy).
    Identities (categorical, exactly): k1/reward = k2/loss = grad KL(pi||ref); k1/loss = 0;
    k3/loss = grad KL(ref||pi). At sequence level k2/loss and k3/loss lose these identities.
    """
    pi, token_logp, ref_token_logp = _enumerate_pair(policy, ref)
    logits = pi.logits
    ref_seq_logp = ref_token_logp.sum(-1)
    seq_logp = token_logp.sum(-1)
    p = seq_logp.exp()
    p_fixed = p.detach()
    out = {
        "KL(pi||ref)": flat_grad((p * (seq_logp - ref_seq_logp)).sum(), logits, retain_graph=True),
        "KL(ref||pi)": flat_grad((ref_seq_logp.exp() * (ref_seq_logp - seq_logp)).sum(), logits, retain_graph=True),
    }
    for name in ESTIMATORS:
        k = kl_estimate(token_logp, ref_token_logp, name).sum(-1)  # [N], per sequence
        reward_surrogate = (p_fixed * k.detach() * seq_logp).sum()  # E[k] as a reward: k * grad log P
        loss_surrogate = (p_fixed * k).sum()  # E[grad k] with the sampling distribution held fixed
        out[f"{name}/reward"] = flat_grad(reward_surrogate, logits, retain_graph=True)
        out[f"{name}/loss"] = flat_grad(loss_surrogate, logits, retain_graph=True)
    return out


def exact_ratio_weighted_gradient(policy, ref, estimator: str = "k3") -> torch.Tensor:
    """Exact expected gradient of an estimator in the loss multiplied by its token's ratio
    pi/pi_old, taken on-policy (pi_old = pi, so the ratio is 1 in value but differentiable):

        E_tau[ sum_t grad (k_t * pi(a_t|s_t) / stopgrad pi(a_t|s_t)) ] = E_tau[ sum_t (grad k_t + k_t grad log pi(a_t|s_t)) ]

    TRL's GRPOConfig(use_bias_correction_kl=True) does this to its k3. For one token it is the
    exact grad KL(pi||ref) (k_t is unbiased for the KL of its state); over a sequence it is
    E_tau[sum_t grad KL(pi(.|s_t) || ref(.|s_t))] with the states held fixed: the effect of a token
    on the KL of the states after it, which k1 in the reward keeps, is missing.
    policy, ref: as `exact_kl_gradients`. Returns `[P]`, the logits' gradient flattened.
    """
    pi, token_logp, ref_token_logp = _enumerate_pair(policy, ref)
    p_fixed = token_logp.sum(-1).exp().detach()
    ratio = torch.exp(token_logp - token_logp.detach())
    k = kl_estimate(token_logp, ref_token_logp, estimator)
    return flat_grad((p_fixed * (k * ratio).sum(-1)).sum(), pi.logits)


def gradient_table(policy, ref) -> list[dict]:
    """One row per estimator x placement: the norm of its exact expected gradient and its
    cosine with grad KL(pi||ref) and with grad KL(ref||pi) (`exact_kl_gradients`)."""
    g = exact_kl_gradients(policy, ref)
    rev, fwd = g["KL(pi||ref)"], g["KL(ref||pi)"]
    rows = []
    for e in ESTIMATORS:
        for pl in PLACEMENTS:
            v = g[f"{e}/{pl}"]
            zero = v.norm() <= 1e-12 * rev.norm()  # zero up to rounding: no direction to compare
            rows.append(dict(estimator=e, placement=pl, norm=0.0 if zero else v.norm().item(),
                             cos_reverse=float("nan") if zero else cosine(v, rev),
                             cos_forward=float("nan") if zero else cosine(v, fwd),
                             rel_error_reverse=((v - rev).norm() / rev.norm()).item()))
    return rows
