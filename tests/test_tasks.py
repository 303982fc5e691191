import random

import pytest

from rlbook.lm import tiny_lm
from rlbook.tasks import (SENTIMENT_GRAMMAR, SentimentWorld, SortWorld, TargetSumWorld, make_world,
                          preference_pairs, unpaired_feedback)


def test_unknown_world_is_named():
    with pytest.raises(ValueError, match="sorting"):
        make_world("sorting")


@pytest.mark.parametrize("reward_type, completion, expected", [
    ("exact", "1 1 2 3 <eos>", 1.0),
    ("exact", "1 2 1 3 <eos>", 0.0),            # wrong order
    ("exact", "1 1 2 3", 0.0),                  # never finished
    ("exact", "1 1 2 <eos>", 0.0),              # too short
    ("exact", "1 1 2 3 3 <eos>", 0.0),          # too long
    ("exact", "1 1 2 : <eos>", 0.0),            # not a digit
    ("exact", "1 1 <eos> 2 3 <eos>", 0.0),      # EOS inside
    ("position", "1 2 1 3 <eos>", 0.5),
    ("position", "1 1 2 3 <eos>", 1.0),
    ("position", "1 1 2 <eos>", 0.0),
])
def test_sort_reward(reward_type, completion, expected):
    world = SortWorld(n_digits=4, reward_type=reward_type)
    assert world.reward(["sort", "3", "1", "2", "1", ":"], completion.split()) == expected


def test_sort_answers_are_sorted_and_score_one():
    world = SortWorld(n_digits=5)
    for prompt, answer in world.sft_examples(50):
        assert answer == sorted(prompt[1:-1])
        assert world.reward(prompt, answer + ["<eos>"]) == 1.0


@pytest.mark.parametrize("completion, expected", [
    ("3 0 9 0 <eos>", 1.0), ("9 3 0 0 <eos>", 1.0), ("3 0 9 1 <eos>", 0.0),
    ("3 0 9 <eos>", 0.0), ("12 0 0 0 <eos>", 0.0), ("3 0 9 0", 0.0)])
def test_target_sum_reward(completion, expected):
    assert TargetSumWorld(n_digits=4).reward(["sum", "12", ":"], completion.split()) == expected


def test_target_sum_answers_hit_the_target_and_vary():
    world = TargetSumWorld(n_digits=4)
    rng = random.Random(0)
    answers = {tuple(world.answer(["sum", "12", ":"], rng)) for _ in range(50)}
    assert len(answers) > 10  # many correct answers
    assert all(sum(map(int, a)) == 12 for a in answers)


@pytest.mark.parametrize("prompt, completion, expected", [
    ("the sky is", "blue <eos>", 1.0),
    ("the sky is", "very blue <eos>", 2.0),
    ("the sky was", "grey and very dark <eos>", -3.0),
    ("the food was", "very tasty and very fresh <eos>", 4.0),
    ("the staff were", "kind and rude <eos>", 0.0),
    ("the sky is", "tasty <eos>", -5.0),            # adjective does not fit the noun
    ("the sky is", "blue and blue <eos>", -5.0),    # repeated adjective
    ("the sky is", "blue and <eos>", -5.0),
    ("the sky is", "very <eos>", -5.0),
    ("the sky is", "blue", -5.0),                   # never finished
    ("the sky is", "blue and clear and bright <eos>", -5.0),
    ("the food was", "great great great <eos>", -5.0),
])
def test_sentiment_reward(prompt, completion, expected):
    assert SentimentWorld().reward(prompt.split(), completion.split()) == expected


def test_sentiment_sft_data_is_grammatical_and_contains_the_seed_example():
    world = SentimentWorld()
    examples = world.sft_examples(2000)
    assert all(world.is_grammatical(p, c + ["<eos>"]) for p, c in examples)
    assert (["the", "sky", "is"], ["blue"]) in [(p, c) for p, c in examples]
    assert len(world.vocab) == len(set(world.vocab))
    assert set(SENTIMENT_GRAMMAR) <= set(world.vocab)


def test_bad_prompts_are_rejected():
    with pytest.raises(ValueError, match="prompt"):
        SortWorld(3).reward(["sort", "1", ":"], ["1", "<eos>"])
    with pytest.raises(ValueError, match="prompt"):
        SentimentWorld().reward(["the", "sky", "were"], ["blue", "<eos>"])


def test_preference_pairs_prefer_the_higher_true_reward(trained_sentiment):
    world, tok, model = trained_sentiment
    pairs = preference_pairs(world, model, tok, n_prompts=32, samples_per_prompt=4, seed=0)
    assert len(pairs) > 0
    assert (pairs.chosen_reward > pairs.rejected_reward).all()
    # rewards recomputed from the text agree with the stored ones
    assert world.score(pairs.chosen, tok).tolist() == pairs.chosen_reward.tolist()
    assert pairs.chosen.prompts(tok) == pairs.rejected.prompts(tok)


def test_unpaired_feedback_labels_follow_the_threshold(trained_sentiment):
    world, tok, model = trained_sentiment
    fb = unpaired_feedback(world, model, tok, n=64, threshold=0.0, seed=0)
    assert 0 < fb.desirable.sum() < 64
    assert fb.desirable.tolist() == [r > 0.0 for r in world.score(fb.batch, tok).tolist()]


def test_grammatical_completions_are_exactly_the_grammatical_sentences_by_brute_force():
    import itertools

    world = SentimentWorld()
    prompt = ["the", "staff", "were"]
    listed = world.grammatical_completions(prompt)
    assert len(listed) == len({tuple(c) for c in listed}) == 132
    # every word sequence of up to 5 words over the prompt's adjectives, 'very', 'and' and one
    # foreign adjective; a grammatical one is at most 5 words before <eos>
    words = ["very", "and", "blue", *SENTIMENT_GRAMMAR["staff"][1]]
    brute = {seq for n in range(1, 6) for seq in itertools.product(words, repeat=n)
             if world.is_grammatical(prompt, [*seq, "<eos>"])}
    assert brute == {tuple(c) for c in listed}


def test_all_prompts_are_the_ones_sample_prompt_draws():
    world = SentimentWorld()
    every = {tuple(p) for p in world.all_prompts()}
    assert len(every) == len(world.all_prompts()) == 16
    drawn = {tuple(p) for p in world.prompts(2000, seed=0)}
    assert drawn == every
