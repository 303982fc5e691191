import pytest
import torch

from rlbook.masked import masked_mean, masked_sum, masked_var, masked_whiten


def brute_force(x, mask):
    return [v for row, mrow in zip(x.tolist(), mask.tolist()) for v, m in zip(row, mrow) if m]


def test_masked_sum_and_mean_match_a_plain_loop():
    x = torch.randn(4, 7)
    mask = (torch.rand(4, 7) > 0.4).long()
    mask[0] = 0  # an all-masked row
    kept = brute_force(x, mask)
    assert masked_sum(x, mask).item() == pytest.approx(sum(kept), abs=1e-5)
    assert masked_mean(x, mask).item() == pytest.approx(sum(kept) / len(kept), abs=1e-5)
    rows = masked_mean(x, mask, dim=1)
    assert rows[0].item() == 0.0  # empty row: 0, not NaN
    for i in range(1, 4):
        vals = [v for v, m in zip(x[i].tolist(), mask[i].tolist()) if m]
        expected = sum(vals) / len(vals) if vals else 0.0
        assert rows[i].item() == pytest.approx(expected, abs=1e-5)


def test_masked_entries_never_leak_even_if_infinite():
    x = torch.tensor([[1.0, float("inf")], [2.0, float("nan")]])
    mask = torch.tensor([[True, False], [True, False]])
    assert masked_mean(x, mask).item() == 1.5


def test_masked_var_and_whiten_against_torch_on_the_kept_entries():
    x = torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 1], [0, 0, 1, 1, 0]])
    kept = torch.tensor(brute_force(x, mask))
    assert masked_var(x, mask).item() == pytest.approx(kept.var().item(), rel=1e-5)
    w = masked_whiten(x, mask)
    assert torch.allclose(torch.tensor(brute_force(w, mask)), (kept - kept.mean()) / kept.std(), atol=1e-4)
    assert (w[mask == 0] == 0).all()


def test_mask_of_the_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match="mask"):
        masked_mean(torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="mask"):
        masked_mean(torch.zeros(2, 3), torch.full((2, 3), 0.5))
