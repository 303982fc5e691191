"""The chapter 06 placement sweep's --quick mode runs end to end and writes what the notebook reads."""

import importlib.util
import json
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "ch06_placements.py"


def test_quick_sweep_writes_curves_for_each_setting(isolated_cache, tmp_path):
    spec = importlib.util.spec_from_file_location("ch06_placements", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick", "--out", str(tmp_path / "out.json")])
    results = json.loads((tmp_path / "out.json").read_text())
    assert [(r["estimator"], r["placement"], r["beta"]) for r in results["runs"]] == [tuple(s) for s in module.SETTINGS[:2]]
    for r in results["runs"]:
        assert len(r["true_reward"]) == len(r["exact_kl"]) == results["settings"]["rounds"]
        assert all(0.0 <= x <= 1.0 for x in r["true_reward"]) and all(math.isfinite(x) and x >= 0 for x in r["exact_kl"])
    assert results["cpu_seconds"] > 0


def test_committed_sweep_covers_every_setting_on_at_least_three_seeds():
    spec = importlib.util.spec_from_file_location("ch06_placements", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = json.loads(SCRIPT.with_suffix(".json").read_text())
    for setting in module.SETTINGS:
        seeds = {r["seed"] for r in results["runs"] if (r["estimator"], r["placement"], r["beta"]) == setting}
        assert len(seeds) >= 3, setting
    assert all(len(r["true_reward"]) == module.ROUNDS for r in results["runs"])
