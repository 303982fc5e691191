"""Toy worlds with verifiable rewards, and the preference data built from them.

A world knows its vocabulary, how to draw prompts, how to write a correct answer (SFT
data) and how to score any completion (the true reward). Completions are lists of words
as the tokenizer sees them, ending in '<eos>' when the model finished; a completion that
never finished, or breaks the format, is malformed and gets the world's lowest reward.

    >>> w = SortWorld(n_digits=3)
    >>> w.reward(["sort", "3", "1", "2", ":"], ["1", "2", "3", "<eos>"])
    1.0
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

import torch

from rlbook.lm import EOS, Batch, as_words, concat_batches, make_batch, sample, word_tokenizer

DIGITS = [str(d) for d in range(10)]


class World:
    """Base class: subclasses set `name` and implement the methods below."""

    name: str = "world"
    max_new_tokens: int = 8

    def spec(self) -> dict:
        """Everything that defines the world (used in cache keys)."""
        return {"name": self.name, **self.__dict__}

    @property
    def vocab(self) -> list[str]:
        raise NotImplementedError

    def tokenizer(self):
        return word_tokenizer(self.vocab)

    def sample_prompt(self, rng: random.Random) -> list[str]:
        raise NotImplementedError

    def answer(self, prompt: Sequence[str], rng: random.Random) -> list[str]:
        """A correct completion (without '<eos>') for SFT."""
        raise NotImplementedError

    def reward(self, prompt: Sequence[str], completion: Sequence[str]) -> float:
        raise NotImplementedError

    # -- shared helpers -------------------------------------------------------------

    def prompts(self, n: int, seed: int = 0) -> list[list[str]]:
        rng = random.Random(seed)
        return [self.sample_prompt(rng) for _ in range(n)]

    def sft_examples(self, n: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
        """n (prompt, correct completion) pairs."""
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            p = self.sample_prompt(rng)
            out.append((p, self.answer(p, rng)))
        return out

    def rewards(self, prompts: Sequence[Sequence[str]], completions: Sequence[Sequence[str]]) -> torch.Tensor:
        """The true reward of each (prompt, completion): a float tensor `[B]`."""
        if len(prompts) != len(completions):
            raise ValueError(f"completions has {len(completions)} items but prompts has {len(prompts)}")
        return torch.tensor([self.reward(p, c) for p, c in zip(prompts, completions)], dtype=torch.float32)

    def score(self, batch: Batch, tokenizer) -> torch.Tensor:
        """True rewards of a Batch of samples: `[B]`."""
        return self.rewards(batch.prompts(tokenizer), batch.completions(tokenizer))


def _finished(completion: Sequence[str]) -> list[str] | None:
    """The words before a single final '<eos>', or None if the completion is unfinished
    or has '<eos>' elsewhere."""
    if len(completion) == 0 or completion[-1] != EOS or EOS in completion[:-1]:
        return None
    return list(completion[:-1])


# ====================================================================== sorting

@dataclass
class SortWorld(World):
    """'sort 3 1 2 :' -> '1 2 3 <eos>'. One right answer per prompt.

    reward="exact":    1 if the answer is the sorted digits, else 0.
    reward="position": the fraction of positions holding the right digit (0 if malformed).
    """

    n_digits: int = 8
    reward_type: str = "exact"
    name: str = field(default="sort", init=False)

    def __post_init__(self):
        if self.n_digits < 1:
            raise ValueError(f"n_digits must be >= 1, got {self.n_digits}")
        if self.reward_type not in ("exact", "position"):
            raise ValueError(f"reward_type must be 'exact' or 'position', got {self.reward_type!r}")
        self.max_new_tokens = self.n_digits + 1

    @property
    def vocab(self) -> list[str]:
        return ["sort", ":", *DIGITS]

    def sample_prompt(self, rng):
        return ["sort", *(rng.choice(DIGITS) for _ in range(self.n_digits)), ":"]

    def digits_of(self, prompt: Sequence[str]) -> list[str]:
        if len(prompt) != self.n_digits + 2 or prompt[0] != "sort" or prompt[-1] != ":":
            raise ValueError(f"prompt is not a {self.n_digits}-digit sort prompt: {list(prompt)}")
        return list(prompt[1:-1])

    def answer(self, prompt, rng=None):
        return sorted(self.digits_of(prompt))

    def position_rewards(self, prompt, completion) -> list[float]:
        """Per-digit correctness (1/0) of a well-formed answer; None-like empty list if malformed.

        >>> SortWorld(3).position_rewards(["sort", "3", "1", "2", ":"], ["1", "3", "2", "<eos>"])
        [1.0, 0.0, 0.0]
        """
        target = self.answer(prompt)
        words = _finished(completion)
        if words is None or len(words) != self.n_digits or any(w not in DIGITS for w in words):
            return []
        return [float(a == b) for a, b in zip(words, target)]

    def reward(self, prompt, completion):
        per_position = self.position_rewards(prompt, completion)
        if not per_position:
            return 0.0
        if self.reward_type == "exact":
            return float(all(per_position))
        return sum(per_position) / self.n_digits


# ====================================================================== target sum

@dataclass
class TargetSumWorld(World):
    """'sum 12 :' -> any n digits adding up to 12, e.g. '3 0 9 0 <eos>'. Many right answers.

    reward: 1 if the digits sum to the target, else 0 (also 0 if malformed).
    """

    n_digits: int = 4
    name: str = field(default="target_sum", init=False)

    def __post_init__(self):
        if self.n_digits < 1:
            raise ValueError(f"n_digits must be >= 1, got {self.n_digits}")
        self.max_new_tokens = self.n_digits + 1

    @property
    def vocab(self) -> list[str]:
        return ["sum", ":", *(str(t) for t in range(9 * self.n_digits + 1))]

    def sample_prompt(self, rng):
        # targets drawn as the sum of random digits: the same spread as the SFT answers
        return ["sum", str(sum(rng.randrange(10) for _ in range(self.n_digits))), ":"]

    def target_of(self, prompt) -> int:
        if len(prompt) != 3 or prompt[0] != "sum" or prompt[2] != ":" or not prompt[1].isdigit():
            raise ValueError(f"prompt is not a target-sum prompt: {list(prompt)}")
        return int(prompt[1])

    def answer(self, prompt, rng):
        """A uniformly random digit string with the target sum (rejection sampling)."""
        target = self.target_of(prompt)
        if target > 9 * self.n_digits:
            raise ValueError(f"target {target} is out of reach for {self.n_digits} digits")
        while True:
            digits = [rng.randrange(10) for _ in range(self.n_digits)]
            if sum(digits) == target:
                return [str(d) for d in digits]

    def reward(self, prompt, completion):
        target = self.target_of(prompt)
        words = _finished(completion)
        if words is None or len(words) != self.n_digits or any(w not in DIGITS for w in words):
            return 0.0
        return float(sum(int(w) for w in words) == target)


# ====================================================================== sentiment grammar

# noun -> (verbs, {adjective: (polarity, weight in the SFT data)})
SENTIMENT_GRAMMAR: dict[str, tuple[tuple[str, ...], dict[str, tuple[int, float]]]] = {
    "sky": (("is", "was"), {"blue": (1, 6), "clear": (1, 2), "bright": (1, 1), "grey": (-1, 2), "dark": (-1, 1), "cloudy": (-1, 1)}),
    "food": (("is", "was"), {"great": (1, 3), "tasty": (1, 2), "fresh": (1, 1), "bland": (-1, 2), "cold": (-1, 1), "awful": (-1, 1)}),
    "movie": (("is", "was"), {"great": (1, 2), "fun": (1, 2), "moving": (1, 1), "boring": (-1, 2), "long": (-1, 1), "awful": (-1, 1)}),
    "weather": (("is", "was"), {"warm": (1, 2), "sunny": (1, 2), "mild": (1, 1), "cold": (-1, 2), "wet": (-1, 2), "awful": (-1, 1)}),
    "hotel": (("is", "was"), {"clean": (1, 2), "quiet": (1, 2), "cheap": (1, 1), "dirty": (-1, 2), "noisy": (-1, 2), "small": (-1, 1)}),
    "service": (("is", "was"), {"quick": (1, 2), "friendly": (1, 2), "great": (1, 1), "slow": (-1, 2), "rude": (-1, 2), "awful": (-1, 1)}),
    "staff": (("are", "were"), {"kind": (1, 2), "friendly": (1, 2), "helpful": (1, 1), "rude": (-1, 2), "slow": (-1, 2), "lazy": (-1, 1)}),
    "rooms": (("are", "were"), {"clean": (1, 2), "quiet": (1, 2), "large": (1, 1), "dirty": (-1, 2), "noisy": (-1, 2), "small": (-1, 1)}),
}


@dataclass
class SentimentWorld(World):
    """'the sky is' -> 'blue <eos>', 'the food was very tasty and fresh <eos>', ...

    A completion is  [very] ADJ [and [very] ADJ2] <eos>  with adjectives that fit the noun
    (the sky can be blue, not tasty) and ADJ2 != ADJ. The true reward of a grammatical
    answer is the sum of its adjectives' polarities (+1/-1), doubled by 'very', so it
    runs from -4 to +4; anything ungrammatical gets `ungrammatical_reward` (-5), below
    every sentence.

    >>> SentimentWorld().reward(["the", "sky", "is"], ["very", "blue", "<eos>"])
    2.0
    """

    p_very: float = 0.25
    p_and: float = 0.3
    ungrammatical_reward: float = -5.0
    name: str = field(default="sentiment", init=False)

    def __post_init__(self):
        self.max_new_tokens = 6  # very ADJ and very ADJ <eos>

    @property
    def vocab(self) -> list[str]:
        words = ["the", "very", "and"]
        for noun, (verbs, adjectives) in SENTIMENT_GRAMMAR.items():
            words += [noun, *verbs, *adjectives]
        return list(dict.fromkeys(words))

    def sample_prompt(self, rng):
        noun = rng.choice(list(SENTIMENT_GRAMMAR))
        return ["the", noun, rng.choice(SENTIMENT_GRAMMAR[noun][0])]

    def adjectives(self, prompt) -> dict[str, tuple[int, float]]:
        if len(prompt) != 3 or prompt[0] != "the" or prompt[1] not in SENTIMENT_GRAMMAR \
                or prompt[2] not in SENTIMENT_GRAMMAR[prompt[1]][0]:
            raise ValueError(f"prompt is not a sentiment prompt ('the NOUN VERB'): {list(prompt)}")
        return SENTIMENT_GRAMMAR[prompt[1]][1]

    def answer(self, prompt, rng):
        adjectives = self.adjectives(prompt)
        words, weights = list(adjectives), [w for _, w in adjectives.values()]
        first = rng.choices(words, weights)[0]
        out = (["very"] if rng.random() < self.p_very else []) + [first]
        if rng.random() < self.p_and:
            rest = [w for w in words if w != first]
            second = rng.choices(rest, [adjectives[w][1] for w in rest])[0]
            out += ["and", *(["very"] if rng.random() < self.p_very else []), second]
        return out

    def parse(self, prompt, completion) -> list[tuple[str, bool]] | None:
        """[(adjective, has_very), ...] of a grammatical completion, else None.

        >>> SentimentWorld().parse(["the", "sky", "is"], ["very", "blue", "and", "clear", "<eos>"])
        [('blue', True), ('clear', False)]
        """
        adjectives = self.adjectives(prompt)
        words = _finished(completion)
        if words is None:
            return None
        phrases, i = [], 0
        while True:
            very = i < len(words) and words[i] == "very"
            i += very
            if i >= len(words) or words[i] not in adjectives:
                return None
            phrases.append((words[i], very))
            i += 1
            if i == len(words):
                break
            if words[i] != "and" or len(phrases) == 2:
                return None
            i += 1
        if len(phrases) == 2 and phrases[0][0] == phrases[1][0]:
            return None
        return phrases

    def all_prompts(self) -> list[list[str]]:
        """Every prompt 'the NOUN VERB'; `sample_prompt` draws each with probability
        1/(8 nouns x 2 verbs), so their plain mean is the expectation over prompts."""
        return [["the", noun, verb] for noun, (verbs, _) in SENTIMENT_GRAMMAR.items() for verb in verbs]

    def grammatical_completions(self, prompt) -> list[list[str]]:
        """Every grammatical completion of `prompt` (without '<eos>'): 12 single phrases
        [very] ADJ and 120 pairs [very] ADJ and [very] ADJ2 with ADJ2 != ADJ. Every other
        completion, unfinished ones included, is ungrammatical and earns `ungrammatical_reward`.

        >>> len(SentimentWorld().grammatical_completions(["the", "sky", "is"]))
        132
        """
        adjectives = list(self.adjectives(prompt))
        phrases = [v + [a] for a in adjectives for v in ([], ["very"])]
        return phrases + [a + ["and"] + b for a in phrases for b in phrases if a[-1] != b[-1]]

    def is_grammatical(self, prompt, completion) -> bool:
        return self.parse(prompt, completion) is not None

    def reward(self, prompt, completion):
        phrases = self.parse(prompt, completion)
        if phrases is None:
            return self.ungrammatical_reward
        polarity = self.adjectives(prompt)
        return float(sum(polarity[a][0] * (2 if very else 1) for a, very in phrases))


WORLDS = {"sort": SortWorld, "target_sum": TargetSumWorld, "sentiment": SentimentWorld}


def make_world(name: str, **kwargs) -> World:
    """A world by name: 'sort', 'target_sum' or 'sentiment'."""
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; choose from {sorted(WORLDS)}")
    return WORLDS[name](**kwargs)


# ====================================================================== preference data

@dataclass
class PreferencePairs:
    """Paired preferences: for each prompt a chosen (y_w) and a rejected (y_l) completion."""

    chosen: Batch
    rejected: Batch
    chosen_reward: torch.Tensor
    rejected_reward: torch.Tensor

    def __len__(self) -> int:
        return len(self.chosen)

    def score(self, fn, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """(fn(chosen), fn(rejected)) over all pairs, `fn(Batch) -> [b]` applied in chunks of
        `batch_size` rows: two `[N]` tensors."""
        chosen, rejected = [], []
        for start in range(0, len(self), batch_size):
            rows = slice(start, start + batch_size)
            chosen.append(fn(self.chosen.index(rows)))
            rejected.append(fn(self.rejected.index(rows)))
        return torch.cat(chosen), torch.cat(rejected)


def sample_groups(world: World, model, tokenizer, n_prompts: int, group_size: int, seed: int = 0,
                  max_new_tokens: int | None = None, temperature: float = 1.0):
    """n_prompts prompts, each sampled group_size times (rows laid out group after group).
    Returns (Batch, true rewards [n_prompts * group_size])."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    prompts = [p for p in world.prompts(n_prompts, seed) for _ in range(group_size)]
    batch = sample(model, tokenizer, prompts, max_new_tokens or world.max_new_tokens, temperature=temperature)
    return batch, world.score(batch, tokenizer).to(batch.completion_ids.device)


def preference_pairs(world: World, model, tokenizer, n_prompts: int, samples_per_prompt: int = 4,
                     seed: int = 0, max_new_tokens: int | None = None) -> PreferencePairs:
    """Pairs from the model's own samples, ranked by the true reward: for each prompt the
    best sample is chosen and the worst rejected; prompts whose samples all tie are dropped."""
    if samples_per_prompt < 2:
        raise ValueError(f"samples_per_prompt must be >= 2, got {samples_per_prompt}")
    batch, r = sample_groups(world, model, tokenizer, n_prompts, samples_per_prompt, seed, max_new_tokens)
    return pairs_from_groups(batch, r, samples_per_prompt)


def pairs_from_text(tokenizer, world: World, triples: Sequence[tuple]) -> PreferencePairs:
    """PreferencePairs from (prompt, chosen, rejected) word lists (no '<eos>')."""
    prompts = [as_words(p) for p, _, _ in triples]
    chosen = make_batch(tokenizer, prompts, [c for _, c, _ in triples])
    rejected = make_batch(tokenizer, prompts, [r for _, _, r in triples])
    return PreferencePairs(chosen, rejected, world.score(chosen, tokenizer), world.score(rejected, tokenizer))


@dataclass
class UnpairedFeedback:
    """KTO-style data: single completions labelled desirable (True) or undesirable."""

    batch: Batch
    desirable: torch.Tensor
    reward: torch.Tensor


def unpaired_feedback(world: World, model, tokenizer, n: int, threshold: float, seed: int = 0,
                      max_new_tokens: int | None = None) -> UnpairedFeedback:
    """n of the model's samples, labelled desirable when their true reward > threshold."""
    batch, r = sample_groups(world, model, tokenizer, n, 1, seed, max_new_tokens)
    return UnpairedFeedback(batch, r > threshold, r)


def merge_pairs(parts: Sequence[PreferencePairs], pad_token_id: int) -> PreferencePairs:
    """Concatenate several PreferencePairs (e.g. the rounds of iterative DPO)."""
    return PreferencePairs(concat_batches([p.chosen for p in parts], pad_token_id),
                           concat_batches([p.rejected for p in parts], pad_token_id),
                           torch.cat([p.chosen_reward for p in parts]),
                           torch.cat([p.rejected_reward for p in parts]))


def best_worst_indices(rewards: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (chosen, rejected) of the best and worst sample of each group of `group_size`
    rewards `[N]` laid out group after group; the first one on ties; groups whose rewards all
    tie are dropped (they hold no preference).

    >>> best_worst_indices(torch.tensor([0.0, 1.0, 0.5, 2.0, 2.0, 2.0]), group_size=3)
    (tensor([1]), tensor([0]))
    """
    if rewards.dim() != 1 or group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be [N] and group_size >= 2 must divide N, got shape "
                         f"{tuple(rewards.shape)} and group_size={group_size}")
    grouped = rewards.view(-1, group_size)
    keep = grouped.max(1).values > grouped.min(1).values
    offsets = torch.arange(grouped.shape[0], device=rewards.device) * group_size
    return (offsets + grouped.argmax(1))[keep], (offsets + grouped.argmin(1))[keep]


def pairs_from_groups(batch: Batch, rewards: torch.Tensor, group_size: int,
                      true_rewards: torch.Tensor | None = None) -> PreferencePairs:
    """Best-vs-worst pairs from samples laid out group after group (as `sample_groups` does):
    in each group the sample with the highest `rewards` is chosen, the lowest rejected;
    groups whose rewards all tie are dropped. `rewards` `[N]` may be a learned reward
    model's scores; the pairs keep `true_rewards` (default: `rewards`) for evaluation."""
    if group_size < 2 or len(batch) % group_size:
        raise ValueError(f"group_size must be >= 2 and divide the batch of {len(batch)}, got {group_size}")
    if rewards.shape != (len(batch),):
        raise ValueError(f"rewards must have shape ({len(batch)},), got {tuple(rewards.shape)}")
    true_rewards = rewards if true_rewards is None else true_rewards
    w, l = best_worst_indices(rewards, group_size)
    return PreferencePairs(batch.index(w), batch.index(l), true_rewards[w], true_rewards[l])


# ====================================================================== per-token rewards (chapter 02)

def sort_token_rewards(world: SortWorld, batch: Batch, tokenizer, correct: float | None = None,
                       wrong: float = 0.0) -> torch.Tensor:
    """Per-token rewards `[B, T]` for sorting, each attached to the token that earned it:

        r_t = correct (default 1/n) if digit t is the right one, wrong if it is not (t < n)
        last token: whatever makes sum_t r_t the sequence's total, which for a well-formed
        answer is correct * (#right) + wrong * (#wrong), and for a malformed one (no single
        final '<eos>', wrong length, a non-digit) n * min(wrong, 0), as bad as all wrong.

    Every r_t before the last depends only on the tokens up to t, so rewards-to-go stay
    unbiased. With the defaults sum_t r_t is SortWorld(reward_type="position")'s reward.

    >>> w = SortWorld(n_digits=3); tok = w.tokenizer()
    >>> b = make_batch(tok, [["sort", "3", "1", "2", ":"]], [["1", "2", "2"]])
    >>> sort_token_rewards(w, b, tok, correct=1.0, wrong=-2.0).tolist()
    [[1.0, 1.0, -2.0, 0.0]]
    """
    if not isinstance(world, SortWorld):
        raise ValueError(f"world must be a SortWorld, got {type(world).__name__}")
    n = world.n_digits
    correct = 1.0 / n if correct is None else float(correct)
    mask = batch.completion_mask
    rewards = torch.zeros(mask.shape, dtype=torch.float32)
    for i, (prompt, words) in enumerate(zip(batch.prompts(tokenizer), batch.completions(tokenizer))):
        target = world.answer(prompt)
        for t, w in enumerate(words[:n]):
            if w in DIGITS:
                rewards[i, t] = correct if w == target[t] else wrong
        right = world.position_rewards(prompt, words)
        total = correct * sum(right) + wrong * (n - sum(right)) if right else n * min(wrong, 0.0)
        last = len(words) - 1
        rewards[i, last] = total - rewards[i, :last].sum()
    return rewards.to(mask.device) * mask


# ====================================================================== data for chapter 10 (IPO, KTO, SimPO)

def noisy_pairs(pairs: PreferencePairs, p: float, pad_token_id: int, seed: int = 0
                ) -> tuple[PreferencePairs, torch.Tensor]:
    """A world whose annotator agrees with the true reward only with probability p: each
    pair's chosen and rejected answers are swapped independently with probability 1 - p.
    Returns (the relabelled pairs, flipped: bool [N]); the rewards travel with their answers,
    so `chosen_reward < rejected_reward` marks the flipped pairs too."""
    if not 0.0 <= p <= 1.0:  # also rejects NaN
        raise ValueError(f"p must lie in [0, 1], got {p}")
    flipped = torch.rand(len(pairs), generator=torch.Generator().manual_seed(seed)) >= p
    rows = torch.arange(len(pairs))
    w, l = torch.where(flipped, len(pairs) + rows, rows), torch.where(flipped, rows, len(pairs) + rows)
    both = concat_batches([pairs.chosen, pairs.rejected], pad_token_id)
    rewards = torch.cat([pairs.chosen_reward, pairs.rejected_reward])
    return PreferencePairs(both.index(w), both.index(l), rewards[w], rewards[l]), flipped


def mismatched_batch(batch: Batch) -> Batch:
    """Each prompt with the completion of the row before it (row 0 gets the last one): the
    mismatched (x, y') pairs from which KTO's reference code and TRL's KTOTrainer estimate
    z0 = KL(pi || pi_ref), formed by shifting completions by one within the batch."""
    if len(batch) < 2:
        raise ValueError(f"batch must have >= 2 rows to mismatch prompts and completions, got {len(batch)}")
    return Batch(batch.prompt_ids, batch.prompt_mask, batch.completion_ids.roll(1, dims=0),
                 batch.completion_mask.roll(1, dims=0))


def balanced_feedback(world: World, model, tokenizer, n_desirable: int, n_undesirable: int, threshold: float,
                      seed: int = 0, pool: int | None = None) -> UnpairedFeedback:
    """Unpaired feedback with a chosen class balance: the first `n_desirable` samples of the
    model whose true reward is > threshold and the first `n_undesirable` with reward <=
    threshold, from a pool of `pool` samples (default 4 (n_desirable + n_undesirable)), one
    per prompt. Raises if the pool holds too few of either kind."""
    if n_desirable < 0 or n_undesirable < 0 or n_desirable + n_undesirable == 0:
        raise ValueError(f"n_desirable, n_undesirable must be >= 0 and not both 0, got {n_desirable}, {n_undesirable}")
    pool = pool or 4 * (n_desirable + n_undesirable)
    data = unpaired_feedback(world, model, tokenizer, pool, threshold, seed)
    good, bad = data.desirable.nonzero().squeeze(1), (~data.desirable).nonzero().squeeze(1)
    if len(good) < n_desirable or len(bad) < n_undesirable:
        raise ValueError(f"the pool of {pool} samples has {len(good)} desirable and {len(bad)} undesirable; "
                         f"asked for {n_desirable} and {n_undesirable}: raise pool")
    rows = torch.cat([good[:n_desirable], bad[:n_undesirable]]).sort().values
    return UnpairedFeedback(data.batch.index(rows), data.desirable[rows], data.reward[rows])


def unpaired_from_pairs(pairs: PreferencePairs, pad_token_id: int) -> UnpairedFeedback:
    """The pairs taken apart: every chosen answer a desirable example, every rejected one an
    undesirable example (2N examples, the same answers, no pairing), as the KTO paper does to
    compare KTO with DPO on one dataset."""
    batch = concat_batches([pairs.chosen, pairs.rejected], pad_token_id)
    desirable = torch.cat([torch.ones(len(pairs), dtype=torch.bool), torch.zeros(len(pairs), dtype=torch.bool)])
    return UnpairedFeedback(batch, desirable.to(pairs.chosen_reward.device),
                            torch.cat([pairs.chosen_reward, pairs.rejected_reward]))


def length_balanced_pairs(pairs: PreferencePairs, seed: int = 0) -> PreferencePairs:
    """A length-neutral preference set: the pairs whose answers differ in length, subsampled
    so that the chosen answer is the longer one in exactly half of them. Length then says
    nothing about the label, and any drift in the trained policy's length comes from the loss."""
    longer = pairs.chosen.lengths > pairs.rejected.lengths
    shorter = pairs.chosen.lengths < pairs.rejected.lengths
    a, b = longer.nonzero().squeeze(1), shorter.nonzero().squeeze(1)
    n = min(len(a), len(b))
    if n == 0:
        raise ValueError("no pairs with a longer chosen answer and a shorter one to balance")
    g = torch.Generator().manual_seed(seed)
    rows = torch.cat([a[torch.randperm(len(a), generator=g)[:n]], b[torch.randperm(len(b), generator=g)[:n]]]).sort().values
    return PreferencePairs(pairs.chosen.index(rows), pairs.rejected.index(rows),
                           pairs.chosen_reward[rows], pairs.rejected_reward[rows])
