"""Checkers for the reader's own implementations: `check_xxx(fn)` calls `fn` on several cases,
compares it with rlbook's reference and, where there is one, an independent exact answer (a
closed form or a brute-force loop), prints what failed with a hint aimed at the usual mistake,
and returns True or False. A checker never raises on a wrong or unfinished answer: an exception
(NotImplementedError included), a wrong shape, None or NaN are reported and give False.

    >>> from rlbook import kl
    >>> check_k3(kl.k3)
    check_k3: all 5 cases pass.
    True
    >>> def my_k3(logp, ref_logp):
    ...     raise NotImplementedError
    >>> check_k3(my_k3)
    check_k3: not implemented yet (the function raised NotImplementedError). Fill in the stub and run again.
    False
    >>> check_k3(lambda logp, ref_logp: kl.k1(logp, ref_logp))  # doctest: +ELLIPSIS
    check_k3: case 'small log-ratios' FAILED (values differ)
    ...
      hint: that is k1 (= -log r) alone; k3 adds the control variate r - 1.
    ...
    False

Each checker's docstring gives the signature it expects and the rlbook function it compares
against; that function, passed as it is, passes. Chapters call them after a stub cell;
`scripts/grade.py` runs a student's notebook and reports which checker calls returned True.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from rlbook import advantages, dpo, exact, grpo, kl, policy_gradient as pg, ppo, preference, tasks

RTOL, ATOL = 1e-4, 1e-6


@dataclass
class _Case:
    """One call fn(*args, **kwargs); `expected` from rlbook's reference, `exact` (optional) from
    an independent computation; a check passes when the answer matches both."""
    name: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    expected: Any = None
    exact: Any = None


@dataclass
class _Mistake:
    """A classic wrong answer: if the reader's output matches `wrong(*args, **kwargs)`, print `hint`."""
    hint: str
    wrong: Callable


def _fresh(x):
    """A copy of the inputs, so that a reader's in-place edit cannot change the next call."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, (tuple, list)):
        return type(x)(_fresh(v) for v in x)
    return x


def _as_tensors(x):
    """The reader's answer as a tuple of float64 tensors (None where it cannot be converted)."""
    parts = x if isinstance(x, tuple) else (x,)
    out = []
    for p in parts:
        try:
            out.append(torch.as_tensor(p.detach() if isinstance(p, torch.Tensor) else p, dtype=torch.float64))
        except (TypeError, ValueError, RuntimeError):
            out.append(None)
    return tuple(out)


def _show(x) -> str:
    if x is None:
        return "None"
    t = torch.as_tensor(x, dtype=torch.float64).detach()
    if t.dim() == 0:
        return f"{t.item():.4g}"
    flat = [round(v, 4) for v in t.reshape(-1).tolist()]
    text = str(flat[:12])[:-1] + (", ...]" if len(flat) > 12 else "]")
    return text if t.dim() == 1 else f"shape {tuple(t.shape)}: {text}"


def _close(got: torch.Tensor | None, want: torch.Tensor, rtol: float = RTOL, atol: float = ATOL) -> bool:
    if got is None or got.shape != want.shape:
        return False
    both_inf = torch.isinf(got) & torch.isinf(want) & (torch.sign(got) == torch.sign(want))
    return bool((both_inf | torch.isclose(got, want, rtol=rtol, atol=atol)).all())


def _mismatch(got: tuple, want: tuple) -> str | None:
    """Why `got` is not `want` (None if it is), part by part."""
    if len(got) < len(want):
        return f"returned {len(got)} value(s), expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        label = f"part {i} of the answer: " if len(want) > 1 else ""
        if w is None:
            return "nothing to compare with"
        if g is None:
            return f"{label}could not read the answer as numbers"
        if g.shape != w.shape:
            return f"{label}shape {tuple(g.shape)}, expected {tuple(w.shape)}"
        if not torch.isfinite(g).all() and torch.isfinite(w).all():
            return f"{label}NaN or inf in the answer (expected finite values)"
        if not _close(g, w):
            return f"{label}values differ"
    return None


def _run(title: str, fn, cases: list[_Case], mistakes: list[_Mistake], hint: str,
         prepare: Callable = lambda case, got: got) -> bool:
    """Call fn on every case; print one report per failing case; True when all pass."""
    if not callable(fn):
        print(f"{title}: expected a function, got {type(fn).__name__}.")
        return False
    failed = 0
    for case in cases:
        want = _as_tensors(case.expected)
        try:
            got_raw = fn(*_fresh(case.args), **_fresh(case.kwargs))
        except NotImplementedError:
            print(f"{title}: not implemented yet (the function raised NotImplementedError). Fill in the stub and run again.")
            return False
        except Exception as e:  # a wrong answer is reported, never raised
            failed += 1
            print(f"{title}: case '{case.name}' FAILED: the call raised {type(e).__name__}: {e}")
            continue
        if got_raw is None or got_raw is Ellipsis:
            print(f"{title}: not implemented yet (the function returned {got_raw!r}; did you forget `return`?).")
            return False
        got = _as_tensors(prepare(case, got_raw))
        why = _mismatch(got, want)
        if why is None and case.exact is not None:
            why = _mismatch(got, _as_tensors(case.exact))
            why = None if why is None else why + " from the exact answer"
        if why is None:
            continue
        failed += 1
        print(f"{title}: case '{case.name}' FAILED ({why})")
        print(f"  expected: {' | '.join(_show(w) for w in want)}")
        print(f"  got:      {' | '.join(_show(g) for g in got)}")
        known = []
        for m in mistakes:
            try:
                wrong = _as_tensors(m.wrong(*_fresh(case.args), **_fresh(case.kwargs)))
            except Exception:
                continue
            if _mismatch(got[:1], wrong[:1]) is None:  # the main part decides which mistake it was
                known.append(m.hint)
        for h in known or [hint]:
            print(f"  hint: {h}")
    if failed:
        print(f"{title}: {failed} of {len(cases)} cases failed.")
        return False
    print(f"{title}: all {len(cases)} cases pass.")
    return True


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logp(*shape, seed: int, scale: float = 3.0) -> torch.Tensor:
    """Log-probabilities in (-scale, 0): float64, deterministic."""
    return -scale * torch.rand(*shape, generator=_gen(seed), dtype=torch.float64) - 1e-3


def _ragged_mask(lengths, T: int) -> torch.Tensor:
    return (torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).float()


def _batch_or_mean(case: _Case, got):
    """For losses with one value per example: accept the values `[B]` or their batch mean."""
    t = _as_tensors(got)[0]
    if t is not None and t.dim() == 0 and _close(t, case.expected.double().mean()):
        return case.expected
    return got


def _summed(reference: Callable) -> _Mistake:
    return _Mistake("you summed over the batch; return the per-example losses [B] or their mean.",
                    lambda *a, **k: reference(*a, **k, reduction="sum"))


# ====================================================================== chapter 00: log-probs of sequences

def check_sequence_logprob(fn) -> bool:
    """fn(logp, mask) -> `[B]`: log P(completion) = sum of the per-token log-probs over the
    unmasked tokens; logp, mask `[B, T]` (float 0/1 or bool).
    reference: `rlbook.policy_gradient.sequence_logprob`"""
    logp = _logp(4, 6, seed=0)
    lengths = [6, 3, 1, 5]
    mask = _ragged_mask(lengths, 6)
    padded = torch.where(mask.bool(), logp, torch.full_like(logp, -50.0))  # padding holds junk
    loop = lambda lp, m: torch.tensor([sum(lp[i, t].item() for t in range(lp.shape[1]) if m[i, t])
                                       for i in range(lp.shape[0])], dtype=torch.float64)
    specs = [("every token counts", (logp, torch.ones_like(logp)), {}, loop(logp, torch.ones_like(logp))),
             ("ragged mask", (logp, mask), {}, loop(logp, mask)),
             ("padding holds junk log-probs", (padded, mask), {}, loop(padded, mask)),
             ("bool mask", (padded, mask.bool()), {}, loop(padded, mask))]
    mistakes = [_Mistake("forgot the mask: padded positions are not tokens of the completion; multiply by the mask (or use masked_sum) before summing.",
                         lambda lp, m: lp.sum(1)),
                _Mistake("you averaged over the tokens; log P(sequence) is the *sum* of per-token log-probs (the product of the probabilities).",
                         lambda lp, m: (lp * m).sum(1) / m.float().sum(1)),
                _Mistake("you returned the probability P, not its log.", lambda lp, m: (lp * m).sum(1).exp())]
    cases = [_Case(n, a, k, pg.sequence_logprob(*a), ex) for n, a, k, ex in specs]
    return _run("check_sequence_logprob", fn, cases, mistakes,
                "sum logp[i, t] over the positions where mask[i, t] is 1, one number per row.")


# ====================================================================== KL estimators (chapters 00, 06)

def _kl_inputs():
    lp = _logp(6, seed=1, scale=2.0)
    small = lp + 0.1 * torch.randn(6, generator=_gen(2), dtype=torch.float64)
    return [("equal policies", (lp, lp.clone()), {}),
            ("small log-ratios", (lp, small.clamp(max=-1e-6)), {}),
            ("2-D batch", (_logp(3, 4, seed=3), _logp(3, 4, seed=4)), {}),
            ("extreme log-probs", (torch.tensor([-30.0, -1e-6, -19.0, -5.0], dtype=torch.float64),
                                   torch.tensor([-12.0, -25.0, -1e-6, -5.0 + 1e-7], dtype=torch.float64)), {}),
            ("float32 inputs", (torch.tensor([-0.5, -2.0, -4.0]), torch.tensor([-0.7, -1.0, -4.0])), {})]


def _elementwise(formula):
    """An independent per-element computation with `math`, for an estimator of log r."""
    def compute(logp, ref_logp):
        flat = [formula(r - p) for p, r in zip(logp.double().reshape(-1).tolist(), ref_logp.double().reshape(-1).tolist())]
        return torch.tensor(flat, dtype=torch.float64).reshape(logp.shape)
    return compute


def _check_estimator(title, reference, formula, mistakes, hint, fn) -> bool:
    independent = _elementwise(formula)
    cases = [_Case(n, a, k, reference(*a), independent(*a)) for n, a, k in _kl_inputs()]
    return _run(title, fn, cases, mistakes, hint)


def check_k1(fn) -> bool:
    """fn(logp, ref_logp) -> same shape: k1 = log pi_theta(a|s) - log pi_ref(a|s) = -log r.
    reference: `rlbook.kl.k1`"""
    mistakes = [_Mistake("wrong sign: k1 = -log r = logp - ref_logp (positive when pi_theta gives the token more mass than pi_ref).",
                         lambda lp, rp: rp - lp),
                _Mistake("that is k3, not k1.", lambda lp, rp: kl.k3(lp, rp))]
    return _check_estimator("check_k1", kl.k1, lambda log_r: -log_r, mistakes,
                            "k1 = logp - ref_logp, element by element.", fn)


def check_k2(fn) -> bool:
    """fn(logp, ref_logp) -> same shape: k2 = (log r)^2 / 2 with log r = ref_logp - logp.
    reference: `rlbook.kl.k2`"""
    mistakes = [_Mistake("missing the 1/2: k2 = (log r)^2 / 2.", lambda lp, rp: (rp - lp) ** 2),
                _Mistake("square the *log*-ratio, not the ratio minus one.", lambda lp, rp: 0.5 * torch.expm1(rp - lp) ** 2)]
    return _check_estimator("check_k2", kl.k2, lambda log_r: 0.5 * log_r * log_r, mistakes,
                            "k2 = 0.5 * (ref_logp - logp) ** 2.", fn)


def check_k3(fn) -> bool:
    """fn(logp, ref_logp) -> same shape: k3 = (r - 1) - log r with r = pi_ref(a|s) / pi_theta(a|s).
    reference: `rlbook.kl.k3`"""
    mistakes = [_Mistake("the ratio is upside down: for samples from pi_theta k3 uses r = pi_ref / pi_theta (log r = ref_logp - logp); "
                         "pi_theta / pi_ref is biased on-policy (chapter 06).", lambda lp, rp: kl.k3(rp, lp)),
                _Mistake("missing the -1: k3 = (r - 1) - log r, which is >= 0 and 0 when the policies agree.",
                         lambda lp, rp: (rp - lp).exp() - (rp - lp)),
                _Mistake("that is k1 (= -log r) alone; k3 adds the control variate r - 1.", lambda lp, rp: lp - rp)]
    return _check_estimator("check_k3", kl.k3, lambda log_r: math.expm1(log_r) - log_r, mistakes,
                            "k3 = exp(log r) - 1 - log r with log r = ref_logp - logp (torch.expm1 keeps it accurate near 0).", fn)


def check_kl_penalty_loss(fn) -> bool:
    """fn(logp, ref_logp, beta, mask) -> scalar: GRPO's drift penalty in the loss,
    beta * sum_t k3(logp_t, ref_logp_t) over each sequence's unmasked tokens, mean over sequences;
    differentiable through logp (the penalty is in the loss, not a detached reward).
    reference: `rlbook.kl.kl_penalty_loss` (its default estimator is k3)"""
    def case(name, logp, ref_logp, beta, mask):
        loop = sum(beta * sum(math.expm1(ref_logp[i, t].item() - logp[i, t].item()) - (ref_logp[i, t].item() - logp[i, t].item())
                              for t in range(logp.shape[1]) if mask[i, t]) for i in range(logp.shape[0])) / logp.shape[0]
        return _Case(name, (logp, ref_logp, beta, mask), {}, kl.kl_penalty_loss(logp, ref_logp, beta, mask),
                     torch.tensor(loop, dtype=torch.float64))

    mask = _ragged_mask([5, 2, 4], 5)
    cases = [case("full sequences", _logp(3, 5, seed=5), _logp(3, 5, seed=6), 0.1, torch.ones(3, 5)),
             case("ragged mask", _logp(3, 5, seed=7), _logp(3, 5, seed=8), 0.04, mask),
             case("beta = 1", _logp(2, 3, seed=9), _logp(2, 3, seed=10), 1.0, torch.ones(2, 3))]
    mistakes = [_Mistake("you averaged the per-token KL over tokens; the sequence KL is the *sum* over its tokens, then the mean over sequences.",
                         lambda lp, rp, b, m: b * (kl.k3(lp, rp) * m).sum() / m.sum()),
                _Mistake("forgot the mask: padded positions are not tokens.", lambda lp, rp, b, m: b * kl.k3(lp, rp).sum(1).mean()),
                _Mistake("the ratio of k3 is upside down (r = pi_ref / pi_theta for samples from pi_theta).",
                         lambda lp, rp, b, m: kl.kl_penalty_loss(rp, lp, b, m)),
                _Mistake("missing beta.", lambda lp, rp, b, m: kl.kl_penalty_loss(lp, rp, 1.0, m))]
    ok = _run("check_kl_penalty_loss", fn, cases, mistakes, "beta * (k3 * mask).sum(1).mean()")
    if not ok:
        return False
    # the placement: in the loss the penalty must carry a gradient through logp
    logp, ref_logp, mask_ = _logp(3, 5, seed=11).requires_grad_(), _logp(3, 5, seed=12), _ragged_mask([5, 2, 4], 5)
    want = torch.autograd.grad(kl.kl_penalty_loss(logp, ref_logp, 0.5, mask_), logp)[0]
    try:
        out = fn(logp, ref_logp, 0.5, mask_)
        got = torch.autograd.grad(out, logp)[0] if isinstance(out, torch.Tensor) and out.requires_grad else None
    except Exception as e:
        print(f"check_kl_penalty_loss: case 'gradient' FAILED: differentiating the answer raised {type(e).__name__}: {e}")
        return False
    if got is None or not _close(got.double(), want.double()):
        print("check_kl_penalty_loss: case 'gradient' FAILED: the answer has the right value but "
              + ("no gradient through logp" if got is None else "the wrong gradient w.r.t. logp"))
        print("  hint: in the loss the penalty is differentiated: do not detach logp or call .item(); "
              "a detached value is the *reward* placement (kl_penalty_rewards).")
        return False
    return True


# ====================================================================== chapter 01: the score function

def check_score_function(fn) -> bool:
    """fn(logp, weights, params) -> `[P]`: the sampled policy gradient
    1/N sum_i sum_t grad_params log pi(a_it | s_it) * Phi_it, flattened over params;
    logp `[N, T]` with grad, weights `[N]` (one per sequence) or `[N, T]`.
    reference: `rlbook.policy_gradient.score_function_gradient`"""
    pi = exact.TabularPolicy(vocab_size=3, length=3, seed=0)
    samples = pi.sample(12, generator=_gen(0))
    token_r = torch.randn(27, 3, generator=_gen(1), dtype=torch.float64)
    r_s = token_r[exact.sequence_index(pi, samples)]
    R = token_r.sum(1)
    seqs = pi.sequences()
    with torch.no_grad():
        p = pi.probs()
    # every sequence once, weighted by K P(tau) R(tau): the estimate is then the exact gradient of J
    exact_weights = (len(seqs) * p * R).detach()
    specs = [("weights per sequence [N]", samples, r_s.sum(1), None),
             ("weights per token [N, T] (rewards-to-go)", samples, advantages.discounted_returns(r_s), None),
             ("every sequence weighted by K P R: the exact gradient of J", seqs, exact_weights, exact.exact_gradient(pi, R))]
    cases = [_Case(n, (sq, w), {}, pg.score_function_gradient(pi.token_logprobs(sq), w, pi.logits), ex) for n, sq, w, ex in specs]

    def on_policy(f):  # a fresh graph for every call: logp is rebuilt from the policy each time
        return lambda sq, w: f(pi.token_logprobs(sq), w, pi.logits)

    ref = pg.score_function_gradient
    mistakes = [_Mistake("wrong sign: this is the gradient of the loss; the policy gradient (ascent direction) is its negative.",
                         on_policy(lambda lp, w, params: -ref(lp, w, params))),
                _Mistake("you summed over the N samples; the estimate averages them (1/N).",
                         on_policy(lambda lp, w, params: ref(lp, w, params) * lp.shape[0])),
                _Mistake("you averaged over tokens too; the seed's estimate sums over t and averages over samples only.",
                         on_policy(lambda lp, w, params: ref(lp, w, params) / lp.shape[1]))]
    return _run("check_score_function", on_policy(fn) if callable(fn) else fn, cases, mistakes,
                "loop over i and t, add weights[i, t] * exact.flat_grad(logp[i, t], params, retain_graph=True), divide by N.")


# ====================================================================== rewards-to-go, REINFORCE, baselines

def check_rewards_to_go(fn) -> bool:
    """fn(rewards, gamma, mask=None) -> rewards' shape: G_t = sum_{k >= t} gamma^(k-t) r_k per
    episode, 0 at masked steps; rewards `[T]` or `[B, T]` (the batched cases pass a mask).
    reference: `rlbook.advantages.discounted_returns`"""
    def loop(r, gamma, mask=None):
        r2 = r.reshape(-1, r.shape[-1])
        m = torch.ones_like(r2) if mask is None else mask.reshape(r2.shape)
        out = [[sum(gamma ** (k - t) * r2[i, k].item() for k in range(t, r2.shape[1]) if m[i, k]) if m[i, t] else 0.0
                for t in range(r2.shape[1])] for i in range(r2.shape[0])]
        return torch.tensor(out, dtype=torch.float64).reshape(r.shape)

    r1 = torch.tensor([1.0, 0.0, 2.0, -1.0], dtype=torch.float64)
    rb = torch.randn(3, 5, generator=_gen(3), dtype=torch.float64)
    mask = _ragged_mask([5, 2, 4], 5)
    specs = [("one episode, gamma = 1", (r1, 1.0), {}), ("one episode, gamma = 0.5", (r1, 0.5), {}),
             ("gamma = 0: G_t = r_t", (r1, 0.0), {}),
             ("batch with a ragged mask (junk rewards in the padding)", (rb, 0.9, mask), {})]
    cases = [_Case(n, a, k, advantages.discounted_returns(*a, **k), loop(*a, **k)) for n, a, k in specs]
    mistakes = [_Mistake("these are the rewards so far (sum over k <= t); rewards-to-go sum from t to the end.",
                         lambda r, g, m=None: r.cumsum(-1) if g == 1.0 else advantages.discounted_returns(r.flip(-1), g).flip(-1)),
                _Mistake("every step got the total reward; rewards-to-go drop the rewards before t.",
                         lambda r, g, m=None: (r if m is None else r * m).sum(-1, keepdim=True).expand_as(r)),
                _Mistake("forgot the mask: rewards in the padding are not part of the episode.",
                         lambda r, g, m=None: advantages.discounted_returns(r, g) * (1 if m is None else m)),
                _Mistake("the discount should be gamma^(k - t), counted from the current step t, not gamma^k.",
                         lambda r, g, m=None: torch.stack([(r[..., t:] * g ** torch.arange(t, r.shape[-1], dtype=r.dtype)).sum(-1)
                                                           for t in range(r.shape[-1])], -1))]
    return _run("check_rewards_to_go", fn, cases, mistakes,
                "walk backwards: G = r_t + gamma * G, resetting to 0 where the mask is 0.")


def check_reinforce_loss(fn) -> bool:
    """fn(logp, advantages, mask) -> scalar: the REINFORCE loss -A_t log pi(a_t|s_t), averaged over
    all unmasked tokens (torch's "mean"); advantages `[B]` (one per sequence) or `[B, T]`.
    reference: `rlbook.policy_gradient.reinforce_loss`"""
    def loop(lp, a, m):
        a2 = a.unsqueeze(1).expand_as(lp) if a.dim() == 1 else a
        terms = [-a2[i, t].item() * lp[i, t].item() for i in range(lp.shape[0]) for t in range(lp.shape[1]) if m[i, t]]
        return torch.tensor(sum(terms) / len(terms), dtype=torch.float64)

    mask = _ragged_mask([4, 1, 3], 4)
    specs = [("advantages per sequence [B]", (_logp(3, 4, seed=13), torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), torch.ones(3, 4)), {}),
             ("advantages per token [B, T], ragged mask", (_logp(3, 4, seed=14), torch.randn(3, 4, generator=_gen(15), dtype=torch.float64), mask), {}),
             ("advantages per sequence, ragged mask", (_logp(3, 4, seed=16), torch.tensor([0.3, 2.0, -1.0], dtype=torch.float64), mask), {})]
    cases = [_Case(n, a, k, pg.reinforce_loss(*a), loop(*a)) for n, a, k in specs]
    mistakes = [_Mistake("wrong sign: the loss is -A * logp, so that gradient *descent* raises the log-probs of positive-advantage tokens.",
                         lambda lp, a, m: -pg.reinforce_loss(lp, a, m)),
                _Mistake("you summed over each sequence's tokens and averaged over sequences (the seed's 1/N sum_i sum_t, reduction='sequence'); "
                         "this checker expects torch's convention, the mean over all unmasked tokens.",
                         lambda lp, a, m: pg.reinforce_loss(lp, a, m, reduction="sequence")),
                _Mistake("forgot the mask: padded positions count as tokens.", lambda lp, a, m: pg.reinforce_loss(lp, a)),
                _Mistake("you summed where the mean is expected.", lambda lp, a, m: pg.reinforce_loss(lp, a, m, reduction="sum"))]
    return _run("check_reinforce_loss", fn, cases, mistakes,
                "-(advantages * logp * mask).sum() / mask.sum(), with [B] advantages broadcast over the tokens.")


def check_rloo_advantages(fn) -> bool:
    """fn(rewards, group_size) -> `[N]`: A_i = R_i - mean of the *other* G - 1 rewards of its group;
    rewards `[N]` laid out group after group.
    reference: `rlbook.advantages.rloo_advantages`"""
    def loop(r, G):
        out = []
        for i in range(len(r)):
            g0 = i // G * G
            others = [r[j].item() for j in range(g0, g0 + G) if j != i]
            out.append(r[i].item() - sum(others) / len(others))
        return torch.tensor(out, dtype=torch.float64)

    specs = [("G = 2", (torch.tensor([1.0, 0.0, 0.0, 3.0], dtype=torch.float64), 2), {}),
             ("two groups of 4", (torch.randn(8, generator=_gen(17), dtype=torch.float64), 4), {}),
             ("a group of equal rewards", (torch.tensor([2.0, 2.0, 2.0, 0.0, 1.0, 5.0], dtype=torch.float64), 3), {}),
             ("rewards far from 0", (1000 + torch.randn(6, generator=_gen(18), dtype=torch.float64), 6), {})]
    cases = [_Case(n, a, k, advantages.rloo_advantages(*a), loop(*a)) for n, a, k in specs]
    mistakes = [_Mistake("your baseline includes the sample itself (the group mean); leave-one-out averages the *other* G - 1.",
                         lambda r, G: advantages.group_advantages(r, G, scale="none")),
                _Mistake("divide the sum of the others by G - 1 (their count), not by G.",
                         lambda r, G: r - (r.view(-1, G).sum(1, keepdim=True) - r.view(-1, G)).reshape(-1) / G),
                _Mistake("the baseline comes from the sample's own group, not the whole batch.",
                         lambda r, G: advantages.rloo_advantages(r, len(r)))]
    return _run("check_rloo_advantages", fn, cases, mistakes,
                "view the rewards as [N / G, G]; the others' mean is (group sum - R_i) / (G - 1).")


# ====================================================================== chapter 03: GAE and whitening

def check_gae(fn) -> bool:
    """fn(rewards, values, gamma, lam, mask=None) -> advantages, or (advantages, returns):
    delta_t = r_t + gamma V(s_{t+1}) - V(s_t) with V = 0 after the episode's last step,
    A_t = sum_l (gamma lam)^l delta_{t+l}, returns = A + V. rewards, values `[T]` (one episode)
    or `[B, T]` (the batched case passes a mask; masked steps get 0).
    reference: `rlbook.advantages.gae`"""
    def loop(r, v, gamma, lam, mask=None):
        r2, v2 = r.reshape(-1, r.shape[-1]), v.reshape(-1, v.shape[-1])
        m = torch.ones_like(r2) if mask is None else mask
        adv = torch.zeros_like(r2)
        for i in range(r2.shape[0]):
            T = int(m[i].sum())
            V = lambda t: v2[i, t].item() if t < T else 0.0
            delta = [r2[i, t].item() + gamma * V(t + 1) - V(t) for t in range(T)]
            for t in range(T):
                adv[i, t] = sum((gamma * lam) ** (l - t) * delta[l] for l in range(t, T))
        return adv.reshape(r.shape), ((adv + v2 * m) * m).reshape(r.shape)

    r1, v1 = torch.randn(6, generator=_gen(19), dtype=torch.float64), torch.randn(6, generator=_gen(20), dtype=torch.float64)
    rb, vb = torch.randn(3, 5, generator=_gen(21), dtype=torch.float64), torch.randn(3, 5, generator=_gen(22), dtype=torch.float64)
    mask = _ragged_mask([5, 2, 3], 5)
    specs = [("lam = 0: the TD error", (r1, v1, 1.0, 0.0), {}), ("lam = 1: return minus V", (r1, v1, 1.0, 1.0), {}),
             ("gamma = 0.9, lam = 0.5", (r1, v1, 0.9, 0.5), {}), ("gamma = 0.99, lam = 0.95", (r1, v1, 0.99, 0.95), {}),
             ("batch with a ragged mask (junk in the padding)", (rb, vb, 0.95, 0.9, mask), {})]
    cases = [_Case(n, a, k, advantages.gae(*a, **k), loop(*a, **k)) for n, a, k in specs]

    def prepare(case, got):  # advantages alone are accepted; returns are checked when given
        parts = got if isinstance(got, (tuple, list)) else (got,)
        return tuple(parts) if len(parts) == 2 else (parts[0], case.expected[1])

    def shifted(r, v, gamma, lam, mask=None):  # V(s_T) taken from the wrapped-around first value
        v_next = torch.roll(v, -1, dims=-1)
        return advantages.gae(r + gamma * v_next * (torch.arange(r.shape[-1]) == r.shape[-1] - 1), v, gamma, lam, mask)

    mistakes = [_Mistake("the episode ends after its last step: V = 0 there, nothing is bootstrapped past the end.", shifted),
                _Mistake("the decay is (gamma * lam)^l, not lam^l.",
                         lambda r, v, g, l, m=None: advantages.gae(r, v, g, min(l / g, 1.0), m)),
                _Mistake("forgot the mask: the padding's rewards and values leaked into the episode.",
                         lambda r, v, g, l, m=None: tuple(x * (1 if m is None else m) for x in advantages.gae(r, v, g, l)))]
    return _run("check_gae", fn, cases, mistakes,
                "compute delta_t first (V = 0 after the last unmasked step), then A_t = delta_t + gamma * lam * A_{t+1}, backwards.",
                prepare)


def check_whiten(fn) -> bool:
    """fn(x, mask=None) -> x's shape: (x - mean) / std over the unmasked entries, with the
    Bessel-corrected (n - 1) std; masked entries 0. x `[N]` or `[B, T]` (the batched cases pass a mask).
    reference: `rlbook.advantages.whiten`"""
    def loop(x, mask=None):
        m = torch.ones_like(x) if mask is None else mask
        vals = [v for v, k in zip(x.reshape(-1).tolist(), m.reshape(-1).tolist()) if k]
        mu, sd = statistics.mean(vals), statistics.stdev(vals)
        return torch.where(m.bool(), (x - mu) / sd, torch.zeros_like(x))

    x1 = torch.randn(8, generator=_gen(23), dtype=torch.float64) * 3 + 1
    xb = torch.randn(3, 4, generator=_gen(24), dtype=torch.float64)
    mask = _ragged_mask([4, 1, 2], 4)
    specs = [("a vector", (x1,), {}), ("few entries (Bessel matters)", (torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64),), {}),
             ("batch with a ragged mask", (xb, mask), {})]
    cases = [_Case(n, a, k, advantages.whiten(*a), loop(*a)) for n, a, k in specs]
    n_of = lambda x, m: x.numel() if m is None else int(m.sum())
    mistakes = [_Mistake("Bessel's correction: the std divides by n - 1, not n (torch's x.std() does; x.std(unbiased=False) does not).",
                         lambda x, m=None: advantages.whiten(x, m) * math.sqrt(n_of(x, m) / (n_of(x, m) - 1))),
                _Mistake("forgot the mask: mean and std must come from the unmasked entries only.",
                         lambda x, m=None: advantages.whiten(x) * (1 if m is None else m)),
                _Mistake("you only subtracted the mean; whitening divides by the std too.",
                         lambda x, m=None: x - x.mean() if m is None else None)]
    return _run("check_whiten", fn, cases, mistakes, "mean and std over x[mask.bool()], std with n - 1.")


# ====================================================================== chapter 04: PPO

def _ppo_inputs():
    old = _logp(4, 5, seed=25)
    new = (old + 0.5 * torch.randn(4, 5, generator=_gen(26), dtype=torch.float64)).clamp(max=-1e-6)
    mask = _ragged_mask([5, 3, 1, 4], 5)
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5], dtype=torch.float64)
    near = (old + 0.05 * torch.randn(4, 5, generator=_gen(27), dtype=torch.float64)).clamp(max=-1e-6)
    return old, new, near, mask, adv


def check_ppo_clip(fn) -> bool:
    """fn(logp, old_logp, advantages, mask, eps=0.2) -> scalar: -min(r A, clip(r, 1 - eps, 1 + eps) A)
    with r = exp(logp - old_logp), averaged over the unmasked tokens; advantages `[B]` or `[B, T]`.
    reference: `rlbook.ppo.ppo_clip_loss`"""
    old, new, near, mask, adv = _ppo_inputs()

    def loop(lp, olp, a, m, eps=0.2):
        a2 = a.unsqueeze(1).expand_as(lp) if a.dim() == 1 else a
        terms = []
        for i in range(lp.shape[0]):
            for t in range(lp.shape[1]):
                if m[i, t]:
                    r = math.exp(lp[i, t].item() - olp[i, t].item())
                    terms.append(-min(r * a2[i, t].item(), min(max(r, 1 - eps), 1 + eps) * a2[i, t].item()))
        return torch.tensor(sum(terms) / len(terms), dtype=torch.float64)

    specs = [("ratios inside the clip range", (near, old, adv, torch.ones(4, 5)), {}),
             ("ratios far outside, both signs of A", (new, old, adv, torch.ones(4, 5)), {}),
             ("ragged mask", (new, old, adv, mask), {}),
             ("advantages per token [B, T]", (new, old, torch.randn(4, 5, generator=_gen(28), dtype=torch.float64), mask), {}),
             ("eps = 0.1", (new, old, adv, mask), {"eps": 0.1})]
    cases = [_Case(n, a, k, ppo.ppo_clip_loss(*a, **k), loop(*a, **k)) for n, a, k in specs]
    mistakes = [_Mistake("the min is missing: you used only the clipped term; PPO takes the pessimistic min of the clipped and unclipped terms.",
                         lambda lp, olp, a, m, eps=0.2: -((ppo.probability_ratio(lp, olp).clamp(1 - eps, 1 + eps)
                                                           * advantages.per_token(a, lp)) * m).sum() / m.sum()),
                _Mistake("max instead of min: PPO keeps the *pessimistic* (smaller) objective.",
                         lambda lp, olp, a, m, eps=0.2: -(torch.maximum(ppo.probability_ratio(lp, olp) * advantages.per_token(a, lp),
                                                                        ppo.probability_ratio(lp, olp).clamp(1 - eps, 1 + eps)
                                                                        * advantages.per_token(a, lp)) * m).sum() / m.sum()),
                _Mistake("the ratio is upside down: r = pi_theta / pi_old = exp(logp - old_logp).",
                         lambda lp, olp, a, m, eps=0.2: ppo.ppo_clip_loss(olp, lp, a, m, eps=eps)),
                _Mistake("forgot the mask: padded positions count as tokens.",
                         lambda lp, olp, a, m, eps=0.2: ppo.ppo_clip_loss(lp, olp, a, eps=eps)),
                _Mistake("wrong sign: return the *loss*, minus the clipped objective.",
                         lambda lp, olp, a, m, eps=0.2: -ppo.ppo_clip_loss(lp, olp, a, m, eps=eps))]
    return _run("check_ppo_clip", fn, cases, mistakes,
                "r = exp(logp - old_logp); loss = -min(r * A, r.clamp(1 - eps, 1 + eps) * A), mean over the unmasked tokens.")


def check_approx_kl(fn) -> bool:
    """fn(logp, old_logp, mask) -> scalar: PPO's approx_kl, the k3 estimate of KL[pi_old || pi_theta]
    from tokens sampled by pi_old, (r - 1) - log r with r = pi_theta / pi_old, mean over unmasked tokens.
    reference: `rlbook.ppo.approx_kl`"""
    old, new, near, mask, _ = _ppo_inputs()

    def loop(lp, olp, m):
        vals = [math.expm1(lp[i, t].item() - olp[i, t].item()) - (lp[i, t].item() - olp[i, t].item())
                for i in range(lp.shape[0]) for t in range(lp.shape[1]) if m[i, t]]
        return torch.tensor(sum(vals) / len(vals), dtype=torch.float64)

    specs = [("no change", (old, old.clone(), torch.ones(4, 5)), {}), ("small steps", (near, old, torch.ones(4, 5)), {}),
             ("large steps, ragged mask", (new, old, mask), {})]
    cases = [_Case(n, a, k, ppo.approx_kl(*a), loop(*a)) for n, a, k in specs]
    mistakes = [_Mistake("the ratio is upside down: tokens come from pi_old, so for KL[pi_old || pi_theta] use r = pi_theta / pi_old.",
                         lambda lp, olp, m: ppo.approx_kl(olp, lp, m)),
                _Mistake("that is the k1 estimate (mean of old_logp - logp); approx_kl is k3, which is never negative.",
                         lambda lp, olp, m: ((olp - lp) * m).sum() / m.sum()),
                _Mistake("forgot the mask.", lambda lp, olp, m: ppo.approx_kl(lp, olp))]
    return _run("check_approx_kl", fn, cases, mistakes,
                "log r = logp - old_logp; k3 = expm1(log r) - log r; mean over the unmasked tokens.")


# ====================================================================== chapter 05: exact KL

def check_kl_divergence(fn) -> bool:
    """fn(p_logits, q_logits) -> `[...]`: KL(p || q) = sum_x p(x) (log p(x) - log q(x)) over the last
    dim, with p, q the softmax of the logits (log-probs are logits too); p(x) = 0 contributes 0.
    reference: `rlbook.kl.kl_divergence`"""
    def loop(pl, ql):
        p, q = pl.double().softmax(-1).reshape(-1, pl.shape[-1]), ql.double().softmax(-1).reshape(-1, ql.shape[-1])
        out = [sum(pi * math.log(pi / qi) for pi, qi in zip(p[i].tolist(), q[i].tolist()) if pi > 0) for i in range(p.shape[0])]
        return torch.tensor(out, dtype=torch.float64).reshape(pl.shape[:-1])

    p, q = torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64), torch.tensor([0.1, 0.3, 0.4, 0.2], dtype=torch.float64)
    specs = [("two distributions (log-probs)", (q.log(), torch.tensor([0.25] * 4, dtype=torch.float64).log()), {}),
             ("unnormalised logits", (torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64), torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)), {}),
             ("p has a zero (0 log 0 = 0)", (p.log(), q.log()), {}),
             ("a batch [3, 5]", (torch.randn(3, 5, generator=_gen(29), dtype=torch.float64), torch.randn(3, 5, generator=_gen(30), dtype=torch.float64)), {})]
    cases = [_Case(n, a, k, kl.kl_divergence(*a), loop(*a)) for n, a, k in specs]
    mistakes = [_Mistake("wrong direction: that is KL(q || p); KL(p || q) is an expectation under p, the *first* argument.",
                         lambda pl, ql: kl.kl_divergence(ql, pl)),
                _Mistake("normalise the logits first (log_softmax): the inputs need not sum to one.",
                         lambda pl, ql: (pl.exp() * (pl - ql)).sum(-1)),
                _Mistake("you summed over everything; the KL is one number per distribution (sum over the last dim only).",
                         lambda pl, ql: kl.kl_divergence(pl, ql).sum())]
    return _run("check_kl_divergence", fn, cases, mistakes,
                "p = softmax(p_logits), sum over the last dim of p * (log p - log q), skipping p = 0 (0 log 0 = 0).")


def check_trust_region_kl(fn) -> bool:
    """fn(old_logits, logits, mask) -> `[B, T]`: KL[pi_old(.|s_t) || pi_theta(.|s_t)] at every position
    from the full next-token distributions, 0 at masked positions; logits `[B, T, V]`.
    reference: `rlbook.ppo.trust_region_kl`"""
    old = torch.randn(3, 4, 6, generator=_gen(31), dtype=torch.float64)
    new = old + 0.7 * torch.randn(3, 4, 6, generator=_gen(32), dtype=torch.float64)
    mask = _ragged_mask([4, 2, 1], 4)
    loop = lambda o, n, m: torch.tensor([[kl.kl_divergence(o[i, t], n[i, t]).item() if m[i, t] else 0.0 for t in range(o.shape[1])]
                                         for i in range(o.shape[0])], dtype=torch.float64)
    specs = [("no change", (old, old.clone(), torch.ones(3, 4)), {}), ("every position", (old, new, torch.ones(3, 4)), {}),
             ("ragged mask", (old, new, mask), {})]
    cases = [_Case(n, a, k, ppo.trust_region_kl(*a), loop(*a)) for n, a, k in specs]
    mistakes = [_Mistake("wrong direction: the trust-region KL is KL[pi_old || pi_theta], an expectation under pi_old.",
                         lambda o, n, m: ppo.trust_region_kl(n, o, m)),
                _Mistake("forgot the mask: masked positions must be 0.", lambda o, n, m: ppo.trust_region_kl(o, n)),
                _Mistake("return one KL per position [B, T], not their mean.", lambda o, n, m: ppo.trust_region_kl(o, n, m).sum() / m.sum())]
    return _run("check_trust_region_kl", fn, cases, mistakes,
                "p_old = softmax(old_logits); sum over V of p_old * (log p_old - log p_theta); times the mask.")


def check_sequence_kl_per_state(fn) -> bool:
    """fn(logits, ref_logits, mask) -> `[B]`: sum over each sequence's unmasked positions of the exact
    KL[pi(.|s_t) || pi_ref(.|s_t)]; logits `[B, T, V]`.
    reference: `rlbook.kl.sequence_kl_per_state`"""
    a = torch.randn(3, 4, 5, generator=_gen(33), dtype=torch.float64)
    b = torch.randn(3, 4, 5, generator=_gen(34), dtype=torch.float64)
    mask = _ragged_mask([4, 1, 3], 4)
    loop = lambda x, y, m: torch.tensor([sum(kl.kl_divergence(x[i, t], y[i, t]).item() for t in range(x.shape[1]) if m[i, t])
                                         for i in range(x.shape[0])], dtype=torch.float64)
    specs = [("equal policies", (a, a.clone(), torch.ones(3, 4)), {}), ("every position", (a, b, torch.ones(3, 4)), {}),
             ("ragged mask", (a, b, mask), {})]
    cases = [_Case(n, x, k, kl.sequence_kl_per_state(*x), loop(*x)) for n, x, k in specs]
    mistakes = [_Mistake("wrong direction: the drift KL is KL[pi || pi_ref], an expectation under pi.",
                         lambda x, y, m: kl.sequence_kl_per_state(y, x, m)),
                _Mistake("forgot the mask.", lambda x, y, m: kl.sequence_kl_per_state(x, y)),
                _Mistake("you averaged over the positions; the sequence KL is their *sum*.",
                         lambda x, y, m: kl.sequence_kl_per_state(x, y, m) / m.sum(1))]
    return _run("check_sequence_kl_per_state", fn, cases, mistakes,
                "per position: softmax both, sum_v p (log p - log q); then sum over the unmasked positions of each row.")


# ====================================================================== chapter 07: GRPO

def check_group_advantages(fn) -> bool:
    """fn(rewards, group_size, scale="std", eps=1e-6) -> `[N]`: (R_i - group mean) / (group std + eps),
    the std Bessel-corrected; a group of equal rewards gives zeros; scale="none" only subtracts the
    mean (Dr. GRPO). rewards `[N]` laid out group after group.
    reference: `rlbook.advantages.group_advantages`"""
    def loop(r, G, scale="std", eps=1e-6):
        out = []
        for g0 in range(0, len(r), G):
            vals = r[g0:g0 + G].tolist()
            mu, sd = statistics.mean(vals), statistics.stdev(vals)
            out += [(v - mu) / (sd + eps) if scale == "std" else v - mu for v in vals]
        return torch.tensor(out, dtype=torch.float64)

    r8 = torch.tensor([1, 0, 0, 1, 1, 1, 0, 1], dtype=torch.float64)
    specs = [("two groups of 4", (torch.randn(8, generator=_gen(35), dtype=torch.float64), 4), {}),
             ("a group of equal rewards", (torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.5], dtype=torch.float64), 3), {}),
             ("0/1 rewards, G = 8", (r8, 8), {}),
             ("scale='none' (Dr. GRPO)", (torch.randn(6, generator=_gen(36), dtype=torch.float64), 3), {"scale": "none"})]
    cases = [_Case(n, a, k, advantages.group_advantages(*a, **k), loop(*a, **k)) for n, a, k in specs]
    pop = lambda r, G, scale="std", eps=1e-6: ((r.view(-1, G) - r.view(-1, G).mean(1, keepdim=True))
                                               / (r.view(-1, G).std(1, unbiased=False, keepdim=True) + eps)).reshape(-1)
    mistakes = [_Mistake("Bessel's correction: GRPO divides by the sample std (n - 1), torch's default x.std(), not x.std(unbiased=False).", pop),
                _Mistake("normalise within each group of G, not over the whole batch.",
                         lambda r, G, scale="std", eps=1e-6: advantages.group_advantages(r, len(r), scale, eps)),
                _Mistake("a group of equal rewards has std 0: add eps to the std so it gives zeros, not NaN.",
                         lambda r, G, scale="std", eps=1e-6: advantages.group_advantages(r, G, scale, 0.0)),
                _Mistake("scale='none' (Dr. GRPO) only subtracts the group mean; it does not divide by the std.",
                         lambda r, G, scale="std", eps=1e-6: advantages.group_advantages(r, G, "std", eps))]
    return _run("check_group_advantages", fn, cases, mistakes,
                "view rewards as [N / G, G]; subtract the row mean; for scale='std' divide by row std (n - 1) + eps.")


def check_grpo_loss(fn) -> bool:
    """fn(logp, old_logp, ref_logp, advantages, mask, eps=0.2, beta=0.04, aggregation="grpo") -> scalar:
    per token -min(r A, clip(r, 1 - eps, 1 + eps) A) + beta k3 (ratio pi_ref / pi_theta), then
    "grpo": mean over each sequence's tokens, then over sequences; "token": mean over all tokens.
    reference: `rlbook.grpo.grpo_loss`"""
    old = _logp(4, 5, seed=37)
    new = (old + 0.3 * torch.randn(4, 5, generator=_gen(38), dtype=torch.float64)).clamp(max=-1e-6)
    ref = (old + 0.3 * torch.randn(4, 5, generator=_gen(39), dtype=torch.float64)).clamp(max=-1e-6)
    mask = _ragged_mask([5, 2, 4, 1], 5)
    A = advantages.group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.0], dtype=torch.float64), 4)

    def loop(lp, olp, rlp, a, m, eps=0.2, beta=0.04, aggregation="grpo"):
        per_seq, tokens = [], []
        for i in range(lp.shape[0]):
            terms = []
            for t in range(lp.shape[1]):
                if m[i, t]:
                    r = math.exp(lp[i, t].item() - olp[i, t].item())
                    log_q = rlp[i, t].item() - lp[i, t].item()
                    terms.append(-min(r * a[i].item(), min(max(r, 1 - eps), 1 + eps) * a[i].item()) + beta * (math.expm1(log_q) - log_q))
            per_seq.append(sum(terms) / len(terms))
            tokens += terms
        return torch.tensor(sum(per_seq) / len(per_seq) if aggregation == "grpo" else sum(tokens) / len(tokens), dtype=torch.float64)

    specs = [("first step (all policies equal)", (old, old.clone(), old.clone(), A, mask), {}),
             ("aggregation 'grpo', ragged mask", (new, old, ref, A, mask), {}),
             ("aggregation 'token'", (new, old, ref, A, mask), {"aggregation": "token"}),
             ("beta = 0.5, eps = 0.1", (new, old, ref, A, mask), {"beta": 0.5, "eps": 0.1})]
    cases = [_Case(n, a, k, grpo.grpo_loss(*a, **k), loop(*a, **k)) for n, a, k in specs]
    mistakes = [_Mistake("the k3 ratio is upside down: GRPO's k3 uses pi_ref / pi_theta (log r = ref_logp - logp).",
                         lambda lp, olp, rlp, a, m, eps=0.2, beta=0.04, aggregation="grpo":
                         grpo.grpo_loss(lp, olp, rlp, a, m, eps, 0.0, aggregation=aggregation)
                         + beta * (grpo.aggregation_weights(m, aggregation) * kl.k3(rlp, lp) * m).sum()),
                _Mistake("'grpo' averages each sequence's tokens first, then the sequences (1/G sum_i 1/|o_i| sum_t); you took the mean over all tokens.",
                         lambda lp, olp, rlp, a, m, eps=0.2, beta=0.04, aggregation="grpo":
                         grpo.grpo_loss(lp, olp, rlp, a, m, eps, beta, aggregation="token")),
                _Mistake("forgot the mask: padded positions count as tokens.",
                         lambda lp, olp, rlp, a, m, eps=0.2, beta=0.04, aggregation="grpo":
                         grpo.grpo_loss(lp, olp, rlp, a, torch.ones_like(m), eps, beta, aggregation=aggregation)),
                _Mistake("the KL term is *added* to the loss (beta * k3), not subtracted.",
                         lambda lp, olp, rlp, a, m, eps=0.2, beta=0.04, aggregation="grpo":
                         grpo.grpo_loss(lp, olp, rlp, a, m, eps, 0.0, aggregation=aggregation)
                         - beta * (grpo.aggregation_weights(m, aggregation) * kl.k3(lp, rlp) * m).sum())]
    return _run("check_grpo_loss", fn, cases, mistakes,
                "per token: the PPO-clip term plus beta * k3(logp, ref_logp); weight each sequence's tokens by 1/(B |o_i|) for 'grpo'.")


def check_aggregation_weights(fn) -> bool:
    """fn(mask, aggregation="grpo", max_length=None) -> `[B, T]`: the weights w with loss = sum w * l:
    "grpo" 1/(B |o_i|), "token" 1/sum_j |o_j|, "dr_grpo" 1/(B L) with L = max_length (None: T); 0 where masked.
    reference: `rlbook.grpo.aggregation_weights`"""
    mask = _ragged_mask([4, 2, 3], 6)

    def loop(m, aggregation="grpo", max_length=None):
        B, T = m.shape
        lengths = m.sum(1).tolist()
        L = T if max_length is None else max_length
        w = {"grpo": lambda i: 1 / (B * lengths[i]), "token": lambda i: 1 / sum(lengths), "dr_grpo": lambda i: 1 / (B * L)}[aggregation]
        return torch.tensor([[w(i) if m[i, t] else 0.0 for t in range(T)] for i in range(B)], dtype=torch.float64)

    specs = [("'grpo'", (mask, "grpo"), {}), ("'token' (DAPO)", (mask, "token"), {}),
             ("'dr_grpo', L = T", (mask, "dr_grpo"), {}), ("'dr_grpo', max_length = 10", (mask, "dr_grpo", 10), {})]
    cases = [_Case(n, a, k, grpo.aggregation_weights(*a, **k), loop(*a, **k)) for n, a, k in specs]
    mistakes = [_Mistake("'grpo' and 'token' swapped: 'grpo' gives every *sequence* weight 1/B, 'token' every *token* the same weight.",
                         lambda m, aggregation="grpo", max_length=None: grpo.aggregation_weights(
                             m, {"grpo": "token", "token": "grpo"}.get(aggregation, aggregation), max_length)),
                _Mistake("Dr. GRPO's constant L is the generation budget (max_length, or T), not the longest completion in the batch.",
                         lambda m, aggregation="grpo", max_length=None: grpo.aggregation_weights(
                             m, aggregation, int(m.sum(1).max()) if aggregation == "dr_grpo" else max_length)),
                _Mistake("forgot the mask: the lengths |o_i| count only the unmasked tokens, and padding gets weight 0.",
                         lambda m, aggregation="grpo", max_length=None: grpo.aggregation_weights(torch.ones_like(m), aggregation, max_length))]
    return _run("check_aggregation_weights", fn, cases, mistakes,
                "lengths = mask.sum(1, keepdim=True); 'grpo': mask / (B * lengths); 'token': mask / lengths.sum(); 'dr_grpo': mask / (B * L).")


# ====================================================================== chapters 08-10: DPO and family

def _pair_inputs(seed: int, B: int = 6):
    return tuple(-20 * torch.rand(B, generator=_gen(seed + i), dtype=torch.float64) for i in range(4))


def _log_sigmoid(m: float) -> float:
    return -math.log1p(math.exp(-m)) if m > 0 else m - math.log1p(math.exp(m))


def check_dpo_loss(fn) -> bool:
    """fn(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, beta) -> `[B]` per pair (or
    their mean): -log sigma(beta log pi(y_w)/pi_ref(y_w) - beta log pi(y_l)/pi_ref(y_l)); inputs are
    summed sequence log-probs `[B]`.
    reference: `rlbook.dpo.dpo_loss`"""
    loop = lambda cw, cl, rw, rl, beta: torch.tensor([-_log_sigmoid(beta * ((a - c) - (b - d))) for a, b, c, d in
                                                      zip(cw.tolist(), cl.tolist(), rw.tolist(), rl.tolist())], dtype=torch.float64)
    eq = torch.full((6,), -3.0, dtype=torch.float64)
    extreme = (torch.tensor([-1.0, -900.0, -5.0, -400.0, -1.0, -2.0], dtype=torch.float64), torch.tensor([-900.0, -1.0, -5.0, -1.0, -3.0, -2.0], dtype=torch.float64),
               torch.tensor([-2.0, -2.0, -5.0, -2.0, -1.0, -2.0], dtype=torch.float64), torch.tensor([-2.0, -2.0, -5.0, -2.0, -1.0, -2.0], dtype=torch.float64))
    specs = [("policy = reference (loss log 2)", (eq, eq, eq, eq, 0.1), {}), ("random pairs, beta = 0.1", (*_pair_inputs(40), 0.1), {}),
             ("random pairs, beta = 0.7", (*_pair_inputs(44), 0.7), {}), ("extreme margins (stability)", (*extreme, 1.0), {})]
    cases = [_Case(n, a, k, dpo.dpo_loss(*a, reduction="none"), loop(*a)) for n, a, k in specs]
    mistakes = [_Mistake("beta belongs inside the sigmoid: -log sigma(beta * h), not -beta * log sigma(h).",
                         lambda cw, cl, rw, rl, beta: -beta * torch.nn.functional.logsigmoid((cw - rw) - (cl - rl))),
                _Mistake("chosen and rejected are swapped: the margin is (chosen log-ratio) - (rejected log-ratio).",
                         lambda cw, cl, rw, rl, beta: dpo.dpo_loss(cl, cw, rl, rw, beta, reduction="none")),
                _Mistake("the reference model is missing: DPO's margin uses log pi/pi_ref of each answer.",
                         lambda cw, cl, rw, rl, beta: -torch.nn.functional.logsigmoid(beta * (cw - cl))),
                _Mistake("log(sigmoid(m)) underflows to -inf for very negative margins: use torch.nn.functional.logsigmoid (or log1p).",
                         lambda cw, cl, rw, rl, beta: -torch.log(torch.sigmoid(beta * ((cw - rw) - (cl - rl))))),
                _summed(dpo.dpo_loss)]
    return _run("check_dpo_loss", fn, cases, mistakes,
                "h = (chosen_logp - ref_chosen_logp) - (rejected_logp - ref_rejected_logp); loss = -logsigmoid(beta * h).", _batch_or_mean)


def check_dpo_gradient_weight(fn) -> bool:
    """fn(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, beta) -> `[B]`: how hard DPO
    pushes each pair, sigma(r_hat_l - r_hat_w) with r_hat = beta log pi/pi_ref: near 1 for a pair the
    implied reward orders wrongly, near 0 for one it already orders by a wide margin.
    reference: `rlbook.dpo.dpo_gradient_weight`"""
    loop = lambda cw, cl, rw, rl, beta: torch.tensor([1 / (1 + math.exp(beta * ((a - c) - (b - d)))) for a, b, c, d in
                                                      zip(cw.tolist(), cl.tolist(), rw.tolist(), rl.tolist())], dtype=torch.float64)
    eq = torch.full((6,), -3.0, dtype=torch.float64)
    specs = [("policy = reference (weight 1/2)", (eq, eq, eq, eq, 0.1), {}), ("random pairs, beta = 0.1", (*_pair_inputs(48), 0.1), {}),
             ("random pairs, beta = 2", (*_pair_inputs(52), 2.0), {})]
    cases = [_Case(n, a, k, dpo.dpo_gradient_weight(*a, **k), loop(*a)) for n, a, k in specs]
    mistakes = [_Mistake("upside down: the weight is sigma(r_hat_l - r_hat_w), large when the rejected answer still looks better.",
                         lambda cw, cl, rw, rl, beta: 1 - dpo.dpo_gradient_weight(cw, cl, rw, rl, beta)),
                _Mistake("missing beta: r_hat = beta * log pi/pi_ref.",
                         lambda cw, cl, rw, rl, beta: dpo.dpo_gradient_weight(cw, cl, rw, rl, 1.0)),
                _Mistake("the reference model is missing from the implied rewards.",
                         lambda cw, cl, rw, rl, beta: torch.sigmoid(-beta * (cw - cl)))]
    return _run("check_dpo_gradient_weight", fn, cases, mistakes, "torch.sigmoid(-beta * h), h the margin of log-ratios.")


def check_optimal_policy(fn) -> bool:
    """fn(ref_logp, rewards, beta) -> (log pi*, log Z), or log pi* alone: pi*(y) = pi_ref(y) e^{r(y)/beta} / Z
    over the last dim (the K answers of each prompt); log Z = log sum_y pi_ref(y) e^{r(y)/beta}.
    reference: `rlbook.dpo.optimal_policy`"""
    def brute(ref_logp, rewards, beta):  # normalise by hand, shifting by the max so that exp stays finite
        s = (ref_logp + rewards / beta).reshape(-1, ref_logp.shape[-1]).tolist()
        logz = [max(row) + math.log(sum(math.exp(v - max(row)) for v in row)) for row in s]
        logp = [[v - z for v in row] for row, z in zip(s, logz)]
        return (torch.tensor(logp, dtype=torch.float64).reshape(ref_logp.shape),
                torch.tensor(logz, dtype=torch.float64).reshape(ref_logp.shape[:-1]))

    uni = torch.full((4,), 0.25, dtype=torch.float64).log()
    ref5 = torch.randn(5, generator=_gen(56), dtype=torch.float64).log_softmax(-1)
    ref34 = torch.randn(3, 4, generator=_gen(57), dtype=torch.float64).log_softmax(-1)
    specs = [("equal rewards: pi* = pi_ref, log Z = r/beta", (uni, torch.full((4,), 0.5, dtype=torch.float64), 1.0), {}),
             ("5 answers, beta = 0.5", (ref5, torch.randn(5, generator=_gen(58), dtype=torch.float64), 0.5), {}),
             ("3 prompts x 4 answers", (ref34, torch.randn(3, 4, generator=_gen(59), dtype=torch.float64), 2.0), {}),
             ("r / beta in the thousands", (ref5, torch.tensor([100.0, 99.0, 0.0, -50.0, 98.5], dtype=torch.float64), 0.1), {})]
    cases = [_Case(n, a, k, dpo.optimal_policy(*a), brute(*a)) for n, a, k in specs]

    def prepare(case, got):  # log pi* alone is accepted; log Z is checked when given
        parts = got if isinstance(got, (tuple, list)) else (got,)
        return tuple(parts) if len(parts) == 2 else (parts[0], case.expected[1])

    mistakes = [_Mistake("r / beta, not r * beta: a small beta should pile pi* onto the best answer.",
                         lambda ref, r, beta: dpo.optimal_policy(ref, r * beta * beta, beta)),
                _Mistake("pi_ref is missing: pi* is proportional to pi_ref * exp(r / beta), not exp(r / beta) alone.",
                         lambda ref, r, beta: dpo.optimal_policy(torch.zeros_like(ref), r, beta)),
                _Mistake("exp(r / beta) overflows: compute log Z with torch.logsumexp.",
                         lambda ref, r, beta: (ref + r / beta - torch.log((ref.exp() * torch.exp(r / beta)).sum(-1, keepdim=True)),
                                               torch.log((ref.exp() * torch.exp(r / beta)).sum(-1))))]
    return _run("check_optimal_policy", fn, cases, mistakes,
                "scores = ref_logp + rewards / beta; log Z = logsumexp(scores, -1); log pi* = scores - log Z.", prepare)


def check_ipo_loss(fn) -> bool:
    """fn(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, beta, chosen_len=None,
    rejected_len=None) -> `[B]` per pair (or their mean): (h - 1/(2 beta))^2 with h the margin of
    log-ratios, summed (the seed's form) or, given the lengths, each log-ratio divided by its |y| (TRL's).
    reference: `rlbook.preference.ipo_loss`"""
    def loop(cw, cl, rw, rl, beta, lw=None, ll=None):
        out = []
        for i in range(len(cw)):
            a, b = cw[i].item() - rw[i].item(), cl[i].item() - rl[i].item()
            if lw is not None:
                a, b = a / lw[i].item(), b / ll[i].item()
            out.append((a - b - 1 / (2 * beta)) ** 2)
        return torch.tensor(out, dtype=torch.float64)

    lens = (torch.tensor([3.0, 1.0, 5.0, 2.0, 4.0, 6.0], dtype=torch.float64), torch.tensor([2.0, 4.0, 1.0, 6.0, 3.0, 5.0], dtype=torch.float64))
    specs = [("summed, beta = 0.1", (*_pair_inputs(60), 0.1), {}), ("summed, beta = 0.5", (*_pair_inputs(64), 0.5), {}),
             ("per token (lengths given)", (*_pair_inputs(68), 0.3, *lens), {})]
    cases = [_Case(n, a, k, preference.ipo_loss(*a, reduction="none"), loop(*a)) for n, a, k in specs]

    def wrong_target(cw, cl, rw, rl, beta, lw=None, ll=None):
        return preference.ipo_loss(cw, cl, rw, rl, beta / 2, lw, ll, reduction="none")

    def beta_on_h(cw, cl, rw, rl, beta, lw=None, ll=None):
        h = (cw - rw) - (cl - rl) if lw is None else (cw - rw) / lw - (cl - rl) / ll
        return (beta * h - 1 / (2 * beta)) ** 2

    def mean_length(cw, cl, rw, rl, beta, lw=None, ll=None):
        if lw is None:
            return None
        return (((cw - rw) - (cl - rl)) / ((lw + ll) / 2) - 1 / (2 * beta)) ** 2

    mistakes = [_Mistake("the target margin is 1/(2 beta), not 1/beta.", wrong_target),
                _Mistake("IPO does not multiply h by beta (that is DPO's logit); beta only sets the target 1/(2 beta).", beta_on_h),
                _Mistake("per token, divide each answer's log-ratio by its *own* length, before taking the difference.", mean_length),
                _summed(preference.ipo_loss)]
    return _run("check_ipo_loss", fn, cases, mistakes,
                "h = (chosen_logp - ref_chosen_logp) - (rejected_logp - ref_rejected_logp) (each divided by its length in the "
                "per-token form); loss = (h - 1 / (2 * beta)) ** 2.", _batch_or_mean)


def check_kto_loss(fn) -> bool:
    """fn(logp, ref_logp, desirable, beta, lambda_d, lambda_u, z0) -> `[B]` per example (or their mean):
    with r = logp - ref_logp, lambda_d (1 - sigma(beta (r - z0))) for desirable examples and
    lambda_u (1 - sigma(beta (z0 - r))) for undesirable ones; z0 a number (the reference point), used as given.
    reference: `rlbook.preference.kto_loss`"""
    def loop(lp, rp, d, beta, ld, lu, z0):
        sig = lambda u: 1 / (1 + math.exp(-u))
        return torch.tensor([ld * (1 - sig(beta * (a - b - z0))) if di else lu * (1 - sig(beta * (z0 - a + b)))
                             for a, b, di in zip(lp.tolist(), rp.tolist(), d.tolist())], dtype=torch.float64)

    lp, rp = -10 * torch.rand(6, generator=_gen(72), dtype=torch.float64), -10 * torch.rand(6, generator=_gen(73), dtype=torch.float64)
    d = torch.tensor([True, False, True, True, False, False])
    specs = [("mixed labels, z0 = 0", (lp, rp, d, 0.1, 1.0, 1.0, 0.0), {}),
             ("z0 = 0.8, beta = 0.5", (lp, rp, d, 0.5, 1.0, 1.0, 0.8), {}),
             ("lambda_D = 3, lambda_U = 1", (lp, rp, d, 0.2, 3.0, 1.0, 0.3), {}),
             ("all undesirable", (lp, rp, torch.zeros(6, dtype=torch.bool), 0.2, 1.0, 2.0, 0.1), {})]
    cases = [_Case(n, a, k, preference.kto_loss(*a, reduction="none"), loop(*a)) for n, a, k in specs]
    mistakes = [_Mistake("the two branches are swapped: a desirable example should lose less as its log-ratio r rises above z0.",
                         lambda lp, rp, d, beta, ld, lu, z0: preference.kto_loss(lp, rp, ~d, beta, ld, lu, z0, reduction="none")),
                _Mistake("lambda_D weighs the desirable examples, lambda_U the undesirable ones; they are swapped.",
                         lambda lp, rp, d, beta, ld, lu, z0: preference.kto_loss(lp, rp, d, beta, lu, ld, z0, reduction="none")),
                _Mistake("the reference point z0 is missing: the value is sigma(beta (r - z0)).",
                         lambda lp, rp, d, beta, ld, lu, z0: preference.kto_loss(lp, rp, d, beta, ld, lu, 0.0, reduction="none")),
                _Mistake("KTO's loss is lambda (1 - sigma(...)), not DPO's -log sigma(...).",
                         lambda lp, rp, d, beta, ld, lu, z0: torch.where(d, -ld * torch.nn.functional.logsigmoid(beta * (lp - rp - z0)),
                                                                          -lu * torch.nn.functional.logsigmoid(beta * (z0 - lp + rp)))),
                _summed(preference.kto_loss)]
    return _run("check_kto_loss", fn, cases, mistakes,
                "r = logp - ref_logp; torch.where(desirable, lambda_d * sigmoid(-beta (r - z0)), lambda_u * sigmoid(beta (r - z0))).", _batch_or_mean)


def check_simpo_loss(fn) -> bool:
    """fn(chosen_logp, rejected_logp, chosen_len, rejected_len, beta=2.0, gamma=1.0) -> `[B]` per pair
    (or their mean): -log sigma(beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma); no reference model.
    reference: `rlbook.preference.simpo_loss`"""
    def loop(cw, cl, lw, ll, beta=2.0, gamma=1.0):
        return torch.tensor([-_log_sigmoid(beta * a / n - beta * b / m - gamma) for a, b, n, m in
                             zip(cw.tolist(), cl.tolist(), lw.tolist(), ll.tolist())], dtype=torch.float64)

    cw, cl = -20 * torch.rand(6, generator=_gen(74), dtype=torch.float64), -20 * torch.rand(6, generator=_gen(75), dtype=torch.float64)
    lw, ll = torch.tensor([3.0, 1.0, 5.0, 2.0, 4.0, 6.0], dtype=torch.float64), torch.tensor([2.0, 4.0, 1.0, 6.0, 3.0, 5.0], dtype=torch.float64)
    specs = [("defaults beta = 2, gamma = 1", (cw, cl, lw, ll), {}), ("beta = 1, gamma = 0.5 (the seed's form)", (cw, cl, lw, ll, 1.0, 0.5), {}),
             ("equal lengths", (cw, cl, torch.full((6,), 4.0, dtype=torch.float64), torch.full((6,), 4.0, dtype=torch.float64), 2.5, 0.0), {}),
             ("extreme log-probs", (cw * 40, cl, lw, ll, 2.0, 1.0), {})]
    cases = [_Case(n, a, k, preference.simpo_loss(*a, **k, reduction="none"), loop(*a, **k)) for n, a, k in specs]
    mistakes = [_Mistake("normalise each log-prob by its own answer's length |y|: SimPO's reward is the *average* log-prob.",
                         lambda cw, cl, lw, ll, beta=2.0, gamma=1.0: preference.simpo_loss(cw, cl, torch.ones_like(lw), torch.ones_like(ll),
                                                                                          beta, gamma, reduction="none")),
                _Mistake("gamma is subtracted outside beta's product: beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma.",
                         lambda cw, cl, lw, ll, beta=2.0, gamma=1.0: preference.simpo_loss(cw, cl, lw, ll, beta, beta * gamma, reduction="none")),
                _Mistake("the margin gamma is *subtracted* (the chosen answer must win by at least gamma).",
                         lambda cw, cl, lw, ll, beta=2.0, gamma=1.0: preference.simpo_loss(cw, cl, lw, ll, beta, -gamma, reduction="none")),
                _Mistake("log(sigmoid(m)) underflows for very negative margins: use torch.nn.functional.logsigmoid.",
                         lambda cw, cl, lw, ll, beta=2.0, gamma=1.0: -torch.log(torch.sigmoid(beta * cw / lw - beta * cl / ll - gamma))),
                _summed(preference.simpo_loss)]
    return _run("check_simpo_loss", fn, cases, mistakes,
                "m = beta * chosen_logp / chosen_len - beta * rejected_logp / rejected_len - gamma; loss = -logsigmoid(m).", _batch_or_mean)


# ====================================================================== chapter 09: pairs from groups

def check_best_worst_pairs(fn) -> bool:
    """fn(rewards, group_size) -> (chosen_idx, rejected_idx): for each group of `group_size` rewards
    `[N]` (laid out group after group) the row index of its best and of its worst sample (the first
    one on ties), groups whose rewards all tie dropped.
    reference: `rlbook.tasks.best_worst_indices`"""
    def loop(r, G):
        w, l = [], []
        for g0 in range(0, len(r), G):
            vals = r[g0:g0 + G].tolist()
            if max(vals) > min(vals):
                w.append(g0 + vals.index(max(vals)))
                l.append(g0 + vals.index(min(vals)))
        return torch.tensor(w), torch.tensor(l)

    specs = [("two groups of 4", (torch.tensor([0.1, 0.9, 0.5, 0.3, 2.0, -1.0, 0.0, 1.0]), 4), {}),
             ("a tied group is dropped", (torch.tensor([1.0, 1.0, 1.0, 0.0, 2.0, 1.0, 3.0, 3.0, 3.0]), 3), {}),
             ("ties inside a group: the first one", (torch.tensor([1.0, 0.0, 1.0, 0.0, 0.5, 0.5]), 3), {})]
    cases = [_Case(n, a, k, tasks.best_worst_indices(*a), loop(*a)) for n, a, k in specs]
    mistakes = [_Mistake("groups whose rewards all tie hold no preference: drop them.",
                         lambda r, G: (torch.arange(0, len(r), G) + r.view(-1, G).argmax(1), torch.arange(0, len(r), G) + r.view(-1, G).argmin(1))),
                _Mistake("return row indices into the whole batch (group offset + position), not positions inside the group.",
                         lambda r, G: tuple(i % G for i in tasks.best_worst_indices(r, G))),
                _Mistake("chosen is the best (highest reward), rejected the worst: they are swapped.",
                         lambda r, G: tasks.best_worst_indices(r, G)[::-1])]
    return _run("check_best_worst_pairs", fn, cases, mistakes,
                "for each group: skip it if max == min; else offset + argmax, offset + argmin.")


# ====================================================================== chapter 12: TRL's bias correction

def check_ratio_weighted_gradient(fn) -> bool:
    """fn(policy, ref, estimator="k3") -> `[P]`: the exact expected gradient (by enumeration over
    `policy.sequences()`) of sum_t k_t * pi(a_t|s_t) / stopgrad(pi(a_t|s_t)), on-policy, flattened over
    policy.logits; policy, ref: `exact.TabularPolicy`. (TRL's use_bias_correction_kl.)
    reference: `rlbook.kl.exact_ratio_weighted_gradient`"""
    pairs = [("one token (= grad KL(pi||ref) exactly)", exact.TabularPolicy(4, 1, seed=1), exact.TabularPolicy(4, 1, seed=2)),
             ("3 tokens, V = 3", exact.TabularPolicy(3, 3, seed=1), exact.TabularPolicy(3, 3, seed=2)),
             ("2 tokens, V = 2", exact.TabularPolicy(2, 2, seed=3, scale=2.0), exact.TabularPolicy(2, 2, seed=4))]
    cases = [_Case(n, (pi, ref), {}, kl.exact_ratio_weighted_gradient(pi, ref),
                   kl.exact_kl_gradients(pi, ref)["KL(pi||ref)"] if pi.length == 1 else None) for n, pi, ref in pairs]
    mistakes = [_Mistake("without the ratio's gradient this is k3 in the loss, which follows the forward KL: keep "
                         "pi / stopgrad(pi) differentiable (its value is 1, its gradient is grad log pi).",
                         lambda pi, ref, estimator="k3": kl.exact_kl_gradients(pi, ref)[f"{estimator}/loss"]),
                _Mistake("that is k3 as a detached reward (k_t * grad log P of the whole sequence); the correction multiplies each "
                         "token's k3 by its own token's ratio, inside the loss.",
                         lambda pi, ref, estimator="k3": kl.exact_kl_gradients(pi, ref)[f"{estimator}/reward"]),
                _Mistake("that is the sequence-level gradient of KL(pi||ref) (exercise 3's sequence ratio); the per-token ratio gives "
                         "the per-state KL gradient with the states held fixed.",
                         lambda pi, ref, estimator="k3": kl.exact_kl_gradients(pi, ref)["KL(pi||ref)"])]
    return _run("check_ratio_weighted_gradient", fn, cases, mistakes,
                "logp = policy.token_logprobs(seqs); ratio = exp(logp - logp.detach()); "
                "flat_grad((P.detach() * (kl.k3(logp, ref_logp) * ratio).sum(-1)).sum(), policy.logits).")


CHECKERS = {name: obj for name, obj in sorted(globals().items()) if name.startswith("check_") and callable(obj)}
"""Every checker by name: what `scripts/grade.py` looks for in a notebook."""
