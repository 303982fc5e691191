"""The chapter 02 seed sweep's --quick mode runs end to end and writes what the notebook reads."""

import math


def test_quick_sweep_writes_every_weight(quick_experiment):
    module, results = quick_experiment("ch02_reinforce")
    assert {r["weight"] for r in results["runs"]} == set(module.WEIGHTS)
    assert 0.0 <= results["sft"]["true reward"] <= 1.0
    for r in results["runs"]:
        assert 0.0 <= r["exact match"] <= r["true reward"] <= 1.0 and r["seconds"] > 0
        assert len(r["true_reward_curve"]) == results["settings"]["rounds"]
        assert all(math.isfinite(x) for x in r["true_reward_curve"])
