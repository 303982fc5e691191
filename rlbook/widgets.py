"""Interactive labs. Each one is three layers, so that the maths is testable without a browser:
a plain state function (numbers in, numbers out, unit-tested), a static figure of that state
(what nbval checks), and the ipywidgets app that redraws the figure when a control moves.

The KL estimator lab (chapter 06): a policy pi and a reference pi_ref, either categorical over a
few outcomes (level="token") or over two-token sequences (level="sequence", an enumerable
`exact.TabularPolicy`); N samples from pi; the Monte-Carlo gradient (w.r.t. pi's logits) of all
six estimator x placement pairs at once, with error bars, next to their exact expectations, the
true gradients of KL(pi||ref) and KL(ref||pi), and each one's exact bias and variance.
"""

from __future__ import annotations

import html
import math

import matplotlib.pyplot as plt
import torch

from rlbook.checks import check_choice
from rlbook.exact import TabularPolicy, cosine, estimator_moments
from rlbook.kl import ESTIMATORS, PLACEMENTS, exact_kl_gradients, kl_divergence, kl_estimate

CONFIGS = tuple(f"{e}/{p}" for e in ESTIMATORS for p in PLACEMENTS)
"""The six estimator x placement pairs, named as in `kl.exact_kl_gradients`: "k1/reward", ..."""
LEVELS = ("token", "sequence")
VIEWS = ("all six",) + CONFIGS


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


def lab_policies(shift: float = 1.0, temperature: float = 1.0, num_outcomes: int = 5,
                 level: str = "token") -> tuple[TabularPolicy, TabularPolicy]:
    """(pi, pi_ref) as `exact.TabularPolicy`s over `num_outcomes` tokens.

    level="token": one token, the categorical pair of `lab_logits`.
    level="sequence": two tokens; every state of pi_ref is the bump; pi's first token uses
    `lab_logits(shift)` and its second token, after first token j, `lab_logits(shift * (j + 1) / V)`,
    so the first choice changes the state the second is drawn in (what per-token loss terms miss).
    """
    check_choice("level", level, LEVELS)
    logits, ref_logits = lab_logits(shift, temperature, num_outcomes)
    if level == "token":
        rows, ref_rows = logits.unsqueeze(0), ref_logits.unsqueeze(0)
    else:
        later = [lab_logits(shift * (j + 1) / num_outcomes, temperature, num_outcomes)[0] for j in range(num_outcomes)]
        rows, ref_rows = torch.stack([logits] + later), ref_logits.expand(num_outcomes + 1, -1)
    length = 1 if level == "token" else 2
    return (TabularPolicy(num_outcomes, length, logits=rows), TabularPolicy(num_outcomes, length, logits=ref_rows))


def sequence_sample_gradients(policy: TabularPolicy, ref: TabularPolicy, seqs: torch.Tensor, estimator: str,
                              placement: str) -> torch.Tensor:
    """The one-sample gradient estimate (w.r.t. policy.logits, flattened) for each sequence: `[N, P]`.

        placement="reward":  (sum_t k_t) * sum_t grad log pi(a_t|s_t)     k's value detached, a score-function term
        placement="loss":    sum_t grad k_t                               the sample held fixed, k differentiated

    with grad log pi(a_t|s_t) = e_{a_t} - pi(.|s_t) in the row of state s_t (a softmax per state).
    seqs: `[N, T]` token indices.
    """
    check_choice("estimator", estimator, ESTIMATORS)
    check_choice("placement", placement, PLACEMENTS)
    if (ref.vocab_size, ref.length) != (policy.vocab_size, policy.length):
        raise ValueError("ref must have the same vocab_size and length as policy")
    policy._check(seqs)
    N, T = seqs.shape
    S, V = policy.logits.shape
    states = policy.state_index(seqs)  # [N, T]
    logp_all = torch.log_softmax(policy.logits.detach(), -1)
    logp = logp_all[states, seqs].clone().requires_grad_(True)
    ref_logp = torch.log_softmax(ref.logits.detach(), -1)[states, seqs]
    k = kl_estimate(logp, ref_logp, estimator)
    if placement == "reward":
        weight = k.detach().sum(1, keepdim=True).expand(N, T)
    else:
        (weight,) = torch.autograd.grad(k.sum(), logp)  # dk_t/dlog pi(a_t|s_t), token by token
    score = torch.nn.functional.one_hot(seqs, V).to(logp_all.dtype) - logp_all.exp()[states]  # [N, T, V]
    rows = (torch.arange(N).unsqueeze(1) * S + states).reshape(-1)
    g = torch.zeros(N * S, V, dtype=logp_all.dtype).index_add_(0, rows, (weight.unsqueeze(-1) * score).reshape(-1, V))
    return g.reshape(N, S * V)


def per_sample_gradients(logits: torch.Tensor, ref_logits: torch.Tensor, outcomes: torch.Tensor, estimator: str,
                         placement: str) -> torch.Tensor:
    """`sequence_sample_gradients` for a categorical pi (one token): `[N, V]`.

        placement="reward":  k(x) * grad log pi(x)        placement="loss":  grad k(x)

    with grad log pi(x) = e_x - pi. logits, ref_logits: `[V]`; outcomes: `[N]` indices.
    """
    if logits.dim() != 1 or logits.shape != ref_logits.shape:
        raise ValueError(f"logits and ref_logits must both be [V], got {tuple(logits.shape)} and {tuple(ref_logits.shape)}")
    if outcomes.dim() != 1 or outcomes.min() < 0 or outcomes.max() >= logits.shape[0]:
        raise ValueError(f"outcomes must be [N] indices in 0..{logits.shape[0] - 1}")
    V = logits.shape[0]
    pi = TabularPolicy(V, 1, logits=logits.detach().double().unsqueeze(0))
    ref = TabularPolicy(V, 1, logits=ref_logits.detach().double().unsqueeze(0))
    return sequence_sample_gradients(pi, ref, outcomes.unsqueeze(1), estimator, placement)


def kl_lab_state(shift: float = 1.0, temperature: float = 1.0, num_outcomes: int = 5, n: int = 64, seed: int = 0,
                 level: str = "token") -> dict:
    """Everything the KL lab shows, as numbers: N samples from pi (`lab_policies`) and, for every
    configuration in `CONFIGS`, the Monte-Carlo gradient from those same N samples and the exact answers.

    Returns a dict: "level", "n", "settings" (the arguments); "probs", "ref_probs" `[K]` (P(tau) of
    every outcome or sequence); "kl_reverse", "kl_forward" (KL(pi||ref), KL(ref||pi), of the
    sequences); "grad_reverse", "grad_forward" `[P]` (their true gradients); "configs": {name: dict}
    with "mc_mean", "mc_stderr" `[P]` (mean of the N one-sample estimates, its standard error);
    "expected" `[P]` (the estimate's exact expectation); "cos_reverse", "cos_forward" (cosines of
    mc_mean with the true gradients), "expected_cos_reverse", "expected_cos_forward" (NaN where the
    expectation is zero: no direction);
    "bias" = |expected - grad KL(pi||ref)|; "variance" = E|g - expected|^2 of one sample (exact,
    by enumeration); "rmse" = sqrt(bias^2 + variance / N), the expected error of the N-sample mean.
    """
    if n < 2:
        raise ValueError(f"n must be >= 2 (a standard error needs two samples), got {n}")
    pi, ref = lab_policies(shift, temperature, num_outcomes, level)
    seqs = pi.sample(n, torch.Generator().manual_seed(seed))
    everything = pi.sequences()
    exact = exact_kl_gradients(pi, ref)
    rev, fwd = exact["KL(pi||ref)"], exact["KL(ref||pi)"]
    with torch.no_grad():
        logp, ref_logp = pi.log_prob(everything), ref.log_prob(everything)
    configs = {}
    for name in CONFIGS:
        estimator, placement = name.split("/")
        g = sequence_sample_gradients(pi, ref, seqs, estimator, placement)
        _, variance = estimator_moments(pi, sequence_sample_gradients(pi, ref, everything, estimator, placement))
        mc_mean, expected = g.mean(0), exact[name]
        bias = (expected - rev).norm().item()
        zero = expected.norm() <= 1e-12 * max(rev.norm().item(), 1.0)  # k1 in the loss: rounding only, no direction
        configs[name] = dict(mc_mean=mc_mean, mc_stderr=g.std(0) / math.sqrt(n), expected=expected,
                             cos_reverse=cosine(mc_mean, rev), cos_forward=cosine(mc_mean, fwd),
                             expected_cos_reverse=math.nan if zero else cosine(expected, rev),
                             expected_cos_forward=math.nan if zero else cosine(expected, fwd),
                             bias=bias, variance=variance.item(), rmse=math.sqrt(bias**2 + variance.item() / n))
    return dict(level=level, n=n, settings=dict(shift=shift, temperature=temperature, num_outcomes=num_outcomes, n=n,
                                                 seed=seed, level=level),
                probs=logp.exp(), ref_probs=ref_logp.exp(), kl_reverse=kl_divergence(logp, ref_logp).item(),
                kl_forward=kl_divergence(ref_logp, logp).item(), grad_reverse=rev, grad_forward=fwd, configs=configs)


TABLE_COLUMNS = (("cos_reverse", "MC cos rev", "+.3f"), ("cos_forward", "MC cos fwd", "+.3f"),
                 ("expected_cos_reverse", "exact cos rev", "+.3f"), ("expected_cos_forward", "exact cos fwd", "+.3f"),
                 ("bias", "bias", ".3f"), ("variance", "var 1 sample", ".3f"), ("rmse", "rmse at N", ".3f"))
"""(key in a config's state, column heading, format) of the lab's table. rev: grad KL(pi||ref), fwd: grad
KL(ref||pi); MC: the N-sample mean, exact: the expectation; bias is measured against grad KL(pi||ref)."""


def _cell(value: float, fmt: str) -> str:
    return "zero" if math.isnan(value) else format(value, fmt)


def kl_lab_table(state: dict) -> str:
    """The lab's table as text, one row per configuration (columns `TABLE_COLUMNS`)."""
    lines = [f"{'':10s}" + "".join(f"{title:>{len(title) + 2}s}" for _, title, _ in TABLE_COLUMNS)]
    for name, c in state["configs"].items():
        lines.append(f"{name:10s}" + "".join(f"{_cell(c[key], fmt):>{len(title) + 2}s}" for key, title, fmt in TABLE_COLUMNS))
    return "\n".join(lines)


def kl_lab_table_html(state: dict, view: str = "all six") -> str:
    """The same table as HTML for the app: each row carries data-config="k1/reward", each cell a
    class named after its key, and the row of `view` data-viewed="true" (drawn in bold)."""
    check_choice("view", view, VIEWS)
    s = state["settings"]
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title, _ in TABLE_COLUMNS)
    rows = []
    for name, c in state["configs"].items():
        viewed = name == view
        cells = "".join(f'<td class="{key}">{_cell(c[key], fmt)}</td>' for key, _, fmt in TABLE_COLUMNS)
        style = ' style="font-weight:bold"' if viewed else ""
        rows.append(f'<tr data-config="{name}" data-viewed="{str(viewed).lower()}"{style}><td>{name}</td>{cells}</tr>')
    caption = (f"{s['level']} level, shift {s['shift']:.2f}, temperature {s['temperature']:.2f}, "
               f"{s['num_outcomes']} outcomes, N = {s['n']}, seed {s['seed']}: KL(pi||ref) = {state['kl_reverse']:.3f}, "
               f"KL(ref||pi) = {state['kl_forward']:.3f}")
    return (f'<table class="rlbook-kl-lab"><caption class="settings">{html.escape(caption)}</caption>'
            f"<tr><th>configuration</th>{head}</tr>{''.join(rows)}</table>")


def _gradient_panel(ax, state: dict, name: str, legend: bool = False) -> None:
    c = state["configs"][name]
    x = torch.arange(c["mc_mean"].shape[0]).numpy()
    ax.bar(x, c["mc_mean"].numpy(), yerr=2 * c["mc_stderr"].numpy(), color="tab:orange", alpha=0.6,
           error_kw=dict(lw=0.8), label=f"MC, N = {state['n']} (+-2 s.e.)")
    ax.plot(x, c["expected"].numpy(), "o", mfc="none", mec="black", ms=5, label="its exact expectation")
    ax.plot(x, state["grad_reverse"].numpy(), "_", color="tab:blue", ms=9, mew=2, label=r"$\nabla$ KL(pi||ref)")
    ax.plot(x, state["grad_forward"].numpy(), "_", color="tab:green", ms=9, mew=1.5, label=r"$\nabla$ KL(ref||pi)")
    ax.axhline(0, color="black", lw=0.5)
    estimator, placement = name.split("/")
    ax.set_title(f"{estimator} in the {placement}\nMC cos: rev {c['cos_reverse']:+.2f}, fwd {c['cos_forward']:+.2f}",
                 fontsize=8)
    ax.set_xlabel("logit" if state["level"] == "token" else "logit (state, token)", fontsize=8)
    ax.tick_params(labelsize=7)
    if legend:
        ax.legend(fontsize=7)


def kl_lab_figure(state: dict, view: str = "all six"):
    """view="all six": pi and pi_ref, then one panel per configuration (rows: placement, columns:
    estimator), each the Monte-Carlo gradient (bars, +-2 standard errors) against its exact
    expectation (circles), grad KL(pi||ref) (blue) and grad KL(ref||pi) (green); panel titles give
    the MC cosines with the two. A single configuration name draws only that one, larger.
    Returns the figure."""
    check_choice("view", view, VIEWS)
    seq = state["level"] == "sequence"
    if view == "all six":
        fig = plt.figure(figsize=(9, 4.6))
        grid = fig.add_gridspec(2, 4, width_ratios=[1, 1, 1, 1])
        ax0 = fig.add_subplot(grid[:, 0])
        panels = {f"{e}/{p}": fig.add_subplot(grid[i, j + 1]) for i, p in enumerate(PLACEMENTS)
                  for j, e in enumerate(ESTIMATORS)}
    else:
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.2), gridspec_kw=dict(width_ratios=[1, 1.6]))
        panels = {view: ax1}
    x = torch.arange(state["probs"].shape[0]).numpy()
    ax0.bar(x - 0.2, state["probs"].numpy(), width=0.4, label=r"$\pi_\theta$")
    ax0.bar(x + 0.2, state["ref_probs"].numpy(), width=0.4, label=r"$\pi_{ref}$", color="tab:gray")
    ax0.set_xlabel("sequence (index)" if seq else "outcome", fontsize=8)
    ax0.set_ylabel("probability", fontsize=8)
    ax0.set_title(f"KL(pi||ref) {state['kl_reverse']:.3f}\nKL(ref||pi) {state['kl_forward']:.3f}", fontsize=8)
    ax0.tick_params(labelsize=7)
    ax0.legend(fontsize=7)
    for i, (name, ax) in enumerate(panels.items()):
        _gradient_panel(ax, state, name, legend=view != "all six")
        if i % len(ESTIMATORS) == 0:
            ax.set_ylabel("gradient", fontsize=8)
    if view == "all six":
        handles, labels = next(iter(panels.values())).get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
    else:
        fig.tight_layout()
    return fig


def kl_lab(shift: float = 1.0, temperature: float = 1.0, num_outcomes: int = 5, n: int = 64, level: str = "token",
           view: str = "all six"):
    """The ipywidgets app: sliders for the policy (shift, temperature, number of outcomes) and the
    sample size N, a seed, a token/sequence toggle and a menu for the figure's view; each change
    recomputes `kl_lab_state` and redraws the table (`kl_lab_table_html`) and `kl_lab_figure`.
    Returns the widget (display it)."""
    import ipywidgets as w

    controls = dict(
        shift=w.FloatSlider(value=shift, min=-2.0, max=2.0, step=0.1, description="shift"),
        temperature=w.FloatSlider(value=temperature, min=0.3, max=3.0, step=0.1, description="temperature"),
        num_outcomes=w.IntSlider(value=num_outcomes, min=2, max=12, description="outcomes"),
        n=w.IntSlider(value=n, min=2, max=4096, step=2, description="N samples"),
        seed=w.IntText(value=0, description="seed"),
        level=w.ToggleButtons(options=list(LEVELS), value=level, description="policy"),
    )
    view_menu = w.Dropdown(options=list(VIEWS), value=view, description="view")
    table, out = w.HTML(), w.Output()
    for c in (*controls.values(), view_menu, table):
        c.add_class("rlbook-kl-lab-" + (c.description or "table").replace(" ", "-"))

    def redraw(*_):
        state = kl_lab_state(**{k: c.value for k, c in controls.items()})
        table.value = kl_lab_table_html(state, view_menu.value)
        with out:
            out.clear_output(wait=True)
            kl_lab_figure(state, view_menu.value)
            plt.show()

    for c in (*controls.values(), view_menu):
        c.observe(redraw, names="value")
    redraw()
    left, right = list(controls.values())[:4], [*list(controls.values())[4:], view_menu]
    return w.VBox([w.HBox([w.VBox(left), w.VBox(right)]), table, out])
