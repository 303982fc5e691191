import pytest
import torch

from rlbook.lm import (Batch, completion_logprobs, concat_batches, context_length, frozen_copy, trainable_copy,
                       make_batch, next_token_distribution, sample, word_tokenizer)


def test_tokenizer_round_trip_and_special_ids(sentiment):
    _, tok, _ = sentiment
    text = "the sky is very blue and clear"
    ids = tok(text).input_ids
    assert tok.decode(ids) == text
    assert tok.convert_ids_to_tokens(ids) == text.split()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert len(tok) == len(set(tok.get_vocab()))


def test_tokenizer_rejects_bad_words():
    with pytest.raises(ValueError, match="words"):
        word_tokenizer(["ok", "<eos>"])
    with pytest.raises(ValueError, match="words"):
        word_tokenizer(["two words"])


def test_unknown_prompt_word_is_named(sentiment):
    world, tok, model = sentiment
    with pytest.raises(ValueError, match="purple"):
        sample(model, tok, ["the sky is purple"], max_new_tokens=2)
    with pytest.raises(ValueError, match="empty"):
        sample(model, tok, [], max_new_tokens=2)


def test_max_new_tokens_beyond_context_is_rejected(sentiment):
    _, tok, model = sentiment
    room = context_length(model) - 4  # <bos> the sky is
    sample(model, tok, ["the sky is"], max_new_tokens=room)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sample(model, tok, ["the sky is"], max_new_tokens=room + 1)


def test_logprobs_equal_manual_log_softmax_gather_on_unpadded_logits(sentiment):
    """Each row scored alone, without any padding, by a plain forward pass."""
    _, tok, model = sentiment
    prompts = ["the sky is", "the staff were", "the food was"]
    completions = ["blue", "very kind and friendly", "bland and cold"]
    batch = make_batch(tok, prompts, completions)
    logp = completion_logprobs(model, batch)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids = [tok.bos_token_id] + tok(p).input_ids + tok(c).input_ids + [tok.eos_token_id]
        logits = model(torch.tensor([ids])).logits[0]
        n_prompt = 1 + len(p.split())
        expected = [torch.log_softmax(logits[t - 1], -1)[ids[t]].item() for t in range(n_prompt, len(ids))]
        got = logp[i][batch.completion_mask[i].bool()].tolist()
        assert got == pytest.approx(expected, abs=1e-5)
        assert (logp[i][~batch.completion_mask[i].bool()] == 0).all()


def test_sampling_stops_at_eos_and_masks_what_follows(sentiment):
    world, tok, model = sentiment
    torch.manual_seed(3)
    batch = sample(model, tok, world.prompts(64, seed=1), max_new_tokens=8)
    assert batch.completion_ids.shape[1] <= 8
    for ids, mask in zip(batch.completion_ids.tolist(), batch.completion_mask.tolist()):
        n = sum(mask)
        assert mask == [1] * n + [0] * (len(mask) - n)  # contiguous from the start
        assert tok.eos_token_id not in ids[: n - 1]  # no EOS before the last kept token
        if n < len(ids):
            assert ids[n - 1] == tok.eos_token_id  # cut exactly after EOS
            assert all(i == tok.pad_token_id for i in ids[n:])
    # an untrained model rarely stops: some rows must be unfinished and hit the cap
    assert (batch.completion_mask.sum(1) == batch.completion_ids.shape[1]).any()


def test_sampling_draws_from_the_model_distribution(sentiment):
    """The empirical first-token frequencies match pi(.|s) read off the logits."""
    _, tok, model = sentiment
    torch.manual_seed(0)
    n = 4000
    batch = sample(model, tok, ["the sky is"] * n, max_new_tokens=1)
    counts = torch.bincount(batch.completion_ids[:, 0], minlength=len(tok)).float() / n
    dist = next_token_distribution(model, tok, "the sky is")
    probs = torch.tensor([dist[w] for w in tok.convert_ids_to_tokens(list(range(len(tok))))])
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)
    # 5 standard errors on every token
    assert ((counts - probs).abs() <= 5 * (probs * (1 - probs) / n).sqrt() + 1e-3).all()


def test_sampled_batches_score_like_teacher_forced_ones(sentiment):
    """Left padding must not change log-probs: a sampled row equals the same text re-encoded alone."""
    world, tok, model = sentiment
    torch.manual_seed(1)
    batch = sample(model, tok, ["the sky is", "the staff were", "the food was"], max_new_tokens=5)
    logp = completion_logprobs(model, batch)
    for i in range(len(batch)):
        one = batch.index([i])
        prompt = one.prompts(tok)[0]
        words = one.completions(tok)[0]
        finished = words[-1] == "<eos>"
        alone = make_batch(tok, [prompt], [words[:-1] if finished else words], add_eos=finished)
        expected = completion_logprobs(model, alone)[0]
        assert torch.allclose(logp[i][: expected.shape[0]], expected, atol=1e-5)


def test_frozen_and_trainable_copies_are_equal_and_independent(sentiment):
    _, tok, model = sentiment
    ref = frozen_copy(model)
    policy = trainable_copy(ref)  # from a frozen model too
    assert not any(p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad and p.grad is None for p in policy.parameters()) and not policy.training
    batch = make_batch(tok, ["the sky is"], ["blue"])
    original = completion_logprobs(model, batch)
    assert torch.equal(original, completion_logprobs(ref, batch))
    assert torch.equal(original, completion_logprobs(policy, batch).detach())
    with torch.no_grad():
        next(policy.parameters()).add_(1.0)  # a copy's change reaches neither the original nor the other copy
    assert not torch.equal(completion_logprobs(policy, batch).detach(), original)
    assert torch.equal(completion_logprobs(model, batch), original)
    assert torch.equal(completion_logprobs(ref, batch), original)


def test_concat_batches_repads(sentiment):
    _, tok, _ = sentiment
    a = make_batch(tok, ["the sky is"], ["blue"])
    b = make_batch(tok, ["the staff were"], ["very kind and friendly"])
    c = concat_batches([a, b], tok.pad_token_id)
    assert isinstance(c, Batch) and len(c) == 2
    assert c.prompts(tok) == [["the", "sky", "is"], ["the", "staff", "were"]]
    assert c.completions(tok) == [["blue", "<eos>"], ["very", "kind", "and", "friendly", "<eos>"]]


def test_make_batch_rejects_mismatched_lengths(sentiment):
    _, tok, _ = sentiment
    with pytest.raises(ValueError, match="completions"):
        make_batch(tok, ["the sky is"], ["blue", "grey"])
