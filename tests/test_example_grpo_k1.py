"""examples/grpo_k1_reward.py runs end to end on the tiny model on the CPU (two steps, one process) and
reports the penalty it put in the reward. Skipped without TRL (an optional extra: pip install -e '.[trl]')."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="TRL is an optional extra: pip install -e '.[trl]'")

ROOT = Path(__file__).resolve().parents[1]


def test_grpo_k1_reward_example_runs_two_steps_on_the_tiny_model(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_TELEMETRY": "1", "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "grpo_k1_reward.py"), "--max_steps", "2",
                          "--output_dir", str(tmp_path / "out"), "--beta", "0.1"],
                         capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["steps"] == 2 and result["beta"] == 0.1 and len(result["history"]) == 2
    first, second = result["history"]
    assert first["kl_in_reward"] == pytest.approx(0.0, abs=1e-6)  # pi = pi_ref before the first update
    assert second["kl_in_reward"] != 0.0  # after one update the policy has moved
