"""Masked reductions over `[B, T]` token tensors: the one home for masks.

A mask holds 1 (or True) at completion tokens and 0 at padding and prompt positions.
Masked entries never reach a result, even when they hold NaN-free garbage.
"""

from __future__ import annotations

import torch

from rlbook.checks import check_mask, check_reduction


def masked_sum(x: torch.Tensor, mask: torch.Tensor | None, dim: int | None = None) -> torch.Tensor:
    """sum_t mask_t * x_t over `dim` (all elements when dim is None).

    >>> masked_sum(torch.tensor([[1., 2., 3.]]), torch.tensor([[1, 1, 0]]))
    tensor(3.)
    """
    m = check_mask(mask, x, "x")
    # where() rather than x * m, so that masked entries (even +-inf) cannot leak into the sum
    xm = torch.where(m.bool(), x, torch.zeros_like(x))
    return xm.sum() if dim is None else xm.sum(dim)


def masked_count(mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Number of unmasked entries (over `dim`, or in all)."""
    m = mask.float()
    return m.sum() if dim is None else m.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None, dim: int | None = None) -> torch.Tensor:
    """Mean over unmasked entries: sum(mask * x) / sum(mask). A row with no unmasked
    entry gives 0 (not NaN), since it carries no tokens to average.

    >>> masked_mean(torch.tensor([[1., 2., 3.], [4., 0., 0.]]), torch.tensor([[1, 1, 0], [1, 0, 0]]), dim=1)
    tensor([1.5000, 4.0000])
    """
    m = check_mask(mask, x, "x")
    return masked_sum(x, m, dim) / masked_count(m, dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor | None, unbiased: bool = True) -> torch.Tensor:
    """Variance over all unmasked entries (Bessel-corrected when `unbiased`)."""
    m = check_mask(mask, x, "x")
    mean = masked_mean(x, m)
    n = masked_count(m)
    ss = masked_sum((x - mean) ** 2, m)
    return ss / (n - 1).clamp(min=1.0) if unbiased else ss / n.clamp(min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the unmasked entries; masked entries come back as 0.

    With shift_mean=False the mean is added back (only the scale changes), as PPO
    implementations do for rewards.
    """
    m = check_mask(mask, x, "x")
    mean, var = masked_mean(x, m), masked_var(x, m)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m.bool(), out, torch.zeros_like(out))


def masked_reduce(x: torch.Tensor, mask: torch.Tensor | None, reduction: str = "mean") -> torch.Tensor:
    """torch's loss reduction over the unmasked entries of a per-token loss `[B, T]`:
    "mean" = mean over all unmasked tokens, "sum" = their sum, "none" = `x` with masked entries 0.

    >>> masked_reduce(torch.tensor([[1., 2., 9.]]), torch.tensor([[1, 1, 0]]), "none")
    tensor([[1., 2., 0.]])
    """
    check_reduction(reduction)
    m = check_mask(mask, x, "x")
    if reduction == "mean":
        return masked_mean(x, m)
    if reduction == "sum":
        return masked_sum(x, m)
    return torch.where(m.bool(), x, torch.zeros_like(x))
