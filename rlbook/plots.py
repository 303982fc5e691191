"""Matplotlib figures that several notebooks share."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import torch


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what is there so far)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def next_token_bars(dist: dict[str, float], top: int = 12, highlight: str | None = None, ax=None, title=None):
    """Bar chart of pi(. | s) from `lm.next_token_distribution`, the `top` most likely words."""
    ax = ax or plt.subplots(figsize=(8, 3))[1]
    words = list(dist)[:top]
    probs = [dist[w] for w in words]
    colors = ["tab:orange" if w == highlight else "tab:blue" for w in words]
    ax.bar(words, probs, color=colors)
    ax.set_ylabel("probability")
    ax.tick_params(axis="x", rotation=45)
    if title:
        ax.set_title(title)
    return ax


def curves(history: dict[str, list[float]], keys: Sequence[str], ax=None, window: int = 1, label_prefix: str = "",
           xlabel: str = "step"):
    """Plot history[key] for each key (optionally smoothed) on one axis."""
    ax = ax or plt.subplots(figsize=(6, 3))[1]
    for k in keys:
        ax.plot(smooth(history[k], window), label=f"{label_prefix}{k}")
    ax.set_xlabel(xlabel)
    ax.legend()
    return ax


def reward_histogram(rewards: torch.Tensor, ax=None, bins=None, title=None):
    """Histogram of per-sample rewards."""
    ax = ax or plt.subplots(figsize=(6, 3))[1]
    r = rewards.detach().cpu().float()
    if bins is None:
        lo, hi = r.min().item(), r.max().item()
        bins = torch.arange(lo - 0.5, hi + 1.0, 1.0).tolist() if r.eq(r.round()).all() else 20
    ax.hist(r.numpy(), bins=bins, rwidth=0.9)
    ax.set_xlabel("reward")
    ax.set_ylabel("samples")
    if title:
        ax.set_title(title)
    return ax


def token_bars(words: Sequence[str], series: dict[str, Sequence[float]], ax=None, title=None, ylabel=None):
    """Grouped bars, one group per token: e.g. the advantage each estimator gives each word."""
    ax = ax or plt.subplots(figsize=(6, 3))[1]
    width = 0.8 / max(len(series), 1)
    for k, (label, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(words))]
        ax.bar(xs, list(values), width=width, label=label)
    ax.set_xticks(range(len(words)))
    ax.set_xticklabels(words)
    ax.axhline(0, color="grey", lw=0.8)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return ax


def ppo_clip_objective(eps: float = 0.2, advantages: Sequence[float] = (1.0, -1.0), ax=None, r_max: float = 2.0):
    """L^CLIP against the ratio r for a single token, one curve per advantage, with the
    unclipped surrogate r * A dashed and the clip range shaded (computed by ppo.ppo_clip_loss)."""
    from rlbook.ppo import ppo_clip_loss

    ax = ax or plt.subplots(figsize=(6, 3))[1]
    r = torch.linspace(0.01, r_max, 400)
    logp, old_logp = torch.log(r).unsqueeze(1) - 1.0, torch.full((len(r), 1), -1.0)
    for a in advantages:
        objective = -ppo_clip_loss(logp, old_logp, torch.full((len(r),), a), eps=eps, reduction="none")[:, 0]
        line, = ax.plot(r, objective, label=f"L^CLIP, A = {a:+g}")
        ax.plot(r, r * a, ls="--", color=line.get_color(), alpha=0.5, label=f"r A, A = {a:+g}")
    ax.axvspan(1 - eps, 1 + eps, color="grey", alpha=0.15, label=f"1 ± ε (ε = {eps})")
    ax.set_xlabel("ratio r = π_θ / π_old")
    ax.set_ylabel("objective (per token)")
    ax.legend(fontsize=8)
    return ax


def seed_band(ax, x: Sequence[float], runs: Sequence[Sequence[float]], label: str | None = None, color=None,
              alpha: float = 0.2):
    """The mean over seeds as a line and the min-max range over seeds as a band. runs: one curve per seed, each
    aligned with x. Returns the mean curve."""
    if not runs or any(len(r) != len(x) for r in runs):
        raise ValueError(f"runs must be a non-empty list of curves of len(x) = {len(x)} points each")
    columns = list(zip(*runs))
    mean = [sum(c) / len(c) for c in columns]
    line, = ax.plot(x, mean, label=label, color=color)
    ax.fill_between(x, [min(c) for c in columns], [max(c) for c in columns], color=line.get_color(), alpha=alpha,
                    lw=0)
    return mean
