"""rlbook's maths inside TRL 1.16 (chapter 12): TRL's trainers on the book's tiny models, TRL's
own loss code called on rlbook's tensors, and `KLRewardGRPOTrainer`, GRPO with the drift
penalty k1 in the reward (chapter 06's gold standard, not an option of TRL's GRPOTrainer).

TRL is an optional extra (`pip install -e ".[trl]"`; the `bench` extra has it too): this module
imports it at import time and nothing else in rlbook imports this module, so the core never
depends on TRL. It sits at the top layer, next to `plots` and `widgets`.

Where TRL and rlbook compute the same formula, the functions here hand TRL exactly the tensors
rlbook used (same rows, same old / reference log-probs, same advantages), so any difference is
TRL's code, not the data.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

for _k, _v in {"HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "WANDB_DISABLED": "true", "WANDB_MODE": "disabled",
               "TOKENIZERS_PARALLELISM": "false", "DISABLE_MLFLOW_INTEGRATION": "TRUE"}.items():
    os.environ.setdefault(_k, _v)  # no hub, no telemetry, no trackers: set before TRL is imported

try:
    import datasets
    import trl
    from trl.models.utils import disable_gradient_checkpointing
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("rlbook.trl_bridge needs TRL: pip install -e '.[trl]' (trl==1.16.0, accelerate, "
                      "datasets)") from exc

import torch
from transformers.utils import logging as hf_logging

from rlbook import lm
from rlbook.advantages import group_advantages
from rlbook.kl import ESTIMATORS, kl_penalised_rewards

TRL_ADVANTAGE_EPS = 1e-4
"""TRL's GRPOTrainer divides by (std + 1e-4); rlbook's `group_advantages` defaults to 1e-6."""


def quiet() -> None:
    """TRL, transformers and datasets without progress bars, info logs or warnings."""
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")


def cpu_args(output_dir, max_steps: int = 1, **overrides) -> dict:
    """TrainingArguments for a tiny model on the CPU: fp32 (GRPOConfig defaults to bf16), no
    gradient checkpointing (GRPOConfig defaults to it), no logging, saving or evaluation, Adam
    as rlbook's loops use it (constant lr, no weight decay), grad-norm clip 1.0."""
    args = dict(output_dir=str(output_dir), max_steps=max_steps, report_to="none", seed=0, use_cpu=True,
                dataloader_num_workers=0, save_strategy="no", bf16=False, fp16=False, gradient_checkpointing=False,
                logging_strategy="no", eval_strategy="no", disable_tqdm=True, dataloader_pin_memory=False,
                lr_scheduler_type="constant", max_grad_norm=1.0, weight_decay=0.0, adam_beta1=0.9,
                adam_beta2=0.999, adam_epsilon=1e-8)
    args.update(overrides)
    return args


def world_reward(world, tokenizer):
    """A TRL reward function scoring completions with `world.reward` on the words the word-level
    tokenizer produced (prompts are '<bos> w1 w2 ...', completions end in '<eos>' when finished)."""
    words = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))

    def reward(prompts, completions, completion_ids, **kwargs):
        return [world.reward(p.split()[1:], [words[i] for i in ids]) for p, ids in zip(prompts, completion_ids)]

    reward.__name__ = f"{world.name}_reward"
    return reward


def prompt_dataset(world, n: int, seed: int = 0):
    """n of the world's prompts as TRL's text dataset {"prompt": "<bos> w1 w2 ..."}."""
    return datasets.Dataset.from_dict({"prompt": ["<bos> " + " ".join(p) for p in world.prompts(n, seed)]})


class TinyTRL:
    """TRL trainers on one of rlbook's tiny models, saved once under `workdir` (TRL builds its
    reference model from a path). Settings default to `cpu_args`; pass TRL config fields as keywords."""

    def __init__(self, model, tokenizer, world, workdir):
        quiet()
        self.workdir = Path(workdir)
        self.model_dir = self.workdir / "model"
        lm.save(model, tokenizer, self.model_dir)
        self.tok, self.world = tokenizer, world

    def _args(self, config_cls, name: str, steps: int, settings: dict):
        return config_cls(**cpu_args(self.workdir / name, steps, **settings))

    def grpo_trainer(self, prompts: int = 4, group: int = 4, steps: int = 1, trainer_cls=None, **settings):
        """A GRPOTrainer (or `trainer_cls`) on `prompts` x `group` samples per step of the world's
        prompts, rewarded by `world_reward`. settings: GRPOConfig fields (beta, loss_type, ...)."""
        cfg = dict(num_generations=group, per_device_train_batch_size=prompts * group,
                   max_completion_length=self.world.max_new_tokens, temperature=1.0, num_iterations=1,
                   log_completions=False, disable_dropout=True)
        cfg.update(settings)
        trainer_cls = trainer_cls or trl.GRPOTrainer
        return trainer_cls(model=str(self.model_dir), reward_funcs=world_reward(self.world, self.tok),
                           args=self._args(trl.GRPOConfig, "grpo", steps, cfg),
                           train_dataset=prompt_dataset(self.world, prompts * (steps + 1)), processing_class=self.tok)

    def dpo_dataset(self, pairs):
        """TRL's text preference dataset of rlbook `PreferencePairs` (TRL appends the EOS itself)."""
        def text(batch):
            return [" " + " ".join(w for w in c if w != lm.EOS) for c in batch.completions(self.tok)]

        return datasets.Dataset.from_dict({"prompt": ["<bos> " + " ".join(p) for p in pairs.chosen.prompts(self.tok)],
                                           "chosen": text(pairs.chosen), "rejected": text(pairs.rejected)})

    def dpo_trainer(self, dataset, steps: int = 1, **settings):
        cfg = dict(per_device_train_batch_size=len(dataset), loss_type=["sigmoid"], precompute_ref_log_probs=True,
                   precompute_ref_batch_size=512, max_length=None, disable_dropout=True)
        cfg.update(settings)
        return trl.DPOTrainer(model=str(self.model_dir), args=self._args(trl.DPOConfig, "dpo", steps, cfg),
                              train_dataset=dataset, processing_class=self.tok)

    def kto_dataset(self, batch, desirable):
        """TRL's unpaired dataset {"prompt", "completion", "label"} of a `Batch` and its bool labels
        (completions keep their '<eos>', so TRL does not append another)."""
        completions = [" " + " ".join(c) for c in batch.completions(self.tok)]
        return datasets.Dataset.from_dict({"prompt": ["<bos> " + " ".join(p) for p in batch.prompts(self.tok)],
                                           "completion": completions, "label": desirable.tolist()})

    def kto_trainer(self, dataset, steps: int = 1, **settings):
        cfg = dict(per_device_train_batch_size=len(dataset), max_length=None, disable_dropout=True,
                   desirable_weight=1.0, undesirable_weight=1.0)
        cfg.update(settings)
        return trl.KTOTrainer(model=str(self.model_dir), args=self._args(trl.KTOConfig, "kto", steps, cfg),
                              train_dataset=dataset, processing_class=self.tok)


def finished_pairs(pairs, eos_token_id: int, n: int):
    """The first n pairs whose chosen and rejected answers both end in EOS: TRL's DPO/KTO datasets
    append EOS to every completion, so an unfinished answer would not be the same sequence there."""
    def done(b):
        return ((b.completion_ids == eos_token_id) & (b.completion_mask == 1)).any(1)

    keep = (done(pairs.chosen) & done(pairs.rejected)).nonzero().squeeze(1)[:n].tolist()
    return type(pairs)(pairs.chosen.index(keep), pairs.rejected.index(keep), pairs.chosen_reward[keep],
                       pairs.rejected_reward[keep])


# ---------------------------------------------------------------- TRL's losses on rlbook's tensors

def trl_grpo_loss(trainer, batch, old_logp, ref_logp, advantages) -> torch.Tensor:
    """`GRPOTrainer._compute_loss` on an rlbook `Batch`: TRL recomputes log pi_theta with
    `trainer.model` and applies its loss_type, beta, epsilon and use_bias_correction_kl to the given
    old log-probs (None: on-policy, TRL then uses its own log-probs detached), reference log-probs
    (used when beta != 0) and advantages `[B]`. One process, no gradient accumulation."""
    mask = batch.completion_mask
    inputs = dict(prompt_ids=batch.prompt_ids, prompt_mask=batch.prompt_mask, completion_ids=batch.completion_ids,
                  completion_mask=mask, advantages=advantages, num_items_in_batch=mask.sum())
    if old_logp is not None:
        inputs["old_per_token_logps"] = old_logp
    if ref_logp is not None:
        inputs["ref_per_token_logps"] = ref_logp
    trainer.current_gradient_accumulation_steps = 1
    return trainer._compute_loss(trainer.model, inputs)


def _collated(trainer, dataset, **columns):
    examples = [dict(trainer.train_dataset[i]) for i in range(len(dataset))]
    for name, values in columns.items():
        for e, v in zip(examples, values.tolist()):
            e[name] = v
    return {k: v for k, v in trainer.data_collator(examples).items() if torch.is_tensor(v)}


def trl_dpo_loss(trainer, ref_chosen_logp, ref_rejected_logp) -> torch.Tensor:
    """`DPOTrainer._compute_loss` (its loss_type: "sigmoid" DPO, "ipo", ...) on every row of the
    trainer's dataset in order, with the given summed reference log-probs `[N]` (precomputed)."""
    inputs = _collated(trainer, trainer.train_dataset, ref_chosen_logps=ref_chosen_logp,
                       ref_rejected_logps=ref_rejected_logp)
    out = trainer._compute_loss(trainer.model, inputs, False)
    return out[0] if isinstance(out, tuple) else out


def trl_kto_loss(trainer) -> torch.Tensor:
    """`KTOTrainer._compute_loss` on every row of the trainer's dataset in order (one batch: its
    z0 comes from the completions shifted by one row, TRL's mismatched pairs), the reference
    log-probs from TRL's own reference model."""
    inputs = _collated(trainer, trainer.train_dataset)
    out = trainer._compute_loss(trainer.model, inputs, False)
    return out[0] if isinstance(out, tuple) else out


# ---------------------------------------------------------------- rlbook vs TRL, side by side

GRPO_LOSS_TYPES = {"grpo": "grpo", "token": "dapo", "dr_grpo": "dr_grpo"}
"""rlbook's `grpo.aggregation_weights` name -> TRL's GRPOConfig.loss_type for the same weights (one
process, no accumulation: TRL's "dapo" normaliser is then the batch's token count, as "bnpo")."""


def _gradients(loss, params) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params, retain_graph=True))


def _gap(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def _result(ours, theirs, params) -> dict:
    g_ours, g_theirs = _gradients(ours, params), _gradients(theirs, params)
    return {"rlbook": ours.item(), "trl": theirs.item(), "loss_diff": abs(ours.item() - theirs.item()),
            "grad_diff": _gap(g_ours, g_theirs), "grad_scale": max(g.abs().max().item() for g in g_ours)}


def compare_grpo(trainer, batch, old_logp, ref_logp, advantages, aggregation: str, beta: float,
                 eps: float = 0.2) -> dict:
    """rlbook's `grpo.grpo_loss` (k3 in the loss) and TRL's `_compute_loss` on the same tensors, both
    differentiated w.r.t. `trainer.model`'s weights. The trainer must have been built with
    loss_type = GRPO_LOSS_TYPES[aggregation], this beta and epsilon. Returns both losses, |loss diff|,
    max |grad diff| and the largest gradient entry (the scale the difference is measured against)."""
    from rlbook.grpo import grpo_loss

    if trainer.loss_type != GRPO_LOSS_TYPES[aggregation]:
        raise ValueError(f"trainer.loss_type is {trainer.loss_type!r}; aggregation {aggregation!r} is TRL's "
                         f"{GRPO_LOSS_TYPES[aggregation]!r}")
    net = trainer.model
    net.train()
    logp = lm.completion_logprobs(net, batch)
    old = logp.detach() if old_logp is None else old_logp
    ours = grpo_loss(logp, old, ref_logp, advantages, batch.completion_mask, eps=eps, beta=beta,
                     aggregation=aggregation, max_length=trainer.max_completion_length)
    theirs = trl_grpo_loss(trainer, batch, old_logp, ref_logp, advantages)
    return _result(ours, theirs, list(net.parameters()))


def compare_pairs(trainer, pairs, ref, beta: float, loss: str = "dpo") -> dict:
    """rlbook's `dpo.dpo_loss` (loss="dpo") or length-normalised `preference.ipo_loss` (loss="ipo",
    |y| = the answers' token counts, EOS included) against `DPOTrainer._compute_loss` (loss_type
    "sigmoid" / "ipo") on the same pairs, TRL's rows tokenised by TRL from `TinyTRL.dpo_dataset(pairs)`,
    the reference log-probs from `ref` given to both."""
    from rlbook.dpo import dpo_loss
    from rlbook.preference import ipo_loss
    from rlbook.train import pair_logprobs, sequence_logprobs

    net = trainer.model
    ref_c, ref_r = pair_logprobs(ref, pairs)
    net.train()
    cw, cl = sequence_logprobs(net, pairs.chosen), sequence_logprobs(net, pairs.rejected)
    if loss == "dpo":
        ours = dpo_loss(cw, cl, ref_c, ref_r, beta=beta)
    elif loss == "ipo":
        ours = ipo_loss(cw, cl, ref_c, ref_r, beta=beta, chosen_len=pairs.chosen.lengths.float(),
                        rejected_len=pairs.rejected.lengths.float())
    else:
        raise ValueError(f"loss must be 'dpo' or 'ipo', got {loss!r}")
    theirs = trl_dpo_loss(trainer, ref_c, ref_r)
    return _result(ours, theirs, list(net.parameters()))


def compare_kto(trainer, batch, desirable, ref, beta: float) -> dict:
    """rlbook's `preference.kto_loss` with z0 = `kto_reference_point` on `tasks.mismatched_batch`
    (each prompt with the previous row's completion) against `KTOTrainer._compute_loss` on the same
    rows (`TinyTRL.kto_dataset(batch, desirable)`, one batch in order)."""
    from rlbook.preference import kto_loss, kto_reference_point
    from rlbook.tasks import mismatched_batch
    from rlbook.train import sequence_logprobs

    net = trainer.model
    net.train()
    logp = sequence_logprobs(net, batch)
    shifted = mismatched_batch(batch)
    with torch.no_grad():
        ref_logp = sequence_logprobs(ref, batch)
        z0 = kto_reference_point(sequence_logprobs(net, shifted), sequence_logprobs(ref, shifted))
    ours = kto_loss(logp, ref_logp, desirable, beta=beta, z0=z0)
    theirs = trl_kto_loss(trainer)
    return {**_result(ours, theirs, list(net.parameters())), "z0": z0.item()}


def generation_batch(trainer, seed: int = 0) -> dict:
    """One call of the trainer's `_generate_and_score_completions` on its first prompts, each repeated
    num_generations times, as TRL's sampler lays them out: TRL's dict of padded ids, masks and advantages."""
    G, n = trainer.num_generations, trainer.args.per_device_train_batch_size
    rows = [dict(trainer.train_dataset[i]) for i in range(n // G) for _ in range(G)]
    trainer.model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return trainer._generate_and_score_completions(rows)


def as_batch(output: dict) -> lm.Batch:
    """TRL's generation output as an rlbook `Batch` (left-padded prompts, right-padded completions)."""
    return lm.Batch(output["prompt_ids"], output["prompt_mask"], output["completion_ids"], output["completion_mask"])


# ---------------------------------------------------------------- k1 in the reward

class KLRewardGRPOTrainer(trl.GRPOTrainer):
    """GRPO with the drift penalty in the reward instead of the loss (chapter 06, `algorithms.GRPO`
    with kl_in="reward"): each completion's reward becomes

        R'_i = R_i - beta * sum_t k(log pi_old(o_it), log pi_ref(o_it))       (`kl.kl_penalised_rewards`)

    detached, before TRL's group normalisation; the loss has no KL term. `args.beta` is that
    coefficient (TRL would put beta * k3 in the loss: here it is moved to the reward), the estimator
    `kl_estimator` ("k1" by default: -beta log pi/pi_ref, RLHF's penalty, whose policy gradient is
    the gradient of the sequence-level reverse KL). TRL builds, places and shards the reference
    model (ZeRO / FSDP) as for its own KL, because beta != 0 at construction.

    Overrides `_calculate_rewards` (to keep the raw rewards of the whole generation batch, all
    processes) and `_generate_and_score_completions` (to recompute the advantages from R'). Text-only
    models; multiple reward functions with "sum_then_normalize"; scale_rewards "group" or "none".
    """

    def __init__(self, *args, kl_estimator: str = "k1", **kwargs):
        if kl_estimator not in ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {sorted(ESTIMATORS)}, got {kl_estimator!r}")
        super().__init__(*args, **kwargs)
        if self.args.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError("multi_objective_aggregation must be 'sum_then_normalize' for KLRewardGRPOTrainer")
        if self.scale_rewards not in ("group", "none"):
            raise ValueError(f"scale_rewards must be 'group' or 'none' for KLRewardGRPOTrainer, got "
                             f"{self.scale_rewards!r}")
        if self.beta != 0.0 and self.ref_model is None:
            raise ValueError("KLRewardGRPOTrainer needs a separate reference model (PEFT adapters are not supported)")
        self.kl_estimator = kl_estimator
        self.reward_beta, self.beta = self.beta, 0.0  # the KL leaves the loss; the reference TRL built stays

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards_per_func = rewards_per_func  # [N_global, n_funcs], gathered over processes
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.reward_beta == 0.0:
            return output
        mode = "train" if self.model.training else "eval"
        mask = output["completion_mask"]
        ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention = torch.cat([output["prompt_mask"], mask], dim=1)
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            old_logp = output.get("old_per_token_logps")
            if old_logp is None:  # on-policy: the sampling policy is the model as it is now
                old_logp, _, _ = self._get_per_token_logps_and_entropies(self.model, ids, attention, mask.size(1),
                                                                         batch_size=batch_size)
            ref_logp, _, _ = self._get_per_token_logps_and_entropies(self.ref_model, ids, attention, mask.size(1),
                                                                     batch_size=batch_size)
        device = mask.device
        rewards = (self._rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
        penalty = kl_penalised_rewards(torch.zeros(len(mask), device=device), old_logp.float(), ref_logp.float(),
                                       self.reward_beta, mask.float(), self.kl_estimator)  # -beta sum_t k_t, local rows
        penalty = self.accelerator.gather(penalty)  # rewards are global, so the penalty must be too
        G = self.num_generations if mode == "train" else self.num_generations_eval
        advantages = group_advantages(rewards + penalty, G, scale="std" if self.scale_rewards == "group" else "none",
                                      eps=TRL_ADVANTAGE_EPS)
        n = len(mask)
        rank = self.accelerator.process_index
        output["advantages"] = advantages[rank * n:(rank + 1) * n]
        self._metrics[mode]["kl_in_reward"].append((-penalty / self.reward_beta).mean().item())
        return output
