"""The chapter 09 seed sweep's --quick mode runs end to end and writes what the notebook reads."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "ch09_seeds.py"


def test_quick_sweep_writes_both_runs(isolated_cache, tmp_path):
    spec = importlib.util.spec_from_file_location("ch09_seeds", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick", "--out", str(tmp_path / "out.json")])
    results = json.loads((tmp_path / "out.json").read_text())
    rounds, steps = results["settings"]["rounds"], results["settings"]["steps_per_round"]
    for run in results["runs"]:
        # one measurement before training and one after every round, for both runs
        assert len(run["offline"]) == len(run["iterative"]) == rounds + 1
        assert len(run["offline_loss"]) == rounds * steps and len(run["iterative_loss"]) == rounds
        # both start from the same SFT model, measured on the same fixed prompts
        assert run["offline"][0]["true reward"] == run["iterative"][0]["true reward"]
        for row in run["offline"] + run["iterative"]:
            assert 0.0 <= row["coverage"] <= 1.0 and row["log pi(data y_w)"] < 0
