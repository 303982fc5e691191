"""Chapter 04's PPO runs over three seeds: PPO-CLIP vs PPO-KLPEN (sections 5-6), the drift penalty
at beta = 0, 0.05, 0.2, 0.5 (section 7 and exercise 3) and the critic without its value clip.

    python experiments/ch04_seeds.py           # the full sweep -> experiments/ch04_seeds.json (~5 min, 1 CPU)
    python experiments/ch04_seeds.py --quick   # 2 rounds, one seed, short SFT and reward model (the unit test)

Everything is built as the chapter builds it: the width-64 sentiment SFT model, one Bradley-Terry
reward model (150 steps on 2000 prompts x 4 samples, torch seed 0), then PPO for 70 rounds of
64 prompts x 1 sample, 4 epochs, Adam 2e-3. The seeds are RLConfig.seed = 0, 1000, 2000 (seed 0 is the
chapter's live run; spaced so that no two runs share the per-round prompt seeds seed + i). Only the RL
run changes with the seed: the SFT model and the reward model are the chapter's one each.
Each run is scored on 512 fresh samples (seed 123, as the chapter's `evaluate`) after its last round,
and by the mean true reward of its last 10 rounds' training samples (640 samples, less tied to the
round where it stopped).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from rlbook import advantages, algorithms, lm, ppo, pretrained, tasks, train, value
from rlbook.masked import masked_mean

OUT = Path(__file__).with_suffix(".json")
CURVES = ("reward", "true_reward", "grammatical", "approx_kl", "clip_frac", "kl_old_new", "drift_kl",
          "explained_variance", "mean_return", "critic_lag")
# name -> keyword arguments of algorithms.PPO (a fresh AdaptiveKLController per run for "klpen")
CONFIGS = {
    "CLIP, drift 0.2": dict(drift_beta=0.2),
    "KLPEN, drift 0.2": dict(drift_beta=0.2, variant="klpen"),
    "CLIP, drift 0": dict(drift_beta=0.0),
    "CLIP, drift 0.05": dict(drift_beta=0.05),
    "CLIP, drift 0.5": dict(drift_beta=0.5),
    "CLIP, drift 0.2, no value clip": dict(drift_beta=0.2, value_clip=None),
}


def reward_model_of(world, sft, tokenizer, steps=150, n_prompts=2000):
    """The chapter's reward model (section 4): same samples, same order of random draws."""
    torch.manual_seed(0)
    pairs = tasks.preference_pairs(world, sft, tokenizer, n_prompts=n_prompts, samples_per_prompt=4, seed=1)
    tasks.preference_pairs(world, sft, tokenizer, n_prompts=n_prompts // 4, samples_per_prompt=4, seed=2)  # held out
    rm = value.reward_model(sft)
    train.train_reward_model(rm, pairs, steps=steps, batch_size=64, lr=3e-3, progress=False)
    for p in rm.parameters():
        p.requires_grad_(False)
    return rm


@torch.no_grad()
def evaluate(model, tokenizer, world, rm, n=512, seed=123):
    """True reward, grammatical fraction and reward-model score of n fresh samples (the chapter's)."""
    torch.manual_seed(seed)
    samples = lm.sample(model, tokenizer, world.prompts(n, seed), world.max_new_tokens)
    r = world.score(samples, tokenizer)
    return {"true reward": r.mean().item(), "grammatical": (r > world.ungrammatical_reward).float().mean().item(),
            "reward model": value.reward_scores(rm, samples).mean().item()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds, one seed, short reward model (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON")
    args = parser.parse_args(argv)
    rounds, seeds, n_eval, rm_steps, rm_prompts = (2, [0], 32, 5, 200) if args.quick else (70, [0, 1000, 2000], 512, 150, 2000)
    torch.set_num_threads(1)
    world = tasks.SentimentWorld()
    sft, tokenizer, _ = pretrained.sft_model(world, model_config=dict(d_model=64), progress=False,
                                             sft_config=dict(steps=20) if args.quick else None)
    reference = lm.frozen_copy(sft)
    rm = reward_model_of(world, sft, tokenizer, rm_steps, rm_prompts)

    def round_metrics(critic, drift_beta):
        """Per round, before the update: grammatical fraction, the mean Monte-Carlo return G_t of the shaped
        rewards over the round's tokens, and the critic's lag mean(G_t - V(s_t)) (the chapter's)."""
        def metrics(rollout):
            m = rollout.mask
            shaped = ppo.shaped_rewards(rollout.rewards, rollout.old_logp, rollout.ref_logp, drift_beta, m)
            returns = advantages.discounted_returns(shaped, 1.0, m)
            with torch.no_grad():
                lag = masked_mean(returns - value.values(critic, rollout.batch), m)
            grammatical = (world.score(rollout.batch, tokenizer) > world.ungrammatical_reward).float().mean()
            return {"grammatical": grammatical, "mean_return": masked_mean(returns, m), "critic_lag": lag}
        return metrics

    runs = []
    for seed in seeds:
        for name, kwargs in CONFIGS.items():
            policy = lm.trainable_copy(sft)
            controller = ppo.AdaptiveKLController(beta=1.0, target=0.02) if kwargs.get("variant") == "klpen" else None
            critic = value.critic_model(sft)
            algorithm = algorithms.PPO(critic, kl_controller=controller, log_kl_old_new=True,
                                       rollout_metrics=round_metrics(critic, kwargs["drift_beta"]), **kwargs)
            config = train.RLConfig(iterations=rounds, prompts_per_iter=64, group_size=1, inner_steps=4, lr=2e-3,
                                    seed=seed)
            start = time.perf_counter()
            history = train.on_policy(policy, tokenizer, world, algorithm, config, ref=reference,
                                      reward_fn=lambda b: value.reward_scores(rm, b), progress=False)
            seconds = time.perf_counter() - start
            last = history["true_reward"][-10:]
            runs.append(dict(config=name, seed=seed, seconds=seconds, final=evaluate(policy, tokenizer, world, rm, n_eval),
                             last10_true_reward=sum(last) / len(last),
                             curves={k: [float(x) for x in history[k]] for k in CURVES}))
            f = runs[-1]["final"]
            print(f"seed {seed:4d} {name:32s} true {f['true reward']:+.2f}  grammatical {f['grammatical']:.2f}"
                  f"  RM {f['reward model']:+.2f}  last-10 true {runs[-1]['last10_true_reward']:+.2f}  {seconds:.0f} s")
    results = {"command": "python experiments/ch04_seeds.py" + (" --quick" if args.quick else ""),
               "settings": dict(rounds=rounds, seeds=seeds, eval_samples=n_eval, reward_model_steps=rm_steps, reward_model_prompts=rm_prompts,
                                prompts_per_round=64, epochs=4, lr=2e-3),
               "sft": evaluate(sft, tokenizer, world, rm, n_eval), "runs": runs,
               "total_seconds": sum(r["seconds"] for r in runs), "torch": torch.__version__}
    out = args.out or OUT
    out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
