"""Chapter 10's multi-seed runs: DPO, IPO (summed and length-normalised), KTO and SimPO on
the sentiment world, from one SFT model, with equal steps.

    python experiments/ch10_beyond_dpo.py            # the full sweep -> experiments/ch10_beyond_dpo.json
    python experiments/ch10_beyond_dpo.py --quick    # a tiny model and a few steps (what the unit test runs)

Every run is seeded (the seed draws the preference data and the minibatches), so a run
repeated on the same machine gives the same numbers; the notebook re-runs one live.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from rlbook import kl, lm, pretrained, preference, tasks, train
from rlbook.device import setup

HERE = Path(__file__).resolve().parent
BETA = 0.5                      # DPO, IPO and KTO
SIMPO = dict(beta=2.0, gamma=0.5)  # SimPO's code defaults: beta = 2, gamma / beta = 0.25
NOISE_P = 0.75
KTO_THRESHOLD = 0.5             # the imbalanced-feedback runs: desirable = true reward above this
METHODS = ("dpo", "ipo", "ipo_norm", "kto", "simpo")


def settings(quick: bool) -> dict:
    if quick:
        return dict(seeds=[0], steps=4, n_prompts=48, eval_prompts=32, batch_size=8, lr=3e-4, every=2,
                    model_config=dict(d_model=32, n_layer=1, n_head=2, n_positions=16),
                    sft_config=dict(steps=150, batch_size=32, lr=1e-2, n_examples=2000), kto_counts=(4, 16))
    return dict(seeds=[0, 1, 2], steps=120, n_prompts=384, eval_prompts=256, batch_size=32, lr=3e-4, every=10,
                model_config=None, sft_config=None, kto_counts=(100, 400))


class Setting:
    """The world, the SFT model (the reference) and how a policy is measured."""

    def __init__(self, s: dict):
        self.s = s
        self.world = tasks.SentimentWorld()
        self.model, self.tokenizer, _ = pretrained.sft_model(self.world, s["model_config"], s["sft_config"],
                                                             progress=False)
        self.ref = lm.frozen_copy(self.model)
        self.pad = self.tokenizer.pad_token_id

    def pairs(self, seed: int) -> tasks.PreferencePairs:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return tasks.preference_pairs(self.world, self.model, self.tokenizer, self.s["n_prompts"], 4, seed=100 + seed)

    @torch.no_grad()
    def measure(self, policy, seed: int = 10_000) -> dict:
        """The policy's own answers on fixed prompts: true reward, grammatical fraction,
        KL(pi || pi_ref) (mean summed log-ratio of the samples), length and its histogram."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            batch, r = tasks.sample_groups(self.world, policy, self.tokenizer, self.s["eval_prompts"], 1, seed=seed)
        kl_value = kl.sequence_kl(lm.completion_logprobs(policy, batch), lm.completion_logprobs(self.ref, batch),
                                  batch.completion_mask)
        lengths = batch.lengths
        return {"true_reward": r.mean().item(), "grammatical": (r > self.world.ungrammatical_reward).float().mean().item(),
                "kl": kl_value.item(), "length": lengths.float().mean().item(),
                "length_hist": [int((lengths == n).sum()) for n in range(1, self.world.max_new_tokens + 1)]}


def loss_for(method: str):
    """(loss_fn, with_lengths, uses_ref) for preference_train."""
    if method == "dpo":
        return None, False, True
    if method == "ipo":
        return partial(preference.ipo_loss, beta=BETA), False, True
    if method == "ipo_norm":
        return (lambda cw, cl, rw, rl, lw, ll: preference.ipo_loss(cw, cl, rw, rl, BETA, chosen_len=lw, rejected_len=ll)), True, True
    if method == "simpo":
        return (lambda cw, cl, rw, rl, lw, ll: preference.simpo_loss(cw, cl, lw, ll, **SIMPO)), True, False
    raise ValueError(f"unknown method {method!r}")


def run(setting: Setting, method: str, pairs: tasks.PreferencePairs, seed: int, flipped=None,
        kto_data=None, lambda_d: float = 1.0) -> dict:
    """Train a copy of the SFT model with `method` on `pairs` (KTO: on `kto_data`, default the
    pairs taken apart) and measure it. `flipped` marks pairs whose label disagrees with the
    true reward: the margin curve is then taken in the true reward's orientation."""
    s = setting.s
    policy = lm.trainable_copy(setting.model)
    orient = 1.0 - 2.0 * flipped.float() if flipped is not None else torch.ones(len(pairs))
    rw, rl = train.pair_logprobs(setting.ref, pairs)
    curve = []

    def margin_curve(step, p, history):
        if step % s["every"] == s["every"] - 1:
            cw, cl = train.pair_logprobs(p, pairs)
            curve.append((orient * preference.log_ratio_margin(cw, cl, rw, rl)).mean().item())

    start = time.perf_counter()
    if method == "kto":
        data = kto_data if kto_data is not None else tasks.unpaired_from_pairs(pairs, setting.pad)
        cfg = train.KTOConfig(steps=s["steps"], batch_size=s["batch_size"], lr=s["lr"], beta=BETA, lambda_d=lambda_d, seed=seed)
        history = train.kto_train(policy, data, setting.ref, cfg, progress=False,
                                  callback=lambda step, p, h: margin_curve(step, p, h))
        data_used = f"{len(data.batch)} unpaired labels ({int(data.desirable.sum())} desirable)"
    else:
        loss_fn, with_lengths, uses_ref = loss_for(method)
        cfg = train.PreferenceConfig(steps=s["steps"], batch_size=s["batch_size"], lr=s["lr"], beta=BETA, seed=seed)
        history = train.preference_train(policy, pairs, setting.ref if uses_ref else None, cfg, loss_fn=loss_fn,
                                         with_lengths=with_lengths, progress=False, callback=margin_curve)
        data_used = f"{len(pairs)} pairs"
    seconds = time.perf_counter() - start
    cw, _ = train.pair_logprobs(policy, pairs)
    out = {"method": method, "seed": seed, "steps": s["steps"], "seconds_per_step": seconds / s["steps"],
           "margin_curve": curve, "chosen_logp_change": (cw - rw).mean().item(), "data": data_used,
           # the models the method's loss uses (SimPO: the policy only; DPO and IPO use the reference
           # only up front, KTO at every step: the notebook measures that separately)
           "models_in_memory": 1 if method == "simpo" else 2, **setting.measure(policy)}
    out["history"] = {k: v for k, v in history.items() if k in ("margin", "z0", "reward_desirable", "reward_undesirable")}
    return out


def sweep(quick: bool) -> dict:
    s = settings(quick)
    setting = Setting(s)
    results = {"settings": {k: v for k, v in s.items()}, "beta": BETA, "simpo": SIMPO, "noise_p": NOISE_P,
               "sft": setting.measure(setting.model), "runs": []}
    n_d, n_u = s["kto_counts"]
    for seed in s["seeds"]:
        pairs = setting.pairs(seed)
        for method in METHODS:                                    # the closing table and IPO vs DPO
            results["runs"].append({"experiment": "clean", **run(setting, method, pairs, seed)})
        noisy, flipped = tasks.noisy_pairs(pairs, NOISE_P, setting.pad, seed=seed)
        for method in ("dpo", "ipo"):
            results["runs"].append({"experiment": "noisy", "flipped": flipped.float().mean().item(),
                                    **run(setting, method, noisy, seed, flipped=flipped)})
        balanced = tasks.length_balanced_pairs(pairs, seed=seed)
        for method in ("dpo", "simpo"):
            results["runs"].append({"experiment": "length_balanced", **run(setting, method, balanced, seed)})
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            feedback = {"1:1": tasks.balanced_feedback(setting.world, setting.model, setting.tokenizer, (n_d + n_u) // 2,
                                                       (n_d + n_u) // 2, threshold=KTO_THRESHOLD, seed=200 + seed, pool=8 * (n_d + n_u)),
                        "1:4": tasks.balanced_feedback(setting.world, setting.model, setting.tokenizer, n_d, n_u,
                                                       threshold=KTO_THRESHOLD, seed=200 + seed, pool=8 * (n_d + n_u))}
        for name, data, lam in (("1:1", feedback["1:1"], 1.0), ("1:4", feedback["1:4"], 1.0),
                                ("1:4", feedback["1:4"], preference.kto_balanced_lambdas(n_d, n_u, 1.0)[0]),
                                ("1:4", feedback["1:4"], preference.kto_balanced_lambdas(n_d, n_u, 4 / 3)[0])):
            results["runs"].append({"experiment": "kto_balance", "balance": name, "lambda_d": lam,
                                    **run(setting, "kto", pairs, seed, kto_data=data, lambda_d=lam)})
    return results


def summary(results: dict) -> list[str]:
    """One line per (experiment, method, ...) with the mean and [min, max] over seeds."""
    groups = {}
    for r in results["runs"]:
        key = (r["experiment"], r["method"], r.get("balance", ""), round(r.get("lambda_d", 1.0), 3))
        groups.setdefault(key, []).append(r)
    lines = []
    for key, rows in groups.items():
        cells = []
        for m in ("true_reward", "kl", "length", "chosen_logp_change"):
            xs = [r[m] for r in rows]
            cells.append(f"{m} {statistics.mean(xs):+.2f} [{min(xs):+.2f}, {max(xs):+.2f}]")
        lines.append(f"{' '.join(str(k) for k in key if k != '')}: " + ", ".join(cells))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and a few steps (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON")
    args = parser.parse_args(argv)
    setup(seed=0, verbose=not args.quick)
    out = args.out or HERE / ("ch10_beyond_dpo_quick.json" if args.quick else "ch10_beyond_dpo.json")
    start = time.perf_counter()
    results = sweep(args.quick)
    results["command"] = "python experiments/ch10_beyond_dpo.py" + (" --quick" if args.quick else "")
    results["wall_seconds"] = time.perf_counter() - start
    out.write_text(json.dumps(results, indent=1))
    for line in summary(results):
        print(line)
    print(f"wrote {out} in {results['wall_seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
