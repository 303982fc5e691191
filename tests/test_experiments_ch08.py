"""The chapter 08 seed sweep's --quick mode runs end to end and writes what the notebook reads."""

import math


def test_quick_sweep_writes_every_run(quick_experiment):
    module, results = quick_experiment("ch08_seeds")
    names = {(r["experiment"], r["name"]) for r in results["runs"]}
    assert names == ({("beta sweep", f"beta {b}") for b in module.BETAS}
                     | {("displacement", n) for n in [*module.DISPLACEMENT, "SFT model"]})
    for r in results["runs"]:
        assert -5.0 <= r["true reward"] <= 6.0 and 0.0 <= r["grammatical"] <= 1.0
        assert math.isfinite(r["KL to ref"])
        if r["experiment"] == "beta sweep":
            assert 0.0 <= r["held_out_accuracy"] <= 1.0
        else:
            assert r["log pi(y_w)"] < 0 and r["log pi(y_l)"] < 0
    sft = next(r for r in results["runs"] if r["name"] == "SFT model")
    assert abs(sft["KL to ref"]) < 1e-6      # the reference is the SFT model itself
