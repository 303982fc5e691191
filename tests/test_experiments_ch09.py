"""The chapter 09 seed sweep's --quick mode runs end to end and writes what the notebook reads."""


def test_quick_sweep_writes_both_runs(quick_experiment):
    module, results = quick_experiment("ch09_seeds")
    rounds, steps = results["settings"]["rounds"], results["settings"]["steps_per_round"]
    for run in results["runs"]:
        # one measurement before training and one after every round, for both runs
        assert len(run["offline"]) == len(run["iterative"]) == rounds + 1
        assert len(run["offline_loss"]) == rounds * steps and len(run["iterative_loss"]) == rounds
        # both start from the same SFT model, measured on the same fixed prompts
        assert run["offline"][0]["true reward"] == run["iterative"][0]["true reward"]
        for row in run["offline"] + run["iterative"]:
            assert 0.0 <= row["coverage"] <= 1.0 and row["log pi(data y_w)"] < 0
