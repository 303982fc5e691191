"""The chapter 06 placement sweep's --quick mode runs end to end and writes what the notebook reads."""

import json
import math
from pathlib import Path


def test_quick_sweep_writes_curves_for_each_setting(quick_experiment):
    module, results = quick_experiment("ch06_placements")
    assert [(r["estimator"], r["placement"], r["beta"]) for r in results["runs"]] == [tuple(s) for s in module.SETTINGS[:2]]
    for r in results["runs"]:
        assert len(r["true_reward"]) == len(r["exact_kl"]) == results["settings"]["rounds"]
        assert all(0.0 <= x <= 1.0 for x in r["true_reward"]) and all(math.isfinite(x) and x >= 0 for x in r["exact_kl"])
    assert results["cpu_seconds"] > 0


def test_committed_sweep_covers_every_setting_on_at_least_three_seeds(experiment):
    module = experiment("ch06_placements")
    results = json.loads(Path(module.__file__).with_suffix(".json").read_text())
    for setting in module.SETTINGS:
        seeds = {r["seed"] for r in results["runs"] if (r["estimator"], r["placement"], r["beta"]) == setting}
        assert len(seeds) >= 3, setting
    assert all(len(r["true_reward"]) == module.ROUNDS for r in results["runs"])
