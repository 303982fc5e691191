"""widgets.py's KL lab: the plain state function against exact expectations (enumeration over
outcomes and sequences, autograd through the policy), brute-force loops and large-sample behaviour;
the table against the state; the app's callback without a browser (tests/test_browser_kl_lab.py
does it in JupyterLab)."""

import math
from html.parser import HTMLParser

import matplotlib
import pytest
import torch

from rlbook.exact import flat_grad
from rlbook.kl import exact_kl_gradients, kl_estimate
from rlbook.widgets import (CONFIGS, TABLE_COLUMNS, kl_lab, kl_lab_figure, kl_lab_state, kl_lab_table,
                            kl_lab_table_html, lab_logits, lab_policies, per_sample_gradients,
                            sequence_sample_gradients)

matplotlib.use("Agg")
LEVELS = ("token", "sequence")


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", CONFIGS)
def test_sample_gradients_average_to_the_exact_expectation_over_every_outcome(name, level):
    pi, ref = lab_policies(0.7, 1.3, 4, level)
    everything = pi.sequences()
    g = sequence_sample_gradients(pi, ref, everything, *name.split("/"))  # one row per outcome / sequence
    expectation = (pi.probs().detach().unsqueeze(1) * g).sum(0)
    assert torch.allclose(expectation, exact_kl_gradients(pi, ref)[name], atol=1e-12)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_one_sequence_gradient_by_autograd_through_the_policy(estimator):
    """reward: (sum_t k_t) * grad log P(tau); loss: grad sum_t k_t, both by autograd on policy.logits."""
    pi, ref = lab_policies(1.2, 0.8, 3, "sequence")
    seq = torch.tensor([[2, 0]])
    with torch.no_grad():
        ref_logp = ref.token_logprobs(seq)
    k = kl_estimate(pi.token_logprobs(seq), ref_logp, estimator).sum()
    score = flat_grad(pi.log_prob(seq).sum(), pi.logits)
    assert torch.allclose(sequence_sample_gradients(pi, ref, seq, estimator, "reward")[0], k.detach() * score, atol=1e-12)
    assert torch.allclose(sequence_sample_gradients(pi, ref, seq, estimator, "loss")[0], flat_grad(k, pi.logits),
                          atol=1e-12)


def test_per_sample_gradient_of_k3_in_the_loss_by_hand():
    logits, ref_logits = torch.tensor([0.5, -0.2, 0.1], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    pi, ref = logits.softmax(0), ref_logits.softmax(0)
    g = per_sample_gradients(logits, ref_logits, torch.tensor([2]), "k3", "loss")[0]
    # d/dlogits [(ref/pi - 1) - log(ref/pi)] at x = 2: (1 - ref_2/pi_2) (e_2 - pi)
    assert torch.allclose(g, (1 - ref[2] / pi[2]) * (torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) - pi))


@pytest.mark.parametrize("level", LEVELS)
def test_bias_variance_and_rmse_against_a_brute_force_loop(level):
    s = kl_lab_state(shift=1.3, temperature=0.9, num_outcomes=3, n=10, level=level)
    pi, ref = lab_policies(1.3, 0.9, 3, level)
    grads = exact_kl_gradients(pi, ref)
    for name in CONFIGS:
        estimator, placement = name.split("/")
        rows, probs = [], []
        for seq in pi.sequences():  # one sequence at a time, autograd through the policy
            seq = seq.unsqueeze(0)
            with torch.no_grad():
                ref_logp = ref.token_logprobs(seq)
            k = kl_estimate(pi.token_logprobs(seq), ref_logp, estimator).sum()
            rows.append(k.detach() * flat_grad(pi.log_prob(seq).sum(), pi.logits) if placement == "reward"
                        else flat_grad(k, pi.logits))
            probs.append(pi.log_prob(seq).exp().item())
        mean = sum(p * g for p, g in zip(probs, rows))
        variance = sum(p * (g - mean).square().sum() for p, g in zip(probs, rows)).item()
        bias = (mean - grads["KL(pi||ref)"]).norm().item()
        c = s["configs"][name]
        assert c["variance"] == pytest.approx(variance, rel=1e-10, abs=1e-14)
        assert c["bias"] == pytest.approx(bias, rel=1e-9, abs=1e-12)
        assert c["rmse"] == pytest.approx(math.sqrt(bias**2 + variance / 10), rel=1e-9)


@pytest.mark.parametrize("level", LEVELS)
def test_monte_carlo_mean_and_variance_match_the_exact_ones_at_large_n(level):
    s = kl_lab_state(shift=1.0, temperature=1.0, num_outcomes=4, n=20_000, seed=1, level=level)
    for name, c in s["configs"].items():
        assert ((c["mc_mean"] - c["expected"]).abs() <= 5 * c["mc_stderr"] + 1e-12).all(), name
        mc_variance = (c["mc_stderr"].square() * s["n"]).sum().item()  # sum of per-logit sample variances
        assert mc_variance == pytest.approx(c["variance"], rel=0.1, abs=1e-12), name


def test_state_reports_the_known_identities():
    token = kl_lab_state(n=8)["configs"]
    assert token["k1/reward"]["bias"] < 1e-12 and token["k2/loss"]["bias"] < 1e-12
    assert token["k3/loss"]["expected_cos_forward"] == pytest.approx(1.0)
    assert math.isnan(token["k1/loss"]["expected_cos_reverse"])  # zero on average: no direction
    assert token["k1/loss"]["mc_mean"].abs().max() > 0  # but noisy
    # one token: d k2 / d log pi = log(pi/ref) = k1, so k2 in the loss is k1 in the reward sample by sample
    assert torch.equal(token["k1/reward"]["mc_mean"], token["k2/loss"]["mc_mean"])
    sequence = kl_lab_state(n=8, level="sequence")["configs"]
    assert sequence["k1/reward"]["bias"] < 1e-12 and sequence["k2/loss"]["bias"] > 1e-3  # biased for sequences
    # the standard error shrinks like 1 / sqrt(N)
    small, large = (kl_lab_state(n=n, seed=3)["configs"]["k1/reward"]["mc_stderr"].norm() for n in (400, 6400))
    assert small / large == pytest.approx(4.0, rel=0.15)


@pytest.mark.parametrize("level", LEVELS)
def test_same_policy_gives_zero_true_gradients(level):
    pi, ref = lab_policies(0.0, 1.0, 4, level)
    assert torch.equal(pi.logits, ref.logits)
    s = kl_lab_state(shift=0.0, temperature=1.0, n=16, level=level)
    assert s["kl_reverse"] == pytest.approx(0.0, abs=1e-12) and s["grad_reverse"].abs().max() < 1e-12
    assert s["grad_forward"].abs().max() < 1e-12


def test_categorical_level_is_lab_logits():
    pi, ref = lab_policies(0.4, 1.7, 6, "token")
    logits, ref_logits = lab_logits(0.4, 1.7, 6)
    assert torch.equal(pi.logits[0], logits) and torch.equal(ref.logits[0], ref_logits)


def test_bad_settings_are_rejected():
    for kwargs, name in [(dict(n=1), "n"), (dict(temperature=0.0), "temperature"), (dict(num_outcomes=1), "num_outcomes"),
                         (dict(shift=math.nan), "shift"), (dict(level="word"), "level")]:
        with pytest.raises(ValueError, match=name):
            kl_lab_state(**kwargs)
    pi, ref = lab_policies()
    with pytest.raises(ValueError, match="estimator"):
        sequence_sample_gradients(pi, ref, pi.sequences(), "k4", "loss")
    with pytest.raises(ValueError, match="placement"):
        sequence_sample_gradients(pi, ref, pi.sequences(), "k1", "advantage")
    with pytest.raises(ValueError, match="view"):
        kl_lab_figure(kl_lab_state(n=4), view="k1")


class _Cells(HTMLParser):
    """{config: {column class: text}} and the viewed row, read back from the table's HTML."""

    def __init__(self):
        super().__init__()
        self.rows, self.viewed, self._row, self._cls = {}, [], None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-config" in attrs:
            self._row = attrs["data-config"]
            self.rows[self._row] = {}
            if attrs.get("data-viewed") == "true":
                self.viewed.append(self._row)
        elif tag == "td":
            self._cls = attrs.get("class")

    def handle_data(self, data):
        if self._row and self._cls:
            self.rows[self._row][self._cls] = data
            self._cls = None


def test_table_html_shows_the_state_numbers():
    s = kl_lab_state(shift=-0.7, n=50, seed=4, level="sequence")
    parser = _Cells()
    parser.feed(kl_lab_table_html(s, view="k3/reward"))
    assert set(parser.rows) == set(CONFIGS) and parser.viewed == ["k3/reward"]
    for name, cells in parser.rows.items():
        for key, _, fmt in TABLE_COLUMNS:
            value = s["configs"][name][key]
            assert cells[key] == ("zero" if math.isnan(value) else format(value, fmt))
    assert "zero" in kl_lab_table(s)  # k1 in the loss has no direction


def _find(widget, cls):
    """The widget carrying the CSS class `cls` inside the app's box tree."""
    if cls in getattr(widget, "_dom_classes", ()):
        return widget
    for child in getattr(widget, "children", ()):
        found = _find(child, cls)
        if found is not None:
            return found
    return None


def test_figure_builds_and_the_app_callback_redraws_the_table():
    fig = kl_lab_figure(kl_lab_state(n=32))
    assert len(fig.axes) == 7 and len(fig.axes[1].patches) == 5
    assert len(kl_lab_figure(kl_lab_state(n=32), view="k2/loss").axes) == 2
    app = kl_lab(n=16)
    table = _find(app, "rlbook-kl-lab-table")
    _find(app, "rlbook-kl-lab-shift").value = -1.5
    _find(app, "rlbook-kl-lab-N-samples").value = 200
    _find(app, "rlbook-kl-lab-view").value = "k1/loss"
    assert table.value == kl_lab_table_html(kl_lab_state(shift=-1.5, n=200), view="k1/loss")
