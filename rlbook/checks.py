"""Input checks shared by every loss: a wrong shape or a NaN fails loudly, naming the argument.

Shape checks cost nothing; value checks (NaN/inf, the sign of log-probs, a mask's 0/1) reduce
over whole tensors. A loop that validated its tensors once can run many loss calls inside
`values_validated()`, where the value checks are skipped and the shape checks still run.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

_skip_value_checks = False


@contextmanager
def values_validated():
    """Inside, `check_finite`, `check_log_probs` and the 0/1 test of `check_mask` are skipped:
    for a training loop whose inputs were checked once per round (`train.on_policy`)."""
    global _skip_value_checks
    before, _skip_value_checks = _skip_value_checks, True
    try:
        yield
    finally:
        _skip_value_checks = before


def check_finite(**tensors: torch.Tensor | None) -> None:
    """Raise ValueError if any given tensor holds NaN or +-inf."""
    if _skip_value_checks:
        return
    for name, x in tensors.items():
        if x is not None and x.is_floating_point() and not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf")


def check_same_shape(**tensors: torch.Tensor | None) -> None:
    """Raise ValueError unless all given (non-None) tensors have one shape."""
    named = [(n, x) for n, x in tensors.items() if x is not None]
    if not named:
        return
    first_name, first = named[0]
    for name, x in named[1:]:
        if x.shape != first.shape:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)} but {first_name} has shape {tuple(first.shape)}"
            )


def check_log_probs(**tensors: torch.Tensor | None) -> None:
    """Log-probabilities are finite and <= 0 (up to 1e-6 of rounding): any larger entry is an
    error, which catches probabilities and logits passed by mistake (a log-prob is never
    positive; a probability always is, and logits usually are somewhere)."""
    if _skip_value_checks:
        return
    check_finite(**tensors)
    for name, x in tensors.items():
        if x is None:
            continue
        if (x > 1e-6).any():
            raise ValueError(f"{name} has positive entries: pass log-probabilities, not probabilities or logits")


def check_mask(mask: torch.Tensor | None, like: torch.Tensor, like_name: str = "logp") -> torch.Tensor:
    """Return `mask` as a float tensor shaped like `like` (all ones when mask is None)."""
    if mask is None:
        return torch.ones_like(like, dtype=torch.float32 if not like.is_floating_point() else like.dtype)
    if mask.shape != like.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)} but {like_name} has shape {tuple(like.shape)}")
    if not _skip_value_checks and mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
        raise ValueError("mask must hold only 0 and 1 (or be a bool tensor)")
    return mask.to(like.dtype if like.is_floating_point() else torch.float32)


def check_positive(**values: float) -> None:
    """Raise ValueError unless every given number is > 0."""
    for name, v in values.items():
        if not v > 0:
            raise ValueError(f"{name} must be > 0, got {v}")


def check_nonnegative(**values: float) -> None:
    """Raise ValueError unless every given number is >= 0 (NaN fails too)."""
    for name, v in values.items():
        if not v >= 0:
            raise ValueError(f"{name} must be >= 0, got {v}")


def check_choice(name: str, value, options) -> None:
    """Raise ValueError unless `value` is one of `options` (a tuple or the keys of a dict)."""
    if value not in options:
        raise ValueError(f"{name} must be one of {sorted(options, key=str)}, got {value!r}")


def check_unit_interval(**values: float) -> None:
    """Raise ValueError unless every given number lies in [0, 1]."""
    for name, v in values.items():
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {v}")


def check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    """torch's loss convention: 'mean' (default), 'sum', or 'none' (per element)."""
    check_reduction(reduction)
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x
