"""Chapter 11's sweep: nine post-training methods from one SFT model on the sentiment world,
each over three betas and three seeds, under one budget, scored on a reward-KL frontier.

    python experiments/ch11_frontier.py            # the full sweep -> experiments/ch11_frontier.json
    python experiments/ch11_frontier.py --quick    # a tiny model and a few steps (what the unit test runs)

The budget, equal for every method: `samples` completions generated and scored by the true
reward (the labels), and `steps` gradient steps on the policy, at one learning rate.

    RLOO (REINFORCE, leave-one-out)  steps rounds of samples/steps completions (G per prompt), 1 step each
    PPO-CLIP, GRPO, Dr. GRPO         steps/2 rounds, 2 epochs on each round's samples (PPO: 1 per prompt, a critic)
    DPO, IPO, KTO, SimPO             samples/4 prompts x 4 SFT samples once (best vs worst pairs), then steps steps
    iterative DPO                    `iter_rounds` rounds of fresh samples from the policy, steps/iter_rounds steps each

beta is each method's KL knob: k1 in the reward (RLOO, PPO: RLHF's form), k3 in the loss (GRPO,
Dr. GRPO), the implicit beta of DPO, iterative DPO, IPO and KTO. SimPO has no reference, hence
no KL knob: its own beta (gamma = beta / 4, its code's ratio) is swept instead. Each trained
policy is scored by `train.reward_and_kl` on fresh samples: true reward, and KL(pi || pi_ref)
from the per-state exact KLs, each with its standard error.

Every run is seeded, so the same command on the same machine gives the same numbers (the
notebook re-runs some live). The JSON is rewritten after every run: a crash costs one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from functools import partial
from pathlib import Path

import torch

from rlbook import algorithms, kl, lm, pretrained, preference, tasks, train, value
from rlbook.advantages import last_token_rewards
from rlbook.device import setup

HERE = Path(__file__).resolve().parent
ON_POLICY = ("rloo", "ppo", "grpo", "dr_grpo")
OFFLINE = ("dpo", "ipo", "kto", "simpo")
METHODS = (*ON_POLICY, "iterative_dpo", *OFFLINE)
NAMES = {"rloo": "RLOO", "ppo": "PPO-CLIP", "grpo": "GRPO", "dr_grpo": "Dr. GRPO", "iterative_dpo": "iterative DPO",
         "dpo": "DPO", "ipo": "IPO", "kto": "KTO", "simpo": "SimPO"}


def settings(quick: bool) -> dict:
    if quick:
        return dict(seeds=[0], betas=[0.3], simpo_betas=[2.0], samples=64, steps=4, group_size=4, batch_size=8,
                    lr=5e-4, iter_rounds=2, eval_prompts=32,
                    model_config=dict(d_model=32, n_layer=1, n_head=2, n_positions=16),
                    sft_config=dict(steps=150, batch_size=32, lr=1e-2, n_examples=2000))
    return dict(seeds=[0, 1, 2], betas=[0.1, 0.3, 1.0], simpo_betas=[1.0, 2.0, 4.0], samples=2048, steps=64,
                group_size=4, batch_size=32, lr=5e-4, iter_rounds=4, eval_prompts=512,
                model_config=None, sft_config=None)


def scaled(s: dict, fraction: float) -> dict:
    """The same settings with the budget (samples and steps) cut to `fraction` (for timing)."""
    steps = max(s["iter_rounds"], round(s["steps"] * fraction) // s["iter_rounds"] * s["iter_rounds"])
    return {**s, "steps": steps, "samples": round(s["samples"] * steps / s["steps"])}


def rl_layout(method: str, s: dict) -> dict:
    """Rounds, prompts per round, group size and epochs that spend the budget exactly."""
    G = s["group_size"]
    if method == "rloo":
        rounds, group, inner = s["steps"], G, 1
    elif method == "ppo":
        rounds, group, inner = s["steps"] // 2, 1, 2
    else:
        rounds, group, inner = s["steps"] // 2, G, 2
    prompts = s["samples"] // (rounds * group)
    assert rounds * prompts * group == s["samples"] and rounds * inner == s["steps"], (method, s)
    return dict(iterations=rounds, prompts_per_iter=prompts, group_size=group, inner_steps=inner)


def kl_in_reward(beta: float):
    """RLOO's reward as in TRL's RLOOTrainer: R - beta * sum_t k1, detached, on the last token."""
    def token_rewards(rollout):
        shaped = kl.kl_penalised_rewards(rollout.rewards, rollout.old_logp, rollout.ref_logp, beta, rollout.mask, "k1")
        return last_token_rewards(shaped, rollout.mask)
    return token_rewards


def algorithm(method: str, beta: float, sft, world):
    if method == "rloo":
        return algorithms.REINFORCE(baseline="rloo", token_rewards=kl_in_reward(beta))
    if method == "ppo":
        return algorithms.PPO(value.critic_model(sft), drift_beta=beta)
    if method == "grpo":
        return algorithms.GRPO(beta=beta)
    if method == "dr_grpo":
        return algorithms.GRPO(beta=beta, aggregation="dr_grpo", max_length=world.max_new_tokens)
    raise ValueError(f"{method!r} is not an on-policy method")


def preference_loss(method: str, beta: float):
    """(loss_fn, with_lengths, uses_ref) for `train.preference_train`."""
    if method == "dpo":
        return None, False, True
    if method == "ipo":
        return partial(preference.ipo_loss, beta=beta), False, True
    if method == "simpo":
        return (lambda cw, cl, rw, rl, lw, ll: preference.simpo_loss(cw, cl, lw, ll, beta=beta, gamma=beta / 4)), True, False
    raise ValueError(f"{method!r} is not an offline pair method")


def _sibling(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Setting(_sibling("ch10_beyond_dpo").Setting):
    """Chapter 10's setting (the world, the SFT model, also the reference, and `pairs(seed)`:
    samples/4 prompts with 4 SFT samples each, best vs worst), scored on the frontier instead."""

    def __init__(self, s: dict):
        super().__init__({**s, "n_prompts": s["samples"] // 4})

    def measure(self, policy) -> dict:
        return train.reward_and_kl(policy, self.ref, self.tokenizer, self.world, self.s["eval_prompts"])


def train_one(setting: Setting, method: str, beta: float, seed: int, pairs=None) -> tuple:
    """Train a copy of the SFT model with `method` at `beta`: (policy, what it needed, seconds, steps).
    `pairs` (offline methods) defaults to `setting.pairs(seed)`, whose sampling is then timed too."""
    s, world, tok, ref = setting.s, setting.world, setting.tokenizer, setting.ref
    policy = lm.trainable_copy(setting.model)
    start = time.perf_counter()
    if method in ON_POLICY:
        layout = rl_layout(method, s)
        config = train.RLConfig(**layout, lr=s["lr"], seed=1000 * seed)
        history = train.on_policy(policy, tok, world, algorithm(method, beta, setting.model, world), config, ref=ref,
                                  progress=False)
        used = dict(samples=layout["iterations"] * layout["prompts_per_iter"] * layout["group_size"],
                    steps=layout["iterations"] * layout["inner_steps"], curve=history["true_reward"])
    elif method == "iterative_dpo":
        rounds = s["iter_rounds"]
        config = train.PreferenceConfig(steps=s["steps"] // rounds, batch_size=s["batch_size"], lr=s["lr"], beta=beta,
                                        seed=seed)
        history, fresh = train.iterative_dpo(policy, tok, world, rounds, s["samples"] // (4 * rounds), 4, ref=ref,
                                             config=config, progress=False)
        used = dict(samples=rounds * (s["samples"] // (4 * rounds)) * 4, steps=config.steps * rounds,
                    pairs=sum(len(p) for p in fresh), curve=history["true_reward"])
    else:
        pairs = pairs if pairs is not None else setting.pairs(seed)
        if method == "kto":
            config = train.KTOConfig(steps=s["steps"], batch_size=s["batch_size"], lr=s["lr"], beta=beta, seed=seed)
            train.kto_train(policy, tasks.unpaired_from_pairs(pairs, setting.pad), ref, config, progress=False)
        else:
            loss_fn, with_lengths, uses_ref = preference_loss(method, beta)
            config = train.PreferenceConfig(steps=s["steps"], batch_size=s["batch_size"], lr=s["lr"], beta=beta, seed=seed)
            train.preference_train(policy, pairs, ref if uses_ref else None, config, loss_fn=loss_fn,
                                   with_lengths=with_lengths, progress=False)
        used = dict(samples=4 * (s["samples"] // 4), steps=s["steps"], pairs=len(pairs))
    return policy, used, time.perf_counter() - start


def run(setting: Setting, method: str, beta: float, seed: int, pairs=None) -> dict:
    policy, used, seconds = train_one(setting, method, beta, seed, pairs)
    return {"method": method, "beta": beta, "seed": seed, "seconds": seconds, **used, **setting.measure(policy)}


def _write(results: dict, out: Path) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, out)


def sweep(quick: bool, out: Path) -> dict:
    s = settings(quick)
    setting = Setting(s)
    results = {"command": "python experiments/ch11_frontier.py" + (" --quick" if quick else ""), "settings": s,
               "sft": setting.measure(setting.model), "runs": []}
    start = time.perf_counter()
    for seed in s["seeds"]:                       # seed-major: a crash leaves whole seeds
        pairs = setting.pairs(seed)
        for method in METHODS:
            for beta in (s["simpo_betas"] if method == "simpo" else s["betas"]):
                try:
                    results["runs"].append(run(setting, method, beta, seed, pairs if method in OFFLINE else None))
                except FloatingPointError as error:  # a diverged run is a result too; the sweep goes on
                    results["runs"].append({"method": method, "beta": beta, "seed": seed, "error": str(error)})
                    print(f"seed {seed} {method} beta {beta}: {error}", flush=True)
                    continue
                results["wall_seconds"] = time.perf_counter() - start
                _write(results, out)
                r = results["runs"][-1]
                print(f"seed {seed} {method:14s} beta {beta:<4} reward {r['reward']:+.2f} KL {r['kl']:.2f} "
                      f"({r['seconds']:.1f} s)", flush=True)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and a few steps (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON")
    args = parser.parse_args(argv)
    setup(seed=0, verbose=not args.quick)
    out = args.out or HERE / ("ch11_frontier_quick.json" if args.quick else "ch11_frontier.json")
    results = sweep(args.quick, out)
    results["torch"] = torch.__version__
    results["complete"] = True
    _write(results, out)
    print(f"wrote {out} in {results['wall_seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
