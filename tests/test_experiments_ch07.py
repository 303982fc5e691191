"""The chapter 07 seed sweep's --quick mode runs end to end and writes what the notebook reads."""

import importlib.util
import json
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "ch07_seeds.py"


def test_quick_sweep_writes_every_variant(isolated_cache, tmp_path):
    spec = importlib.util.spec_from_file_location("ch07_seeds", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick", "--out", str(tmp_path / "out.json")])
    results = json.loads((tmp_path / "out.json").read_text())
    assert {r["variant"] for r in results["runs"]} == set(module.VARIANTS)
    for r in results["runs"]:
        assert 0.0 <= r["exact_match"] <= 1.0 and r["seconds_per_round"] > 0
        assert len(r["true_reward_curve"]) == results["settings"]["rounds"]
        assert all(math.isfinite(x) for x in r["true_reward_curve"])
        # the held-out curve starts at the SFT model and has a point every eval_every rounds
        rounds = [k for k, _ in r["held_out_curve"]]
        assert rounds == list(range(0, results["settings"]["rounds"] + 1, results["settings"]["eval_every"]))
        assert all(0.0 <= x <= 1.0 for _, x in r["held_out_curve"])
