"""The objective J, the log-derivative (score-function) trick, and REINFORCE.

The seed's derivation, one function per line:

    J(theta)      = E_{tau ~ pi_theta}[R(tau)]                              `objective`
    grad J        = sum_tau grad P(tau | theta) R(tau)                     `gradient_of_probabilities`
                  = sum_tau P(tau | theta) grad log P(tau | theta) R(tau)  `log_derivative_form`
                  = E_tau[grad log P(tau | theta) R(tau)]
    log P(tau)    = sum_t log pi_theta(a_t | s_t)                           `sequence_logprob`
    grad J        = E_tau[sum_t grad log pi_theta(a_t | s_t) Phi_t]
                 ~= 1/N sum_i sum_t grad log pi_theta(a_it | s_it) Phi_it   `score_function_gradient`

The first three need every trajectory and its probability (an `exact.TabularPolicy`); the
sampled estimate works for any model that gives per-token log-probs `logp` `[B, T]`.

The weights Phi_t (`[B, T]`, from per-token rewards `[B, T]`): `total_reward` (REINFORCE,
Phi_t = R(tau)), rewards-to-go (`advantages.discounted_returns`), and baselines subtracted
from either: `mean_baseline` (the batch or group mean) and `leave_one_out_baseline` (RLOO).
`weights` picks among them by name; `reinforce_loss` turns weights into a loss and
`algorithms.REINFORCE` plugs the whole thing into `train.on_policy`.
"""

from __future__ import annotations

import torch

from rlbook.advantages import discounted_returns, per_token
from rlbook.checks import check_finite, check_log_probs, check_mask
from rlbook.exact import TabularPolicy, flat_grad, token_score_gradients
from rlbook.masked import masked_reduce, masked_sum

# ---------------------------------------------------------------- the derivation, exactly


def objective(policy: TabularPolicy, returns: torch.Tensor) -> torch.Tensor:
    """J(theta) = E_{tau ~ pi_theta}[R(tau)] = sum_tau P(tau | theta) R(tau), exactly.

    returns: `[K]`, R of each of the K sequences in `policy.sequences()` order. A scalar,
    differentiable in the policy's logits.

    >>> pi = TabularPolicy(vocab_size=2, length=1, logits=torch.zeros(1, 2))
    >>> objective(pi, torch.tensor([0.0, 1.0])).item()
    0.5
    """
    check_finite(returns=returns)
    return policy.expectation(returns.to(policy.logits.dtype))


def gradient_of_probabilities(policy: TabularPolicy, returns: torch.Tensor) -> torch.Tensor:
    """grad J = sum_tau grad_theta P(tau | theta) * R(tau): the gradient moved inside the sum.

    Each grad P(tau) is taken on its own (one backward pass per sequence), so this is the
    seed's second line literally; returns `[P]` (P = number of logits).
    """
    check_finite(returns=returns)
    probs = policy.probs()
    if returns.shape != probs.shape:
        raise ValueError(f"returns must have shape {tuple(probs.shape)}, got {tuple(returns.shape)}")
    grads = torch.stack([flat_grad(p, policy.logits, retain_graph=True) for p in probs])
    return (grads * returns.to(grads.dtype).unsqueeze(1)).sum(0)


def log_derivative_form(policy: TabularPolicy, returns: torch.Tensor) -> torch.Tensor:
    """grad J = sum_tau P(tau | theta) * grad_theta log P(tau | theta) * R(tau), using
    grad P = P grad log P (the log-derivative trick): an expectation under pi_theta.

    grad log P(tau) is the sum of the per-token scores grad log pi(a_t | s_t). Returns `[P]`.
    """
    check_finite(returns=returns)
    seqs = policy.sequences()
    if returns.shape != (len(seqs),):
        raise ValueError(f"returns must have shape {(len(seqs),)}, got {tuple(returns.shape)}")
    sequence_scores = token_score_gradients(policy, seqs).sum(1)          # [K, P]
    with torch.no_grad():
        probs = policy.probs()
    return (probs.unsqueeze(1) * sequence_scores * returns.to(probs.dtype).unsqueeze(1)).sum(0)


# ---------------------------------------------------------------- the sampled estimator


def sequence_logprob(logp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """log P(tau | theta) = sum_t log pi_theta(a_t | s_t): `[B, T]` -> `[B]`.

    >>> sequence_logprob(torch.log(torch.tensor([[0.5, 0.5, 0.9]])), torch.tensor([[1, 1, 0]])).exp()
    tensor([0.2500])
    """
    check_log_probs(logp=logp)
    return masked_sum(logp, check_mask(mask, logp, "logp"), dim=1)


def reinforce_loss(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor | None = None,
                   reduction: str = "mean") -> torch.Tensor:
    """The REINFORCE loss -A_t * log pi_theta(a_t | s_t), per token; the weights are constants.

    Its gradient is minus the score-function estimate of grad J with Phi_t = A_t.
    logp: `[B, T]` (with grad); advantages: `[B]` (one weight per sequence), `[B, 1]` or
    `[B, T]` (per token), detached here; mask: `[B, T]`.
    reduction: "mean" over all unmasked tokens (torch's convention, as `ppo.ppo_clip_loss`);
    "sequence": sum over each sequence's tokens, mean over sequences -- the seed's
    1/N sum_i sum_t, whose gradient is exactly -(score-function estimate); "sum"; "none"
    (`[B, T]`, masked entries 0).

    >>> reinforce_loss(torch.log(torch.tensor([[0.5, 0.25]])), torch.tensor([2.0]), reduction="none")
    tensor([[1.3863, 2.7726]])
    """
    check_log_probs(logp=logp)
    check_finite(advantages=advantages)
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T], got shape {tuple(logp.shape)}")
    m = check_mask(mask, logp, "logp")
    terms = -per_token(advantages.detach().to(logp.dtype), logp) * logp
    if reduction == "sequence":
        return masked_sum(terms, m) / logp.shape[0]
    return masked_reduce(terms, m, reduction)


def score_function_gradient(logp: torch.Tensor, weights: torch.Tensor, params, mask: torch.Tensor | None = None,
                            retain_graph: bool = False) -> torch.Tensor:
    """The sampled policy gradient, flattened over `params`:

        grad J ~= 1/N sum_i sum_t grad_theta log pi_theta(a_it | s_it) * Phi_it

    logp: `[N, T]` log-probs of N sampled sequences (with grad w.r.t. params); weights Phi:
    `[N]` or `[N, T]`. Returns `[P]`. (It is -grad of `reinforce_loss(..., "sequence")`.)
    """
    return -flat_grad(reinforce_loss(logp, weights, mask, reduction="sequence"), params, retain_graph=retain_graph)


# ---------------------------------------------------------------- the weights Phi_t


def total_reward(rewards: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """REINFORCE's weight Phi_t = R(tau) = sum_k r_k, the same for every token of a sequence.

    rewards: per-token rewards `[B, T]`; returns `[B, T]` (0 at masked positions).

    >>> total_reward(torch.tensor([[0.0, 1.0, 2.0]]))
    tensor([[3., 3., 3.]])
    """
    check_finite(rewards=rewards)
    m = check_mask(mask, rewards, "rewards")
    R = masked_sum(rewards, m, dim=1)
    return R.unsqueeze(1) * m


def _grouped(phi: torch.Tensor, mask: torch.Tensor | None, group_size: int | None):
    check_finite(phi=phi)
    if phi.dim() != 2:
        raise ValueError(f"phi must be [B, T], got shape {tuple(phi.shape)}")
    m = check_mask(mask, phi, "phi")
    B, T = phi.shape
    G = B if group_size is None else group_size
    if G < 1 or B % G != 0:
        raise ValueError(f"group_size={group_size} does not divide the batch of {B} rows")
    phi_m = torch.where(m.bool(), phi, torch.zeros_like(phi))
    return phi_m.view(B // G, G, T), m.view(B // G, G, T), m


def mean_baseline(phi: torch.Tensor, mask: torch.Tensor | None = None, group_size: int | None = None) -> torch.Tensor:
    """Phi_it - b_t with b_t the mean of Phi_jt over the rows j of the group (the whole batch
    when group_size is None) that have a token at position t.

    The baseline includes the sample itself, so with G rows the expected gradient shrinks
    by (G - 1)/G (`leave_one_out_baseline` avoids that). phi, mask: `[B, T]`.

    >>> mean_baseline(torch.tensor([[1.0], [3.0]]))
    tensor([[-1.],
            [ 1.]])
    """
    x, m, mask_flat = _grouped(phi, mask, group_size)
    b = x.sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
    return ((x - b) * m).reshape(phi.shape)


def leave_one_out_baseline(phi: torch.Tensor, group_size: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """RLOO: Phi_it - b_it with b_it the mean of Phi_jt over the *other* rows j of the group
    that have a token at position t (0 if there are none). b_it does not depend on sample i,
    so the expected gradient is unchanged. For one weight per sequence this is
    `advantages.rloo_advantages`, column by column. phi, mask: `[B, T]`.

    >>> leave_one_out_baseline(torch.tensor([[1.0], [3.0]]), group_size=2)
    tensor([[-2.],
            [ 2.]])
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for a leave-one-out baseline, got {group_size}")
    x, m, _ = _grouped(phi, mask, group_size)
    others = (x.sum(1, keepdim=True) - x) / (m.sum(1, keepdim=True) - m).clamp(min=1)
    return ((x - others) * m).reshape(phi.shape)


WEIGHTS = ("total", "rewards_to_go")
BASELINES = (None, "mean", "group_mean", "rloo")


def weights(rewards: torch.Tensor, kind: str = "total", baseline: str | None = None, mask: torch.Tensor | None = None,
            group_size: int | None = None, gamma: float = 1.0) -> torch.Tensor:
    """Phi_t from per-token rewards r `[B, T]`:

        kind="total":          Phi_t = R(tau) = sum_k r_k                 (REINFORCE)
        kind="rewards_to_go":  Phi_t = G_t = sum_{k >= t} gamma^(k-t) r_k  (`discounted_returns`)

    then minus a baseline: None; "mean" (the batch mean, `mean_baseline`); "group_mean" (the
    mean of the prompt's group of `group_size` samples); "rloo" (the mean of the other samples
    of the group, `leave_one_out_baseline`). For "total" the baseline averages the sequences'
    R; for "rewards_to_go" it averages G_t position by position, over the rows that reach t. Returns `[B, T]`, 0 at masked
    positions.

    >>> r = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    >>> weights(r, "rewards_to_go", baseline="rloo", group_size=2)
    tensor([[-1.,  1.],
            [ 1., -1.]])
    """
    if kind not in WEIGHTS:
        raise ValueError(f"kind must be one of {WEIGHTS}, got {kind!r}")
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if baseline in ("group_mean", "rloo") and group_size is None:
        raise ValueError(f"baseline={baseline!r} needs group_size")
    check_finite(rewards=rewards)
    m = check_mask(mask, rewards, "rewards")
    if kind == "total":
        # one weight per sequence: the baseline compares whole sequences, whatever their lengths
        phi, phi_mask = masked_sum(rewards, m, dim=1).unsqueeze(1), None
    else:
        phi, phi_mask = discounted_returns(rewards, gamma, m), m
    if baseline == "mean":
        phi = mean_baseline(phi, phi_mask)
    elif baseline == "group_mean":
        phi = mean_baseline(phi, phi_mask, group_size)
    elif baseline == "rloo":
        phi = leave_one_out_baseline(phi, group_size, phi_mask)
    if kind == "total":
        phi = phi * m
    return phi
