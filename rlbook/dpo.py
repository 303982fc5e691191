"""Direct Preference Optimization (Rafailov et al. 2023), derived in four steps.

Each step is a function that can be checked on a bandit: a prompt x with K possible
answers y, a reference policy pi_ref(y|x) and a reward r(x, y), all `[..., K]` tensors
(the last dim runs over the answers, leading dims over prompts).

    Step 1  J(pi) = E_{y~pi}[r(x, y)] - beta KL(pi || pi_ref)          `kl_regularised_objective`
    Step 2  pi*(y|x) = pi_ref(y|x) exp(r(x, y)/beta) / Z(x)            `optimal_policy`
    Step 3  r(x, y) = beta log pi*(y|x)/pi_ref(y|x) + beta log Z(x)    `implied_reward`
    Step 4  r(x, y_w) - r(x, y_l) = beta h, log Z cancelled            `reward_margin`
    DPO     L = -log sigma(beta h)                                      `dpo_loss`

with h = log pi(y_w)/pi_ref(y_w) - log pi(y_l)/pi_ref(y_l) (`preference.log_ratio_margin`).
On a language model the log-probs of Steps 3-4 are summed over the completion's tokens: `[B]`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlbook.checks import check_finite, check_positive, check_same_shape, reduce
from rlbook.kl import kl_divergence
from rlbook.preference import log_ratio_margin


def _bandit_inputs(**tensors: torch.Tensor) -> None:
    check_same_shape(**tensors)
    check_finite(**tensors)
    for name, x in tensors.items():
        if x.dim() == 0:
            raise ValueError(f"{name} must have a last dim over the answers [..., K], got a scalar")


# ---------------------------------------------------------------- Step 1

def kl_regularised_objective(logp: torch.Tensor, ref_logp: torch.Tensor, rewards: torch.Tensor,
                             beta: float) -> torch.Tensor:
    """Step 1, the RLHF objective of a policy on a bandit:

        J(pi) = sum_y pi(y) r(y) - beta KL(pi || pi_ref)
              = E_{y~pi}[ r(y) - beta log pi(y)/pi_ref(y) ]

    logp, ref_logp, rewards: `[..., K]` (logp may be unnormalised logits: it is
    normalised over the last dim, so an optimiser can work on free parameters).
    Returns `[...]`.

    >>> ref = torch.tensor([0.5, 0.5]).log()
    >>> kl_regularised_objective(ref, ref, torch.tensor([1.0, 0.0]), beta=1.0)  # KL = 0
    tensor(0.5000)
    """
    check_positive(beta=beta)
    _bandit_inputs(logp=logp, ref_logp=ref_logp, rewards=rewards)
    logp = torch.log_softmax(logp, dim=-1)
    return (logp.exp() * rewards).sum(-1) - beta * kl_divergence(logp, ref_logp)


# ---------------------------------------------------------------- Step 2

def optimal_policy(ref_logp: torch.Tensor, rewards: torch.Tensor, beta: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2, the maximiser of J in closed form:

        pi*(y) = pi_ref(y) exp(r(y)/beta) / Z,   Z = sum_y pi_ref(y) exp(r(y)/beta)
        log pi*(y) = log pi_ref(y) + r(y)/beta - log Z

    ref_logp, rewards: `[..., K]`. Returns (log pi* `[..., K]`, log Z `[...]`), with
    log Z from log-sum-exp so that r/beta in the hundreds does not overflow.
    Small beta: pi* piles onto the best answer; large beta: pi* stays at pi_ref.

    >>> logp, log_z = optimal_policy(torch.tensor([0.5, 0.5]).log(), torch.tensor([0.0, 0.0]), beta=1.0)
    >>> logp.exp(), log_z   # equal rewards: pi* = pi_ref and Z = 1
    (tensor([0.5000, 0.5000]), tensor(0.))
    """
    check_positive(beta=beta)
    _bandit_inputs(ref_logp=ref_logp, rewards=rewards)
    scores = ref_logp + rewards / beta
    log_z = torch.logsumexp(scores, dim=-1)
    return scores - log_z.unsqueeze(-1), log_z


# ---------------------------------------------------------------- Step 3

def implied_reward(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float,
                   log_z: torch.Tensor | float | None = None) -> torch.Tensor:
    """Step 3, Step 2 solved for the reward:

        r(x, y) = beta log pi(y|x)/pi_ref(y|x) + beta log Z(x)

    Without `log_z` this is DPO's implied reward r_hat = beta log pi/pi_ref, the true
    reward up to beta log Z(x), a constant per prompt that nobody can compute for a
    language model. With the log Z of `optimal_policy` and pi = pi*, it returns r exactly.

    logp, ref_logp: any shape, e.g. `[B]` summed sequence log-probs or `[..., K]` (a bandit's
    K answers per prompt). log_z: a number, one per entry (logp's shape), or one per prompt
    (logp's shape without the last dim, broadcast over the K answers); any other shape is an error.

    >>> implied_reward(torch.tensor([-1.0]), torch.tensor([-2.0]), beta=0.1)
    tensor([0.1000])
    """
    check_positive(beta=beta)
    check_same_shape(logp=logp, ref_logp=ref_logp)
    check_finite(logp=logp, ref_logp=ref_logp)
    r_hat = beta * (logp - ref_logp)
    if log_z is None:
        return r_hat
    log_z = torch.as_tensor(log_z, dtype=r_hat.dtype, device=r_hat.device)
    check_finite(log_z=log_z)
    if log_z.dim() == 0 or log_z.shape == r_hat.shape:
        return r_hat + beta * log_z
    if log_z.shape == r_hat.shape[:-1]:
        return r_hat + beta * log_z.unsqueeze(-1)
    raise ValueError(f"log_z has shape {tuple(log_z.shape)}; expected a number, {tuple(r_hat.shape)} (logp's "
                     f"shape) or {tuple(r_hat.shape[:-1])} (one per prompt)")


# ---------------------------------------------------------------- Step 4

def reward_margin(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, beta: float = 0.1) -> torch.Tensor:
    """Step 4, the reward difference of a pair written with Step 3, where beta log Z(x) cancels:

        r(x, y_w) - r(x, y_l) = beta log pi(y_w)/pi_ref(y_w) - beta log pi(y_l)/pi_ref(y_l) = beta h

    The four inputs are summed sequence log-probs `[B]`; returns `[B]`. This is the logit
    of the Bradley-Terry probability P(y_w > y_l) = sigma(r_w - r_l) that DPO maximises.
    """
    check_positive(beta=beta)
    return beta * log_ratio_margin(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)


def dpo_loss(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, beta: float = 0.1,
             reduction: str = "mean") -> torch.Tensor:
    """DPO (Rafailov et al. 2023, Eq. 7): the Bradley-Terry negative log-likelihood with the
    reward margin of Step 4,

        L_DPO = -log sigma( beta log pi(y_w)/pi_ref(y_w) - beta log pi(y_l)/pi_ref(y_l) ).

    chosen_logp, rejected_logp (with grad), ref_chosen_logp, ref_rejected_logp: summed
    sequence log-probs `[B]`. logsigmoid keeps it finite at any margin: -log sigma(m) ~ -m
    for m -> -inf, ~ exp(-m) for m -> +inf. "mean" (default), "sum" or "none" (`[B]`).

    >>> dpo_loss(torch.tensor([-1.0]), torch.tensor([-1.0]), torch.tensor([-1.0]), torch.tensor([-1.0]))
    tensor(0.6931)
    """
    margin = reward_margin(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, beta)
    return reduce(-F.logsigmoid(margin), reduction)


def dpo_gradient_weight(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp,
                        beta: float = 0.1) -> torch.Tensor:
    """How hard DPO pushes each pair (Rafailov et al. 2023, Section 4):

        grad L_DPO = -beta E[ sigma(r_hat_l - r_hat_w) (grad log pi(y_w) - grad log pi(y_l)) ]

    with r_hat = beta log pi/pi_ref (`implied_reward`). The weight sigma(r_hat_l - r_hat_w)
    `[B]` (detached) is near 1 for a pair the implied reward orders wrongly and near 0 for
    one it already orders with a wide margin. Note what the formula does not contain: any
    term that keeps log pi(y_w) from falling, as long as log pi(y_l) falls faster.
    """
    margin = reward_margin(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, beta)
    return torch.sigmoid(-margin).detach()
