"""rlbook's SimPO against TRL's own loss code, where the formulas coincide. Skipped without TRL
(not a dependency of rlbook; the benchmark extra installs it)."""

from types import SimpleNamespace

import pytest
import torch

from rlbook.preference import simpo_loss

trl_cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")


def test_simpo_equals_trl_cpo_with_loss_type_simpo():
    """CPOTrainer(loss_type="simpo", cpo_alpha=0) takes averaged log-probs log pi(y)/|y|; its
    simpo_gamma is SimPO's gamma, beta multiplies (logits - gamma/beta)."""
    g = torch.Generator().manual_seed(0)
    cw, cl = -10 * torch.rand(8, generator=g, dtype=torch.float64), -10 * torch.rand(8, generator=g, dtype=torch.float64)
    lw, ll = torch.randint(1, 7, (8,), generator=g).double(), torch.randint(1, 7, (8,), generator=g).double()
    trainer = SimpleNamespace(alpha=0.0, beta=2.0, simpo_gamma=0.5, loss_type="simpo", label_smoothing=0.0,
                              accelerator=SimpleNamespace(device="cpu"))
    trl_losses, _, _ = trl_cpo.CPOTrainer.cpo_loss(trainer, cw / lw, cl / ll)
    ours = simpo_loss(cw, cl, lw, ll, beta=2.0, gamma=0.5, reduction="none")
    assert torch.allclose(ours, trl_losses, atol=1e-12)
