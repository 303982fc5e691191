"""A tabular autoregressive policy small enough to enumerate: exact answers to check
every estimator against.

`TabularPolicy(vocab_size=V, length=T)` keeps one row of logits for every prefix
(a_0, ..., a_{t-1}) with t < T, so pi_theta(a_t | s_t) is a free softmax per state. All
V^T sequences can be listed, so J(theta) = E[R(tau)], its gradient, and the expectation
of any per-sequence or per-token quantity are exact sums, not samples.

    >>> pi = TabularPolicy(vocab_size=2, length=2, seed=0)
    >>> pi.sequences().tolist()
    [[0, 0], [0, 1], [1, 0], [1, 1]]
    >>> round(pi.probs().sum().item(), 6)
    1.0
"""

from __future__ import annotations

import itertools
from typing import Callable

import torch
from torch import nn


class TabularPolicy(nn.Module):
    """pi_theta(a_t | a_<t) over `vocab_size` tokens and sequences of exactly `length` tokens.

    logits: [num_states, V], one row per prefix; row order is by prefix length, then
    lexicographic (the empty prefix is row 0).
    """

    def __init__(self, vocab_size: int = 3, length: int = 3, seed: int = 0, scale: float = 1.0,
                 logits: torch.Tensor | None = None):
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if vocab_size ** length > 1_000_000:
            raise ValueError(f"vocab_size ** length = {vocab_size ** length} sequences is too many to enumerate")
        self.vocab_size, self.length = vocab_size, length
        self.num_states = sum(vocab_size ** t for t in range(length))
        if logits is None:
            g = torch.Generator().manual_seed(seed)
            logits = scale * torch.randn(self.num_states, vocab_size, generator=g, dtype=torch.float64)
        elif logits.shape != (self.num_states, vocab_size):
            raise ValueError(f"logits must have shape {(self.num_states, vocab_size)}, got {tuple(logits.shape)}")
        self.logits = nn.Parameter(logits.detach().clone().to(torch.float64))
        # offset of the first state of each prefix length
        self._offsets = [sum(vocab_size ** k for k in range(t)) for t in range(length)]

    # -- states -----------------------------------------------------------------------

    def state_index(self, seqs: torch.Tensor) -> torch.Tensor:
        """Row of the logit table for every state s_t = a_<t of each sequence: [N, T]."""
        N, T = seqs.shape
        index = torch.zeros(N, T, dtype=torch.long)
        code = torch.zeros(N, dtype=torch.long)  # a_<t read as a base-V number
        for t in range(T):
            index[:, t] = self._offsets[t] + code
            code = code * self.vocab_size + seqs[:, t]
        return index

    def sequences(self) -> torch.Tensor:
        """All V^T sequences, [V^T, T], in lexicographic order."""
        return torch.tensor(list(itertools.product(range(self.vocab_size), repeat=self.length)), dtype=torch.long)

    # -- probabilities ----------------------------------------------------------------

    def token_logits(self, seqs: torch.Tensor) -> torch.Tensor:
        """Logits of pi(. | s_t) at every step of each sequence: [N, T, V]."""
        self._check(seqs)
        return self.logits[self.state_index(seqs)]

    def token_logprobs(self, seqs: torch.Tensor) -> torch.Tensor:
        """log pi(a_t | s_t): [N, T]."""
        logp_all = torch.log_softmax(self.token_logits(seqs), dim=-1)
        return logp_all.gather(-1, seqs.unsqueeze(-1)).squeeze(-1)

    def log_prob(self, seqs: torch.Tensor) -> torch.Tensor:
        """log P(tau) = sum_t log pi(a_t | s_t): [N]."""
        return self.token_logprobs(seqs).sum(-1)

    def probs(self) -> torch.Tensor:
        """P(tau) of every sequence in `sequences()` order: [V^T]."""
        return self.log_prob(self.sequences()).exp()

    def expectation(self, values: torch.Tensor | Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """E_{tau ~ pi}[f(tau)] exactly; differentiable in theta when f does not detach.

        values: a tensor [V^T] (one value per sequence, in `sequences()` order), or a
        callable mapping sequences [N, T] to values [N] (it may use this policy's log-probs).
        """
        seqs = self.sequences()
        f = values(seqs) if callable(values) else values
        if f.shape != (seqs.shape[0],):
            raise ValueError(f"values must have shape {(seqs.shape[0],)}, got {tuple(f.shape)}")
        return (self.probs() * f).sum()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n sequences drawn ancestrally, token by token: [n, T]."""
        seqs = torch.zeros(n, self.length, dtype=torch.long)
        code = torch.zeros(n, dtype=torch.long)
        for t in range(self.length):
            probs = torch.softmax(self.logits[self._offsets[t] + code], dim=-1)
            seqs[:, t] = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            code = code * self.vocab_size + seqs[:, t]
        return seqs

    def _check(self, seqs: torch.Tensor) -> None:
        if seqs.dim() != 2 or seqs.shape[1] != self.length:
            raise ValueError(f"seqs must be [N, {self.length}], got shape {tuple(seqs.shape)}")
        if seqs.min() < 0 or seqs.max() >= self.vocab_size:
            raise ValueError(f"seqs holds tokens outside 0..{self.vocab_size - 1}")


def flat_grad(scalar: torch.Tensor, params, retain_graph: bool = False) -> torch.Tensor:
    """d scalar / d params, flattened into one vector (zeros where a parameter is unused)."""
    params = list(params) if not isinstance(params, torch.Tensor) else [params]
    grads = torch.autograd.grad(scalar, params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def exact_gradient(policy: TabularPolicy, values) -> torch.Tensor:
    """grad_theta E_{tau ~ pi_theta}[f(tau)] by autograd through the enumeration.

    This differentiates the probabilities themselves, never a sampled estimate, so it
    is the answer every score-function estimator should agree with on average.
    """
    return flat_grad(policy.expectation(values), policy.logits)


def cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    """cos(u, v); 0 when either vector is 0."""
    nu, nv = u.norm(), v.norm()
    if nu == 0 or nv == 0:
        return 0.0
    return (u @ v / (nu * nv)).item()


# ---------------------------------------------------------------- values, advantages and estimator moments

@torch.no_grad()
def action_values(policy: TabularPolicy, returns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Q(s_t, a_t) and V(s_t) along every sequence, for a reward R(tau) received at the end.

        V(s_t)      = E[R | a_<t]        (average over all continuations of the prefix)
        Q(s_t, a_t) = E[R | a_<=t]       (= V(s_{t+1}); = R(tau) itself at the last step)

    returns: `[V^T]`, R of each sequence in `sequences()` order. Gives (Q, V), each `[V^T, T]`;
    the exact advantage is Q - V.
    """
    seqs = policy.sequences()
    if returns.shape != (seqs.shape[0],):
        raise ValueError(f"returns must have shape {(seqs.shape[0],)}, got {tuple(returns.shape)}")
    p = policy.probs()
    N, T = seqs.shape

    def conditional_mean(prefix_len: int) -> torch.Tensor:
        """E[R | first prefix_len tokens] for every sequence: [N]."""
        code = torch.zeros(N, dtype=torch.long)
        for t in range(prefix_len):
            code = code * policy.vocab_size + seqs[:, t]
        mass = torch.zeros(policy.vocab_size ** prefix_len, dtype=p.dtype).index_add_(0, code, p)
        total = torch.zeros_like(mass).index_add_(0, code, p * returns.to(p.dtype))
        return (total / mass)[code]

    V = torch.stack([conditional_mean(t) for t in range(T)], dim=1)
    Q = torch.stack([conditional_mean(t + 1) for t in range(T)], dim=1)
    return Q, V


def token_score_gradients(policy: TabularPolicy, seqs: torch.Tensor) -> torch.Tensor:
    """grad_theta log pi(a_t | s_t) for every token of every sequence, flattened: `[N, T, P]`
    with P = the number of logits. A per-trajectory estimator sum_t Phi_t * grad log pi
    is then `einsum('ntp,nt->np', grads, Phi)`."""
    logp = policy.token_logprobs(seqs)
    N, T = logp.shape
    return torch.stack([torch.stack([flat_grad(logp[n, t], policy.logits, retain_graph=True) for t in range(T)])
                        for n in range(N)])


def estimator_moments(policy: TabularPolicy, estimates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean and total variance of a one-trajectory estimator tau -> estimates[tau]
    (`[V^T, P]`, one row per sequence in `sequences()` order) under tau ~ pi:

        mean = sum_tau P(tau) g(tau),   variance = sum_tau P(tau) ||g(tau) - mean||^2

    The bias of a gradient estimator is then mean - exact_gradient(policy, R).
    """
    with torch.no_grad():
        p = policy.probs()
    if estimates.dim() != 2 or estimates.shape[0] != p.shape[0]:
        raise ValueError(f"estimates must be [{p.shape[0]}, P], got shape {tuple(estimates.shape)}")
    return _moments(p, estimates)


def _moments(prob: torch.Tensor, estimates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and total variance of the rows of `estimates` `[M, P]` with probabilities `prob` `[M]`."""
    mean = (prob.unsqueeze(1) * estimates).sum(0)
    variance = (prob * ((estimates - mean) ** 2).sum(1)).sum()
    return mean, variance


# ---------------------------------------------------------------- sampled sequences and batch estimators (chapter 01)

def sequence_index(policy: TabularPolicy, seqs: torch.Tensor) -> torch.Tensor:
    """Row of each sequence in `policy.sequences()` order (the sequence read as a base-V
    number): `[N, T]` -> `[N]`. Lets sampled sequences look up per-sequence tables.

    >>> pi = TabularPolicy(vocab_size=3, length=2)
    >>> sequence_index(pi, torch.tensor([[0, 0], [1, 2], [2, 2]])).tolist()
    [0, 5, 8]
    """
    policy._check(seqs)
    powers = policy.vocab_size ** torch.arange(policy.length - 1, -1, -1)
    return (seqs * powers).sum(1)


def batch_estimator_moments(policy: TabularPolicy, token_scores: torch.Tensor, token_rewards: torch.Tensor,
                            weights_fn, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean and total variance of an n-sample gradient estimator whose weights may
    depend on the whole batch (batch-mean or leave-one-out baselines):

        g(tau_1..tau_n) = 1/n sum_i sum_t Phi_it grad log pi(a_it | s_it),   Phi = weights_fn(r)

    by listing all K^n ordered batches with probability prod_i P(tau_i).
    token_scores: `token_score_gradients(policy, policy.sequences())`, `[K, T, P]`;
    token_rewards: `[K, T]`; weights_fn maps rewards `[M * n, T]` (M batches of n rows, batch
    after batch) to weights of the same shape. Feasible while K^n stays below ~10^5.
    """
    K, T, P = token_scores.shape
    if token_rewards.shape != (K, T):
        raise ValueError(f"token_rewards must have shape {(K, T)}, got {tuple(token_rewards.shape)}")
    if n < 1 or K ** n > 200_000:
        raise ValueError(f"n={n} gives K^n = {K ** n} batches; need 1 <= n and K^n <= 200000")
    with torch.no_grad():
        p = policy.probs()
    batches = torch.tensor(list(itertools.product(range(K), repeat=n)), dtype=torch.long)   # [M, n]
    M = batches.shape[0]
    phi = weights_fn(token_rewards[batches.reshape(-1)]).reshape(M, n, T).to(token_scores.dtype)
    estimates = torch.einsum("mntp,mnt->mp", token_scores[batches], phi) / n
    return _moments(p[batches].prod(1), estimates)
