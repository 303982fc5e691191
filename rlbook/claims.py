"""What a chapter's prose says about its own training run, checked where that run is reproducible.

Exact maths is asserted everywhere. A training outcome ("true reward rose by more than 0.5") is
not maths: it depends on the seed and on the hardware's arithmetic, and on a GPU or another BLAS
the same seed follows another trajectory. `claim` prints the outcome beside the text it backs and
raises only under strict checking (`RLBOOK_STRICT_CLAIMS=1`, which CI sets on the CPU the committed
outputs come from). So the book runs under nbval on any machine, and CI still fails when a change
breaks a sentence of the text.
"""

from __future__ import annotations

import os


def strict() -> bool:
    """True when `RLBOOK_STRICT_CLAIMS` is set to anything but "" or "0"."""
    return os.environ.get("RLBOOK_STRICT_CLAIMS", "") not in ("", "0")


def claim(holds, text: str) -> bool:
    """Print `text: True/False`; if False, raise under strict checking, else say why it may differ.

    >>> claim(2 > 1, "two beats one")
    two beats one: True
    True
    """
    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty string saying what the prose claims")
    holds = bool(holds)
    print(f"{text}: {holds}")
    if not holds:
        if strict():
            raise AssertionError(f"the text claims what this run does not show: {text}")
        print("  (this run differs from the committed one the text describes: a training outcome depends "
              "on the seed and on the hardware's arithmetic)")
    return holds
