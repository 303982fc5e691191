import math

import pytest
import torch

from rlbook.lm import make_batch
from rlbook.tasks import preference_pairs
from rlbook.train import fit_critic, train_reward_model
from rlbook.value import (bradley_terry_loss, critic_model, explained_variance, preference_accuracy, reward_model,
                          reward_scores, value_loss, values)

PROMPTS = ["the sky is", "the staff were", "the food was"]
COMPLETIONS = ["blue", "very kind and friendly", "bland and cold"]


def _ids(tok, prompt, completion):
    return [tok.bos_token_id] + tok(prompt).input_ids + tok(completion).input_ids + [tok.eos_token_id]


# ---------------------------------------------------------------- critic

def test_critic_starts_at_zero_and_owns_a_copy_of_the_trunk(sentiment):
    _, tok, model = sentiment
    critic = critic_model(model)
    batch = make_batch(tok, PROMPTS, COMPLETIONS)
    assert values(critic, batch).abs().max().item() == 0.0
    assert values(critic, batch).shape == batch.completion_mask.shape
    for p in critic.base_model.parameters():
        p.data.add_(1.0)
    assert not torch.equal(next(critic.base_model.parameters()), next(model.base_model.parameters()))


def test_values_are_the_states_before_each_token_whatever_the_padding(sentiment):
    """V(s_t) from the batch equals the critic run on the unpadded prefix prompt + a_<t alone."""
    _, tok, model = sentiment
    critic = critic_model(model)
    torch.nn.init.normal_(critic.classifier.weight, std=1.0)  # a non-zero head, so positions differ
    batch = make_batch(tok, PROMPTS, COMPLETIONS)
    v = values(critic, batch)
    for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS)):
        ids = _ids(tok, p, c)
        n_prompt = 1 + len(p.split())
        expected = [critic(torch.tensor([ids[:t]])).logits[0, -1, 0].item() for t in range(n_prompt, len(ids))]
        m = batch.completion_mask[i].bool()
        assert v[i][m].tolist() == pytest.approx(expected, abs=1e-5)
        assert (v[i][~m] == 0).all()


def test_value_loss_against_the_formula_token_by_token():
    g = torch.Generator().manual_seed(0)
    v, old, ret = (torch.randn(3, 5, generator=g) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    eps = 0.3
    got = value_loss(v, old, ret, mask, clip_eps=eps, reduction="none")
    total, n = 0.0, 0
    for b in range(3):
        for t in range(5):
            if not mask[b, t]:
                assert got[b, t] == 0
                continue
            vc = min(max(v[b, t].item(), old[b, t].item() - eps), old[b, t].item() + eps)
            expected = 0.5 * max((v[b, t].item() - ret[b, t].item()) ** 2, (vc - ret[b, t].item()) ** 2)
            assert got[b, t].item() == pytest.approx(expected, abs=1e-6)
            total, n = total + expected, n + 1
    assert value_loss(v, old, ret, mask, clip_eps=eps).item() == pytest.approx(total / n, abs=1e-6)
    plain = value_loss(v, old, ret, mask, clip_eps=None)
    assert plain.item() == pytest.approx((0.5 * (v - ret) ** 2)[mask.bool()].mean().item(), abs=1e-6)


def test_value_loss_gradient_vanishes_only_when_the_clipped_value_is_worse():
    # V moved +1 from V_old = 0, beyond eps = 0.2; the target R decides which branch the max takes
    v = torch.tensor([1.0, 1.0], requires_grad=True)
    old = torch.zeros(2)
    ret = torch.tensor([2.0, -1.0])  # R = 2: the clipped value (0.2) is further -> clipped branch, no gradient
    value_loss(v, old, ret, clip_eps=0.2, reduction="sum").backward()
    assert v.grad[0].item() == 0.0
    assert v.grad[1].item() == pytest.approx(2.0)  # R = -1: unclipped (V - R) = 2 is the max


def test_value_loss_rejects_bad_input():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="returns"):
        value_loss(x, x, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="mask"):
        value_loss(x, x, x, mask=torch.ones(3, 2))
    with pytest.raises(ValueError, match="clip_eps"):
        value_loss(x, x, x, clip_eps=0.0)
    with pytest.raises(ValueError, match="values"):
        value_loss(torch.full((2, 3), float("nan")), x, x)
    with pytest.raises(ValueError, match="reduction"):
        value_loss(x, x, x, reduction="avg")


def test_explained_variance_limits():
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert explained_variance(r, r) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(r, 2.5), r) == pytest.approx(0.0, abs=1e-6)
    assert explained_variance(r.flip(1), r) < 0


def test_fit_critic_learns_a_constant_return(sentiment):
    _, tok, model = sentiment
    critic = critic_model(model)
    batch = make_batch(tok, PROMPTS, COMPLETIONS)
    returns = 1.5 * batch.completion_mask.float()
    history = fit_critic(critic, batch, returns, steps=60, batch_size=3, lr=1e-2, progress=False)
    assert history["loss"][-1] < 0.01 < history["loss"][0]
    v = values(critic, batch)[batch.completion_mask.bool()]
    assert v.tolist() == pytest.approx([1.5] * v.numel(), abs=0.15)


# ---------------------------------------------------------------- reward model

def test_reward_score_is_read_at_the_last_real_token(sentiment):
    """Independently: the head applied to the trunk's hidden state at the EOS of each row,
    computed on the row alone without any padding."""
    _, tok, model = sentiment
    rm = reward_model(model)
    batch = make_batch(tok, PROMPTS, COMPLETIONS)  # left-padded prompts, right-padded completions
    scores = reward_scores(rm, batch)
    for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS)):
        hidden = rm.base_model(torch.tensor([_ids(tok, p, c)])).last_hidden_state[0, -1]
        assert scores[i].item() == pytest.approx(rm.score(hidden).item(), abs=1e-5)
    # the same row in a batch with a longer completion (more right padding) scores the same
    wider = make_batch(tok, [PROMPTS[0], "the food was"], [COMPLETIONS[0], "very tasty and very fresh"])
    assert reward_scores(rm, wider)[0].item() == pytest.approx(scores[0].item(), abs=1e-5)


def test_reward_model_without_a_pad_id_fails_loudly(sentiment):
    _, tok, model = sentiment
    rm = reward_model(model)
    rm.config.pad_token_id = None
    with pytest.raises(ValueError, match="pad_token_id"):
        reward_scores(rm, make_batch(tok, PROMPTS, COMPLETIONS))


def test_bradley_terry_loss_closed_form_and_extremes():
    m = torch.tensor([-3.0, 0.0, 2.0], dtype=torch.float64)
    got = bradley_terry_loss(m, torch.zeros(3, dtype=torch.float64), reduction="none")
    expected = [math.log(1 + math.exp(-x)) for x in m.tolist()]
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    big = bradley_terry_loss(torch.tensor([1000.0, -1000.0]), torch.zeros(2), reduction="none")
    assert torch.isfinite(big).all() and big[0] == 0 and big[1].item() == pytest.approx(1000.0)
    with pytest.raises(ValueError, match="rejected_scores"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3))


def test_reward_model_learns_held_out_preferences(trained_sentiment):
    """Pairs ranked by the true reward from the model's own samples; accuracy on pairs of
    other prompts (a different seed) is counted by hand and must beat a coin clearly."""
    world, tok, model = trained_sentiment
    pairs = preference_pairs(world, model, tok, n_prompts=300, samples_per_prompt=4, seed=1)
    held = preference_pairs(world, model, tok, n_prompts=100, samples_per_prompt=4, seed=2)
    rm = reward_model(model)
    history = train_reward_model(rm, pairs, steps=60, batch_size=32, lr=3e-3, progress=False)
    assert sum(history["loss"][-10:]) < sum(history["loss"][:10])
    with torch.no_grad():
        manual = (reward_scores(rm, held.chosen) > reward_scores(rm, held.rejected)).float().mean().item()
    assert preference_accuracy(rm, held, batch_size=7) == pytest.approx(manual)
    assert manual > 0.65  # 0.76 measured on 51 pairs; a coin gives 0.5


def test_memory_bytes_counts_weights_grads_and_adam_moments():
    from rlbook.train import memory_bytes

    model = torch.nn.Linear(3, 4)  # 12 weights + 4 biases, float32
    assert memory_bytes(model) == {"weights": 16 * 4, "grads": 0, "optimizer": 0}
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()
    got = memory_bytes(model, optimizer)
    # two moments per parameter, plus a one-element step counter per parameter tensor
    step_bytes = sum(s["step"].numel() * s["step"].element_size() for s in optimizer.state.values())
    assert got == {"weights": 64, "grads": 64, "optimizer": 2 * 64 + step_bytes}
