"""Chapter 06's replication of *A Comedy of Estimators* over several seeds: the no-penalty baseline and
{k1, k3} x {reward, loss} at beta in {0.3, 1}, each run exactly as the chapter runs seed 0, with
RLConfig.seed = 0, 1, 2, 3, 4.

    python experiments/ch06_placements.py           # the full sweep -> experiments/ch06_placements.json (~5 CPU-min)
    python experiments/ch06_placements.py --quick   # 2 rounds, one seed, two settings (what the unit test runs)

Settings (the chapter's): sort-5, the width-64 SFT model after 90 steps, REINFORCE with a group-mean
baseline (`algorithms.KLPlacement`), 16 prompts x 8 samples per round, one Adam step per round.
Each run keeps its whole curve of true reward and of the logged drift KL ("exact_kl": the exact
per-state KL summed along the sampled completions, averaged over completions).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from rlbook import algorithms, lm, pretrained, tasks, train

OUT = Path(__file__).with_suffix(".json")
ROUNDS, LR, PROMPTS, GROUP = 60, 6e-4, 16, 8
SETTINGS = [("k1", "reward", 0.0)] + [(e, p, b) for b in (0.3, 1.0) for e in ("k1", "k3") for p in ("reward", "loss")]
"""(estimator, placement, beta); beta = 0 is the no-penalty baseline (its estimator is unused)."""


def run(sft, tokenizer, world, estimator: str, placement: str, beta: float, seed: int, rounds: int = ROUNDS,
        lr: float = LR) -> dict[str, list[float]]:
    """One training run from the SFT model; the chapter calls this for its live configuration."""
    config = train.RLConfig(iterations=rounds, prompts_per_iter=PROMPTS, group_size=GROUP, lr=lr, seed=seed)
    policy = lm.trainable_copy(sft)
    return train.on_policy(policy, tokenizer, world, algorithms.KLPlacement(estimator, placement, beta), config,
                           ref=sft, progress=False)


def sft_model():
    world = tasks.SortWorld(n_digits=5)
    sft, tokenizer, _ = pretrained.sft_model(world, dict(d_model=64), dict(steps=90), progress=False)
    return sft, tokenizer, world


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds, one seed, two settings (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON")
    args = parser.parse_args(argv)
    rounds, seeds, settings = (2, [0], SETTINGS[:2]) if args.quick else (ROUNDS, [0, 1, 2, 3, 4], SETTINGS)
    torch.set_num_threads(1)
    sft, tokenizer, world = sft_model()
    runs = []
    sweep_start, cpu_start = time.perf_counter(), time.process_time()
    for seed in seeds:
        for estimator, placement, beta in settings:
            start = time.perf_counter()
            history = run(sft, tokenizer, world, estimator, placement, beta, seed, rounds)
            runs.append(dict(estimator=estimator, placement=placement, beta=beta, seed=seed,
                             seconds=time.perf_counter() - start, true_reward=history["true_reward"],
                             exact_kl=history["exact_kl"]))
            print(f"seed {seed} {estimator} in {placement:6s} beta {beta:3.1f}: last-10 reward "
                  f"{sum(history['true_reward'][-10:]) / 10:.2f}, KL {sum(history['exact_kl'][-10:]) / 10:.2f}")
    results = {"command": "python experiments/ch06_placements.py" + (" --quick" if args.quick else ""),
               "settings": dict(rounds=rounds, seeds=seeds, lr=LR, prompts_per_iter=PROMPTS, group_size=GROUP),
               "sweep_seconds": time.perf_counter() - sweep_start, "cpu_seconds": time.process_time() - cpu_start,
               "runs": runs, "torch": torch.__version__}
    (args.out or OUT).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
