"""Smoke test of benchmarks/vs_trl.py without TRL: rlbook vs the floor, tiny repeats.

It checks that the benchmark runs and ends with its JSON line; the timings themselves are not
asserted (benchmarks are measured, not tested)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (ROOT / "benchmarks" / "vs_trl.py").exists(), reason="no benchmarks/")
def test_vs_trl_quick_runs_and_ends_with_json(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_TELEMETRY": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vs_trl.py"), "--quick", "--no-trl",
                          "--rounds", "1"],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for step in ("grpo", "dpo"):
        assert result[step]["rlbook_s"] > 0 and result[step]["floor_s"] > 0
        assert result[step]["trl_tuned_s"] is None
    assert "same work" in out.stdout
