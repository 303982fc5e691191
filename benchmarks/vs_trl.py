"""One optimizer step of GRPO and of DPO, four ways, on the same tiny model, tokenizer, world and batch:

  rlbook   rlbook's own loops: `train.on_policy` with the GRPO algorithm, `train.preference_train`
  floor    a minimal hand-written loop doing the same tensor work (no validation, no metrics beyond the loss)
  trl_tuned    TRL 1.16's GRPOTrainer / DPOTrainer set up for this CPU (fp32, no gradient checkpointing,
               loss_type matching rlbook's, no logging, saving or evaluation)
  trl_default  TRL with its defaults (bf16 autocast, gradient checkpointing, loss_type "dapo" for GRPO,
               per-step reference forward for DPO); only the workload itself is set

GRPO round: 16 prompts x 8 samples of "sort 8 digits" (9 new tokens, KV-cache sampling via `generate`),
true reward, group-normalised advantages, one reference forward (beta = 0.04, k3 in the loss), one policy
forward/backward (inner_steps 1: old log-probs = the first forward's, detached), grad-norm clip 1.0, Adam step.
DPO step: 64 pairs (chosen + rejected in one forward), reference log-probs precomputed once for every pair
(rlbook always does this; the floor and TRL tuned do the same; TRL default runs the reference every step),
sigmoid loss with beta 0.1, grad-norm clip 1.0, Adam step.

Timing: each run starts from a fresh copy of the SFT model and takes `--rounds` + 1 steps; the first step of
every run is dropped (lazy optimizer state, caches); a step is the interval between consecutive step
boundaries (rlbook's callback, the floor's loop, TRL's `on_step_begin`), so data loading, logging and
callbacks are inside it. Runs of all variants are interleaved `--repeats` times (order rotated) after a
warm-up run of each, and the median over all kept steps is reported with its spread (min-max).

    python benchmarks/vs_trl.py                     # the table + the JSON last line
    python benchmarks/vs_trl.py --quick --no-trl    # seconds: rlbook vs the floor only
    python benchmarks/vs_trl.py --scaling           # rlbook vs floor as the batch and the width grow
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _k, _v in {"HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "WANDB_DISABLED": "true", "WANDB_MODE": "disabled",
               "TOKENIZERS_PARALLELISM": "false", "DISABLE_MLFLOW_INTEGRATION": "TRUE",
               "TQDM_DISABLE": "1"}.items():
    os.environ.setdefault(_k, _v)

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlbook import dpo as rdpo  # noqa: E402
from rlbook import grpo as rgrpo  # noqa: E402
from rlbook import lm, pretrained, tasks, train  # noqa: E402

from rlbook.advantages import group_advantages  # noqa: E402
from rlbook.algorithms import GRPO  # noqa: E402

BETA_GRPO, EPS, LR_RL = 0.04, 0.2, 3e-4
BETA_DPO, LR_DPO, DPO_BATCH = 0.1, 1e-4, 64
VARIANTS = ("rlbook", "floor", "trl_tuned", "trl_default")
NATIVE_THREADS = torch.get_num_threads()  # torch's default before this script sets --threads


# ====================================================================== models and data

def load_models(d_model: int, sft_steps: int):
    """The SFT model of chapter 07's world (sort 8 digits), from rlbook's cache (trained once if missing)."""
    world = tasks.SortWorld(n_digits=8)
    model, tok, _ = pretrained.sft_model(world, model_config=dict(d_model=d_model), sft_config=dict(steps=sft_steps),
                                         progress=False, device="cpu")
    return world, model, tok


def fresh_policy(model):
    return lm.trainable_copy(model)


class StepClock:
    """A callback for rlbook's loops: the wall time between consecutive calls (one per step)."""

    def __init__(self):
        self.times, self.last = [], time.perf_counter()

    def __call__(self, *_):
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now


def make_pairs(world, model, tok, n_pairs: int, seed: int = 0):
    """>= n_pairs preference pairs from the model's own samples (best vs worst of 4, ties dropped)."""
    parts, have, s = [], 0, seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        while have < n_pairs:
            p = tasks.preference_pairs(world, model, tok, n_prompts=max(64, n_pairs), samples_per_prompt=4, seed=s)
            parts.append(p)
            have += len(p)
            s += 1
    pairs = tasks.merge_pairs(parts, tok.pad_token_id)
    rows = list(range(n_pairs))
    return tasks.PreferencePairs(pairs.chosen.index(rows), pairs.rejected.index(rows),
                                 pairs.chosen_reward[rows], pairs.rejected_reward[rows])


# ====================================================================== GRPO: rlbook

def rlbook_grpo(model, tok, world, ref, steps: int, prompts: int, group: int, seed: int = 0) -> list[float]:
    """`steps` rounds of rlbook's on-policy loop; returns the wall time of each round."""
    policy = fresh_policy(model)
    config = train.RLConfig(iterations=steps, prompts_per_iter=prompts, group_size=group, inner_steps=1, lr=LR_RL,
                            seed=seed)
    clock = StepClock()
    train.on_policy(policy, tok, world, GRPO(beta=BETA_GRPO, eps=EPS, aggregation="grpo"), config, ref=ref,
                    progress=False, callback=clock)
    rlbook_grpo.last_policy = policy
    return clock.times


# ====================================================================== GRPO: the floor

def floor_grpo(model, tok, world, ref, steps: int, prompts: int, group: int, seed: int = 0) -> list[float]:
    """The same round written out by hand: generate (KV cache), reward, advantages, one reference
    forward, one policy forward/backward, clip, Adam. Same prompts and torch seed as rlbook, so it
    draws the same samples and reaches the same weights."""
    policy = fresh_policy(model)
    params = list(policy.parameters())
    optimizer = torch.optim.Adam(params, lr=LR_RL)
    vocab = tok.get_vocab()
    words = tok.convert_ids_to_tokens(list(range(len(tok))))
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    max_new = world.max_new_tokens
    torch.manual_seed(seed)
    times, last = [], time.perf_counter()
    for it in range(steps):
        texts = [p for p in world.prompts(prompts, seed + it) for _ in range(group)]
        prompt_ids = torch.tensor([[bos, *(vocab[w] for w in p)] for p in texts])  # sort prompts share one length
        P = prompt_ids.shape[1]
        with torch.no_grad():
            out = policy.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids), do_sample=True,
                                  max_new_tokens=max_new, temperature=1.0, top_k=0, top_p=1.0, pad_token_id=pad,
                                  eos_token_id=eos, use_cache=True)
        completion = out[:, P:]
        is_eos = (completion == eos).long()
        mask = (is_eos.cumsum(1) - is_eos) == 0
        completion = completion.masked_fill(~mask, pad)
        lengths = mask.sum(1).tolist()
        rows = completion.tolist()
        rewards = torch.tensor([world.reward(p, [words[i] for i in row[:n]])
                                for p, row, n in zip(texts, rows, lengths)])
        g = rewards.view(-1, group)
        adv = ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-6)).view(-1, 1)
        input_ids = torch.cat([prompt_ids, completion], 1)
        target = completion.unsqueeze(-1)
        m = mask.float()
        with torch.no_grad():
            ref_logp = torch.log_softmax(ref(input_ids).logits[:, P - 1:-1], -1).gather(-1, target).squeeze(-1)
        policy.train()
        logp = torch.log_softmax(policy(input_ids).logits[:, P - 1:-1], -1).gather(-1, target).squeeze(-1)
        ratio = torch.exp(logp - logp.detach())
        pg = -torch.min(ratio * adv, ratio.clamp(1 - EPS, 1 + EPS) * adv)
        d = ref_logp - logp
        per_token = pg + BETA_GRPO * (torch.exp(d) - d - 1)
        loss = ((per_token * m).sum(1) / m.sum(1)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        policy.eval()
        loss.item()  # a loop reports its loss; one host sync
        now = time.perf_counter()
        times.append(now - last)
        last = now
    floor_grpo.last_policy = policy
    return times


# ====================================================================== DPO: rlbook and the floor

def rlbook_dpo(model, pairs, ref, steps: int, seed: int = 0) -> list[float]:
    """`steps` steps of `train.preference_train`; the first (which includes the up-front reference
    pass over every pair) is dropped by the caller."""
    policy = fresh_policy(model)
    clock = StepClock()
    train.preference_train(policy, pairs, ref, train.PreferenceConfig(steps=steps, batch_size=DPO_BATCH,
                                                                      beta=BETA_DPO, lr=LR_DPO, seed=seed),
                           progress=False, callback=clock)
    rlbook_dpo.last_policy = policy
    return clock.times


def _pair_tensors(pairs, pad: int):
    """Chosen rows then rejected rows as one [2N, P + T] id tensor and a [2N, T] completion mask."""
    both = lm.concat_batches([pairs.chosen, pairs.rejected], pad)
    if not bool(both.prompt_mask.all()):
        raise ValueError("the floor assumes prompts of one length (the sort world's)")
    return both.input_ids, both.completion_mask.float(), both.prompt_ids.shape[1]


def floor_dpo(model, pairs, ref, steps: int, seed: int = 0) -> list[float]:
    """The same DPO step by hand: reference log-probs once up front (not timed per step), then per
    step one forward of chosen + rejected, -logsigmoid(beta h), backward, clip, Adam. Draws the same
    rows as rlbook (same generator), so it reaches the same weights."""
    policy = fresh_policy(model)
    params = list(policy.parameters())
    optimizer = torch.optim.Adam(params, lr=LR_DPO)
    ids, mask, P = _pair_tensors(pairs, model.config.pad_token_id)
    N = len(pairs)

    def seq_logp(net, x, m):
        logits = net(x).logits[:, P - 1:-1]
        return (torch.log_softmax(logits, -1).gather(-1, x[:, P:].unsqueeze(-1)).squeeze(-1) * m).sum(1)

    times, last = [], time.perf_counter()
    with torch.no_grad():
        ref_seq = torch.cat([seq_logp(ref, ids[i:i + 512], mask[i:i + 512]) for i in range(0, 2 * N, 512)])
    generator = torch.Generator().manual_seed(seed)
    policy.train()
    for _ in range(steps):
        rows = torch.randint(N, (DPO_BATCH,), generator=generator)
        idx = torch.cat([rows, rows + N])
        seq = seq_logp(policy, ids[idx], mask[idx])
        ref_b = ref_seq[idx]
        h = (seq[:DPO_BATCH] - ref_b[:DPO_BATCH]) - (seq[DPO_BATCH:] - ref_b[DPO_BATCH:])
        loss = -F.logsigmoid(BETA_DPO * h).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        loss.item()
        now = time.perf_counter()
        times.append(now - last)
        last = now
    policy.eval()
    floor_dpo.last_policy = policy
    return times


def ref_pass_seconds(ref, pairs) -> float:
    """rlbook's up-front reference pass (`train.pair_logprobs`) over every pair, for the record."""
    start = time.perf_counter()
    train.pair_logprobs(ref, pairs)
    return time.perf_counter() - start


# ====================================================================== TRL

class _TRL:
    """TRL trainers on the saved SFT model, built by `rlbook.trl_bridge` (imported lazily: TRL is only
    in the `bench` / `trl` extras), plus the step timing this benchmark needs."""

    def __init__(self, model, tok, world, workdir: Path, threads: int):
        from transformers import TrainerCallback

        from rlbook import trl_bridge

        self.bridge = trl_bridge
        self.tiny = trl_bridge.TinyTRL(model, tok, world, workdir)
        self.trl, self.model_dir = trl_bridge.trl, self.tiny.model_dir
        self.tok, self.world, self.workdir, self.threads = tok, world, workdir, threads

        class StepTimer(TrainerCallback):
            def __init__(self):
                self.begins = []

            def on_step_begin(self, args, state, control, **kw):
                self.begins.append(time.perf_counter())

            def on_train_end(self, args, state, control, **kw):
                self.begins.append(time.perf_counter())

        self.StepTimer = StepTimer

    def _default_args(self, steps: int, name: str) -> dict:
        """Only the workload: TRL's defaults (bf16 autocast, gradient checkpointing, ...) stay."""
        return dict(output_dir=str(self.workdir / name), max_steps=steps, report_to="none", seed=0, use_cpu=True,
                    dataloader_num_workers=0, save_strategy="no")

    def _times(self, trainer, threads: int | None = None) -> list[float]:
        timer = self.StepTimer()
        trainer.add_callback(timer)
        torch.set_num_threads(threads or self.threads)  # the Trainer leaves torch's threads alone
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its final metrics
                trainer.train()
        finally:
            torch.set_num_threads(self.threads)
        b = timer.begins
        return [b[i + 1] - b[i] for i in range(len(b) - 1)]

    # -- GRPO ------------------------------------------------------------------------------------

    def grpo_trainer(self, tuned: bool, steps: int, prompts: int, group: int):
        if tuned:
            return self.tiny.grpo_trainer(prompts, group, steps, beta=BETA_GRPO, learning_rate=LR_RL,
                                          loss_type="grpo", epsilon=EPS, use_bias_correction_kl=False,
                                          scale_rewards="group")
        kw = self._default_args(steps, "grpo")
        kw.update(num_generations=group, per_device_train_batch_size=prompts * group,
                  max_completion_length=self.world.max_new_tokens, beta=BETA_GRPO, learning_rate=LR_RL,
                  temperature=1.0)
        return self.trl.GRPOTrainer(model=str(self.model_dir),
                                    reward_funcs=self.bridge.world_reward(self.world, self.tok),
                                    args=self.trl.GRPOConfig(**kw),
                                    train_dataset=self.bridge.prompt_dataset(self.world, prompts * (steps + 1)),
                                    processing_class=self.tok)

    def grpo(self, tuned: bool, steps: int, prompts: int, group: int, threads: int | None = None) -> list[float]:
        return self._times(self.grpo_trainer(tuned, steps + 1, prompts, group), threads)[:steps]

    # -- DPO -------------------------------------------------------------------------------------

    def dpo_dataset(self, pairs):
        return self.tiny.dpo_dataset(pairs)

    def dpo_trainer(self, tuned: bool, steps: int, dataset):
        if tuned:
            return self.tiny.dpo_trainer(dataset, steps, per_device_train_batch_size=DPO_BATCH, beta=BETA_DPO,
                                         learning_rate=LR_DPO)
        kw = self._default_args(steps, "dpo")
        kw.update(per_device_train_batch_size=DPO_BATCH, beta=BETA_DPO, learning_rate=LR_DPO)
        return self.trl.DPOTrainer(model=str(self.model_dir), args=self.trl.DPOConfig(**kw), train_dataset=dataset,
                                   processing_class=self.tok)

    def dpo(self, tuned: bool, steps: int, dataset, threads: int | None = None) -> list[float]:
        return self._times(self.dpo_trainer(tuned, steps + 1, dataset), threads)[:steps]


# ====================================================================== loss agreement

perturbed = lm.perturbed_copy  # pi_theta != pi_old != pi_ref, so the checks mean something


def check_grpo_loss(bench: _TRL, model, tok, world) -> dict:
    """rlbook.grpo.grpo_loss vs TRL's GRPOTrainer._compute_loss (loss_type "grpo", k3 without the
    bias correction) on the same batch, old log-probs, reference log-probs and advantages."""
    torch.manual_seed(3)
    batch, rewards = tasks.sample_groups(world, model, tok, 16, 8, seed=3)
    trainer = bench.grpo_trainer(True, 1, 16, 8)
    net = trainer.model
    net.load_state_dict(perturbed(model, 0.02, 1).state_dict())
    with torch.no_grad():
        old = lm.completion_logprobs(perturbed(model, 0.02, 2), batch)
        ref_logp = lm.completion_logprobs(model, batch)
    adv = group_advantages(rewards, 8)
    net.train()
    logp = lm.completion_logprobs(net, batch)
    ours = rgrpo.grpo_loss(logp, old, ref_logp, adv, batch.completion_mask, eps=EPS, beta=BETA_GRPO,
                           aggregation="grpo")
    theirs = bench.bridge.trl_grpo_loss(trainer, batch, old, ref_logp, adv)
    g_ours = torch.autograd.grad(ours, list(net.parameters()), retain_graph=False)
    g_theirs = torch.autograd.grad(theirs, list(net.parameters()))
    gdiff = max((a - b).abs().max().item() for a, b in zip(g_ours, g_theirs))
    return {"rlbook": ours.item(), "trl": theirs.item(), "abs_diff": abs(ours.item() - theirs.item()),
            "grad_max_abs_diff": gdiff}


def check_dpo_loss(bench: _TRL, model, pairs) -> dict:
    """rlbook.dpo.dpo_loss vs TRL's DPOTrainer._compute_loss (loss_type "sigmoid") on the same 64 pairs
    and reference log-probs, the pairs tokenized by TRL from text (so its tokenization is checked too)."""
    sub = bench.bridge.finished_pairs(pairs, bench.tok.eos_token_id, DPO_BATCH)  # TRL appends EOS
    trainer = bench.dpo_trainer(True, 1, bench.dpo_dataset(sub))
    net = trainer.model
    net.load_state_dict(perturbed(model, 0.02, 1).state_dict())
    ref_c, ref_r = train.pair_logprobs(model, sub)
    net.train()
    cw, cl = train.sequence_logprobs(net, sub.chosen), train.sequence_logprobs(net, sub.rejected)
    ours = rdpo.dpo_loss(cw, cl, ref_c, ref_r, beta=BETA_DPO)
    theirs = bench.bridge.trl_dpo_loss(trainer, ref_c, ref_r)
    return {"rlbook": ours.item(), "trl": theirs.item(), "abs_diff": abs(ours.item() - theirs.item()),
            "pairs": len(sub)}


# ====================================================================== running and reporting

def summarise(times: list[float]) -> dict:
    if not times:
        return {"median": None}
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": len(times)}


def interleaved(runners: dict, repeats: int, steps: int) -> dict[str, list[float]]:
    """Warm up every runner once, then `repeats` rounds of all runners in rotated order; each run's
    first step is dropped. A runner that raises is recorded as failed and skipped afterwards."""
    out = {name: [] for name in runners}
    failed = {}
    names = list(runners)
    for name in names:  # warm-up
        try:
            runners[name](2)
        except Exception as exc:  # noqa: BLE001 - reported, never faked
            failed[name] = f"{type(exc).__name__}: {exc}"
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            if name in failed:
                continue
            try:
                out[name] += runners[name](steps + 1)[1:]
            except Exception as exc:  # noqa: BLE001
                failed[name] = f"{type(exc).__name__}: {exc}"
    return out, failed


def fmt(x):
    return "   n/a" if x is None else f"{x * 1000:8.1f}"


def print_table(title: str, stats: dict, failed: dict, floor_key: str = "floor"):
    floor = stats.get(floor_key, {}).get("median")
    rl = stats.get("rlbook", {}).get("median")
    print(f"\n{title}")
    print(f"{'variant':14s} {'median ms':>9s} {'min ms':>8s} {'max ms':>8s} {'n':>4s} {'x floor':>8s} {'x rlbook':>9s}")
    for name, s in stats.items():
        if name in failed:
            print(f"{name:14s}   FAILED: {failed[name][:300]}")
            continue
        m = s.get("median")
        if m is None:
            continue
        print(f"{name:14s} {fmt(m)} {fmt(s['min'])} {fmt(s['max'])} {s['n']:4d} "
              f"{m / floor if floor else float('nan'):8.2f} {m / rl if rl else float('nan'):9.2f}")


def weights_gap(a, b) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def machine_info(threads: int) -> str:
    import transformers
    try:
        import trl
        trl_v = trl.__version__
    except ImportError:
        trl_v = "not installed"
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (f"python {platform.python_version()} | torch {torch.__version__} | transformers {transformers.__version__}"
            f" | trl {trl_v} | cpus {os.cpu_count()} | torch threads {threads} | load avg {load[0]:.2f}")


def main_benchmark(args):
    world, model, tok = load_models(args.d_model, args.sft_steps)
    ref = lm.frozen_copy(model)
    P, G, steps = args.prompts, args.group, args.rounds
    print(machine_info(args.threads))
    print(f"model: gpt2 d_model={args.d_model}, {lm.num_parameters(model):,} parameters; world sort-8 "
          f"(max {world.max_new_tokens} new tokens); GRPO {P} prompts x {G} samples, beta {BETA_GRPO}; "
          f"DPO {DPO_BATCH} pairs, beta {BETA_DPO}; {args.repeats} interleaved repeats x {steps} kept steps")

    # same work? rlbook and the floor, same seeds, must reach the same weights
    rlbook_grpo(model, tok, world, ref, 2, P, G)
    floor_grpo(model, tok, world, ref, 2, P, G)
    gap_grpo = weights_gap(rlbook_grpo.last_policy, floor_grpo.last_policy)
    pairs = make_pairs(world, model, tok, DPO_BATCH * (steps + 2) * (1 if args.quick else 2))
    rlbook_dpo(model, pairs, ref, 3)
    floor_dpo(model, pairs, ref, 3)
    gap_dpo = weights_gap(rlbook_dpo.last_policy, floor_dpo.last_policy)
    print(f"same work: max |weight difference| rlbook vs floor after 2 GRPO rounds {gap_grpo:.2e}, "
          f"after 3 DPO steps {gap_dpo:.2e}")

    bench = None
    results = {"grpo": {}, "dpo": {}}
    failed_all = {"grpo": {}, "dpo": {}}
    workdir = Path(tempfile.mkdtemp(prefix="rlbook-bench-"))
    try:
        grpo_runners = {"rlbook": lambda n: rlbook_grpo(model, tok, world, ref, n, P, G),
                        "floor": lambda n: floor_grpo(model, tok, world, ref, n, P, G)}
        dpo_runners = {"rlbook": lambda n: rlbook_dpo(model, pairs, ref, n),
                       "floor": lambda n: floor_dpo(model, pairs, ref, n)}
        if not args.no_trl:
            try:
                bench = _TRL(model, tok, world, workdir, args.threads)
            except ImportError as exc:
                print(f"TRL not importable ({exc}); install the bench extra: pip install -e '.[bench]'")
        if bench is not None:
            dataset = bench.dpo_dataset(pairs)
            for tuned, name in ((True, "trl_tuned"), (False, "trl_default")):
                grpo_runners[name] = (lambda n, t=tuned: bench.grpo(t, n, P, G))
                dpo_runners[name] = (lambda n, t=tuned: bench.dpo(t, n, dataset))
            if args.native_threads:  # TRL defaults with torch's own default thread count (what a user gets)
                native = NATIVE_THREADS
                grpo_runners[f"trl_default_{native}t"] = lambda n: bench.grpo(False, n, P, G, threads=native)
                dpo_runners[f"trl_default_{native}t"] = lambda n: bench.dpo(False, n, dataset, threads=native)
            for label, fn in (("grpo", lambda: check_grpo_loss(bench, model, tok, world)),
                              ("dpo", lambda: check_dpo_loss(bench, model, pairs))):
                try:
                    c = fn()
                    ok = c["abs_diff"] < 1e-5 and c.get("grad_max_abs_diff", 0.0) < 1e-5
                    print(f"loss agreement {label}: rlbook {c['rlbook']:+.8f}  trl {c['trl']:+.8f}  "
                          f"|diff| {c['abs_diff']:.1e}"
                          + (f"  max |grad diff| {c['grad_max_abs_diff']:.1e}" if "grad_max_abs_diff" in c else "")
                          + f"  -> {'AGREE' if ok else 'DISAGREE'}")
                except Exception as exc:  # noqa: BLE001
                    print(f"loss agreement {label}: could not run: {type(exc).__name__}: {exc}")
        for label, runners in (("grpo", grpo_runners), ("dpo", dpo_runners)):
            times, failed = interleaved(runners, args.repeats, steps)
            stats = {k: summarise(v) for k, v in times.items()}
            failed_all[label] = failed
            print_table(f"{label.upper()}: one optimizer step (wall ms; median over "
                        f"{args.repeats} runs x {steps} steps)", stats, failed)
            for k in [*VARIANTS, *(n for n in stats if n not in VARIANTS)]:
                results[label][f"{k}_s"] = (round(stats[k]["median"], 5)
                                            if k in stats and stats[k].get("median") is not None else None)
        results["dpo"]["rlbook_ref_pass_s"] = round(ref_pass_seconds(ref, pairs), 5)
        results["dpo"]["ref_pass_pairs"] = len(pairs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print("\ngoals (rlbook vs floor <= 1.05; vs TRL tuned < 1; TRL default / rlbook >= 10):")
    for label in ("grpo", "dpo"):
        r = results[label]
        parts = []
        if r["rlbook_s"] and r["floor_s"]:
            parts.append(f"rlbook/floor {r['rlbook_s'] / r['floor_s']:.3f}")
        if r["rlbook_s"] and r["trl_tuned_s"]:
            parts.append(f"rlbook/trl_tuned {r['rlbook_s'] / r['trl_tuned_s']:.3f}")
        if r["rlbook_s"] and r["trl_default_s"]:
            parts.append(f"trl_default/rlbook {r['trl_default_s'] / r['rlbook_s']:.1f}")
        print(f"  {label}: " + ", ".join(parts))
        for k, why in failed_all[label].items():
            print(f"  {label} {k} failed: {why[:500]}")
    print(f"(dpo: rlbook's up-front reference pass over {len(pairs)} pairs took "
          f"{results['dpo']['rlbook_ref_pass_s'] * 1000:.0f} ms, excluded from its step like TRL tuned's precompute)")
    print(json.dumps(results))


def main_scaling(args):
    """rlbook vs the floor as the batch (prompts x G) and the model width grow."""
    print(machine_info(args.threads))
    batches = [(4, 8), (16, 8), (64, 8)] if not args.quick else [(4, 8), (16, 8)]
    widths = [64, 128, 256] if not args.quick else [64, 128]
    steps, repeats = args.rounds, args.repeats
    rows = []
    for d in widths:
        world, model, tok = load_models(d, args.sft_steps)
        ref = lm.frozen_copy(model)
        for P, G in batches if d == args.d_model else [(args.prompts, args.group)]:
            runners = {"rlbook": lambda n, P=P, G=G: rlbook_grpo(model, tok, world, ref, n, P, G),
                       "floor": lambda n, P=P, G=G: floor_grpo(model, tok, world, ref, n, P, G)}
            times, failed = interleaved(runners, repeats, steps)
            r, f = statistics.median(times["rlbook"]), statistics.median(times["floor"])
            rows.append(("grpo", d, lm.num_parameters(model), f"{P}x{G}", r, f))
        pairs = make_pairs(world, model, tok, DPO_BATCH * 4)
        runners = {"rlbook": lambda n: rlbook_dpo(model, pairs, ref, n),
                   "floor": lambda n: floor_dpo(model, pairs, ref, n)}
        times, failed = interleaved(runners, repeats, steps)
        rows.append(("dpo", d, lm.num_parameters(model), f"{DPO_BATCH} pairs", statistics.median(times["rlbook"]),
                     statistics.median(times["floor"])))
    print(f"\n{'step':5s} {'d_model':>7s} {'params':>9s} {'batch':>10s} {'rlbook ms':>10s} {'floor ms':>9s} "
          f"{'rlbook/floor':>12s} {'ms per sample':>14s}")
    for kind, d, n, batch, r, f in rows:
        samples = int(batch.split("x")[0]) * int(batch.split("x")[1]) if "x" in batch else 2 * DPO_BATCH
        print(f"{kind:5s} {d:7d} {n:9,d} {batch:>10s} {r * 1000:10.1f} {f * 1000:9.1f} {r / f:12.3f} "
              f"{r * 1000 / samples:14.3f}")
    print(json.dumps({"scaling": [dict(step=k, d_model=d, params=n, batch=b, rlbook_s=round(r, 5),
                                       floor_s=round(f, 5)) for k, d, n, b, r, f in rows]}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved runs per variant")
    ap.add_argument("--rounds", type=int, default=4, help="kept steps per run (one more is run and dropped)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--d-model", type=int, default=128, help="width of the tiny GPT-2 (128: ~0.4M parameters)")
    ap.add_argument("--sft-steps", type=int, default=140, help="SFT steps of the starting model (chapter 07's)")
    ap.add_argument("--no-trl", action="store_true", help="rlbook vs the floor only (no TRL needed)")
    ap.add_argument("--native-threads", action="store_true",
                    help="also time TRL defaults at torch's default thread count (slow on 2 shared cores)")
    ap.add_argument("--quick", action="store_true", help="tiny repeats: a smoke test in seconds")
    ap.add_argument("--scaling", action="store_true", help="rlbook vs floor as batch and width grow")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.rounds = 1, 2
    torch.set_num_threads(args.threads)
    if args.scaling:
        main_scaling(args)
    else:
        main_benchmark(args)


if __name__ == "__main__":
    main()
