"""Small training loops. Each returns a history: {metric name: list of values per step}."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from rlbook.algorithms import Algorithm, Rollout
from rlbook.checks import check_finite, check_nonnegative, check_positive, values_validated
from rlbook.device import fork_rng
from rlbook.dpo import dpo_loss
from rlbook.kl import sequence_kl_per_state
from rlbook.lm import Batch, completion_logprobs, concat_batches, frozen_copy, make_batch
from rlbook.masked import masked_mean, masked_sum
from rlbook.preference import kto_loss, kto_reference_point, log_ratio_margin
from rlbook.tasks import mismatched_batch, pairs_from_groups, sample_groups
from rlbook.value import bradley_terry_loss, reward_scores, value_loss, values


def sft_loss(model, batch) -> torch.Tensor:
    """Next-token cross-entropy on completion tokens only (the prompt is given, not learned):
    -mean over completion tokens of log pi(a_t | s_t)."""
    return -masked_mean(completion_logprobs(model, batch), batch.completion_mask)


def sft(model, tokenizer, examples: Sequence[tuple], steps: int, batch_size: int = 64, lr: float = 3e-3,
        weight_decay: float = 0.0, seed: int = 0, progress: bool = True) -> dict[str, list[float]]:
    """Supervised fine-tuning on (prompt words, completion words) pairs with AdamW.

    Minibatches are drawn with replacement from `examples` by a generator seeded with
    `seed`, so the same call on the CPU gives the same weights. The learning rate decays
    linearly to 0, which lets a few hundred steps converge cleanly.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if len(examples) == 0:
        raise ValueError("examples is empty")
    device = next(model.parameters()).device
    rng = random.Random(seed)
    # every minibatch's draws up front (the same stream as drawing step by step), each example
    # drawn tokenised once; a minibatch is rows of that without the all-padding columns: the
    # tensors make_batch builds for those examples
    draws = [rng.randrange(len(examples)) for _ in range(steps * batch_size)]
    drawn = sorted(set(draws))
    data = make_batch(tokenizer, [examples[i][0] for i in drawn], [examples[i][1] for i in drawn]).to(device)
    row_of = {i: row for row, i in enumerate(drawn)}
    minibatches = torch.tensor([row_of[i] for i in draws], device=device).view(steps, batch_size)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    history = defaultdict(list)
    model.train()
    for rows in tqdm(minibatches, desc="SFT", disable=not progress):
        batch = data.index(rows).compact()
        loss = sft_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        history["loss"].append(loss.item())
    model.eval()
    return dict(history)


# ---------------------------------------------------------------- on-policy RL
def _check_counts(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")



@dataclass
class RLConfig:
    """Settings of the on-policy loop (rollout -> score -> update)."""

    iterations: int = 100
    """Number of rollout/update rounds."""
    prompts_per_iter: int = 16
    """Distinct prompts sampled each round."""
    group_size: int = 8
    """Completions sampled per prompt (G); rows are laid out group after group."""
    inner_steps: int = 1
    """Gradient steps on each batch of samples (PPO/GRPO epochs); > 1 makes pi_theta != pi_old."""
    lr: float = 3e-4
    """Adam learning rate."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm (None: no clipping)."""
    temperature: float = 1.0
    """Sampling temperature; 1.0 samples pi_theta itself, which the estimators assume."""
    seed: int = 0
    """Seeds the prompts of round i (seed + i) and torch's sampler."""

    def __post_init__(self):
        _check_counts(self, "iterations", "prompts_per_iter", "group_size", "inner_steps")
        check_positive(lr=self.lr, temperature=self.temperature)
        if self.max_grad_norm is not None:
            check_positive(max_grad_norm=self.max_grad_norm)


def on_policy(policy, tokenizer, world, algorithm: Algorithm, config: RLConfig = RLConfig(), ref=None,
              reward_fn: Callable | None = None, progress: bool = True,
              callback: Callable | None = None) -> dict[str, list[float]]:
    """The loop every on-policy chapter shares. Each round:

      1. sample G completions for each of a few prompts (the KV cache), score them with the
         world's true reward or `reward_fn(batch) -> [B]` (e.g. a reward model), and run
         `ref` (pi_ref) if given: all without autograd. An algorithm that needs_reference fails
         without it; one that does not still gets ref_logp, to log the drift KL;
      2. one forward of the policy gives logp; old_logp is its detached copy (the policy that
         sampled has not moved yet) and makes the `Rollout`; `algorithm.prepare(rollout)`;
      3. `inner_steps` gradient steps on `algorithm.loss(logp, rollout, state, logits)`, the
         policy's and the algorithm's own parameters (a critic) clipped apart, so a large
         critic loss cannot shrink the policy's step;
      4. `algorithm.end_of_round(policy, rollout, history)`, then `callback(iteration, policy,
         rollout, history)`.

    The history has one entry per round: "reward" (what was maximised), "true_reward",
    "length", `prepare`'s metrics, and "loss" and `loss`'s metrics averaged over the inner steps.
    The round's inputs are validated once; the inner steps skip the losses' value checks
    (`checks.values_validated`) and stop on a non-finite loss instead.
    """
    if algorithm.needs_reference and ref is None:
        raise ValueError(f"ref: {type(algorithm).__name__} needs a reference model (pass ref=...)")
    device = next(policy.parameters()).device
    policy_params, extra_params = list(policy.parameters()), list(algorithm.parameters())
    if not any(p.requires_grad for p in policy_params):
        raise ValueError("policy: no parameter requires grad (a frozen copy?); train lm.trainable_copy(model)")
    optimizer = torch.optim.Adam([*policy_params, *extra_params], lr=config.lr)
    needs_logits = algorithm.needs_logits
    torch.manual_seed(config.seed)
    history = defaultdict(list)
    for it in tqdm(range(config.iterations), desc="RL", disable=not progress):
        with torch.no_grad():
            batch, true_reward = sample_groups(world, policy, tokenizer, config.prompts_per_iter, config.group_size,
                                               seed=config.seed + it, temperature=config.temperature)
            rewards = reward_fn(batch).to(device) if reward_fn is not None else true_reward
            ref_logp, ref_logits = _forward(ref, batch, needs_logits) if ref is not None else (None, None)
        policy.train()
        logp, logits = _forward(policy, batch, needs_logits)
        rollout = Rollout(batch, rewards, logp.detach(), ref_logp, config.group_size, true_reward,
                          logits.detach() if needs_logits else None, ref_logits)
        check_finite(rewards=rewards, old_logp=rollout.old_logp, ref_logp=ref_logp)
        with torch.no_grad():
            state, round_metrics = algorithm.prepare(rollout)
        steps = defaultdict(list)
        with values_validated():
            for step in range(config.inner_steps):
                if step > 0:
                    logp, logits = _forward(policy, batch, needs_logits)
                loss, metrics = algorithm.loss(logp, rollout, state, logits)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"the loss is {loss.item()} at round {it}, inner step {step}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm is not None:
                    for group in (policy_params, extra_params):
                        if group:
                            torch.nn.utils.clip_grad_norm_(group, config.max_grad_norm)
                optimizer.step()
                for k, v in {"loss": loss.detach(), **metrics}.items():
                    steps[k].append(torch.as_tensor(v, dtype=torch.float32))
        policy.eval()
        history["reward"].append(rewards.mean().item())
        history["true_reward"].append(true_reward.mean().item())
        history["length"].append(batch.lengths.float().mean().item())
        for k, v in round_metrics.items():
            history[k].append(float(v))
        for k, vs in steps.items():
            history[k].append(torch.stack(vs).mean().item())
        algorithm.end_of_round(policy, rollout, history)
        if callback is not None:
            callback(it, policy, rollout, history)
    return dict(history)


def _forward(model, batch: Batch, with_logits: bool):
    """(logp `[B, T]`, logits `[B, T, V]` or None) of a batch's completions."""
    if with_logits:
        return completion_logprobs(model, batch, return_logits=True)
    return completion_logprobs(model, batch), None


# ---------------------------------------------------------------- learned scorers (chapters 03-04)

def train_reward_model(reward_model, pairs, steps: int, batch_size: int = 64, lr: float = 1e-3,
                       seed: int = 0, progress: bool = True) -> dict[str, list[float]]:
    """Fit a Bradley-Terry reward model on preference pairs (`tasks.PreferencePairs`) with
    AdamW: minimise -log sigma(r(x, y_w) - r(x, y_l)) over minibatches drawn with
    replacement. Logs "loss" and "accuracy" (the minibatch's fraction with r_w > r_l)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if len(pairs) == 0:
        raise ValueError("pairs is empty")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(reward_model.parameters(), lr=lr)
    history = defaultdict(list)
    reward_model.train()
    for _ in tqdm(range(steps), desc="reward model", disable=not progress):
        rows = torch.randint(len(pairs), (batch_size,), generator=generator).tolist()
        chosen = reward_scores(reward_model, pairs.chosen.index(rows))
        rejected = reward_scores(reward_model, pairs.rejected.index(rows))
        loss = bradley_terry_loss(chosen, rejected)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history["loss"].append(loss.item())
        history["accuracy"].append((chosen > rejected).float().mean().item())
    optimizer.zero_grad(set_to_none=True)  # a trained model should not carry its last gradients around
    reward_model.eval()
    return dict(history)


def fit_critic(critic, batch: Batch, returns: torch.Tensor, steps: int, batch_size: int = 64, lr: float = 1e-3,
               seed: int = 0, progress: bool = True) -> dict[str, list[float]]:
    """Regress the critic's V(s_t) on fixed targets (e.g. Monte-Carlo returns of sampled
    completions): minimise 1/2 (V(s_t) - returns_t)^2 over completion tokens, minibatches of
    rows drawn with replacement, AdamW with the learning rate decaying linearly to 0 (the
    targets are noisy: the decay averages over many minibatches). batch: the completions;
    returns: `[B, T]`. Logs "loss"."""
    if returns.shape != batch.completion_mask.shape:
        raise ValueError(f"returns has shape {tuple(returns.shape)} but the batch's completions are "
                         f"{tuple(batch.completion_mask.shape)}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(critic.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    history = defaultdict(list)
    critic.train()
    for _ in tqdm(range(steps), desc="critic", disable=not progress):
        rows = torch.randint(len(batch), (batch_size,), generator=generator).tolist()
        sub = batch.index(rows)
        v = values(critic, sub)
        loss = value_loss(v, v.detach(), returns[rows], sub.completion_mask, clip_eps=None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        history["loss"].append(loss.item())
    optimizer.zero_grad(set_to_none=True)
    critic.eval()
    return dict(history)


def memory_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes a model holds, read off its tensors: "weights" (parameters and buffers),
    "grads" (gradients present now) and "optimizer" (the optimizer's state for this
    model's parameters, e.g. Adam's two moments; 0 before its first step)."""
    params = list(model.parameters())
    size = lambda t: t.numel() * t.element_size()
    weights = sum(size(p) for p in params) + sum(size(b) for b in model.buffers())
    grads = sum(size(p.grad) for p in params if p.grad is not None)
    state = 0
    if optimizer is not None:
        ids = {id(p) for p in params}
        state = sum(size(v) for p, s in optimizer.state.items() if id(p) in ids
                    for v in s.values() if torch.is_tensor(v))
    return {"weights": weights, "grads": grads, "optimizer": state}


# ---------------------------------------------------------------- preference optimisation (chapters 08-09)

def sequence_logprobs(model, batch: Batch) -> torch.Tensor:
    """log pi(y|x) = sum_t log pi(a_t|s_t) over each completion's tokens: `[B]`."""
    return masked_sum(completion_logprobs(model, batch), batch.completion_mask, dim=1)


@torch.no_grad()
def pair_logprobs(model, pairs, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(y_w|x), log pi(y_l|x)) of every pair, summed over tokens: two `[N]` tensors."""
    return pairs.score(lambda batch: sequence_logprobs(model, batch), batch_size)


@dataclass
class PreferenceConfig:
    """Settings of offline preference training (and of each round of iterative DPO)."""

    steps: int = 100
    """Gradient steps (per round, in `iterative_dpo`)."""
    batch_size: int = 32
    """Pairs per step, drawn with replacement."""
    lr: float = 1e-4
    """Adam learning rate."""
    beta: float = 0.1
    """DPO's beta (used by the default loss)."""
    nll_weight: float = 0.0
    """alpha in L + alpha * NLL(y_w): the SFT loss on the chosen answers (per-token mean)."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm (None: no clipping)."""
    seed: int = 0
    """Seeds the minibatch draws (and, in `iterative_dpo`, the prompts and samples)."""

    def __post_init__(self):
        _check_counts(self, "steps", "batch_size")
        check_positive(lr=self.lr, beta=self.beta)
        check_nonnegative(nll_weight=self.nll_weight)
        if self.max_grad_norm is not None:
            check_positive(max_grad_norm=self.max_grad_norm)


def preference_train(policy, pairs, ref=None, config: PreferenceConfig = PreferenceConfig(),
                     loss_fn: Callable | None = None, with_lengths: bool = False, optimizer=None,
                     progress: bool = True, callback: Callable | None = None) -> dict[str, list[float]]:
    """Offline preference optimisation on fixed pairs (`tasks.PreferencePairs`).

    Each step draws `batch_size` pairs, scores chosen and rejected in one forward pass and
    minimises

        loss_fn(log pi(y_w), log pi(y_l), log pi_ref(y_w), log pi_ref(y_l)) + alpha * NLL(y_w)

    on summed sequence log-probs `[b]`. The default loss is `dpo.dpo_loss` with
    `config.beta`; `preference.ipo_loss` fits as it is (functools.partial for beta), and
    with `with_lengths` the loss also gets the lengths |y_w|, |y_l| (for SimPO). The
    reference log-probs are computed once, up front; ref=None gives zeros (reference-free
    losses). `optimizer` (Adam at config.lr if None) can be passed in to keep its state
    across calls. `callback(step, policy, history)` runs after each step.

    Logs per step: "loss", "accuracy" (fraction of the minibatch whose implied reward
    orders the pair right, h > 0), "margin" (mean h), "chosen_logp" and "rejected_logp"
    (mean sequence log-probs under the policy), "nll" (per-token NLL of the chosen answers).
    """
    if len(pairs) == 0:
        raise ValueError("pairs is empty")
    loss_fn = loss_fn or (lambda cw, cl, rw, rl: dpo_loss(cw, cl, rw, rl, beta=config.beta))
    device = next(policy.parameters()).device
    pad = policy.config.pad_token_id
    if ref is not None:
        ref_chosen, ref_rejected = pair_logprobs(ref, pairs)
    else:
        ref_chosen = ref_rejected = torch.zeros(len(pairs), device=device)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = optimizer or torch.optim.Adam(policy.parameters(), lr=config.lr)
    history = defaultdict(list)
    policy.train()
    for step in tqdm(range(config.steps), desc="preference", disable=not progress):
        rows = torch.randint(len(pairs), (config.batch_size,), generator=generator).tolist()
        chosen, rejected = pairs.chosen.index(rows), pairs.rejected.index(rows)
        both = concat_batches([chosen, rejected], pad)
        token_logp = completion_logprobs(policy, both)
        seq = masked_sum(token_logp, both.completion_mask, dim=1)
        cw, cl = seq[:len(rows)], seq[len(rows):]
        rw, rl = ref_chosen[rows], ref_rejected[rows]
        loss = (loss_fn(cw, cl, rw, rl, chosen.lengths.float(), rejected.lengths.float()) if with_lengths
                else loss_fn(cw, cl, rw, rl))
        nll = -masked_mean(token_logp[:len(rows)], both.completion_mask[:len(rows)])
        if config.nll_weight > 0:
            loss = loss + config.nll_weight * nll
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
        optimizer.step()
        h = log_ratio_margin(cw.detach(), cl.detach(), rw, rl)
        history["loss"].append(loss.item())
        history["accuracy"].append((h > 0).float().mean().item())
        history["margin"].append(h.mean().item())
        history["chosen_logp"].append(cw.mean().item())
        history["rejected_logp"].append(cl.mean().item())
        history["nll"].append(nll.item())
        if callback is not None:
            callback(step, policy, history)
    optimizer.zero_grad(set_to_none=True)
    policy.eval()
    return dict(history)


@torch.no_grad()
def evaluate(policy, tokenizer, world, n_prompts: int = 256, samples_per_prompt: int = 1, seed: int = 10_000,
             threshold: float = 1.0, temperature: float = 1.0) -> dict[str, float]:
    """The policy's own answers, scored by the world's true reward, on `n_prompts` fixed
    prompts (`seed`): {"reward": mean true reward, "accuracy": fraction with reward >=
    threshold (exact match in the sort world), "length": mean completion length}.
    Sampling at temperature 1 measures the expectation the RL objective is about; a low
    temperature approaches greedy decoding. The caller's torch random streams (the CPU's and the policy's device's) are left untouched."""
    with fork_rng(next(policy.parameters()).device):
        torch.manual_seed(seed)
        batch, r = sample_groups(world, policy, tokenizer, n_prompts, samples_per_prompt, seed=seed,
                                 temperature=temperature)
    return {"reward": r.mean().item(), "accuracy": (r >= threshold).float().mean().item(),
            "length": batch.lengths.float().mean().item()}


@torch.no_grad()
def reward_and_kl(policy, ref, tokenizer, world, n_prompts: int = 512, seed: int = 10_000) -> dict[str, float]:
    """A point of the reward-KL frontier: `n_prompts` fresh samples of the policy (one per
    prompt, temperature 1), scored by the world's true reward, and their drift from `ref`

        KL(pi || pi_ref) ~ mean_i sum_t KL[pi(. | s_it) || pi_ref(. | s_it)]   (`kl.sequence_kl_per_state`)

    with the standard error of each mean (std / sqrt(n)), and the k1 estimate
    mean_i log pi(y_i|x_i)/pi_ref(y_i|x_i) from the same samples for comparison. Returns
    {"reward", "reward_se", "kl", "kl_se", "k1", "k1_se", "length"}; like `evaluate`, the
    caller's random streams are left untouched."""
    if n_prompts < 2:
        raise ValueError(f"n_prompts must be >= 2 for a standard error, got {n_prompts}")
    with fork_rng(next(policy.parameters()).device):
        torch.manual_seed(seed)
        batch, r = sample_groups(world, policy, tokenizer, n_prompts, 1, seed=seed)
    logp, logits = completion_logprobs(policy, batch, return_logits=True)
    ref_logp, ref_logits = completion_logprobs(ref, batch, return_logits=True)
    per_state = sequence_kl_per_state(logits, ref_logits, batch.completion_mask)
    log_ratio = masked_sum(logp - ref_logp, batch.completion_mask, dim=1)
    out = {"length": batch.lengths.float().mean().item()}
    for name, x in (("reward", r), ("kl", per_state), ("k1", log_ratio)):
        x = x.double()
        out[name], out[name + "_se"] = x.mean().item(), (x.std() / len(x) ** 0.5).item()
    return out


def iterative_dpo(policy, tokenizer, world, rounds: int, n_prompts: int, samples_per_prompt: int = 4, ref=None,
                  config: PreferenceConfig = PreferenceConfig(), reward_fn: Callable | None = None,
                  loss_fn: Callable | None = None, update_ref: bool = False, progress: bool = True,
                  callback: Callable | None = None):
    """Iterative (online) DPO: for t = 0 .. rounds-1

      1. sample `samples_per_prompt` answers to each of `n_prompts` fresh prompts from pi_theta_t;
      2. label them: best vs worst by `reward_fn(batch) -> [B]` (a learned reward model), or by
         the world's true reward when reward_fn is None (`tasks.pairs_from_groups`);
      3. take `config.steps` DPO steps on these pairs (`preference_train`) -> pi_theta_{t+1}.

    The reference is a frozen copy of the starting policy unless given; `update_ref` makes
    it the policy of the previous round instead. One Adam optimizer persists across rounds.
    `callback(round, policy, history)` runs after each round.

    Returns (history, pairs_per_round). history has one entry per round: "true_reward"
    (mean over the round's samples, before its update), "pairs" (how many prompts gave a
    pair), "label_accuracy" (pairs whose chosen answer has the higher true reward), and
    "loss", "accuracy", "chosen_logp", "rejected_logp" averaged over the round's steps.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    ref = ref if ref is not None else frozen_copy(policy)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr)
    torch.manual_seed(config.seed)
    history, all_pairs = defaultdict(list), []
    for t in tqdm(range(rounds), desc="iterative DPO", disable=not progress):
        batch, true_reward = sample_groups(world, policy, tokenizer, n_prompts, samples_per_prompt,
                                           seed=config.seed + 7919 * (t + 1))
        scores = reward_fn(batch).detach().to(true_reward.device) if reward_fn is not None else true_reward
        pairs = pairs_from_groups(batch, scores, samples_per_prompt, true_reward)
        all_pairs.append(pairs)
        history["true_reward"].append(true_reward.mean().item())
        history["pairs"].append(len(pairs))
        if len(pairs) > 0:  # else every group tied: nothing to learn from this round
            _dpo_round(policy, pairs, ref, config, t, loss_fn, optimizer, history)
        if update_ref:
            ref = frozen_copy(policy)
        if callback is not None:
            callback(t, policy, history)
    return dict(history), all_pairs


def _dpo_round(policy, pairs, ref, config, t, loss_fn, optimizer, history) -> None:
    """Round t of `iterative_dpo`: DPO steps on this round's pairs, averaged metrics into history."""
    history["label_accuracy"].append((pairs.chosen_reward > pairs.rejected_reward).float().mean().item())
    round_config = replace(config, seed=config.seed + t)
    steps = preference_train(policy, pairs, ref, round_config, loss_fn=loss_fn, optimizer=optimizer,
                             progress=False)
    for k in ("loss", "accuracy", "chosen_logp", "rejected_logp"):
        history[k].append(sum(steps[k]) / len(steps[k]))


# ---------------------------------------------------------------- unpaired feedback (chapter 10)

@dataclass
class KTOConfig:
    """Settings of KTO training on unpaired desirable / undesirable examples."""

    steps: int = 100
    """Gradient steps."""
    batch_size: int = 32
    """Examples per step, drawn with replacement (>= 2: z0 needs mismatched pairs)."""
    lr: float = 1e-4
    """Adam learning rate."""
    beta: float = 0.1
    """KTO's beta."""
    lambda_d: float = 1.0
    """Weight of the desirable examples' loss (lambda_D)."""
    lambda_u: float = 1.0
    """Weight of the undesirable examples' loss (lambda_U)."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm (None: no clipping)."""
    seed: int = 0
    """Seeds the minibatch draws."""

    def __post_init__(self):
        _check_counts(self, "steps", "batch_size")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (z0 needs mismatched pairs), got {self.batch_size}")
        check_positive(lr=self.lr, beta=self.beta)
        check_nonnegative(lambda_d=self.lambda_d, lambda_u=self.lambda_u)
        if self.max_grad_norm is not None:
            check_positive(max_grad_norm=self.max_grad_norm)


def kto_train(policy, feedback, ref, config: KTOConfig = KTOConfig(), progress: bool = True,
              callback: Callable | None = None) -> dict[str, list[float]]:
    """KTO on unpaired feedback (`tasks.UnpairedFeedback`). Each step draws `batch_size`
    examples and minimises `preference.kto_loss` with the reference point estimated as
    KTO's reference code and TRL do: the completions shifted by one within the minibatch
    (`tasks.mismatched_batch`), their log-ratio log pi(y'|x) - log pi_ref(y'|x) computed
    without gradient, averaged and clamped at 0 (`preference.kto_reference_point`).
    The reference log-probs of the matched examples are computed once, up front; the
    mismatched ones need the reference model at every step.

    Logs per step: "loss", "z0", "reward_desirable" / "reward_undesirable" (mean log-ratio
    r = log pi/pi_ref of each kind in the minibatch, NaN when it has none), "desirable"
    (the minibatch's fraction of desirable examples).
    """
    if len(feedback.batch) == 0:
        raise ValueError("feedback is empty")
    device = next(policy.parameters()).device
    with torch.no_grad():
        ref_logp = torch.cat([sequence_logprobs(ref, feedback.batch.index(slice(i, i + 512)))
                              for i in range(0, len(feedback.batch), 512)])
    desirable_all = feedback.desirable.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr)
    history = defaultdict(list)
    policy.train()
    for step in tqdm(range(config.steps), desc="KTO", disable=not progress):
        rows = torch.randint(len(feedback.batch), (config.batch_size,), generator=generator).tolist()
        batch = feedback.batch.index(rows)
        mismatched = mismatched_batch(batch)
        with torch.no_grad():
            z0 = kto_reference_point(sequence_logprobs(policy, mismatched), sequence_logprobs(ref, mismatched))
        logp = sequence_logprobs(policy, batch)
        desirable = desirable_all[rows]
        loss = kto_loss(logp, ref_logp[rows], desirable, config.beta, config.lambda_d, config.lambda_u, z0=z0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
        optimizer.step()
        r = logp.detach() - ref_logp[rows]
        history["loss"].append(loss.item())
        history["z0"].append(z0.item())
        history["reward_desirable"].append(r[desirable].mean().item() if desirable.any() else float("nan"))
        history["reward_undesirable"].append(r[~desirable].mean().item() if (~desirable).any() else float("nan"))
        history["desirable"].append(desirable.float().mean().item())
        if callback is not None:
            callback(step, policy, history)
    optimizer.zero_grad(set_to_none=True)
    policy.eval()
    return dict(history)
