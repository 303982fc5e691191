"""GRPO with the drift penalty k1 in the reward (rlbook chapter 06's placement) inside TRL 1.16:
`rlbook.trl_bridge.KLRewardGRPOTrainer` on the sort-digits task, on rlbook's tiny model (default) or
on any causal LM saved on disk (`--model PATH`).

Every GRPOConfig field is a command-line flag (TRL's own parser), so the same file runs

    python examples/grpo_k1_reward.py --max_steps 2                          # CPU, the tiny model
    accelerate launch examples/grpo_k1_reward.py --model PATH                # one GPU
    accelerate launch --config_file zero2.yaml --num_processes 8 \\
        examples/grpo_k1_reward.py --model PATH --use_vllm --vllm_mode colocate \\
        --gradient_accumulation_steps 4                                       # eight GPUs, ZeRO-2, vLLM

(TRL ships zero1/2/3, fsdp1/2 and multi_gpu configs in trl/accelerate_configs/). `--beta` is the
coefficient of the penalty in the reward, not of TRL's k3 in the loss (there is none here). Without
a GPU the script switches TRL's bf16 and gradient-checkpointing defaults off (on a CPU they save no
time; chapter 12 measures them) and uses one torch thread; on a GPU they are left as TRL sets them.
The last line printed is JSON.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
from accelerate import PartialState  # noqa: E402
from transformers import AutoTokenizer, TrainerCallback  # noqa: E402

from rlbook import lm, pretrained, tasks  # noqa: E402
from rlbook.device import default_threads  # noqa: E402
from rlbook.trl_bridge import KLRewardGRPOTrainer, prompt_dataset, quiet, trl  # noqa: E402


@dataclass
class ScriptArguments:
    model: str | None = field(default=None, metadata={"help": "a causal LM folder; default: rlbook's tiny model"})
    n_digits: int = field(default=5, metadata={"help": "digits to sort per prompt"})
    n_prompts: int = field(default=1024, metadata={"help": "prompts in the training set"})
    kl_estimator: str = field(default="k1", metadata={"help": "k1 (RLHF's), k2 or k3, in the reward"})
    tiny_d_model: int = field(default=64, metadata={"help": "width of the tiny model (chapter 06's)"})
    tiny_sft_steps: int = field(default=90, metadata={"help": "SFT steps of the tiny model"})


def sort_reward(world, tokenizer, bos: str | None):
    """world.reward on the completion's words, '<eos>' appended when the model stopped by itself."""
    eos = {tokenizer.eos_token_id}

    def reward(prompts, completions, completion_ids, **kwargs):
        out = []
        for p, c, ids in zip(prompts, completions, completion_ids):
            words = c.split() + ([lm.EOS] if ids and ids[-1] in eos else [])
            prompt = [w for w in p.split() if w != bos]
            out.append(world.reward(prompt, words))
        return out

    reward.__name__ = "sort_reward"
    return reward


def tiny_model_dir(args: ScriptArguments, world, output_dir: str) -> str:
    """rlbook's SFT model of the sort world (trained once, cached), saved where TRL can load it."""
    path = Path(output_dir) / "tiny-model"
    with PartialState().main_process_first():  # the main process writes it, the others then read it
        if not (path / "config.json").exists():
            model, tok, _ = pretrained.sft_model(world, dict(d_model=args.tiny_d_model),
                                                 dict(steps=args.tiny_sft_steps), progress=False, device="cpu")
            lm.save(model, tok, path)
    return str(path)


def main(argv=None):
    parser = trl.TrlParser((ScriptArguments, trl.GRPOConfig))
    if not torch.cuda.is_available():  # explicit flags still win over these defaults
        torch.set_num_threads(default_threads())  # one thread: faster at this size on a small CPU
        parser.set_defaults(bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
                            save_strategy="no", logging_strategy="no", dataloader_pin_memory=False)
    parser.set_defaults(output_dir="grpo-k1-output", beta=0.05, num_generations=4, per_device_train_batch_size=16,
                        learning_rate=3e-4, max_steps=50, report_to="none", disable_dropout=True)
    script, config = parser.parse_args_and_config(argv)
    quiet()
    world = tasks.SortWorld(n_digits=script.n_digits)
    config.max_completion_length = config.max_completion_length or world.max_new_tokens
    if script.model is None:
        model_path, bos = tiny_model_dir(script, world, config.output_dir), lm.BOS
    else:
        model_path, bos = script.model, None
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dataset = prompt_dataset(world, script.n_prompts)
    if bos is None:
        dataset = dataset.map(lambda row: {"prompt": row["prompt"].replace(lm.BOS + " ", "", 1)})
    trainer = KLRewardGRPOTrainer(model=model_path, reward_funcs=sort_reward(world, tokenizer, bos), args=config,
                                  train_dataset=dataset, processing_class=tokenizer, kl_estimator=script.kl_estimator)

    history = []

    class Record(TrainerCallback):  # the step's metrics before TRL averages them into its logs
        def on_step_end(self, args, state, control, **kwargs):
            m = trainer._metrics["train"]
            history.append({k: m[k][-1] for k in ("reward", "kl_in_reward") if m.get(k)})

    trainer.add_callback(Record())
    trainer.train()
    if trainer.accelerator.is_main_process:
        print(json.dumps({"steps": trainer.state.global_step, "processes": trainer.accelerator.num_processes,
                          "beta": trainer.reward_beta, "history": history}))
    # end the process group before the interpreter exits: left to teardown, a gloo thread can outlive it
    # ("terminate called without an active exception", SIGABRT on one rank, seen once in CI)
    if torch.distributed.is_initialized():
        trainer.accelerator.wait_for_everyone()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
