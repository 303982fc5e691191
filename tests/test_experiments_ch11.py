"""The chapter 11 sweep's --quick mode runs end to end, spends one budget on every method, and
writes what the notebook reads."""

import math


def test_quick_sweep_runs_every_method_on_one_budget(quick_experiment):
    module, results = quick_experiment("ch11_frontier")
    s = results["settings"]
    assert results["complete"] and {r["method"] for r in results["runs"]} == set(module.METHODS)
    assert len(results["runs"]) == len(module.METHODS) * len(s["seeds"])
    for r in results["runs"]:
        assert r["samples"] == s["samples"] and r["steps"] == s["steps"], r["method"]
        assert all(math.isfinite(r[k]) for k in ("reward", "reward_se", "kl", "kl_se", "k1", "seconds"))
        assert r["kl"] >= 0
    assert results["sft"]["kl"] == 0.0


def test_the_budget_layouts_spend_the_full_budget_exactly(experiment):
    module = experiment("ch11_frontier")
    for s in (module.settings(quick=False), module.settings(quick=True)):
        for fraction in (1.0, 1 / 8):
            t = module.scaled(s, fraction)
            for method in module.ON_POLICY:
                layout = module.rl_layout(method, t)
                assert layout["iterations"] * layout["prompts_per_iter"] * layout["group_size"] == t["samples"]
                assert layout["iterations"] * layout["inner_steps"] == t["steps"]
