"""Small training loops. Each returns a history: {metric name: list of values per step}."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Sequence

import torch
from tqdm.auto import tqdm

from rlbook.lm import completion_logprobs, make_batch
from rlbook.masked import masked_mean


def sft_loss(model, batch) -> torch.Tensor:
    """Next-token cross-entropy on completion tokens only (the prompt is given, not learned):
    -mean over completion tokens of log pi(a_t | s_t)."""
    return -masked_mean(completion_logprobs(model, batch), batch.completion_mask)


def sft(model, tokenizer, examples: Sequence[tuple], steps: int, batch_size: int = 64, lr: float = 3e-3,
        weight_decay: float = 0.0, seed: int = 0, progress: bool = True) -> dict[str, list[float]]:
    """Supervised fine-tuning on (prompt words, completion words) pairs with AdamW.

    Minibatches are drawn with replacement from `examples` by a generator seeded with
    `seed`, so the same call on the CPU gives the same weights. The learning rate decays
    linearly to 0, which lets a few hundred steps converge cleanly.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if len(examples) == 0:
        raise ValueError("examples is empty")
    device = next(model.parameters()).device
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    history = defaultdict(list)
    model.train()
    for _ in tqdm(range(steps), desc="SFT", disable=not progress):
        chosen = [examples[rng.randrange(len(examples))] for _ in range(batch_size)]
        batch = make_batch(tokenizer, [p for p, _ in chosen], [c for _, c in chosen]).to(device)
        loss = sft_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        history["loss"].append(loss.item())
    model.eval()
    return dict(history)
