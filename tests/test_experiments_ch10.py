"""The chapter 10 sweep's --quick mode runs end to end and writes what the notebook reads."""

import importlib.util
import json
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "ch10_beyond_dpo.py"


def test_quick_sweep_writes_every_experiment(isolated_cache, tmp_path):
    spec = importlib.util.spec_from_file_location("ch10_beyond_dpo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick", "--out", str(tmp_path / "out.json")])
    results = json.loads((tmp_path / "out.json").read_text())
    experiments = {(r["experiment"], r["method"]) for r in results["runs"]}
    assert experiments == {("clean", m) for m in module.METHODS} | {("noisy", "dpo"), ("noisy", "ipo"),
                                                                    ("length_balanced", "dpo"), ("length_balanced", "simpo"),
                                                                    ("kto_balance", "kto")}
    for r in results["runs"]:
        assert all(math.isfinite(r[k]) for k in ("true_reward", "kl", "length", "chosen_logp_change", "seconds_per_step"))
        assert len(r["margin_curve"]) == r["steps"] // results["settings"]["every"]
        assert sum(r["length_hist"]) == results["settings"]["eval_prompts"]
