"""widgets.py's KL lab: the plain state function against exact expectations (enumeration over
outcomes) and against large-sample behaviour; the figure and app only have to build."""

import math

import matplotlib
import pytest
import torch

from rlbook.kl import exact_kl_gradients
from rlbook.widgets import kl_lab, kl_lab_figure, kl_lab_state, lab_logits, per_sample_gradients

matplotlib.use("Agg")

CONFIGS = [(e, p) for e in ("k1", "k2", "k3") for p in ("reward", "loss")]


@pytest.mark.parametrize("estimator, placement", CONFIGS)
def test_per_sample_gradients_average_to_the_exact_expectation_over_all_outcomes(estimator, placement):
    logits, ref_logits = lab_logits(0.7, 1.3, 6)
    outcomes = torch.arange(6)
    g = per_sample_gradients(logits, ref_logits, outcomes, estimator, placement)  # one row per outcome
    expectation = (logits.softmax(0).unsqueeze(1) * g).sum(0)
    assert torch.allclose(expectation, exact_kl_gradients(logits, ref_logits)[f"{estimator}/{placement}"], atol=1e-12)


def test_per_sample_gradient_of_k3_in_the_loss_by_hand():
    logits, ref_logits = torch.tensor([0.5, -0.2, 0.1], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    pi, ref = logits.softmax(0), ref_logits.softmax(0)
    g = per_sample_gradients(logits, ref_logits, torch.tensor([2]), "k3", "loss")[0]
    # d/dlogits [(ref/pi - 1) - log(ref/pi)] at x = 2: (1 - ref_2/pi_2) (e_2 - pi)
    assert torch.allclose(g, (1 - ref[2] / pi[2]) * (torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) - pi))


@pytest.mark.parametrize("estimator, placement", CONFIGS)
def test_monte_carlo_mean_is_within_error_bars_of_the_expectation(estimator, placement):
    s = kl_lab_state(shift=1.0, temperature=1.0, num_outcomes=5, n=20_000, estimator=estimator,
                     placement=placement, seed=1)
    assert ((s["mc_mean"] - s["expected"]).abs() <= 5 * s["mc_stderr"] + 1e-12).all()


def test_state_reports_the_known_directions():
    rev = kl_lab_state(estimator="k2", placement="loss", n=8)
    assert rev["expected_cos_reverse"] == pytest.approx(1.0)
    fwd = kl_lab_state(estimator="k3", placement="loss", n=8)
    assert fwd["expected_cos_forward"] == pytest.approx(1.0)
    zero = kl_lab_state(estimator="k1", placement="loss", n=8)
    assert zero["expected"].abs().max() < 1e-12 and zero["mc_mean"].abs().max() > 0  # noise only
    # the standard error shrinks like 1 / sqrt(N)
    small, large = (kl_lab_state(estimator="k1", placement="reward", n=n, seed=3)["mc_stderr"].norm() for n in (400, 6400))
    assert small / large == pytest.approx(4.0, rel=0.15)


def test_same_policy_gives_zero_true_gradients():
    s = kl_lab_state(shift=0.0, temperature=1.0, n=16)
    assert s["kl_reverse"] == pytest.approx(0.0, abs=1e-12) and s["grad_reverse"].abs().max() < 1e-12
    assert s["grad_forward"].abs().max() < 1e-12


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="n"):
        kl_lab_state(n=1)
    with pytest.raises(ValueError, match="temperature"):
        kl_lab_state(temperature=0.0)
    with pytest.raises(ValueError, match="num_outcomes"):
        kl_lab_state(num_outcomes=1)
    with pytest.raises(ValueError, match="estimator"):
        kl_lab_state(estimator="k4")
    with pytest.raises(ValueError, match="placement"):
        kl_lab_state(placement="advantage")
    with pytest.raises(ValueError, match="shift"):
        kl_lab_state(shift=math.nan)


def test_figure_and_app_build():
    axes = kl_lab_figure(kl_lab_state(n=32))
    assert len(axes) == 2 and len(axes[1].patches) == 5
    app = kl_lab(n=16)
    assert app.children  # controls + output
