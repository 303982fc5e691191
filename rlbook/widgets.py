"""Interactive labs. Each one is three layers, so that the maths is testable without a browser:
a plain state function (numbers in, numbers out, unit-tested), a static figure of that state
(what nbval checks), and the ipywidgets app that redraws the figure when a control moves.

The KL estimator lab (chapter 06): a categorical policy pi and reference pi_ref over a few
outcomes; N samples from pi; the Monte-Carlo gradient (w.r.t. pi's logits) of one KL estimator
in one placement, with error bars, next to the true gradients of KL(pi||ref) and KL(ref||pi).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch

from rlbook.checks import check_choice
from rlbook.exact import cosine
from rlbook.kl import ESTIMATORS, PLACEMENTS, exact_kl_gradients, kl_divergence, kl_estimate


def lab_logits(shift: float = 1.0, temperature: float = 1.0, num_outcomes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of pi, logits of pi_ref), each `[num_outcomes]`, float64.

        ref_logits_x = -2 u_x^2                        u_x evenly spaced in [-1, 1] (a bump in the middle)
        logits_x     = (ref_logits_x + 2 shift u_x) / temperature

    shift = 0 and temperature = 1 give pi = pi_ref; shift tilts pi to one side; temperature > 1
    flattens it, < 1 sharpens it.

    >>> logits, ref_logits = lab_logits(0.0, 1.0, 3)
    >>> torch.equal(logits, ref_logits)
    True
    """
    if num_outcomes < 2:
        raise ValueError(f"num_outcomes must be >= 2, got {num_outcomes}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not math.isfinite(shift):
        raise ValueError(f"shift must be finite, got {shift}")
    u = torch.linspace(-1, 1, num_outcomes, dtype=torch.float64)
    ref_logits = -2 * u**2
    return (ref_logits + 2 * shift * u) / temperature, ref_logits


def per_sample_gradients(logits: torch.Tensor, ref_logits: torch.Tensor, outcomes: torch.Tensor, estimator: str,
                         placement: str) -> torch.Tensor:
    """The one-sample gradient estimate (w.r.t. pi's logits) for each sampled outcome x: `[N, V]`.

        placement="reward":  k(x) * grad log pi(x)        k's value detached, a score-function term
        placement="loss":    grad k(x)                    the sample held fixed, k differentiated

    with grad log pi(x) = e_x - pi for a softmax. logits, ref_logits: `[V]`; outcomes: `[N]` indices.
    """
    check_choice("estimator", estimator, ESTIMATORS)
    check_choice("placement", placement, PLACEMENTS)
    if logits.dim() != 1 or logits.shape != ref_logits.shape:
        raise ValueError(f"logits and ref_logits must both be [V], got {tuple(logits.shape)} and {tuple(ref_logits.shape)}")
    if outcomes.dim() != 1 or outcomes.min() < 0 or outcomes.max() >= logits.shape[0]:
        raise ValueError(f"outcomes must be [N] indices in 0..{logits.shape[0] - 1}")
    logp_all = torch.log_softmax(logits.detach().double(), 0)
    ref_logp = torch.log_softmax(ref_logits.detach().double(), 0)[outcomes]
    logp = logp_all[outcomes].clone().requires_grad_(True)
    k = kl_estimate(logp, ref_logp, estimator)
    if placement == "reward":
        weight = k.detach()
    else:
        (weight,) = torch.autograd.grad(k.sum(), logp)  # dk/dlog pi(x), sample by sample
    score = torch.nn.functional.one_hot(outcomes, logits.shape[0]).double() - logp_all.exp()
    return weight.unsqueeze(1) * score


def kl_lab_state(shift: float = 1.0, temperature: float = 1.0, num_outcomes: int = 5, n: int = 64,
                 estimator: str = "k3", placement: str = "loss", seed: int = 0) -> dict:
    """Everything the KL lab shows, as numbers: N samples from pi, the Monte-Carlo gradient of
    `estimator` in `placement` (mean and standard error per logit) and the exact answers.

    Returns a dict: "probs", "ref_probs" `[V]`; "kl_reverse", "kl_forward" (KL(pi||ref), KL(ref||pi));
    "mc_mean", "mc_stderr" `[V]` (mean of the N one-sample estimates and its standard error);
    "expected" `[V]` (the exact expectation of the estimate); "grad_reverse", "grad_forward" `[V]`
    (true gradients of the two KLs); "cos_reverse", "cos_forward" (cosines of mc_mean with them)
    and "expected_cos_reverse", "expected_cos_forward".
    """
    if n < 2:
        raise ValueError(f"n must be >= 2 (a standard error needs two samples), got {n}")
    logits, ref_logits = lab_logits(shift, temperature, num_outcomes)
    probs = logits.softmax(0)
    outcomes = torch.multinomial(probs, n, replacement=True, generator=torch.Generator().manual_seed(seed))
    g = per_sample_gradients(logits, ref_logits, outcomes, estimator, placement)
    exact = exact_kl_gradients(logits, ref_logits)
    mc_mean = g.mean(0)
    expected = exact[f"{estimator}/{placement}"]
    rev, fwd = exact["KL(pi||ref)"], exact["KL(ref||pi)"]
    return dict(probs=probs, ref_probs=ref_logits.softmax(0), estimator=estimator, placement=placement, n=n,
                kl_reverse=kl_divergence(logits, ref_logits).item(), kl_forward=kl_divergence(ref_logits, logits).item(),
                mc_mean=mc_mean, mc_stderr=g.std(0) / math.sqrt(n), expected=expected,
                grad_reverse=rev, grad_forward=fwd, cos_reverse=cosine(mc_mean, rev), cos_forward=cosine(mc_mean, fwd),
                expected_cos_reverse=cosine(expected, rev), expected_cos_forward=cosine(expected, fwd))


def kl_lab_figure(state: dict, axes=None):
    """Left: pi and pi_ref. Right: the Monte-Carlo gradient (bars, +-2 standard errors) against
    grad KL(pi||ref), grad KL(ref||pi) and the estimate's exact expectation. Returns the axes."""
    if axes is None:
        axes = plt.subplots(1, 2, figsize=(10, 3.2), gridspec_kw=dict(width_ratios=[1, 1.6]))[1]
    ax0, ax1 = axes
    V = state["probs"].shape[0]
    x = torch.arange(V).numpy()
    ax0.bar(x - 0.2, state["probs"].numpy(), width=0.4, label=r"$\pi_\theta$")
    ax0.bar(x + 0.2, state["ref_probs"].numpy(), width=0.4, label=r"$\pi_{ref}$", color="tab:gray")
    ax0.set_xticks(x)
    ax0.set_xlabel("outcome")
    ax0.set_title(f"KL(pi||ref) = {state['kl_reverse']:.3f}, KL(ref||pi) = {state['kl_forward']:.3f}", fontsize=9)
    ax0.legend(fontsize=8)
    ax1.bar(x, state["mc_mean"].numpy(), yerr=2 * state["mc_stderr"].numpy(), color="tab:orange", alpha=0.6,
            capsize=3, label=f"MC estimate, N = {state['n']} (+-2 s.e.)")
    ax1.plot(x, state["expected"].numpy(), "o", mfc="none", mec="black", ms=9, label="its exact expectation")
    ax1.plot(x, state["grad_reverse"].numpy(), "_", color="tab:blue", ms=22, mew=3, label=r"$\nabla$ KL(pi||ref)")
    ax1.plot(x, state["grad_forward"].numpy(), "_", color="tab:green", ms=22, mew=2, label=r"$\nabla$ KL(ref||pi)")
    ax1.axhline(0, color="black", lw=0.5)
    ax1.set_xticks(x)
    ax1.set_xlabel("logit of outcome")
    ax1.set_title(f"{state['estimator']} in the {state['placement']}: cos to grad KL(pi||ref) "
                  f"{state['cos_reverse']:+.2f}, to grad KL(ref||pi) {state['cos_forward']:+.2f}", fontsize=9)
    ax1.legend(fontsize=7, loc="best")
    return axes


def kl_lab(shift: float = 1.0, temperature: float = 1.0, num_outcomes: int = 5, n: int = 64,
           estimator: str = "k3", placement: str = "loss"):
    """The ipywidgets app: sliders for the policy (shift, temperature, number of outcomes) and
    the sample size N, menus for the estimator and the placement, a reseed button; each change
    recomputes `kl_lab_state` and redraws `kl_lab_figure`. Returns the widget (display it)."""
    import ipywidgets as w

    controls = dict(
        shift=w.FloatSlider(value=shift, min=-2.0, max=2.0, step=0.1, description="shift"),
        temperature=w.FloatSlider(value=temperature, min=0.3, max=3.0, step=0.1, description="temperature"),
        num_outcomes=w.IntSlider(value=num_outcomes, min=2, max=12, description="outcomes"),
        n=w.IntSlider(value=n, min=2, max=4096, step=2, description="N samples"),
        estimator=w.Dropdown(options=list(ESTIMATORS), value=estimator, description="estimator"),
        placement=w.ToggleButtons(options=list(PLACEMENTS), value=placement, description="placement"),
        seed=w.IntText(value=0, description="seed"),
    )
    out = w.Output()

    def redraw(*_):
        state = kl_lab_state(**{k: c.value for k, c in controls.items()})
        with out:
            out.clear_output(wait=True)
            kl_lab_figure(state)
            plt.show()

    for c in controls.values():
        c.observe(redraw, names="value")
    redraw()
    return w.VBox([w.HBox([w.VBox(list(controls.values())[:4]), w.VBox(list(controls.values())[4:])]), out])
