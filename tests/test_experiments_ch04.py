"""The chapter 04 seed sweep's --quick mode runs end to end and writes what the notebook reads."""

import importlib.util
import json
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "ch04_seeds.py"


def test_quick_sweep_writes_every_config(isolated_cache, tmp_path):
    spec = importlib.util.spec_from_file_location("ch04_seeds", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick", "--out", str(tmp_path / "out.json")])
    results = json.loads((tmp_path / "out.json").read_text())
    assert {r["config"] for r in results["runs"]} == set(module.CONFIGS)
    rounds = results["settings"]["rounds"]
    for r in results["runs"]:
        assert -5.0 <= r["final"]["true reward"] <= 4.0 and 0.0 <= r["final"]["grammatical"] <= 1.0
        assert set(r["curves"]) == set(module.CURVES)
        for name, curve in r["curves"].items():
            assert len(curve) == rounds, name
            assert all(math.isfinite(x) for x in curve), name
        # the logged grammatical fraction is the fraction of training samples above the floor
        assert all(0.0 <= g <= 1.0 for g in r["curves"]["grammatical"])
    # KLPEN logs its trust-region KL after every round, and it is a KL: >= 0
    klpen = next(r for r in results["runs"] if "KLPEN" in r["config"])
    assert all(k >= 0 for k in klpen["curves"]["kl_old_new"])
