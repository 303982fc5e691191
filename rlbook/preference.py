"""DPO's relatives: IPO (bounded margin), KTO (unpaired feedback), SimPO (no reference).

Inputs are summed sequence log-probabilities `[B]` (sum over completion tokens of
`lm.completion_logprobs`), as for `dpo.dpo_loss`; IPO's length-normalised form and SimPO
also take the lengths |y|. Every loss returns the batch mean unless `reduction="none"`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rlbook.checks import check_finite, check_nonnegative, check_positive, check_same_shape, reduce


def _sequence_inputs(**tensors: torch.Tensor) -> None:
    check_same_shape(**tensors)
    check_finite(**tensors)
    for name, x in tensors.items():
        if x.dim() != 1:
            raise ValueError(f"{name} must be summed sequence log-probs of shape [B], got {tuple(x.shape)}")


def _lengths(like: torch.Tensor, like_name: str, **lengths: torch.Tensor) -> None:
    check_same_shape(**{like_name: like}, **lengths)
    for name, n in lengths.items():
        if not bool((n > 0).all()) or not bool(torch.isfinite(n.float()).all()):  # `> 0` also rejects NaN
            raise ValueError(f"{name} must hold positive token counts |y|")


def _scalar(name: str, value: float) -> None:
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value}")


def log_ratio_margin(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp) -> torch.Tensor:
    """h = log pi(y_w)/pi_ref(y_w) - log pi(y_l)/pi_ref(y_l): how much more the policy has
    raised the chosen answer than the rejected one, relative to the reference. `[B]`."""
    _sequence_inputs(chosen_logp=chosen_logp, rejected_logp=rejected_logp,
                     ref_chosen_logp=ref_chosen_logp, ref_rejected_logp=ref_rejected_logp)
    return (chosen_logp - ref_chosen_logp) - (rejected_logp - ref_rejected_logp)


# ---------------------------------------------------------------- IPO

def ipo_loss(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, beta: float = 0.1,
             chosen_len=None, rejected_len=None, reduction: str = "mean") -> torch.Tensor:
    """IPO (Azar et al. 2023, Eq. 17):  (h - 1/(2 beta))^2.

    A squared error around a target margin 1/(2 beta) instead of DPO's -log sigma(beta h),
    which keeps pushing h to infinity: once h reaches the target, the gradient is zero.
    Smaller beta means a larger target margin (weaker regularisation), as in DPO.

    With `chosen_len`, `rejected_len` (|y| per pair, [B]) each log-ratio is divided by its
    answer's token count first, h = log(pi/pi_ref)(y_w)/|y_w| - log(pi/pi_ref)(y_l)/|y_l|:
    TRL's DPOTrainer(loss_type="ipo") form. The seed's form sums over tokens.

    >>> ipo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), beta=0.5)
    tensor(0.)
    """
    check_positive(beta=beta)
    _sequence_inputs(chosen_logp=chosen_logp, rejected_logp=rejected_logp,
                     ref_chosen_logp=ref_chosen_logp, ref_rejected_logp=ref_rejected_logp)
    if (chosen_len is None) != (rejected_len is None):
        raise ValueError("give both chosen_len and rejected_len (length-normalised IPO) or neither")
    if chosen_len is None:
        h = log_ratio_margin(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    else:
        _lengths(chosen_logp, "chosen_logp", chosen_len=chosen_len, rejected_len=rejected_len)
        h = (chosen_logp - ref_chosen_logp) / chosen_len - (rejected_logp - ref_rejected_logp) / rejected_len
    return reduce((h - 1.0 / (2.0 * beta)) ** 2, reduction)


def ipo_noisy_margin(p: float, beta: float) -> float:
    """Where IPO's expected loss is lowest when the label y_w > y_l is right with
    probability p (and flipped otherwise):

        argmin_h  p (h - 1/(2 beta))^2 + (1 - p) (-h - 1/(2 beta))^2  =  (2p - 1) / (2 beta).

    p = 1 gives the target 1/(2 beta); p = 1/2 (no signal) gives 0. DPO's expected loss
    -p log sigma(beta h) - (1-p) log sigma(-beta h) is lowest at beta h = log(p/(1-p)).

    >>> ipo_noisy_margin(0.75, beta=0.5)
    0.5
    """
    check_positive(beta=beta)
    if not 0.0 <= p <= 1.0:  # also rejects NaN
        raise ValueError(f"p must lie in [0, 1], got {p}")
    return (2.0 * p - 1.0) / (2.0 * beta)


# ---------------------------------------------------------------- KTO

def kto_loss(logp, ref_logp, desirable, beta: float = 0.1, lambda_d: float = 1.0, lambda_u: float = 1.0,
             z0=None, reduction: str = "mean") -> torch.Tensor:
    """KTO (Ethayarajh et al. 2024, Eq. 8) on unpaired examples.

    r = log pi(y|x) - log pi_ref(y|x) (the implied reward)
    desirable:   lambda_D * (1 - sigma(beta (r - z0)))
    undesirable: lambda_U * (1 - sigma(beta (z0 - r)))
    i.e. lambda_y - v(x, y) in the seed's notation; 1 - sigma(u) is computed as sigma(-u).

    logp, ref_logp: [B] summed sequence log-probs; desirable: bool [B].
    z0: the reference point, an estimate of KL(pi || pi_ref). The paper and TRL take it from
    mismatched (x, y') pairs (`kto_reference_point` on `tasks.mismatched_batch`); a float or
    0-dim tensor is used as given, detached. None falls back to this batch's own mean
    log-ratio, clamped at 0 and detached (matched pairs: a cruder estimate).
    """
    check_positive(beta=beta)
    check_nonnegative(lambda_d=lambda_d, lambda_u=lambda_u)
    _sequence_inputs(logp=logp, ref_logp=ref_logp)
    if desirable.shape != logp.shape or desirable.dtype != torch.bool:
        raise ValueError(f"desirable must be a bool tensor of shape {tuple(logp.shape)}, "
                         f"got {desirable.dtype} {tuple(desirable.shape)}")
    r = logp - ref_logp
    if z0 is None:
        z0 = kto_reference_point(logp, ref_logp)
    z0 = torch.as_tensor(z0, dtype=r.dtype, device=r.device).detach()
    if z0.dim() != 0:
        raise ValueError(f"z0 must be a scalar, got shape {tuple(z0.shape)}")
    check_finite(z0=z0)
    u = beta * (r - z0)
    losses = torch.where(desirable, lambda_d * torch.sigmoid(-u), lambda_u * torch.sigmoid(u))
    return reduce(losses, reduction)


def kto_reference_point(mismatched_logp: torch.Tensor, mismatched_ref_logp: torch.Tensor) -> torch.Tensor:
    """KTO's z0 from mismatched pairs: the mean of log pi(y'|x) - log pi_ref(y'|x) over
    completions y' written for other prompts, clamped at 0 and detached (no gradient
    flows through the reference point). A 0-dim tensor.

    >>> kto_reference_point(torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.0]))
    tensor(0.5000)
    """
    _sequence_inputs(mismatched_logp=mismatched_logp, mismatched_ref_logp=mismatched_ref_logp)
    return (mismatched_logp - mismatched_ref_logp).detach().mean().clamp(min=0.0)


def kto_class_ratio(n_desirable: int, n_undesirable: int, lambda_d: float = 1.0, lambda_u: float = 1.0) -> float:
    """lambda_D n_D / (lambda_U n_U): the total weight of desirable against undesirable
    examples. The KTO paper recommends keeping it in [1, 4/3].

    >>> kto_class_ratio(100, 400, lambda_d=4.0)
    1.0
    """
    check_positive(n_desirable=n_desirable, n_undesirable=n_undesirable, lambda_u=lambda_u)
    check_nonnegative(lambda_d=lambda_d)
    return lambda_d * n_desirable / (lambda_u * n_undesirable)


def kto_balanced_lambdas(n_desirable: int, n_undesirable: int, ratio: float = 1.0) -> tuple[float, float]:
    """(lambda_D, lambda_U) with lambda_U = 1 and lambda_D n_D / (lambda_U n_U) = ratio:
    an imbalanced dataset re-weighted as the KTO paper recommends (ratio in [1, 4/3])."""
    check_positive(n_desirable=n_desirable, n_undesirable=n_undesirable, ratio=ratio)
    return ratio * n_undesirable / n_desirable, 1.0


# ---------------------------------------------------------------- SimPO

def simpo_loss(chosen_logp, rejected_logp, chosen_len, rejected_len, beta: float = 2.0, gamma: float = 1.0,
               reduction: str = "mean") -> torch.Tensor:
    """SimPO (Meng et al. 2024, Eq. 6):
    -log sigma( beta/|y_w| log pi(y_w|x) - beta/|y_l| log pi(y_l|x) - gamma ).

    No reference model: the implicit reward is the length-normalised log-likelihood, so
    a longer answer is not favoured just for having more tokens. gamma is a target
    margin. The defaults here are beta = 2, gamma = 1 (gamma/beta = 0.5, the value in
    rlbook's API design); the SimPO code's defaults are beta = 2, gamma/beta = 0.25, i.e.
    gamma = 0.5: pass gamma=0.5 for those. The seed writes the loss without beta, which
    is beta = 1.

    chosen_len, rejected_len: number of completion tokens |y| (> 0), [B].
    """
    check_positive(beta=beta)
    _scalar("gamma", gamma)
    _sequence_inputs(chosen_logp=chosen_logp, rejected_logp=rejected_logp)
    _lengths(chosen_logp, "chosen_logp", chosen_len=chosen_len, rejected_len=rejected_len)
    margin = beta * chosen_logp / chosen_len - beta * rejected_logp / rejected_len - gamma
    return reduce(-F.logsigmoid(margin), reduction)
