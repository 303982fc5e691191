"""rlbook's GRPO and DPO losses against TRL's own `_compute_loss` on the same batch, where the
formulas coincide (benchmarks/vs_trl.py's checks, on a small model). Skipped without TRL, which
is not a dependency of rlbook (the `bench` extra installs it)."""

import importlib.util
import os
from pathlib import Path

import pytest

pytest.importorskip("trl")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("vs_trl", ROOT / "benchmarks" / "vs_trl.py")
    vs_trl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vs_trl)
    world, model, tok = vs_trl.load_models(d_model=128, sft_steps=140)  # the benchmark's model (chapter 07's)
    return vs_trl, vs_trl._TRL(model, tok, world, tmp_path_factory.mktemp("trl"), threads=1), world, model, tok


def test_grpo_loss_and_gradient_equal_trls(bench):
    """loss_type "grpo", k3 in the loss without TRL's bias correction (pi/pi_old), advantages given."""
    vs_trl, trl_bench, world, model, tok = bench
    c = vs_trl.check_grpo_loss(trl_bench, model, tok, world)
    assert abs(c["rlbook"]) > 1e-4  # pi_theta != pi_old != pi_ref: a loss worth comparing
    assert c["abs_diff"] < 1e-5 and c["grad_max_abs_diff"] < 1e-5


def test_dpo_loss_equals_trls_on_pairs_tokenised_by_trl(bench):
    vs_trl, trl_bench, world, model, tok = bench
    pairs = vs_trl.make_pairs(world, model, tok, vs_trl.DPO_BATCH)
    c = vs_trl.check_dpo_loss(trl_bench, model, pairs)
    assert c["pairs"] >= 16 and c["abs_diff"] < 1e-5
