"""Fast paths against the plain loops they replaced: the same tensors, bit for bit."""

import random

import torch

from rlbook.lm import BOS, _pad, make_batch, sample, tiny_lm
from rlbook.tasks import SortWorld
from rlbook.train import sft, sft_loss


def _pad_loop(rows, value, left):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, cols] = torch.tensor(r, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def _same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def test_pad_equals_the_row_loop():
    rng = random.Random(0)
    rows = [[rng.randrange(3, 50) for _ in range(rng.randrange(1, 9))] for _ in range(40)]
    for left in (True, False):
        for got, want in zip(_pad(rows, 0, left), _pad_loop(rows, 0, left)):
            _same(got, want)


def test_prompts_and_completions_equal_the_row_loop(sentiment):
    world, tok, model = sentiment
    torch.manual_seed(3)
    batch = sample(model, tok, world.prompts(64, seed=2), max_new_tokens=6)
    assert 0 < batch.completion_mask.sum() < batch.completion_mask.numel()  # some rows padded
    prompts = [[w for w in tok.convert_ids_to_tokens(row[m.bool()].tolist()) if w != BOS]
               for row, m in zip(batch.prompt_ids, batch.prompt_mask)]
    completions = [tok.convert_ids_to_tokens(row[m.bool()].tolist())
                   for row, m in zip(batch.completion_ids, batch.completion_mask)]
    assert batch.prompts(tok) == prompts
    assert batch.completions(tok) == completions


def test_compact_rows_of_a_big_batch_equal_make_batch_of_those_rows():
    world = SortWorld(n_digits=3)
    tok = world.tokenizer()
    rng = random.Random(1)
    # prompts of different lengths and completions of different lengths, so padding varies
    examples = [(["sort", *rng.choices("0123456789", k=3), ":"], rng.choices("0123456789", k=rng.randrange(1, 6)))
                for _ in range(50)]
    examples += [(["sort"], ["1"]), ([":"], ["2", "3"])]
    data = make_batch(tok, [p for p, _ in examples], [c for _, c in examples])
    for rows in ([50, 51], [0, 0, 7], list(range(52)), [51]):
        want = make_batch(tok, [examples[i][0] for i in rows], [examples[i][1] for i in rows])
        got = data.index(torch.tensor(rows)).compact()
        for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask"):
            _same(getattr(got, name), getattr(want, name))


def test_sft_equals_make_batch_every_step():
    world = SortWorld(n_digits=3)
    tok = world.tokenizer()
    examples = world.sft_examples(300, seed=4)
    fast = tiny_lm(tok, d_model=16, n_layer=1, n_head=2, n_positions=16, seed=0)
    slow = tiny_lm(tok, d_model=16, n_layer=1, n_head=2, n_positions=16, seed=0)
    history = sft(fast, tok, examples, steps=5, batch_size=16, seed=7, progress=False)
    # the loop sft ran before it pre-tokenised its examples
    rng = random.Random(7)
    torch.manual_seed(7)
    optimizer = torch.optim.AdamW(slow.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / 5)
    slow.train()
    losses = []
    for _ in range(5):
        chosen = [examples[rng.randrange(len(examples))] for _ in range(16)]
        loss = sft_loss(slow, make_batch(tok, [p for p, _ in chosen], [c for _, c in chosen]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    assert history["loss"] == losses
    for (name, a), b in zip(fast.state_dict().items(), slow.state_dict().values()):
        assert torch.equal(a, b), name
