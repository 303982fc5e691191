"""Tiny causal language models: a word-level tokenizer, a model from a transformers
config, batches of (prompt, completion), sampling with the KV cache, and the per-token
log-probabilities every algorithm in the book is built on.

Layout of a batch (see `Batch`): prompts are left-padded to a common length P, so every
completion starts at column P; completions are right-padded after their EOS. Per-token
quantities of completions are `[B, T]` with `completion_mask` (1 = a generated token,
EOS included).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast)
from transformers.utils import logging as hf_logging

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"


class _QuietPaddingWarning(logging.Filter):
    """`generate` drops an all-ones attention mask and then warns once the pads it writes
    after a finished sequence's EOS appear; those pads are never scored, so the warning
    is noise here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "passing in an `attention_mask`" not in record.getMessage()


logging.getLogger("transformers.modeling_utils").addFilter(_QuietPaddingWarning())
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

Words = Sequence[str]


# ---------------------------------------------------------------- tokenizer

def word_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """A `PreTrainedTokenizerFast` whose tokens are whole words (split on whitespace).

    Ids 0-3 are <pad>, <bos>, <eos>, <unk>; the words follow in the order given.
    Prompts get padded on the left, which is what decoder-only generation needs.

    >>> tok = word_tokenizer(["the", "sky", "is", "blue"])
    >>> tok("the sky is").input_ids
    [4, 5, 6]
    """
    words = list(dict.fromkeys(words))  # de-duplicate, keep order
    clash = [w for w in words if w in SPECIAL_TOKENS or not w or any(c.isspace() for c in w)]
    if clash:
        raise ValueError(f"words contains special tokens, empty strings or whitespace: {clash}")
    vocab = {w: i for i, w in enumerate([*SPECIAL_TOKENS, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, unk_token=UNK, padding_side="left")


def as_words(text: str | Words) -> list[str]:
    """'the sky is' or ['the', 'sky', 'is'] -> ['the', 'sky', 'is']."""
    return text.split() if isinstance(text, str) else list(text)


def encode_words(tokenizer: PreTrainedTokenizerFast, words: Words, argument: str = "prompts") -> list[int]:
    """Token ids of `words`; a word outside the vocabulary is an error that names it."""
    return _encode_all(tokenizer, [words], argument)[0]


def _encode_all(tokenizer, texts: Sequence[str | Words], argument: str) -> list[list[int]]:
    """`encode_words` of every text, reading the vocabulary once (building it costs more
    than looking up a row's words)."""
    vocab = tokenizer.get_vocab()
    rows = [t.split() if isinstance(t, str) else t for t in texts]  # as_words, without copying lists
    unknown = [w for words in rows for w in words if w not in vocab]
    if unknown:
        raise ValueError(f"{argument} uses words outside the vocabulary: {unknown}")
    return [[vocab[w] for w in words] for words in rows]


# ---------------------------------------------------------------- model

def tiny_lm(tokenizer: PreTrainedTokenizerFast, arch: str = "gpt2", d_model: int = 128,
            n_layer: int = 2, n_head: int = 4, n_positions: int = 32, seed: int = 0) -> PreTrainedModel:
    """A freshly initialised causal LM from a transformers config (~0.4M parameters by default).

    arch: "gpt2" (learned positions) or "llama" (rotary positions, RMSNorm, SwiGLU).
    Dropout is off: RL needs the log-probs of a sample to be the same when it is scored
    again for the update.
    """
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    if arch == "gpt2":
        config = GPT2Config(n_embd=d_model, n_layer=n_layer, n_head=n_head, n_positions=n_positions,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids)
        model = GPT2LMHeadModel(config)
    elif arch == "llama":
        config = LlamaConfig(hidden_size=d_model, num_hidden_layers=n_layer, num_attention_heads=n_head,
                             num_key_value_heads=n_head, intermediate_size=4 * d_model,
                             max_position_embeddings=n_positions, tie_word_embeddings=True, **ids)
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(f"arch must be 'gpt2' or 'llama', got {arch!r}")
    return model


def context_length(model: PreTrainedModel) -> int:
    """The longest sequence (prompt + completion) the model can position."""
    cfg = model.config
    return getattr(cfg, "n_positions", None) or cfg.max_position_embeddings


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A copy that never trains: the reference model pi_ref (or pi_old)."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def trainable_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A copy to train, whatever the original's state (e.g. a cached SFT model, loaded frozen):
    every parameter requires grad, no gradient carried over, in eval mode (the loops switch)."""
    policy = copy.deepcopy(model).eval()
    for p in policy.parameters():
        p.grad = None
        p.requires_grad_(True)
    return policy


def perturbed_copy(model: PreTrainedModel, scale: float = 0.02, seed: int = 1) -> PreTrainedModel:
    """A trainable copy with N(0, scale^2) noise added to every weight (its own seeded generator):
    a policy that has moved away from `model`, so pi_theta != pi_old != pi_ref when a check needs it."""
    out = trainable_copy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g).to(p.device, p.dtype))
    return out


# transformers shows progress bars for writing and loading weights; for files this small they are noise

def save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, path) -> None:
    hf_logging.disable_progress_bar()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def load(path, device: torch.device | str = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    return model, tokenizer


# ---------------------------------------------------------------- batches

@dataclass
class Batch:
    """Prompts (left-padded, each starting with <bos>) and completions (right-padded).

    prompt_ids, prompt_mask:         [B, P]  mask 1 = a real prompt token
    completion_ids, completion_mask: [B, T]  mask 1 = a completion token (EOS included)
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        # completion padding stays visible: it only ever follows the last real token
        return torch.cat([self.prompt_mask, torch.ones_like(self.completion_mask)], dim=1)

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.prompt_ids, self.prompt_mask,
                                             self.completion_ids, self.completion_mask)))

    def index(self, rows) -> "Batch":
        """The sub-batch of the given rows (a slice, index list or bool tensor)."""
        return Batch(self.prompt_ids[rows], self.prompt_mask[rows],
                     self.completion_ids[rows], self.completion_mask[rows])

    def prompts(self, tokenizer) -> list[list[str]]:
        """Prompt words without padding or <bos>."""
        return [[w for w in row if w != BOS] for row in _words(tokenizer, self.prompt_ids, self.prompt_mask)]

    def completions(self, tokenizer) -> list[list[str]]:
        """Completion words as the tokenizer sees them, ending in '<eos>' when finished."""
        return _words(tokenizer, self.completion_ids, self.completion_mask)

    def compact(self) -> "Batch":
        """The same rows without the columns that are padding in every row (the prompts'
        left-most, the completions' right-most): what `make_batch` builds for these rows.
        `index` keeps the full width; index, then compact, to train on a sub-batch."""
        p_cols = int(self.prompt_mask.any(0).long().argmax())  # the first column with a real token
        t_cols = self.completion_mask.shape[1] - int(self.completion_mask.any(0).long().flip(0).argmax())
        return Batch(self.prompt_ids[:, p_cols:], self.prompt_mask[:, p_cols:],
                     self.completion_ids[:, :t_cols], self.completion_mask[:, :t_cols])

    @property
    def lengths(self) -> torch.Tensor:
        """|o_i|: number of completion tokens per row, EOS included."""
        return self.completion_mask.sum(1)


def _words(tokenizer, ids: torch.Tensor, mask: torch.Tensor) -> list[list[str]]:
    """The tokens of each row of `ids` where `mask` is 1: one host copy per tensor and one
    `convert_ids_to_tokens` call for the whole batch, not one per row."""
    rows = [[i for i, m in zip(r, mr) if m] for r, mr in zip(ids.tolist(), mask.tolist())]
    tokens = iter(tokenizer.convert_ids_to_tokens([i for r in rows for i in r]))
    return [[next(tokens) for _ in r] for r in rows]


def _pad(rows: list[list[int]], value: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids padded with `value` to a common width (on the left or right): (ids, mask)."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = int(lengths.max())
    cols = torch.arange(width)
    real = cols >= width - lengths[:, None] if left else cols < lengths[:, None]
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    ids[real] = torch.tensor([i for r in rows for i in r], dtype=torch.long)  # row-major, as `real` is read
    return ids, real.long()


def encode_prompts(tokenizer, prompts: Sequence[str | Words]) -> tuple[torch.Tensor, torch.Tensor]:
    """<bos> + prompt words, left-padded: (prompt_ids [B, P], prompt_mask [B, P])."""
    if len(prompts) == 0:
        raise ValueError("prompts is empty: pass at least one prompt")
    bos = tokenizer.bos_token_id  # an attribute lookup that costs more than a row
    rows = [[bos, *ids] for ids in _encode_all(tokenizer, prompts, "prompts")]
    return _pad(rows, tokenizer.pad_token_id, left=True)


def make_batch(tokenizer, prompts: Sequence[str | Words], completions: Sequence[str | Words],
               add_eos: bool = True) -> Batch:
    """A Batch from given text, for teacher forcing (SFT, preference pairs, scoring).

    >>> tok = word_tokenizer(["the", "sky", "is", "blue"])
    >>> b = make_batch(tok, ["the sky is"], ["blue"])
    >>> b.completions(tok)
    [['blue', '<eos>']]
    """
    if len(prompts) != len(completions):
        raise ValueError(f"completions has {len(completions)} items but prompts has {len(prompts)}")
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
    eos = [tokenizer.eos_token_id] if add_eos else []
    rows = [ids + eos for ids in _encode_all(tokenizer, completions, "completions")]
    if any(len(r) == 0 for r in rows):
        raise ValueError("completions contains an empty completion")
    completion_ids, completion_mask = _pad(rows, tokenizer.pad_token_id, left=False)
    return Batch(prompt_ids, prompt_mask, completion_ids, completion_mask)


def concat_batches(batches: Sequence[Batch], pad_token_id: int) -> Batch:
    """Stack batches row-wise, re-padding prompts (left) and completions (right)."""
    def stack(attr_ids, attr_mask, left):
        width = max(getattr(b, attr_ids).shape[1] for b in batches)
        ids, masks = [], []
        for b in batches:
            x, m = getattr(b, attr_ids), getattr(b, attr_mask)
            pad = (width - x.shape[1], 0) if left else (0, width - x.shape[1])
            ids.append(F.pad(x, pad, value=pad_token_id))
            masks.append(F.pad(m, pad, value=0))
        return torch.cat(ids), torch.cat(masks)

    return Batch(*stack("prompt_ids", "prompt_mask", True), *stack("completion_ids", "completion_mask", False))


# ---------------------------------------------------------------- log-probs

def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` computes them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def completion_logits(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Next-token logits at every completion position: `[B, T, V]`, where row t is the
    distribution pi(. | s_t) from which completion token t was drawn."""
    attention_mask = batch.attention_mask
    logits = model(input_ids=batch.input_ids, attention_mask=attention_mask,
                   position_ids=position_ids(attention_mask)).logits
    P = batch.prompt_ids.shape[1]
    return logits[:, P - 1:-1].float()


def completion_logprobs(model: PreTrainedModel, batch: Batch, return_logits: bool = False):
    """log pi(a_t | s_t) of every completion token: `[B, T]`, 0 at masked positions.

    The one function every algorithm uses: log P(tau) = sum over t of these values.
    With `return_logits`, also return the `[B, T, V]` logits (for exact KL and entropy).
    """
    logits = completion_logits(model, batch)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    logp = logp * batch.completion_mask
    return (logp, logits) if return_logits else logp


# ---------------------------------------------------------------- sampling

@torch.no_grad()
def sample(model: PreTrainedModel, tokenizer, prompts: Sequence[str | Words], max_new_tokens: int,
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> Batch:
    """Sample one completion per prompt with the KV cache (`generate`), stopping at EOS.

    Ancestral sampling at temperature 1 with no top-k/top-p draws from pi_theta itself,
    which on-policy RL needs; the other settings change the distribution being sampled.
    Seed with `torch.manual_seed` for reproducible samples.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not temperature > 0:  # NaN too
        raise ValueError(f"temperature must be > 0, got {temperature}")
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
    room = context_length(model) - prompt_ids.shape[1]
    if max_new_tokens > room:
        raise ValueError(f"max_new_tokens={max_new_tokens} does not fit: the prompt takes "
                         f"{prompt_ids.shape[1]} of the model's {context_length(model)} positions "
                         f"(at most {room} new tokens)")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = model.generate(input_ids=prompt_ids.to(device), attention_mask=prompt_mask.to(device),
                         do_sample=True, max_new_tokens=max_new_tokens, temperature=temperature,
                         top_k=top_k or 0, top_p=top_p if top_p is not None else 1.0,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         use_cache=True)
    model.train(was_training)
    completion_ids = out[:, prompt_ids.shape[1]:]
    # a token is part of the completion if no EOS came strictly before it
    is_eos = (completion_ids == tokenizer.eos_token_id).long()
    completion_mask = ((is_eos.cumsum(1) - is_eos) == 0).long()
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    return Batch(prompt_ids.to(device), prompt_mask.to(device), completion_ids, completion_mask)


@torch.no_grad()
def next_token_distribution(model: PreTrainedModel, tokenizer, state: str | Words) -> dict[str, float]:
    """pi(. | s) for one state, as {word: probability}, most likely first.

    The state is the prompt as the model sees it (after <bos>), e.g. 'the sky is'.
    """
    prompt_ids, prompt_mask = encode_prompts(tokenizer, [state])
    device = next(model.parameters()).device
    logits = model(input_ids=prompt_ids.to(device), attention_mask=prompt_mask.to(device)).logits[0, -1]
    probs = torch.softmax(logits.float(), -1).cpu()
    words = tokenizer.convert_ids_to_tokens(list(range(len(probs))))
    order = probs.argsort(descending=True).tolist()
    return {words[i]: probs[i].item() for i in order}
