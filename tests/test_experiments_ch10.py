"""The chapter 10 sweep's --quick mode runs end to end and writes what the notebook reads."""

import math


def test_quick_sweep_writes_every_experiment(quick_experiment):
    module, results = quick_experiment("ch10_beyond_dpo")
    experiments = {(r["experiment"], r["method"]) for r in results["runs"]}
    assert experiments == {("clean", m) for m in module.METHODS} | {("noisy", "dpo"), ("noisy", "ipo"),
                                                                    ("length_balanced", "dpo"), ("length_balanced", "simpo"),
                                                                    ("kto_balance", "kto")}
    for r in results["runs"]:
        assert all(math.isfinite(r[k]) for k in ("true_reward", "kl", "length", "chosen_logp_change", "seconds_per_step"))
        assert len(r["margin_curve"]) == r["steps"] // results["settings"]["every"]
        assert sum(r["length_hist"]) == results["settings"]["eval_prompts"]
