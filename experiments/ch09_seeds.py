"""Chapter 09's comparison over five seeds: offline DPO (one dataset sampled from the SFT model up front) against
iterative DPO (fresh pairs from the current policy every round) at equal cost, each run exactly as the chapter
runs seed 0.

    python experiments/ch09_seeds.py           # the full sweep -> experiments/ch09_seeds.json (~1.2 CPU-minutes, one thread)
    python experiments/ch09_seeds.py --quick   # 1 step per round, 2 rounds, one seed (what the unit test runs)

Seed s draws its own offline dataset (torch.manual_seed(s), prompts seed 1 + 10 s), its own iterative prompts and
samples (PreferenceConfig.seed = s) and its own minibatches; the SFT model (the cached sentiment model) and the
256 measurement prompts (seed 10_000) are the same for every seed. Settings (the chapter's): 5 rounds x 128
prompts x 4 samples, 15 DPO steps per round (75 in all), 32 pairs per step, Adam 3e-4, beta 0.5.

Every run is measured every 15 steps on the data it trains on: the offline policy on its own dataset, the
iterative policy at the start of round t on round t's fresh pairs (it has not trained on them yet).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from rlbook import lm, pretrained, tasks, train

OUT = Path(__file__).with_suffix(".json")
ROUNDS, PROMPTS, STEPS = 5, 128, 15
COVERAGE = math.log(0.01)


@torch.no_grad()
def measure(world, policy, tokenizer, pairs, n_prompts=256, seed=10_000) -> dict:
    """The policy's own answers to fixed prompts (true reward, mean log pi of its samples) and the pairs it trains
    on (mean log pi of their chosen and rejected answers, fraction of chosen answers with pi >= 1%)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        own, r = tasks.sample_groups(world, policy, tokenizer, n_prompts, 1, seed=seed)
    chosen, rejected = train.pair_logprobs(policy, pairs)
    return {"true reward": r.mean().item(), "log pi(own samples)": train.sequence_logprobs(policy, own).mean().item(),
            "log pi(data y_w)": chosen.mean().item(), "log pi(data y_l)": rejected.mean().item(),
            "coverage": (chosen >= COVERAGE).float().mean().item()}


def run_seed(world, model, ref, tokenizer, seed, rounds=ROUNDS, prompts=PROMPTS, steps=STEPS) -> dict:
    """Offline and iterative DPO from the same SFT model on the same budget; measurements every `steps` steps."""
    config = train.PreferenceConfig(steps=steps, batch_size=32, lr=3e-4, beta=0.5, seed=seed)
    torch.manual_seed(seed)
    dataset = tasks.preference_pairs(world, model, tokenizer, n_prompts=rounds * prompts, samples_per_prompt=4,
                                     seed=1 + 10 * seed)
    offline_log = [measure(world, model, tokenizer, dataset)]
    offline = copy.deepcopy(model)
    offline_history = train.preference_train(
        offline, dataset, ref, dataclasses.replace(config, steps=rounds * steps), progress=False,
        callback=lambda step, policy, h: offline_log.append(measure(world, policy, tokenizer, dataset))
        if (step + 1) % steps == 0 else None)

    iterative = copy.deepcopy(model)
    snapshots = [copy.deepcopy(model)]        # the policy at the start of each round
    iterative_history, fresh = train.iterative_dpo(
        iterative, tokenizer, world, rounds, prompts, samples_per_prompt=4, ref=ref, config=config, progress=False,
        callback=lambda t, policy, h: snapshots.append(copy.deepcopy(policy)))
    # round t's pairs under the policy that sampled them; the final policy on the pairs a next round would use
    iterative_log = [measure(world, snapshots[t], tokenizer, fresh[t]) for t in range(rounds)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1000)
        next_round = tasks.preference_pairs(world, iterative, tokenizer, prompts, 4, seed=seed + 7919 * (rounds + 1))
    iterative_log.append(measure(world, iterative, tokenizer, next_round))
    return dict(seed=seed, offline=offline_log, iterative=iterative_log, dataset_pairs=len(dataset),
                offline_loss=offline_history["loss"], offline_accuracy=offline_history["accuracy"],
                iterative_loss=iterative_history["loss"], iterative_accuracy=iterative_history["accuracy"],
                pairs_per_round=iterative_history["pairs"]), (offline, iterative, fresh, dataset)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 step per round, 2 rounds, one seed (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON")
    args = parser.parse_args(argv)
    rounds, prompts, steps, seeds = (2, 16, 1, [0]) if args.quick else (ROUNDS, PROMPTS, STEPS, [0, 1, 2, 3, 4])
    start = time.perf_counter()
    torch.set_num_threads(1)
    world = tasks.SentimentWorld()
    model, tokenizer, _ = pretrained.sft_model(world, progress=False)
    ref = lm.frozen_copy(model)
    runs = []
    for seed in seeds:
        runs.append(run_seed(world, model, ref, tokenizer, seed, rounds, prompts, steps)[0])
        print(f"seed {seed}: true reward offline {runs[-1]['offline'][-1]['true reward']:+.2f}, "
              f"iterative {runs[-1]['iterative'][-1]['true reward']:+.2f}  ({time.perf_counter() - start:.0f} s)")
    results = {"command": "python experiments/ch09_seeds.py" + (" --quick" if args.quick else ""),
               "settings": dict(rounds=rounds, prompts_per_round=prompts, steps_per_round=steps, seeds=seeds,
                                batch_size=32, lr=3e-4, beta=0.5),
               "runs": runs, "seconds": time.perf_counter() - start, "torch": torch.__version__}
    (args.out or OUT).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
