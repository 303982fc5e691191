"""The one place that picks the device, the thread count and the seed."""

from __future__ import annotations

import os
import platform
import random

import torch


def default_device() -> torch.device:
    """CUDA when available, else Apple's MPS, else the CPU. `RLBOOK_DEVICE=cpu` (or any
    torch device string) overrides the choice."""
    forced = os.environ.get("RLBOOK_DEVICE")
    if forced:
        return torch.device(forced)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_threads() -> int:
    """Intra-op CPU threads. The book's models are ~0.1-1M parameters: at that size one
    thread was measured 2-5x faster than two on a 2-core machine (thread hand-off costs
    more than the matmuls), so one is the default. `RLBOOK_THREADS` overrides it."""
    return int(os.environ.get("RLBOOK_THREADS", "1"))


def scale() -> int:
    """`RLBOOK_SCALE` (default 1): notebooks multiply training steps by it, for a GPU or a
    patient reader. The default keeps every chapter inside its CPU budget."""
    value = int(os.environ.get("RLBOOK_SCALE", "1"))
    if value < 1:
        raise ValueError(f"RLBOOK_SCALE must be a positive integer, got {value}")
    return value


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators (all devices)."""
    random.seed(seed)
    torch.manual_seed(seed)


def setup(seed: int = 0, threads: int | None = None, verbose: bool = True) -> torch.device:
    """Seed everything, set the CPU thread count, turn on TF32 on CUDA, and return the
    device. With `verbose`, print the versions a reader should quote in a bug report."""
    seed_everything(seed)
    torch.set_num_threads(threads or default_threads())
    device = default_device()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if verbose:
        import transformers

        import rlbook

        print(f"python {platform.python_version()} | torch {torch.__version__} | "
              f"transformers {transformers.__version__} | rlbook {rlbook.__version__}")
        print(f"device {device} | threads {torch.get_num_threads()} | seed {seed}")
    return device


def fork_rng(device: torch.device | str):
    """A context in which torch's CPU generator and `device`'s are forked: random numbers
    drawn inside leave the caller's streams as they were, on the CPU and on the accelerator."""
    device = torch.device(device)
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device.index or 0], device_type=device.type)
