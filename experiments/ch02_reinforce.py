"""Chapter 02's training comparison over five seeds: REINFORCE with the total reward, with rewards-to-go,
and with rewards-to-go minus a leave-one-out baseline, each run exactly as the chapter runs seed 0, with
RLConfig.seed = 0, 1, 2, 3, 4.

    python experiments/ch02_reinforce.py           # the full sweep -> experiments/ch02_reinforce.json (~3 CPU min)
    python experiments/ch02_reinforce.py --quick   # 2 rounds, one seed (what the unit test runs)

Settings (the chapter's): sort-6 with the per-position reward and per-token rewards
(`tasks.sort_token_rewards`), the width-64 SFT model after 80 steps, ROUNDS rounds of 8 prompts x 8
completions, one Adam step per round at LR, gradient norm clipped at 1. Each run is scored on 512 samples of
held-out prompts (seed 123) by the true reward (fraction of digits in place) and exact match, as the
chapter does.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from rlbook import algorithms, lm, pretrained, tasks, train

OUT = Path(__file__).with_suffix(".json")
ROUNDS, LR, SEEDS = 150, 1e-3, [0, 1, 2, 3, 4]
WEIGHTS = {  # name -> (Phi_t kind, baseline)
    "total reward": ("total", None),
    "rewards-to-go": ("rewards_to_go", None),
    "rewards-to-go − leave-one-out": ("rewards_to_go", "rloo"),
}


def setup():
    """The chapter's world, exact-match scorer, SFT model and tokenizer."""
    world = tasks.SortWorld(n_digits=6, reward_type="position")
    sft, tokenizer, _ = pretrained.sft_model(world, model_config=dict(d_model=64), sft_config=dict(steps=80),
                                             progress=False)
    return world, tasks.SortWorld(n_digits=6), sft, tokenizer


def algorithm(name, world, tokenizer):
    kind, baseline = WEIGHTS[name]
    return algorithms.REINFORCE(kind, baseline, token_rewards=lambda r: tasks.sort_token_rewards(world, r.batch, tokenizer))


@torch.no_grad()
def evaluate(model, tokenizer, world, exact_match, n=512, seed=123) -> dict:
    """Mean true reward and exact match of n samples on held-out prompts (torch's RNG left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        samples = lm.sample(model, tokenizer, world.prompts(n, seed), world.max_new_tokens)
        return {"true reward": world.score(samples, tokenizer).mean().item(),
                "exact match": exact_match.score(samples, tokenizer).mean().item()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds, one seed, small eval (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON")
    args = parser.parse_args(argv)
    rounds, seeds, n_eval = (2, [0], 32) if args.quick else (ROUNDS, SEEDS, 512)
    torch.set_num_threads(1)
    world, exact_match, sft, tokenizer = setup()
    runs, start_all, cpu_all = [], time.perf_counter(), time.process_time()
    for seed in seeds:
        for name in WEIGHTS:
            policy = lm.trainable_copy(sft)
            config = train.RLConfig(iterations=rounds, prompts_per_iter=8, group_size=8, lr=LR, seed=seed)
            start = time.perf_counter()
            history = train.on_policy(policy, tokenizer, world, algorithm(name, world, tokenizer), config,
                                      progress=False)
            seconds = time.perf_counter() - start
            runs.append(dict(weight=name, seed=seed, seconds=seconds, true_reward_curve=history["true_reward"],
                             **evaluate(policy, tokenizer, world, exact_match, n_eval)))
            print(f"seed {seed} {name:30s} true reward {runs[-1]['true reward']:.3f}  "
                  f"exact match {runs[-1]['exact match']:.3f}  {seconds:.1f} s")
    results = {"command": "python experiments/ch02_reinforce.py" + (" --quick" if args.quick else ""),
               "settings": dict(rounds=rounds, seeds=seeds, eval_samples=n_eval, prompts_per_round=8, group_size=8,
                                lr=LR),
               "sft": evaluate(sft, tokenizer, world, exact_match, n_eval), "runs": runs,
               "wall_seconds": time.perf_counter() - start_all, "cpu_seconds": time.process_time() - cpu_all,
               "torch": torch.__version__}
    out = args.out or OUT
    out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
