"""Chapter 07's training comparisons over three seeds: GRPO vs PPO (section 4) and GRPO's variants
(section 6), each run exactly as the chapter runs seed 0, with RLConfig.seed = 0, 1, 2.

    python experiments/ch07_seeds.py           # the full sweep -> experiments/ch07_seeds.json (~3 CPU-minutes, one thread)
    python experiments/ch07_seeds.py --quick   # 2 rounds, one seed (what the unit test runs)

Settings (the chapter's): sort-8, the width-64 SFT model after 140 steps, 25 rounds, 256 samples per round
(GRPO: 32 prompts x 8; PPO: 256 prompts x 1 with its critic), 2 inner steps, Adam 5e-4, drift beta 0.04.
Each run is scored by the exact match of 512 samples on held-out prompts (seed 123), as the chapter does, and
every EVAL_EVERY rounds by the exact match of 256 samples on the first 256 of those prompts (the held-out curve;
the evaluation's sampling is forked off the training's random stream and its time is not counted in s/round).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from rlbook import algorithms, lm, pretrained, tasks, train, value

OUT = Path(__file__).with_suffix(".json")
EVAL_EVERY, CURVE_SAMPLES = 5, 256
VARIANTS = {  # name -> (algorithm factory given a critic source, prompts per round, group size)
    "GRPO": (lambda sft: algorithms.GRPO(beta=0.04), 32, 8),
    "PPO": (lambda sft: algorithms.PPO(value.critic_model(sft), drift_beta=0.04), 256, 1),
    "DAPO token mean": (lambda sft: algorithms.GRPO(beta=0.04, aggregation="token"), 32, 8),
    "Dr. GRPO": (lambda sft: algorithms.GRPO(beta=0.04, aggregation="dr_grpo"), 32, 8),
    "clip-higher": (lambda sft: algorithms.GRPO(beta=0.04, eps_high=0.28), 32, 8),
}


@torch.no_grad()
def exact_match(model, tokenizer, world, n=512, seed=123) -> float:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        samples = lm.sample(model, tokenizer, world.prompts(n, seed), world.max_new_tokens)
        return world.score(samples, tokenizer).mean().item()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds, one seed, small eval (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON")
    args = parser.parse_args(argv)
    rounds, seeds, n_eval = (2, [0], 32) if args.quick else (25, [0, 1, 2], 512)
    every, n_curve = (1, 16) if args.quick else (EVAL_EVERY, CURVE_SAMPLES)
    t_start = time.perf_counter()
    torch.set_num_threads(1)
    world = tasks.SortWorld(n_digits=8)
    sft, tokenizer, _ = pretrained.sft_model(world, model_config=dict(d_model=64), sft_config=dict(steps=140),
                                             progress=False)
    reference = lm.frozen_copy(sft)
    sft_curve = exact_match(sft, tokenizer, world, n_curve)
    runs = []
    for seed in seeds:
        for name, (make, prompts, group) in VARIANTS.items():
            policy = lm.trainable_copy(sft)
            config = train.RLConfig(iterations=rounds, prompts_per_iter=prompts, group_size=group, inner_steps=2,
                                    lr=5e-4, seed=seed)
            curve, eval_seconds = [[0, sft_curve]], [0.0]

            def held_out(it, policy, rollout, history):
                if (it + 1) % every == 0:
                    t0 = time.perf_counter()
                    curve.append([it + 1, exact_match(policy, tokenizer, world, n_curve)])
                    eval_seconds[0] += time.perf_counter() - t0

            start = time.perf_counter()
            history = train.on_policy(policy, tokenizer, world, make(sft), config, ref=reference, progress=False,
                                      callback=held_out)
            seconds = time.perf_counter() - start - eval_seconds[0]
            runs.append(dict(variant=name, seed=seed, exact_match=exact_match(policy, tokenizer, world, n_eval),
                             seconds_per_round=seconds / rounds, true_reward_curve=history["true_reward"],
                             held_out_curve=curve))
            print(f"seed {seed} {name:16s} exact match {runs[-1]['exact_match']:.3f}  {seconds / rounds:.2f} s/round")
    results = {"command": "python experiments/ch07_seeds.py" + (" --quick" if args.quick else ""),
               "settings": dict(rounds=rounds, seeds=seeds, eval_samples=n_eval, inner_steps=2, lr=5e-4, beta=0.04,
                                eval_every=every, curve_samples=n_curve),
               "sft_exact_match": exact_match(sft, tokenizer, world, n_eval), "runs": runs,
               "torch": torch.__version__}
    results["seconds"] = time.perf_counter() - t_start
    out = args.out or OUT
    out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
