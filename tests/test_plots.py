import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rlbook import plots  # noqa: E402


def test_seed_band_draws_mean_and_range():
    fig, ax = plt.subplots()
    runs = [[0.0, 1.0, 2.0], [2.0, 1.0, 0.0], [1.0, 4.0, 1.0]]
    mean = plots.seed_band(ax, [0, 1, 2], runs)
    assert mean == pytest.approx([1.0, 2.0, 1.0])
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == 0.0 and band[:, 1].max() == 4.0       # min and max over seeds
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [1.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="runs"):
        plots.seed_band(ax, [0, 1], runs)
    plt.close(fig)
