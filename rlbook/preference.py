"""DPO's relatives: IPO (bounded margin), KTO (unpaired feedback), SimPO (no reference).

Inputs are summed sequence log-probabilities `[B]` (sum over completion tokens of
`lm.completion_logprobs`), as for `dpo.dpo_loss`; SimPO also takes the lengths |y|.
Every loss returns the batch mean unless `reduction="none"`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlbook.checks import check_finite, check_positive, check_same_shape, reduce


def _sequence_inputs(**tensors: torch.Tensor) -> None:
    check_same_shape(**tensors)
    check_finite(**tensors)
    for name, x in tensors.items():
        if x.dim() != 1:
            raise ValueError(f"{name} must be summed sequence log-probs of shape [B], got {tuple(x.shape)}")


def log_ratio_margin(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp) -> torch.Tensor:
    """h = log pi(y_w)/pi_ref(y_w) - log pi(y_l)/pi_ref(y_l): how much more the policy has
    raised the chosen answer than the rejected one, relative to the reference. `[B]`."""
    _sequence_inputs(chosen_logp=chosen_logp, rejected_logp=rejected_logp,
                     ref_chosen_logp=ref_chosen_logp, ref_rejected_logp=ref_rejected_logp)
    return (chosen_logp - ref_chosen_logp) - (rejected_logp - ref_rejected_logp)


def ipo_loss(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, beta: float = 0.1,
             reduction: str = "mean") -> torch.Tensor:
    """IPO (Azar et al. 2023, Eq. 17):  (h - 1/(2 beta))^2.

    A squared error around a target margin 1/(2 beta) instead of DPO's -log sigma(beta h),
    which keeps pushing h to infinity: once h reaches the target, the gradient is zero.
    Smaller beta means a larger target margin (weaker regularisation), as in DPO.

    >>> ipo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), beta=0.5)
    tensor(0.)
    """
    check_positive(beta=beta)
    h = log_ratio_margin(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    return reduce((h - 1.0 / (2.0 * beta)) ** 2, reduction)


def kto_loss(logp, ref_logp, desirable, beta: float = 0.1, lambda_d: float = 1.0, lambda_u: float = 1.0,
             z0=None, reduction: str = "mean") -> torch.Tensor:
    """KTO (Ethayarajh et al. 2024, Eq. 8) on unpaired examples.

    r = log pi(y|x) - log pi_ref(y|x) (the implied reward)
    desirable:   lambda_D * (1 - sigma(beta (r - z0)))
    undesirable: lambda_U * (1 - sigma(beta (z0 - r)))
    i.e. lambda_y - v(x, y) in the seed's notation; 1 - sigma(u) is computed as sigma(-u).

    logp, ref_logp: [B] summed sequence log-probs; desirable: bool [B].
    z0: the reference point KL(pi || pi_ref). None estimates it from this batch as the mean
    log-ratio, clamped at 0 and detached (the paper uses mismatched (x, y') pairs, see
    `kto_reference_point`); a float or 0-dim tensor is used as given (also detached).
    """
    check_positive(beta=beta)
    if lambda_d < 0 or lambda_u < 0:
        raise ValueError(f"lambda_d and lambda_u must be >= 0, got {lambda_d}, {lambda_u}")
    _sequence_inputs(logp=logp, ref_logp=ref_logp)
    if desirable.shape != logp.shape or desirable.dtype != torch.bool:
        raise ValueError(f"desirable must be a bool tensor of shape {tuple(logp.shape)}, "
                         f"got {desirable.dtype} {tuple(desirable.shape)}")
    r = logp - ref_logp
    if z0 is None:
        z0 = kto_reference_point(logp, ref_logp)
    z0 = torch.as_tensor(z0, dtype=r.dtype, device=r.device).detach()
    check_finite(z0=z0)
    u = beta * (r - z0)
    losses = torch.where(desirable, lambda_d * torch.sigmoid(-u), lambda_u * torch.sigmoid(u))
    return reduce(losses, reduction)


def kto_reference_point(mismatched_logp: torch.Tensor, mismatched_ref_logp: torch.Tensor) -> torch.Tensor:
    """KTO's z0 from mismatched pairs: the mean of log pi(y'|x) - log pi_ref(y'|x) over
    completions y' written for other prompts, clamped at 0 and detached (no gradient
    flows through the reference point)."""
    _sequence_inputs(mismatched_logp=mismatched_logp, mismatched_ref_logp=mismatched_ref_logp)
    return (mismatched_logp - mismatched_ref_logp).mean().clamp(min=0.0).detach()


def simpo_loss(chosen_logp, rejected_logp, chosen_len, rejected_len, beta: float = 2.0, gamma: float = 1.0,
               reduction: str = "mean") -> torch.Tensor:
    """SimPO (Meng et al. 2024, Eq. 6):
    -log sigma( beta/|y_w| log pi(y_w|x) - beta/|y_l| log pi(y_l|x) - gamma ).

    No reference model: the implicit reward is the length-normalised log-likelihood, so
    a longer answer is not favoured just for having more tokens. gamma is a target
    margin. The seed writes it without beta, which is beta = 1.

    chosen_len, rejected_len: number of completion tokens |y| (> 0), [B].
    """
    check_positive(beta=beta)
    _sequence_inputs(chosen_logp=chosen_logp, rejected_logp=rejected_logp)
    check_same_shape(chosen_logp=chosen_logp, chosen_len=chosen_len, rejected_len=rejected_len)
    if (chosen_len <= 0).any() or (rejected_len <= 0).any():
        raise ValueError("chosen_len and rejected_len must be positive token counts")
    margin = beta * chosen_logp / chosen_len - beta * rejected_logp / rejected_len - gamma
    return reduce(-F.logsigmoid(margin), reduction)
