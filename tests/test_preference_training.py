import copy

import pytest
import torch

from rlbook.dpo import dpo_loss
from rlbook.lm import frozen_copy, make_batch
from rlbook.preference import ipo_loss, simpo_loss
from rlbook.tasks import pairs_from_groups, pairs_from_text
from rlbook.train import (PreferenceConfig, evaluate, iterative_dpo, pair_logprobs, preference_train,
                          sequence_logprobs)


@pytest.fixture
def setting(sentiment):
    world, tok, model = sentiment
    policy = copy.deepcopy(model)
    for p in policy.parameters():
        p.requires_grad_(True)
    triples = [(["the", "sky", "is"], ["blue"], ["grey", "and", "very", "dark"]),
               (["the", "food", "was"], ["very", "tasty", "and", "fresh"], ["bland"]),
               (["the", "staff", "are"], ["kind"], ["rude", "and", "rude"])]
    return world, tok, policy, frozen_copy(model), pairs_from_text(tok, world, triples)


def test_pairs_from_groups_against_a_loop(sentiment):
    world, tok, _ = sentiment
    prompts = [["the", "sky", "is"]] * 3 + [["the", "food", "was"]] * 3 + [["the", "staff", "are"]] * 3
    batch = make_batch(tok, prompts, [["blue"]] * 9)
    scores = torch.tensor([0.0, 2.0, -1.0, 5.0, 5.0, 5.0, -3.0, 1.0, 4.0])
    true = torch.arange(9.0)
    pairs = pairs_from_groups(batch, scores, 3, true)
    expect = []
    for g in range(3):
        group = scores[3 * g:3 * g + 3].tolist()
        if max(group) > min(group):
            expect.append((3 * g + group.index(max(group)), 3 * g + group.index(min(group))))
    assert pairs.chosen_reward.tolist() == [float(w) for w, _ in expect]
    assert pairs.rejected_reward.tolist() == [float(l) for _, l in expect]
    with pytest.raises(ValueError, match="group_size"):
        pairs_from_groups(batch, scores, 4)


def test_sequence_logprobs_sum_the_tokens_one_row_at_a_time(setting):
    _, _, policy, _, pairs = setting
    together = sequence_logprobs(policy, pairs.rejected)
    for i in range(len(pairs)):
        alone = sequence_logprobs(policy, pairs.rejected.index([i]))  # no padding at all
        assert together[i].item() == pytest.approx(alone.item(), abs=1e-5)


def test_first_step_loss_is_dpo_on_separately_scored_batches(setting):
    _, _, policy, ref, pairs = setting
    cw, cl = pair_logprobs(policy, pairs)
    rw, rl = pair_logprobs(ref, pairs)
    rows = torch.randint(len(pairs), (6,), generator=torch.Generator().manual_seed(5)).tolist()
    expect = dpo_loss(cw[rows], cl[rows], rw[rows], rl[rows], beta=0.3)
    history = preference_train(copy.deepcopy(policy), pairs, ref, PreferenceConfig(steps=1, batch_size=6, beta=0.3, seed=5),
                               progress=False)
    assert history["loss"][0] == pytest.approx(expect.item(), abs=1e-5)
    assert history["chosen_logp"][0] == pytest.approx(cw[rows].mean().item(), abs=1e-5)
    # the NLL term is the per-token mean over the minibatch's chosen answers
    h2 = preference_train(copy.deepcopy(policy), pairs, ref,
                          PreferenceConfig(steps=1, batch_size=6, beta=0.3, seed=5, nll_weight=2.0), progress=False)
    per_token = -sum(cw[i].item() for i in rows) / sum(pairs.chosen.lengths[i].item() for i in rows)
    assert h2["nll"][0] == pytest.approx(per_token, abs=1e-5)
    assert h2["loss"][0] == pytest.approx(expect.item() + 2.0 * per_token, abs=1e-5)


def test_training_raises_the_margin_and_takes_other_losses(setting):
    _, _, policy, ref, pairs = setting
    h = preference_train(policy, pairs, ref, PreferenceConfig(steps=30, batch_size=3, lr=3e-3, beta=0.5), progress=False)
    assert h["margin"][-1] > h["margin"][0] + 1.0 and h["accuracy"][-1] == 1.0
    preference_train(copy.deepcopy(policy), pairs, ref, PreferenceConfig(steps=2),
                     loss_fn=lambda *x: ipo_loss(*x, beta=0.5), progress=False)
    h = preference_train(copy.deepcopy(policy), pairs, None, PreferenceConfig(steps=2), with_lengths=True,
                         loss_fn=lambda cw, cl, rw, rl, lw, ll: simpo_loss(cw, cl, lw, ll), progress=False)
    assert len(h["loss"]) == 2
    with pytest.raises(ValueError, match="nll_weight"):
        preference_train(policy, pairs, ref, PreferenceConfig(nll_weight=-1.0), progress=False)


def test_iterative_dpo_labels_with_the_true_or_a_learned_reward(trained_sentiment):
    world, tok, model = trained_sentiment
    policy = copy.deepcopy(model)
    for p in policy.parameters():
        p.requires_grad_(True)
    cfg = PreferenceConfig(steps=2, batch_size=4)
    history, rounds = iterative_dpo(policy, tok, world, 2, 8, 3, config=cfg, progress=False)
    assert len(history["true_reward"]) == 2 and len(rounds) == 2 and min(history["pairs"]) > 0
    # label accuracy against the world's reward recomputed from the pairs' words
    for t, pairs in enumerate(rounds):
        chosen, rejected = world.score(pairs.chosen, tok), world.score(pairs.rejected, tok)
        assert history["label_accuracy"][t] == pytest.approx((chosen > rejected).float().mean().item())
    # a "reward model" that prefers short answers: the labels follow it, not the true reward
    history, rounds = iterative_dpo(policy, tok, world, 1, 8, 3, config=cfg, progress=False,
                                    reward_fn=lambda b: -b.lengths.float())
    assert (rounds[0].chosen.lengths <= rounds[0].rejected.lengths).all()


def test_evaluate_is_seeded_and_leaves_the_random_stream_alone(sentiment):
    world, tok, model = sentiment
    torch.manual_seed(1)
    a = evaluate(model, tok, world, n_prompts=16, threshold=0.0)
    after = torch.rand(1)
    torch.manual_seed(1)
    b = evaluate(model, tok, world, n_prompts=16, threshold=0.0)
    assert a == b and torch.equal(after, torch.rand(1))
    assert 0.0 <= a["accuracy"] <= 1.0


def test_reward_and_kl_is_zero_at_the_reference_and_its_two_estimates_agree(sentiment, trained_sentiment):
    from rlbook.train import reward_and_kl

    world, tok, untrained = sentiment
    _, _, trained = trained_sentiment
    at_ref = reward_and_kl(trained, trained, tok, world, n_prompts=64)
    assert at_ref["kl"] == 0.0 and at_ref["k1"] == 0.0 and at_ref["kl_se"] == 0.0
    # the same fixed prompts and samples as `evaluate`
    assert at_ref["reward"] == pytest.approx(evaluate(trained, tok, world, n_prompts=64)["reward"], abs=1e-6)
    away = reward_and_kl(trained, untrained, tok, world, n_prompts=256)
    assert away["kl"] > 0 and away["kl_se"] > 0 and away["reward_se"] > 0
    # both estimate KL(pi || pi_ref) without bias: they must agree within their standard errors
    assert abs(away["kl"] - away["k1"]) < 4 * (away["kl_se"] ** 2 + away["k1_se"] ** 2) ** 0.5
    with pytest.raises(ValueError, match="n_prompts"):
        reward_and_kl(trained, untrained, tok, world, n_prompts=1)
