"""The two learned scorers of RLHF: the critic V(s_t) and the Bradley-Terry reward model r(x, y).

Both are the tiny LM's transformer trunk with a one-number head in place of the vocabulary,
built with the `transformers` classes a real pipeline uses:

- the critic is a token classifier with one label: a value at every position, read at the
  completion positions as V(s_t), `[B, T]` (s_t = the prompt and the first t completion tokens);
- the reward model is a sequence classifier with one label: one score per sequence, read at its
  last real token, `[B]`.

Both start from a trained LM's trunk (as InstructGPT initialises its reward model and critic
from the SFT model); the head is new.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, PreTrainedModel

from rlbook.checks import check_finite, check_mask, check_same_shape, reduce
from rlbook.lm import Batch, completion_logits, position_ids
from rlbook.masked import masked_reduce, masked_var


def _with_trunk(model_class, model: PreTrainedModel) -> PreTrainedModel:
    """A `model_class` (one label) sharing nothing with `model` but a copy of its trunk's weights."""
    config = copy.deepcopy(model.config)
    config.num_labels = 1
    config.classifier_dropout = 0.0  # a regression target: dropout would only add noise
    if config.pad_token_id is None:
        raise ValueError("model.config.pad_token_id is None: the reward model finds each sequence's last "
                         "token by looking for padding, so the tokenizer's pad id must be set")
    head_model = model_class.from_config(config)
    head_model.base_model.load_state_dict(model.base_model.state_dict())
    return head_model.to(next(model.parameters()).device)


# ---------------------------------------------------------------- critic

def critic_model(model: PreTrainedModel) -> PreTrainedModel:
    """A separate critic: a copy of `model`'s trunk with a scalar head at every position,
    zero-initialised so that V(s) = 0 before training.

    Memory: as many trunk parameters as the policy (the seed's "separate Critic network").
    """
    critic = _with_trunk(AutoModelForTokenClassification, model)
    head = critic.classifier if hasattr(critic, "classifier") else critic.score  # GPT-2 / Llama names
    torch.nn.init.zeros_(head.weight)
    if head.bias is not None:
        torch.nn.init.zeros_(head.bias)
    return critic


def values(critic: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """V(s_t) at every completion position: `[B, T]`, 0 at masked positions.

    Column t is the value of the state *before* completion token t is chosen (the prompt and
    tokens 0..t-1), the same alignment as `lm.completion_logprobs`. The state after the last
    token is terminal, V = 0, which `advantages.gae` assumes.
    """
    return completion_logits(critic, batch)[..., 0] * batch.completion_mask


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor | None = None, clip_eps: float | None = 0.2,
               reduction: str = "mean") -> torch.Tensor:
    """PPO's clipped value loss, per token:

        L^V_t = 1/2 max( (V_t - R_t)^2, (V_old,t + clip(V_t - V_old,t, -eps, +eps) - R_t)^2 )

    with R_t the regression target (GAE returns). Clipping keeps the critic's update as
    proximal as the policy's: a value that moved more than eps from V_old gets no gradient
    pushing it further. clip_eps=None is the plain squared error 1/2 (V - R)^2.

    values (with grad), old_values, returns, mask: `[B, T]` (or `[B]`). "mean" averages over
    unmasked tokens, "sum" sums them, "none" returns `[B, T]` with masked entries 0.

    >>> value_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([2.0]), clip_eps=0.5)
    tensor(1.1250)
    """
    check_same_shape(values=values, old_values=old_values, returns=returns)
    check_finite(values=values, old_values=old_values, returns=returns)
    m = check_mask(mask, values, "values")
    if clip_eps is not None and not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0 or None, got {clip_eps}")
    loss = (values - returns) ** 2
    if clip_eps is not None:
        clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
        loss = torch.maximum(loss, (clipped - returns) ** 2)
    return masked_reduce(0.5 * loss, m, reduction)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """1 - Var[R - V] / Var[R] over unmasked entries: 1 = the critic predicts the returns
    perfectly, 0 = no better than their mean, < 0 = worse than the mean."""
    m = check_mask(mask, values, "values")
    var_r = masked_var(returns, m).item()
    return float("nan") if var_r == 0 else 1.0 - masked_var(returns - values, m).item() / var_r


# ---------------------------------------------------------------- reward model

def reward_model(model: PreTrainedModel) -> PreTrainedModel:
    """A Bradley-Terry reward model: a copy of `model`'s trunk with a scalar head read at the
    last real token (`AutoModelForSequenceClassification`, one label).

    The class finds "the last real token" as the right-most token that is not padding, so
    `config.pad_token_id` must be set (it is copied from `model`). Completions are
    right-padded after their EOS, so that token is the EOS of a finished completion.
    """
    return _with_trunk(AutoModelForSequenceClassification, model)


def reward_scores(reward_model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """r(x, y) for every (prompt, completion) in the batch: `[B]`, read at the last real token.

    Positions skip the prompt's left padding (as when the policy scores the same batch), so
    a sequence scores the same whatever it is batched with.
    """
    if reward_model.config.pad_token_id is None:
        raise ValueError("reward_model.config.pad_token_id is None: set it, or every score is read at the "
                         "last column, which is padding for all but the longest completion")
    attention_mask = batch.attention_mask
    out = reward_model(input_ids=batch.input_ids, attention_mask=attention_mask,
                       position_ids=position_ids(attention_mask))
    return out.logits[:, 0].float()


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor,
                       reduction: str = "mean") -> torch.Tensor:
    """-log sigma(r(x, y_w) - r(x, y_l)): the negative log-likelihood of the preference
    y_w > y_l under the Bradley-Terry model P(y_w > y_l) = sigma(r_w - r_l).

    chosen_scores, rejected_scores: `[B]`. Uses logsigmoid, so it stays finite for any margin.

    >>> bradley_terry_loss(torch.tensor([0.0]), torch.tensor([0.0]))  # log 2: a coin flip
    tensor(0.6931)
    """
    check_same_shape(chosen_scores=chosen_scores, rejected_scores=rejected_scores)
    check_finite(chosen_scores=chosen_scores, rejected_scores=rejected_scores)
    return reduce(-F.logsigmoid(chosen_scores - rejected_scores), reduction)


@torch.no_grad()
def preference_accuracy(reward_model: PreTrainedModel, pairs, batch_size: int = 512) -> float:
    """Fraction of pairs whose chosen completion the reward model scores strictly higher."""
    chosen, rejected = pairs.score(lambda batch: reward_scores(reward_model, batch), batch_size)
    return (chosen > rejected).float().mean().item()
