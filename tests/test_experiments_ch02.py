"""The chapter 02 seed sweep's --quick mode runs end to end and writes what the notebook reads."""

import importlib.util
import json
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "ch02_reinforce.py"


def test_quick_sweep_writes_every_weight(isolated_cache, tmp_path):
    spec = importlib.util.spec_from_file_location("ch02_reinforce", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick", "--out", str(tmp_path / "out.json")])
    results = json.loads((tmp_path / "out.json").read_text())
    assert {r["weight"] for r in results["runs"]} == set(module.WEIGHTS)
    assert 0.0 <= results["sft"]["true reward"] <= 1.0
    for r in results["runs"]:
        assert 0.0 <= r["exact match"] <= r["true reward"] <= 1.0 and r["seconds"] > 0
        assert len(r["true_reward_curve"]) == results["settings"]["rounds"]
        assert all(math.isfinite(x) for x in r["true_reward_curve"])
