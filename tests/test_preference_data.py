"""Chapter 10's data (noisy pairs, mismatched pairs, unpaired feedback) and KTO's loop,
checked against lists written out by hand and against separately scored batches."""

import pytest
import torch

from rlbook.lm import make_batch
from rlbook.preference import kto_loss
from rlbook.tasks import (balanced_feedback, length_balanced_pairs, mismatched_batch, noisy_pairs,
                          pairs_from_text, unpaired_from_pairs)
from rlbook.train import KTOConfig, kto_train, sequence_logprobs

TRIPLES = [(["the", "sky", "is"], ["blue"], ["grey", "and", "very", "dark"]),
           (["the", "food", "was"], ["very", "tasty", "and", "fresh"], ["bland"]),
           (["the", "staff", "are"], ["kind"], ["rude", "and", "rude"]),
           (["the", "hotel", "is"], ["clean", "and", "quiet"], ["dirty"])]


def words(batch, tok):
    return [" ".join(c) for c in batch.completions(tok)]


def test_mismatched_batch_shifts_completions_by_one(sentiment):
    world, tok, _ = sentiment
    batch = make_batch(tok, [p for p, _, _ in TRIPLES], [c for _, c, _ in TRIPLES])
    shifted = mismatched_batch(batch)
    assert shifted.prompts(tok) == [p for p, _, _ in TRIPLES]
    # row i gets row i-1's completion, row 0 the last one (TRL: completions[-1:] + completions[:-1])
    assert words(shifted, tok) == ["clean and quiet <eos>", "blue <eos>", "very tasty and fresh <eos>", "kind <eos>"]
    with pytest.raises(ValueError, match="batch"):
        mismatched_batch(batch.index([0]))


def test_noisy_pairs_swap_exactly_the_flipped_pairs(sentiment):
    world, tok, _ = sentiment
    pairs = pairs_from_text(tok, world, TRIPLES * 50)
    same, flipped = noisy_pairs(pairs, 1.0, tok.pad_token_id)
    assert not flipped.any() and words(same.chosen, tok) == words(pairs.chosen, tok)
    swapped, flipped = noisy_pairs(pairs, 0.0, tok.pad_token_id)
    assert flipped.all() and words(swapped.chosen, tok) == words(pairs.rejected, tok)
    noisy, flipped = noisy_pairs(pairs, 0.7, tok.pad_token_id, seed=3)
    n = len(pairs)
    assert abs(flipped.float().mean().item() - 0.3) < 3 * (0.3 * 0.7 / n) ** 0.5  # binomial, 3 sigma
    chosen, rejected = words(pairs.chosen, tok), words(pairs.rejected, tok)
    for i, f in enumerate(flipped.tolist()):
        assert words(noisy.chosen.index([i]), tok) == [rejected[i] if f else chosen[i]]
    # the rewards travel with the answers: a flipped pair has its true reward the wrong way round
    assert torch.equal(noisy.chosen_reward < noisy.rejected_reward, flipped)
    assert torch.equal(noisy.chosen_reward, world.score(noisy.chosen, tok))
    for p in (1.5, float("nan")):
        with pytest.raises(ValueError, match="p must"):
            noisy_pairs(pairs, p, tok.pad_token_id)


def test_unpaired_and_length_balanced_pairs(sentiment):
    world, tok, _ = sentiment
    pairs = pairs_from_text(tok, world, TRIPLES)
    feedback = unpaired_from_pairs(pairs, tok.pad_token_id)
    assert feedback.desirable.tolist() == [True] * 4 + [False] * 4
    assert words(feedback.batch, tok) == words(pairs.chosen, tok) + words(pairs.rejected, tok)
    balanced = length_balanced_pairs(pairs)
    # chosen longer in pairs 1 and 3, shorter in 0 and 2 (hand count): all four kept
    longer = (balanced.chosen.lengths > balanced.rejected.lengths).tolist()
    assert len(balanced) == 4 and sum(longer) == 2
    skewed = length_balanced_pairs(pairs_from_text(tok, world, [TRIPLES[0], TRIPLES[1], TRIPLES[3]]))
    assert len(skewed) == 2 and sorted((skewed.chosen.lengths > skewed.rejected.lengths).tolist()) == [False, True]


def test_balanced_feedback_has_the_asked_counts(trained_sentiment):
    world, tok, model = trained_sentiment
    data = balanced_feedback(world, model, tok, 3, 9, threshold=0.5, seed=1, pool=200)
    assert int(data.desirable.sum()) == 3 and int((~data.desirable).sum()) == 9
    # labels against the world's reward recomputed from the words
    rewards = world.rewards(data.batch.prompts(tok), data.batch.completions(tok))
    assert torch.equal(data.desirable, rewards > 0.5)
    with pytest.raises(ValueError, match="pool"):
        balanced_feedback(world, model, tok, 500, 1, threshold=0.5, pool=20)


def test_kto_train_first_step_against_hand_built_mismatched_pairs(sentiment):
    world, tok, model = sentiment
    policy = type(model)(model.config)
    policy.load_state_dict(model.state_dict())
    ref = type(model)(model.config)
    ref.load_state_dict(model.state_dict())
    torch.manual_seed(0)
    with torch.no_grad():  # make the policy differ from the reference
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    feedback = unpaired_from_pairs(pairs_from_text(tok, world, TRIPLES), tok.pad_token_id)
    cfg = KTOConfig(steps=1, batch_size=5, beta=0.7, lambda_d=1.5, lambda_u=0.5, seed=4)
    rows = torch.randint(8, (5,), generator=torch.Generator().manual_seed(4)).tolist()
    prompts, completions = feedback.batch.prompts(tok), feedback.batch.completions(tok)
    sub = make_batch(tok, [prompts[i] for i in rows], [completions[i][:-1] for i in rows])
    shifted = [rows[-1]] + rows[:-1]
    mismatched = make_batch(tok, [prompts[i] for i in rows], [completions[j][:-1] for j in shifted])
    policy.eval()
    with torch.no_grad():
        z0 = max((sequence_logprobs(policy, mismatched) - sequence_logprobs(ref, mismatched)).mean().item(), 0.0)
        expect = kto_loss(sequence_logprobs(policy, sub), sequence_logprobs(ref, sub), feedback.desirable[rows],
                          0.7, 1.5, 0.5, z0=z0)
    assert z0 > 0.01  # not clamped: the check compares a real mean
    history = kto_train(policy, feedback, ref, cfg, progress=False)
    assert history["z0"][0] == pytest.approx(z0, abs=1e-6)
    assert history["loss"][0] == pytest.approx(expect.item(), abs=1e-6)
    assert history["desirable"][0] == pytest.approx(feedback.desirable[rows].float().mean().item())
    with pytest.raises(ValueError, match="batch_size"):
        kto_train(policy, feedback, ref, KTOConfig(batch_size=1), progress=False)
