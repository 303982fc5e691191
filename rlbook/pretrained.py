"""A cache of SFT-trained tiny models, keyed by world, model config, training config and
seed. A missing entry is rebuilt deterministically (same key -> same weights on the same
machine), so every notebook can start from "the pretrained model" without depending on
an earlier notebook having run.

The cache lives in `$RLBOOK_CACHE`, else `~/.cache/rlbook`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from rlbook.device import default_device
from rlbook.lm import load, save, tiny_lm
from rlbook.tasks import World, make_world
from rlbook.train import sft

CACHE_VERSION = 1  # bump when the SFT recipe changes in a way the key does not capture

MODEL_DEFAULTS = dict(arch="gpt2", d_model=128, n_layer=2, n_head=4, n_positions=32)
SFT_DEFAULTS = dict(steps=400, batch_size=64, lr=3e-3, n_examples=20_000)
# per-world recipes (measured on CPU, samples at temperature 1: sentiment ~92% grammatical, its
# slips mostly a repeated adjective; sort-8 0.92 exact match on 256 prompts, seed 123). Chapters
# that need room for RL to improve pass a shorter sft_config of their own.
SFT_RECIPES = {
    "sentiment": dict(steps=400, batch_size=128),
    "sort": dict(steps=240),
    "target_sum": dict(steps=400),
}


def cache_dir() -> Path:
    return Path(os.environ.get("RLBOOK_CACHE", Path.home() / ".cache" / "rlbook"))


def cache_key(world: World, model_config: dict, sft_config: dict, seed: int) -> str:
    blob = json.dumps({"world": world.spec(), "model": model_config, "sft": sft_config, "seed": seed,
                       "version": CACHE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sft_model(world: World | str, model_config: dict | None = None, sft_config: dict | None = None,
              seed: int = 0, device: torch.device | str | None = None, progress: bool = True,
              rebuild: bool = False):
    """(model, tokenizer, history) of a tiny LM SFT-trained on `world`'s correct answers.

    Loads from the cache when the key is there; otherwise trains (printing that it does),
    saves with `save_pretrained` and returns the result. `history` is the SFT loss curve.
    Python's and torch's global random state are left as they were either way, so what a
    notebook samples next does not depend on whether the model was in the cache.
    """
    with _random_state_kept():
        return _sft_model(world, model_config, sft_config, seed, device, progress, rebuild)


@contextmanager
def _random_state_kept():
    state = random.getstate()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        yield
    random.setstate(state)


def _sft_model(world, model_config, sft_config, seed, device, progress, rebuild):
    world = make_world(world) if isinstance(world, str) else world
    model_config = {**MODEL_DEFAULTS, **(model_config or {})}
    sft_config = {**SFT_DEFAULTS, **SFT_RECIPES.get(world.name, {}), **(sft_config or {})}
    unknown = set(model_config) - set(MODEL_DEFAULTS) | set(sft_config) - set(SFT_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    device = torch.device(device) if device is not None else default_device()
    path = cache_dir() / f"{world.name}-{cache_key(world, model_config, sft_config, seed)}"
    if path.exists() and not rebuild:
        model, tokenizer = load(path, device)
        history = json.loads((path / "history.json").read_text())
        return model, tokenizer, history

    shown = str(path).replace(str(Path.home()), "~", 1)  # no user name in committed notebook outputs
    print(f"training the SFT model for {world.name!r} (cached afterwards in {shown})")
    tokenizer = world.tokenizer()
    model = tiny_lm(tokenizer, seed=seed, **model_config).to(device)
    cfg = dict(sft_config)
    examples = world.sft_examples(cfg.pop("n_examples"), seed=seed)
    history = sft(model, tokenizer, examples, seed=seed, progress=progress, **cfg)
    # write to a temporary folder, then move it in place: a half-written entry never loads
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
    save(model, tokenizer, tmp)
    (tmp / "history.json").write_text(json.dumps(history))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return model.eval(), tokenizer, history
