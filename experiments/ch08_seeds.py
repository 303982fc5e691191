"""Chapter 08's training comparisons over five seeds: the beta sweep (DPO on best-vs-worst pairs of the SFT
model's own samples) and likelihood displacement (DPO on "correct answer vs wrong sample" pairs, at the beta of
the sweep's middle run and at 0.1, with and without an NLL term on the chosen answers), each run exactly as the
chapter runs seed 0.

    python experiments/ch08_seeds.py           # the full sweep -> experiments/ch08_seeds.json (~2.5 CPU-minutes, one thread)
    python experiments/ch08_seeds.py --quick   # 2 steps, one seed, small data (what the unit test runs)

Seed s draws its own data (torch.manual_seed(s); prompts of the training pairs seed 1 + 10 s, held-out pairs
2 + 10 s, correct-vs-wrong pairs 3 + 10 s and 4 + 10 s) and its own minibatches (PreferenceConfig.seed = s);
the SFT model (the cached sentiment model) is the same for every seed. Settings (the chapter's): 60 steps,
32 pairs per step, Adam 3e-4. Every run is measured by its own answers to 256 fixed prompts (seed 10_000).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from pathlib import Path

import torch

from rlbook import dpo, kl, lm, pretrained, tasks, train

OUT = Path(__file__).with_suffix(".json")
BETAS = (0.1, 0.5, 2.0)
DISPLACEMENT = {  # name -> (beta, nll_weight) on the correct-vs-wrong pairs
    "DPO, beta 0.5": (0.5, 0.0),
    "DPO, beta 0.1": (0.1, 0.0),
    "DPO + NLL, beta 0.1": (0.1, 1.0),
}


@torch.no_grad()
def measure(world, policy, ref, tokenizer, n_prompts=256, seed=10_000) -> dict:
    """The policy's own answers to fixed prompts: mean true reward, grammatical fraction, KL to pi_ref."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        batch, r = tasks.sample_groups(world, policy, tokenizer, n_prompts, 1, seed=seed)
    drift = kl.sequence_kl(lm.completion_logprobs(policy, batch), lm.completion_logprobs(ref, batch),
                           batch.completion_mask)
    return {"true reward": r.mean().item(), "grammatical": (r > world.ungrammatical_reward).float().mean().item(),
            "KL to ref": drift.item()}


def held_out_accuracy(policy, ref, pairs, beta) -> float:
    """Fraction of pairs whose implied reward ranks the chosen answer strictly higher."""
    cw, cl = train.pair_logprobs(policy, pairs)
    rw, rl = train.pair_logprobs(ref, pairs)
    return (dpo.reward_margin(cw, cl, rw, rl, beta) > 0).float().mean().item()


def correct_vs_wrong(world, model, tokenizer, n_prompts, seed):
    """Pairs (a correct answer from the SFT data, one of the model's finished but ungrammatical samples)."""
    batch, r = tasks.sample_groups(world, model, tokenizer, n_prompts, 8, seed=seed)
    rng = random.Random(seed)
    prompts, completions = batch.prompts(tokenizer), batch.completions(tokenizer)
    triples = [(prompts[i], world.answer(prompts[i], rng), completions[i][:-1])
               for i in (r == world.ungrammatical_reward).nonzero().squeeze(1).tolist()
               if completions[i][-1] == "<eos>"]
    return tasks.pairs_from_text(tokenizer, world, triples)


def run_seed(world, model, ref, tokenizer, seed, steps=60, n_prompts=(384, 128)) -> list[dict]:
    runs = []
    torch.manual_seed(seed)
    pairs = tasks.preference_pairs(world, model, tokenizer, n_prompts=n_prompts[0], samples_per_prompt=4,
                                   seed=1 + 10 * seed)
    held = tasks.preference_pairs(world, model, tokenizer, n_prompts=n_prompts[1], samples_per_prompt=4,
                                  seed=2 + 10 * seed)
    for beta in BETAS:
        policy = copy.deepcopy(model)
        config = train.PreferenceConfig(steps=steps, batch_size=32, lr=3e-4, beta=beta, seed=seed)
        train.preference_train(policy, pairs, ref, config, progress=False)
        runs.append(dict(experiment="beta sweep", name=f"beta {beta}", beta=beta, seed=seed, pairs=len(pairs),
                         held_out_accuracy=held_out_accuracy(policy, ref, held, beta),
                         **measure(world, policy, ref, tokenizer)))
    torch.manual_seed(seed)
    wrong = correct_vs_wrong(world, model, tokenizer, n_prompts[0], seed=3 + 10 * seed)
    wrong_held = correct_vs_wrong(world, model, tokenizer, n_prompts[1], seed=4 + 10 * seed)
    for name, (beta, alpha) in DISPLACEMENT.items():
        policy = copy.deepcopy(model)
        config = train.PreferenceConfig(steps=steps, batch_size=32, lr=3e-4, beta=beta, nll_weight=alpha, seed=seed)
        train.preference_train(policy, wrong, ref, config, progress=False)
        cw, cl = train.pair_logprobs(policy, wrong_held)
        runs.append(dict(experiment="displacement", name=name, beta=beta, nll_weight=alpha, seed=seed,
                         pairs=len(wrong), **{"log pi(y_w)": cw.mean().item(), "log pi(y_l)": cl.mean().item()},
                         **measure(world, policy, ref, tokenizer)))
    cw, cl = train.pair_logprobs(model, wrong_held)
    runs.append(dict(experiment="displacement", name="SFT model", seed=seed, pairs=len(wrong),
                     **{"log pi(y_w)": cw.mean().item(), "log pi(y_l)": cl.mean().item()},
                     **measure(world, model, ref, tokenizer)))
    return runs


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 steps, one seed, small data (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON")
    args = parser.parse_args(argv)
    steps, seeds, n_prompts = (2, [0], (32, 16)) if args.quick else (60, [0, 1, 2, 3, 4], (384, 128))
    start = time.perf_counter()
    torch.set_num_threads(1)
    world = tasks.SentimentWorld()
    model, tokenizer, _ = pretrained.sft_model(world, progress=False)
    ref = lm.frozen_copy(model)
    runs = []
    for seed in seeds:
        runs += run_seed(world, model, ref, tokenizer, seed, steps, n_prompts)
        print(f"seed {seed} done, {time.perf_counter() - start:.0f} s")
    results = {"command": "python experiments/ch08_seeds.py" + (" --quick" if args.quick else ""),
               "settings": dict(steps=steps, seeds=seeds, batch_size=32, lr=3e-4, betas=list(BETAS),
                                prompts=list(n_prompts)),
               "runs": runs, "seconds": time.perf_counter() - start, "torch": torch.__version__}
    (args.out or OUT).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
