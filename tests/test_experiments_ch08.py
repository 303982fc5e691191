"""The chapter 08 seed sweep's --quick mode runs end to end and writes what the notebook reads."""

import importlib.util
import json
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "ch08_seeds.py"


def test_quick_sweep_writes_every_run(isolated_cache, tmp_path):
    spec = importlib.util.spec_from_file_location("ch08_seeds", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick", "--out", str(tmp_path / "out.json")])
    results = json.loads((tmp_path / "out.json").read_text())
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
