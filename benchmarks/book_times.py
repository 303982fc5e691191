"""Wall time of every chapter executed headless, cold model cache then warm.

Each chapter runs in a fresh kernel with nbconvert's ExecutePreprocessor (what `jupyter nbconvert
--execute` does), from the notebooks/ folder, on an in-memory copy: the committed notebooks are never
written. Cold: every chapter gets its own empty RLBOOK_CACHE (a fresh temporary folder), so each one
trains the SFT models it needs, as under `pytest --nbval-lax` on a fresh machine and as the issue's
555 s baseline was measured (each chapter alone, cold). Warm: the chapters run again, each with the
cache its own cold run filled, so only the SFT training drops out. The kernel's environment pins
RLBOOK_THREADS (default 1) and, through the chapters' `device.setup`, torch's thread count.

    python benchmarks/book_times.py                     # every chapter, cold then warm
    python benchmarks/book_times.py --chapters 01 07    # some chapters
    python benchmarks/book_times.py --cold-only
    python benchmarks/book_times.py --shared-cache      # one fresh cache for the whole book, in order

The last line is a JSON object {"cold": {chapter: s}, "warm": {...}, "total_cold_s", "total_warm_s", "machine"}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def chapters(selected: list[str] | None) -> list[Path]:
    books = sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    if selected:
        books = [b for b in books if any(b.name.startswith(s) for s in selected)]
        if not books:
            raise SystemExit(f"no chapter matches {selected}")
    return books


def machine(threads: int) -> dict:
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "threads": threads, "load_avg": [round(x, 2) for x in load], "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def run_chapter(path: Path, cache: Path, threads: int, timeout: int) -> float:
    """Execute one notebook in a fresh kernel with RLBOOK_CACHE=cache; returns wall seconds."""
    import nbformat
    from nbconvert.preprocessors import ExecutePreprocessor

    nb = nbformat.read(path, as_version=4)
    env = {"RLBOOK_CACHE": str(cache), "RLBOOK_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        ep = ExecutePreprocessor(timeout=timeout, kernel_name="python3")
        start = time.perf_counter()
        ep.preprocess(nb, {"metadata": {"path": str(path.parent)}})
        return time.perf_counter() - start
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chapters", nargs="*", help="chapter number prefixes, e.g. 01 07 (default: all)")
    ap.add_argument("--cold-only", action="store_true", help="skip the warm pass")
    ap.add_argument("--shared-cache", action="store_true",
                    help="one fresh cache for all chapters, in order (later chapters reuse earlier models)")
    ap.add_argument("--threads", type=int, default=1, help="RLBOOK_THREADS for the kernels (default 1)")
    ap.add_argument("--timeout", type=int, default=900, help="per-cell timeout in seconds")
    args = ap.parse_args(argv)

    books = chapters(args.chapters)
    info = machine(args.threads)
    print(" | ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    print(f"cache: {'one fresh cache shared in chapter order' if args.shared_cache else 'a fresh cache per chapter'}")
    root = Path(tempfile.mkdtemp(prefix="rlbook-book-times-"))
    caches = {b.name: root / ("shared" if args.shared_cache else b.stem) for b in books}
    result = {"cold": {}, "warm": {}}
    try:
        passes = ["cold"] if args.cold_only else ["cold", "warm"]
        for name in passes:
            for book in books:
                chapter = book.name[:2]
                try:
                    seconds = run_chapter(book, caches[book.name], args.threads, args.timeout)
                    result[name][chapter] = round(seconds, 1)
                    print(f"{name:4s} {book.name:40s} {seconds:7.1f} s", flush=True)
                except Exception as exc:  # noqa: BLE001 - report the failing chapter, keep timing the rest
                    result[name][chapter] = None
                    print(f"{name:4s} {book.name:40s}  FAILED: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    for name in ("cold", "warm"):
        done = [v for v in result[name].values() if v is not None]
        result[f"total_{name}_s"] = round(sum(done), 1) if done else None
    print(f"\n{'chapter':8s} {'cold s':>8s} {'warm s':>8s}")
    for chapter in result["cold"]:
        c, w = result["cold"].get(chapter), result["warm"].get(chapter)
        print(f"{chapter:8s} {c if c is not None else 'FAIL':>8} {w if w is not None else '-':>8}")
    print(f"{'total':8s} {result['total_cold_s']:>8} {result['total_warm_s'] if result['total_warm_s'] else '-':>8}")
    result["machine"] = info
    result["cache"] = "shared" if args.shared_cache else "per-chapter"
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
