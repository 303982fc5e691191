"""rlbook.exercises: every checker accepts rlbook's reference as it is and rejects classic mistakes,
returning False with a report that names the failing case, and never raises on a wrong answer."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from rlbook import advantages, dpo, exercises as ex, grpo, kl, policy_gradient as pg, ppo, preference, tasks
from rlbook.exact import flat_grad

REFERENCES = {
    "check_sequence_logprob": pg.sequence_logprob, "check_k1": kl.k1, "check_k2": kl.k2, "check_k3": kl.k3,
    "check_kl_penalty_loss": kl.kl_penalty_loss, "check_score_function": pg.score_function_gradient,
    "check_rewards_to_go": advantages.discounted_returns, "check_reinforce_loss": pg.reinforce_loss,
    "check_rloo_advantages": advantages.rloo_advantages, "check_gae": advantages.gae, "check_whiten": advantages.whiten,
    "check_ppo_clip": ppo.ppo_clip_loss, "check_approx_kl": ppo.approx_kl, "check_kl_divergence": kl.kl_divergence,
    "check_trust_region_kl": ppo.trust_region_kl, "check_sequence_kl_per_state": kl.sequence_kl_per_state,
    "check_group_advantages": advantages.group_advantages, "check_grpo_loss": grpo.grpo_loss,
    "check_aggregation_weights": grpo.aggregation_weights, "check_dpo_loss": dpo.dpo_loss,
    "check_dpo_gradient_weight": dpo.dpo_gradient_weight, "check_optimal_policy": dpo.optimal_policy,
    "check_ipo_loss": preference.ipo_loss, "check_kto_loss": preference.kto_loss, "check_simpo_loss": preference.simpo_loss,
    "check_best_worst_pairs": tasks.best_worst_indices, "check_ratio_weighted_gradient": kl.exact_ratio_weighted_gradient,
}


def _masked(x, m):
    return x * m


# Each entry: a classic mistake, written here independently of the checker's own hint list.
MISTAKES = {
    "check_sequence_logprob": {
        "no mask": lambda logp, mask: logp.sum(1),
        "mean, not sum": lambda logp, mask: (logp * mask).sum(1) / mask.float().sum(1),
        "probability": lambda logp, mask: (logp * mask).sum(1).exp(),
    },
    "check_k1": {
        "sign": lambda lp, rp: rp - lp,
        "ratio not log": lambda lp, rp: (lp - rp).exp(),
        "k3": lambda lp, rp: (rp - lp).exp() - 1 - (rp - lp),
    },
    "check_k2": {
        "no half": lambda lp, rp: (lp - rp) ** 2,
        "abs": lambda lp, rp: (lp - rp).abs() / 2,
        "ratio": lambda lp, rp: ((rp - lp).exp() - 1) ** 2 / 2,
    },
    "check_k3": {
        "ratio upside down": lambda lp, rp: (lp - rp).exp() - 1 - (lp - rp),
        "no -1": lambda lp, rp: (rp - lp).exp() - (rp - lp),
        "sign of log": lambda lp, rp: (rp - lp).exp() - 1 + (rp - lp),
        "k1": lambda lp, rp: lp - rp,
    },
    "check_kl_penalty_loss": {
        "token mean": lambda lp, rp, beta, m: beta * (kl.k3(lp, rp) * m).sum() / m.sum(),
        "detached (reward placement)": lambda lp, rp, beta, m: beta * (kl.k3(lp, rp) * m).sum(1).mean().detach(),
        "no mask": lambda lp, rp, beta, m: beta * kl.k3(lp, rp).sum(1).mean(),
        "k1": lambda lp, rp, beta, m: beta * ((lp - rp) * m).sum(1).mean(),
    },
    "check_score_function": {
        "sign": lambda logp, w, params: pg.score_function_gradient(logp, w, params) * -1,
        "sum over samples": lambda logp, w, params: flat_grad((logp * (w if w.dim() == 2 else w.unsqueeze(1))).sum(), params),
        "one token only": lambda logp, w, params: flat_grad((logp[:, -1] * (w if w.dim() == 1 else w[:, -1])).mean(), params),
    },
    "check_rewards_to_go": {
        "rewards so far": lambda r, gamma, mask=None: r.cumsum(-1) * (1 if mask is None else mask),
        "total": lambda r, gamma, mask=None: r.sum(-1, keepdim=True).expand_as(r).clone(),
        "no mask": lambda r, gamma, mask=None: advantages.discounted_returns(r, gamma),
        "gamma ignored": lambda r, gamma, mask=None: advantages.discounted_returns(r, 1.0, mask),
    },
    "check_reinforce_loss": {
        "sign": lambda logp, a, m: (per(a, logp) * logp * m).sum() / m.sum(),
        "seed's sum": lambda logp, a, m: -(per(a, logp) * logp * m).sum() / logp.shape[0],
        "no mask": lambda logp, a, m: -(per(a, logp) * logp).mean(),
    },
    "check_rloo_advantages": {
        "group mean": lambda r, G: (r.view(-1, G) - r.view(-1, G).mean(1, keepdim=True)).reshape(-1),
        "divide by G": lambda r, G: (r.view(-1, G) - (r.view(-1, G).sum(1, keepdim=True) - r.view(-1, G)) / G).reshape(-1),
        "batch": lambda r, G: r - (r.sum() - r) / (len(r) - 1),
    },
    "check_gae": {
        "lam only": lambda r, v, gamma, lam, mask=None: naive_gae(r, v, gamma, lam, decay=lam),
        "no gamma in delta": lambda r, v, gamma, lam, mask=None: naive_gae(r, v, 1.0, lam * gamma, decay=gamma * lam),
        "no mask": lambda r, v, gamma, lam, mask=None: advantages.gae(r, v, gamma, lam),
        "advantages are returns": lambda r, v, gamma, lam, mask=None: advantages.gae(r, v, gamma, lam, mask)[1],
    },
    "check_whiten": {
        "population std": lambda x, mask=None: masked_whiten_pop(x, mask),
        "no mask": lambda x, mask=None: (x - x.mean()) / x.std(),
        "centred only": lambda x, mask=None: x - (x.mean() if mask is None else (x * mask).sum() / mask.sum()),
    },
    "check_ppo_clip": {
        "max": lambda lp, olp, a, m, eps=0.2: clip_variant(lp, olp, a, m, eps, torch.maximum),
        "clipped only": lambda lp, olp, a, m, eps=0.2: clip_variant(lp, olp, a, m, eps, lambda u, c: c),
        "ratio upside down": lambda lp, olp, a, m, eps=0.2: clip_variant(olp, lp, a, m, eps, torch.minimum),
        "no mask": lambda lp, olp, a, m, eps=0.2: clip_variant(lp, olp, a, torch.ones_like(m), eps, torch.minimum),
        "eps ignored": lambda lp, olp, a, m, eps=0.2: clip_variant(lp, olp, a, m, 0.2, torch.minimum),
    },
    "check_approx_kl": {
        "ratio upside down": lambda lp, olp, m: ((olp - lp).exp() - 1 - (olp - lp)).mul(m).sum() / m.sum(),
        "k1": lambda lp, olp, m: ((olp - lp) * m).sum() / m.sum(),
        "no mask": lambda lp, olp, m: ((lp - olp).exp() - 1 - (lp - olp)).mean(),
    },
    "check_kl_divergence": {
        "reverse direction": lambda p, q: (q.softmax(-1) * (q.log_softmax(-1) - p.log_softmax(-1))).sum(-1),
        "not normalised": lambda p, q: (p.exp() * (p - q)).sum(-1),
        "0 log 0 not handled": lambda p, q: (p.softmax(-1) * (p.softmax(-1) / q.softmax(-1)).log()).sum(-1),
    },
    "check_trust_region_kl": {
        "direction": lambda o, n, m: kl.kl_divergence(n, o) * m,
        "no mask": lambda o, n, m: kl.kl_divergence(o, n),
        "mean": lambda o, n, m: (kl.kl_divergence(o, n) * m).sum() / m.sum(),
    },
    "check_sequence_kl_per_state": {
        "direction": lambda x, y, m: (kl.kl_divergence(y, x) * m).sum(1),
        "no mask": lambda x, y, m: kl.kl_divergence(x, y).sum(1),
        "mean over positions": lambda x, y, m: (kl.kl_divergence(x, y) * m).sum(1) / m.sum(1),
    },
    "check_group_advantages": {
        "population std": lambda r, G, scale="std", eps=1e-6: group_norm(r, G, scale, eps, unbiased=False),
        "batch stats": lambda r, G, scale="std", eps=1e-6: group_norm(r, len(r), scale, eps),
        "no eps": lambda r, G, scale="std", eps=1e-6: group_norm(r, G, scale, 0.0),
        "scale ignored": lambda r, G, scale="std", eps=1e-6: group_norm(r, G, "std", eps),
    },
    "check_grpo_loss": {
        "k3 upside down": lambda lp, olp, rlp, a, m, eps=0.2, beta=0.04, aggregation="grpo":
            grpo.grpo_loss(lp, olp, None, a, m, eps, 0.0, aggregation=aggregation) + beta * token_weighted(kl.k3(rlp, lp), m, aggregation),
        "always token mean": lambda lp, olp, rlp, a, m, eps=0.2, beta=0.04, aggregation="grpo":
            grpo.grpo_loss(lp, olp, rlp, a, m, eps, beta, aggregation="token"),
        "k1 instead of k3": lambda lp, olp, rlp, a, m, eps=0.2, beta=0.04, aggregation="grpo":
            grpo.grpo_loss(lp, olp, rlp, a, m, eps, beta, kl_estimator="k1", aggregation=aggregation),
        "no mask": lambda lp, olp, rlp, a, m, eps=0.2, beta=0.04, aggregation="grpo":
            grpo.grpo_loss(lp, olp, rlp, a, torch.ones_like(m), eps, beta, aggregation=aggregation),
    },
    "check_aggregation_weights": {
        "grpo = token": lambda m, aggregation="grpo", max_length=None: m / m.sum() if aggregation != "dr_grpo" else grpo.aggregation_weights(m, "dr_grpo", max_length),
        "dr_grpo by longest": lambda m, aggregation="grpo", max_length=None: grpo.aggregation_weights(m, aggregation, int(m.sum(1).max())) if aggregation == "dr_grpo" else grpo.aggregation_weights(m, aggregation),
        "no mask": lambda m, aggregation="grpo", max_length=None: grpo.aggregation_weights(torch.ones_like(m), aggregation, max_length),
    },
    "check_dpo_loss": {
        "beta outside": lambda cw, cl, rw, rl, beta: -beta * F.logsigmoid((cw - rw) - (cl - rl)),
        "swapped": lambda cw, cl, rw, rl, beta: -F.logsigmoid(beta * ((cl - rl) - (cw - rw))),
        "no reference": lambda cw, cl, rw, rl, beta: -F.logsigmoid(beta * (cw - cl)),
        "unstable log sigmoid": lambda cw, cl, rw, rl, beta: -torch.log(torch.sigmoid(beta * ((cw - rw) - (cl - rl)))),
        "batch sum": lambda cw, cl, rw, rl, beta: -F.logsigmoid(beta * ((cw - rw) - (cl - rl))).sum(),
    },
    "check_dpo_gradient_weight": {
        "inverted": lambda cw, cl, rw, rl, beta: torch.sigmoid(beta * ((cw - rw) - (cl - rl))),
        "no beta": lambda cw, cl, rw, rl, beta: torch.sigmoid(-((cw - rw) - (cl - rl))),
        "no reference": lambda cw, cl, rw, rl, beta: torch.sigmoid(-beta * (cw - cl)),
    },
    "check_optimal_policy": {
        "r times beta": lambda ref, r, beta: torch.log_softmax(ref + r * beta, -1),
        "no reference": lambda ref, r, beta: torch.log_softmax(r / beta, -1),
        "unnormalised": lambda ref, r, beta: ref + r / beta,
        "overflowing": lambda ref, r, beta: ref + r / beta - torch.log((ref.exp() * (r / beta).exp()).sum(-1, keepdim=True)),
    },
    "check_ipo_loss": {
        "target 1/beta": lambda cw, cl, rw, rl, beta, lw=None, ll=None: (margin(cw, cl, rw, rl, lw, ll) - 1 / beta) ** 2,
        "beta times h": lambda cw, cl, rw, rl, beta, lw=None, ll=None: (beta * margin(cw, cl, rw, rl, lw, ll) - 1 / (2 * beta)) ** 2,
        "lengths ignored": lambda cw, cl, rw, rl, beta, lw=None, ll=None: (margin(cw, cl, rw, rl) - 1 / (2 * beta)) ** 2,
    },
    "check_kto_loss": {
        "branches swapped": lambda lp, rp, d, beta, ld, lu, z0: torch.where(~d, ld * torch.sigmoid(-beta * (lp - rp - z0)), lu * torch.sigmoid(beta * (lp - rp - z0))),
        "lambdas swapped": lambda lp, rp, d, beta, ld, lu, z0: torch.where(d, lu * torch.sigmoid(-beta * (lp - rp - z0)), ld * torch.sigmoid(beta * (lp - rp - z0))),
        "no z0": lambda lp, rp, d, beta, ld, lu, z0: torch.where(d, ld * torch.sigmoid(-beta * (lp - rp)), lu * torch.sigmoid(beta * (lp - rp))),
        "no beta": lambda lp, rp, d, beta, ld, lu, z0: torch.where(d, ld * torch.sigmoid(-(lp - rp - z0)), lu * torch.sigmoid(lp - rp - z0)),
    },
    "check_simpo_loss": {
        "no length normalisation": lambda cw, cl, lw, ll, beta=2.0, gamma=1.0: -F.logsigmoid(beta * cw - beta * cl - gamma),
        "gamma inside beta": lambda cw, cl, lw, ll, beta=2.0, gamma=1.0: -F.logsigmoid(beta * (cw / lw - cl / ll - gamma)),
        "gamma added": lambda cw, cl, lw, ll, beta=2.0, gamma=1.0: -F.logsigmoid(beta * cw / lw - beta * cl / ll + gamma),
        "defaults ignored (beta = 1)": lambda cw, cl, lw, ll, beta=2.0, gamma=1.0: -F.logsigmoid(cw / lw - cl / ll - gamma),
    },
    "check_best_worst_pairs": {
        "ties kept": lambda r, G: (torch.arange(0, len(r), G) + r.view(-1, G).argmax(1), torch.arange(0, len(r), G) + r.view(-1, G).argmin(1)),
        "no offsets": lambda r, G: tuple(i % G for i in tasks.best_worst_indices(r, G)),
        "swapped": lambda r, G: tasks.best_worst_indices(r, G)[::-1],
    },
    "check_ratio_weighted_gradient": {
        "no ratio (k3 in the loss)": lambda pi, ref, estimator="k3": kl.exact_kl_gradients(pi, ref)["k3/loss"],
        "k3 as a reward": lambda pi, ref, estimator="k3": kl.exact_kl_gradients(pi, ref)["k3/reward"],
        "sequence ratio": lambda pi, ref, estimator="k3": kl.exact_kl_gradients(pi, ref)["KL(pi||ref)"],
    },
}


def per(a, logp):
    return a.unsqueeze(1).expand_as(logp) if a.dim() == 1 else a


def naive_gae(r, v, gamma, lam, decay):
    """GAE-like sums with a chosen decay (to plant mistakes); V = 0 after the end; no mask."""
    r2, v2 = r.reshape(-1, r.shape[-1]), v.reshape(-1, v.shape[-1])
    T = r2.shape[1]
    v_next = torch.cat([v2[:, 1:], torch.zeros_like(v2[:, :1])], 1)
    delta = r2 + gamma * v_next - v2
    adv = torch.stack([sum(decay ** (l - t) * delta[:, l] for l in range(t, T)) for t in range(T)], 1)
    return adv.reshape(r.shape)


def masked_whiten_pop(x, mask=None):
    m = torch.ones_like(x) if mask is None else mask
    mean = (x * m).sum() / m.sum()
    var = (((x - mean) * m) ** 2).sum() / m.sum()
    return (x - mean) / var.sqrt() * m


def clip_variant(lp, olp, a, m, eps, pick):
    r = (lp - olp).exp()
    A = per(a, lp)
    return -(pick(r * A, r.clamp(1 - eps, 1 + eps) * A) * m).sum() / m.sum()


def group_norm(r, G, scale, eps, unbiased=True):
    g = r.view(-1, G)
    c = g - g.mean(1, keepdim=True)
    return (c / (g.std(1, unbiased=unbiased, keepdim=True) + eps) if scale == "std" else c).reshape(-1)


def token_weighted(x, m, aggregation):
    return (grpo.aggregation_weights(m, aggregation) * x * m).sum()


def margin(cw, cl, rw, rl, lw=None, ll=None):
    return (cw - rw) - (cl - rl) if lw is None else (cw - rw) / lw - (cl - rl) / ll


def test_every_checker_has_a_reference_and_mistakes():
    assert set(REFERENCES) == set(ex.CHECKERS) == set(MISTAKES)
    for name, checker in ex.CHECKERS.items():
        ref = REFERENCES[name]
        assert f"`rlbook.{ref.__module__.split('.')[-1]}.{ref.__name__}`" in checker.__doc__, name
        assert len(MISTAKES[name]) >= 3, name


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_reference_passes(name, capsys):
    assert ex.CHECKERS[name](REFERENCES[name]) is True
    assert "all" in capsys.readouterr().out


@pytest.mark.parametrize("name, mistake", [(n, m) for n in sorted(MISTAKES) for m in MISTAKES[n]])
def test_mistake_rejected_with_the_failing_case_named(name, mistake, capsys):
    assert ex.CHECKERS[name](MISTAKES[name][mistake]) is False
    out = capsys.readouterr().out
    assert re.search(r"case '.+?' FAILED", out), out
    assert "hint:" in out or "raised" in out, out


def _stub(*args, **kwargs):
    raise NotImplementedError


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_unfinished_answers_return_false_without_raising(name, capsys):
    checker = ex.CHECKERS[name]
    assert checker(_stub) is False
    assert "not implemented yet" in capsys.readouterr().out
    assert checker(lambda *a, **k: ...) is False          # a stub whose body is `...`
    assert checker(lambda *a, **k: None) is False
    assert checker(lambda *a, **k: 1 / 0) is False        # any exception is reported
    assert "ZeroDivisionError" in capsys.readouterr().out
    assert checker(lambda *a, **k: torch.full((7, 3), float("nan"))) is False   # wrong shape, NaN
    assert checker(lambda *a, **k: "text") is False
    assert checker(None) is False


def test_nan_is_reported(capsys):
    assert ex.check_group_advantages(lambda r, G, scale="std", eps=1e-6: group_norm(r, G, scale, 0.0)) is False
    out = capsys.readouterr().out
    assert "case 'a group of equal rewards' FAILED (NaN or inf" in out and "eps" in out


def test_hints_point_at_the_mistake(capsys):
    ex.check_k3(MISTAKES["check_k3"]["ratio upside down"])
    assert "upside down" in capsys.readouterr().out
    ex.check_whiten(MISTAKES["check_whiten"]["population std"])
    assert "Bessel" in capsys.readouterr().out
    ex.check_kl_divergence(MISTAKES["check_kl_divergence"]["reverse direction"])
    assert "wrong direction" in capsys.readouterr().out
    ex.check_reinforce_loss(MISTAKES["check_reinforce_loss"]["seed's sum"])
    assert "reduction='sequence'" in capsys.readouterr().out
    ex.check_sequence_logprob(MISTAKES["check_sequence_logprob"]["no mask"])
    assert "forgot the mask" in capsys.readouterr().out


def test_losses_accept_per_example_values_or_their_mean():
    assert ex.check_dpo_loss(lambda *a: dpo.dpo_loss(*a)) is True                   # the batch mean
    assert ex.check_dpo_loss(lambda *a: dpo.dpo_loss(*a, reduction="none")) is True
    assert ex.check_gae(lambda *a, **k: advantages.gae(*a, **k)[0]) is True          # advantages alone
    assert ex.check_optimal_policy(lambda *a: dpo.optimal_policy(*a)[0]) is True     # log pi* alone


def test_inputs_are_not_shared_between_calls():
    def in_place(logp, ref_logp):
        out = kl.k3(logp, ref_logp)
        logp.zero_()  # a reader's in-place edit must not change later cases or the reference
        return out
    assert ex.check_k3(in_place) is True


def test_plain_python_loops_pass():
    """The exercises ask for loops with .item() and math: such answers (no autograd) pass."""
    def my_dpo_loss(cw, cl, rw, rl, beta):
        out = []
        for a, b, c, d in zip(cw.tolist(), cl.tolist(), rw.tolist(), rl.tolist()):
            m = beta * (a - c) - beta * (b - d)
            out.append(math.log1p(math.exp(-m)) if m > 0 else -m + math.log1p(math.exp(m)))
        return torch.tensor(out)
    assert ex.check_dpo_loss(my_dpo_loss) is True


def test_kl_penalty_loss_needs_a_gradient(capsys):
    assert ex.check_kl_penalty_loss(MISTAKES["check_kl_penalty_loss"]["detached (reward placement)"]) is False
    assert "case 'gradient' FAILED" in capsys.readouterr().out
