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
"""

from __future__ import annotations

import torch

from .checks import check_finite, check_same_shape


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

    >>> k3(torch.tensor([-1.0]), torch.tensor([-1.0]))
    tensor([0.])
    >>> round(k3(torch.tensor([-1.0]), torch.tensor([-2.0])).item(), 4)  # e^-1 - 1 + 1
    0.3679
    """
    log_r = _log_ratio(logp, ref_logp)
    return torch.expm1(log_r) - log_r
