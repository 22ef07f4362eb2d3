"""The data of the denoising pre-training objectives: T5's span corruption, BERT's masked LM and BERT's
next-sentence prediction pairs.

* **Span corruption** (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
  Text-to-Text Transformer", section 3.1.4; ``t5.data.preprocessors.random_spans_noise_mask``). Of a block
  of ``L`` raw tokens, with noise density ``r`` and mean span length ``mu``::

      n_noise = clamp(round(L * r), 1, L - 1)          n_keep = L - n_noise
      n_spans = clamp(round(n_noise / mu), 1, min(n_noise, n_keep))

  ``n_noise`` and ``n_keep`` are each cut into ``n_spans`` random positive lengths (uniform over the
  compositions) and interleaved, kept span first (so the block always ends in noise, as in T5). The
  encoder sees the kept tokens with each noise span replaced by one sentinel, the decoder predicts the
  spans, each after its sentinel::

      ids      The cat sat on the mat .           noise mask  0 1 0 0 1 1 0
      inputs   The <X0> sat on <X1> . </s>        (n_keep + n_spans + 1 tokens)
      targets  <X0> cat <X1> the mat </s>         (n_noise + n_spans + 1 tokens)

  :func:`compute_input_and_target_lengths` gives the raw block length whose inputs are exactly the
  encoder length (T5's ``random_spans_helper``). :class:`SpanCorruptionCollator` draws example ``i``'s
  mask from ``np.random.default_rng([seed, i])``: the same mask whatever the batch and after a resume.
  transformers ships this collator only for Flax (``examples/flax/language-modeling/run_t5_mlm_flax.py``),
  hence this NumPy version.
* **Masked LM** (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
  Understanding", section 3.1, task 1): 15% of the non-special tokens are predicted; of those 80% are
  replaced by ``[MASK]``, 10% by a random token, 10% left as they are. :class:`MaskedLMCollator` wraps
  transformers' ``DataCollatorForLanguageModeling`` (also its whole-word masking) and seeds it per example
  from ``(seed, index)``, for the same exact-resume property.
* **Next-sentence prediction** (same section, task 2): :func:`make_nsp_examples` pairs consecutive
  sentence groups of a document (``IsNext``, label 0) or a group with a random group of another document
  (``NotNext``, label 1), each with probability 1/2, encoded ``[CLS] A [SEP] B [SEP]`` with token types
  0 then 1. :func:`split_sentences` is the simple sentence splitter that feeds it.

Left out: T5's tweak of the helper for ``noise_density == 0.5`` (it trades one raw token for targets no
longer than inputs, and breaks "inputs are exactly ``inputs_length``"); T5's other noising variants
(i.i.d. noise, prefix LM, deshuffling, the sentinel-free "drop" targets); UL2's mixture of denoisers;
BERT's ``short_seq_prob`` (10% of blocks shorter than the maximum) and its random split points inside a
chunk (groups here are whole sentences packed to half the length); RoBERTa's dropping of NSP and
SpanBERT's geometric span lengths.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from rlxf.data.collate import pad
from rlxf.data.tokenize import IGNORE_INDEX

__all__ = [
    "IS_NEXT",
    "NOT_NEXT",
    "MaskedLMCollator",
    "SpanCorruptionCollator",
    "compute_input_and_target_lengths",
    "example_seed",
    "make_nsp_examples",
    "noise_counts",
    "random_spans_noise_mask",
    "reassemble",
    "span_corrupt",
    "split_sentences",
    "word_start_mask",
]

IS_NEXT = 0
"""``next_sentence_label`` of a pair whose B really follows A (transformers' ``BertForPreTraining``)."""
NOT_NEXT = 1
"""``next_sentence_label`` of a pair whose B comes from another document."""


# ---------------------------------------------------------------------------------------------------------
# span corruption (T5)


def _check_noise(noise_density: float, mean_noise_span_length: float) -> None:
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"noise_density must be in (0, 1); got {noise_density}")
    if not mean_noise_span_length > 0.0:
        raise ValueError(f"mean_noise_span_length must be > 0; got {mean_noise_span_length}")


def noise_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """``(n_noise, n_spans)`` of a block of ``length >= 2`` raw tokens (the equations of the module).

    The clamps keep both parts non-empty and leave at least one token per span on both sides, so that
    :func:`random_spans_noise_mask` can always split them; :func:`compute_input_and_target_lengths` uses
    the same counts, so its lengths are the ones the collator produces.
    """
    # Python's round() is round-half-to-even, like T5's tf.round and np.round.
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    n_keep = length - n_noise
    n_spans = min(max(round(n_noise / mean_noise_span_length), 1), n_noise, n_keep)
    return n_noise, n_spans


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """``num_segments`` positive lengths summing to ``num_items``, uniform over those compositions.

    T5's construction: shuffle ``num_segments - 1`` "a segment starts here" flags among the
    ``num_items - 1`` gaps between items.
    """
    starts = np.zeros(num_items - 1, dtype=bool)
    starts[: num_segments - 1] = True
    rng.shuffle(starts)
    segment_id = np.concatenate([[0], np.cumsum(starts)])  # [num_items]
    return np.bincount(segment_id, minlength=num_segments)  # [num_segments]


def random_spans_noise_mask(
    length: int, noise_density: float, mean_noise_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """T5's noise mask: a bool ``[length]`` array, True on the ``n_noise`` tokens to corrupt, which form
    ``n_spans`` runs; the block starts with kept tokens and ends with noise::

        n_noise = clamp(round(length * noise_density), 1, length - 1)
        n_spans = clamp(round(n_noise / mean_noise_span_length), 1, min(n_noise, length - n_noise))

    The noise lengths and the kept lengths are each a uniformly random composition into ``n_spans``
    positive parts (:func:`_random_segmentation`), interleaved kept, noise, kept, noise, ...
    A block shorter than 2 tokens cannot hold both parts and is returned without noise (T5 does the same).
    ``n_spans`` is capped by ``length - n_noise`` as in transformers' Flax example; T5 leaves it uncapped,
    which fails for densities above 1/2 with short spans.
    """
    _check_noise(noise_density, mean_noise_span_length)
    if length < 2:
        return np.zeros(max(length, 0), dtype=bool)
    n_noise, n_spans = noise_counts(length, noise_density, mean_noise_span_length)
    noise_lengths = _random_segmentation(n_noise, n_spans, rng)  # [n_spans]
    keep_lengths = _random_segmentation(length - n_noise, n_spans, rng)  # [n_spans]
    interleaved = np.stack([keep_lengths, noise_lengths], axis=1).reshape(-1)  # [2 * n_spans]
    is_noise = np.tile(np.array([False, True]), n_spans)  # [2 * n_spans]
    return np.repeat(is_noise, interleaved)  # [length]


def compute_input_and_target_lengths(
    inputs_length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """``(raw_length, targets_length)``: how many raw tokens to cut per block so that the corrupted encoder
    input (kept tokens, one sentinel per span, the final EOS) is ``inputs_length`` tokens long, and how
    long the targets then are (T5's ``random_spans_helper``)::

        inputs  = (raw - n_noise) + n_spans + 1
        targets = n_noise + n_spans + 1

    ``raw_length`` is the largest length whose inputs fit in ``inputs_length``. Inputs grow by 0 or 1 per
    raw token when ``mean_noise_span_length >= 1`` and the span count is not capped by the kept tokens
    (densities up to about 1/2), so the fit is then exact; otherwise it may be one short.
    """
    _check_noise(noise_density, mean_noise_span_length)

    def lengths(raw: int) -> tuple[int, int]:
        n_noise, n_spans = noise_counts(raw, noise_density, mean_noise_span_length)
        return raw - n_noise + n_spans + 1, n_noise + n_spans + 1

    # The smallest block (2 tokens: one kept, one noise) already gives inputs 1 + 1 + 1 = 3.
    raw = 2
    if lengths(raw)[0] > inputs_length:
        raise ValueError(f"inputs_length {inputs_length} is too short for any corrupted block (minimum 3)")
    while lengths(raw + 1)[0] <= inputs_length:
        raw += 1
    return raw, lengths(raw)[1]


def _span_starts(noise_mask: np.ndarray) -> np.ndarray:
    """Bool ``[length]``: True on the first token of each noise span."""
    previous = np.concatenate([[False], noise_mask[:-1]])
    return noise_mask & ~previous


def span_corrupt(
    ids: np.ndarray, noise_mask: np.ndarray, sentinel_ids: Sequence[int], eos_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, targets)`` (int64 arrays) of ``ids`` ``[length]`` corrupted where ``noise_mask`` is True.

    Noise span ``k`` (counted from the left) becomes ``sentinel_ids[k]`` in the inputs; the targets are
    ``sentinel_ids[k]`` then the span's tokens, for each span, then ``eos_id`` (T5's format; with a
    Hugging Face T5 tokenizer ``sentinel_ids[k]`` is the id of ``<extra_id_k>``). Both end with ``eos_id``.
    ``ids`` should not contain sentinel ids: :func:`reassemble` could not tell them from the placeholders.
    """
    ids = np.asarray(ids, dtype=np.int64)
    noise_mask = np.asarray(noise_mask, dtype=bool)
    if ids.shape != noise_mask.shape or ids.ndim != 1:
        raise ValueError(
            f"ids and noise_mask must be 1-d of one length; got {ids.shape} and {noise_mask.shape}"
        )
    starts = _span_starts(noise_mask)
    n_spans = int(starts.sum())
    if n_spans > len(sentinel_ids):
        raise ValueError(
            f"{n_spans} noise spans but only {len(sentinel_ids)} sentinel ids: lower the noise density, "
            "raise the mean span length or shorten the blocks"
        )
    eos = np.array([eos_id], dtype=np.int64)
    if n_spans == 0:
        return np.concatenate([ids, eos]), eos
    sentinels = np.asarray(sentinel_ids, dtype=np.int64)[:n_spans]
    span = np.maximum(np.cumsum(starts) - 1, 0)  # [length] index of the latest span start (0 before it)

    # inputs: kept tokens as they are, each span's first token turned into its sentinel, the rest dropped
    with_sentinels = np.where(starts, sentinels[span], ids)  # [length]
    inputs = np.concatenate([with_sentinels[~noise_mask | starts], eos])

    # targets: each noise token as the pair (its span's sentinel, the token), the sentinel kept only where
    # the token opens its span
    pairs = np.stack([sentinels[span[noise_mask]], ids[noise_mask]], axis=1)  # [n_noise, 2]
    keep = np.stack([starts[noise_mask], np.ones(len(pairs), dtype=bool)], axis=1)  # [n_noise, 2]
    targets = np.concatenate([pairs[keep], eos])
    return inputs, targets


def reassemble(
    inputs: Sequence[int], targets: Sequence[int], sentinel_ids: Sequence[int], eos_id: int
) -> list[int]:
    """The original ids of a :func:`span_corrupt` pair: each sentinel of ``inputs`` replaced by the tokens
    that follow the same sentinel in ``targets``; both final ``eos_id`` are dropped."""
    inputs, targets = list(inputs), list(targets)
    if not inputs or inputs[-1] != eos_id or not targets or targets[-1] != eos_id:
        raise ValueError("inputs and targets must both end with eos_id")
    sentinel_index = {int(s): k for k, s in enumerate(sentinel_ids)}
    spans: dict[int, list[int]] = {}
    current: list[int] | None = None
    for token in targets[:-1]:
        if token in sentinel_index:
            current = spans.setdefault(sentinel_index[token], [])
        elif current is None:
            raise ValueError(f"targets start with {token}, not with a sentinel id")
        else:
            current.append(token)
    out: list[int] = []
    for token in inputs[:-1]:
        if token in sentinel_index:
            k = sentinel_index[token]
            if k not in spans:
                raise ValueError(f"sentinel {token} (span {k}) is in the inputs but not in the targets")
            out.extend(spans[k])
        else:
            out.append(token)
    return out


def _example(example: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """``(ids [raw_len], index)`` of one collator example, with a clear message when a key is missing."""
    missing = [key for key in ("ids", "index") if key not in example]
    if missing:
        raise KeyError(f"a pre-training example needs 'ids' and 'index'; this one lacks {', '.join(missing)}")
    ids = torch.as_tensor(example["ids"], dtype=torch.long)
    index = int(example["index"])
    if ids.ndim != 1:
        raise ValueError(f"example {index}: 'ids' must be 1-d; got shape {tuple(ids.shape)}")
    if index < 0:
        raise ValueError(f"example index must be >= 0 (its position in the dataset); got {index}")
    return ids, index


@dataclass
class SpanCorruptionCollator:
    """Collate ``{"ids": LongTensor [raw_len], "index": int}`` examples into T5 span-corruption batches.

    Returns ``input_ids`` / ``attention_mask`` ``[batch, max_inputs]`` (right-padded with ``pad_id``),
    ``labels`` ``[batch, max_targets]`` (padded with -100) and ``noise_tokens`` (int, noise tokens in the
    batch). T5 models build ``decoder_input_ids`` from ``labels`` themselves (shift right, -100 -> pad).
    Example ``index``'s mask comes from ``np.random.default_rng([seed, index])``, so a row depends only on
    the example and the seed. Cut raw blocks to :func:`compute_input_and_target_lengths`'s ``raw_length``
    for inputs of a fixed length.
    """

    sentinel_ids: list[int]
    eos_id: int
    pad_id: int
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_noise(self.noise_density, self.mean_noise_span_length)
        if not self.sentinel_ids:
            raise ValueError(
                "span corruption needs sentinel ids (e.g. the ids of <extra_id_0>, <extra_id_1>, ...)"
            )
        self.sentinel_ids = [int(s) for s in self.sentinel_ids]

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor | int]:
        inputs, targets, noise_tokens = [], [], 0
        for example in examples:
            ids, index = _example(example)
            rng = np.random.default_rng([self.seed, index])
            mask = random_spans_noise_mask(len(ids), self.noise_density, self.mean_noise_span_length, rng)
            source, target = span_corrupt(ids.numpy(), mask, self.sentinel_ids, self.eos_id)
            inputs.append(source.tolist())
            targets.append(target.tolist())
            noise_tokens += int(mask.sum())
        input_ids = pad(inputs, self.pad_id)  # [batch, max_inputs]
        attention_mask = pad([[1] * len(row) for row in inputs], 0)  # [batch, max_inputs]
        labels = pad(targets, IGNORE_INDEX)  # [batch, max_targets]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "noise_tokens": noise_tokens,
        }


# ---------------------------------------------------------------------------------------------------------
# masked LM (BERT)


def example_seed(seed: int, index: int) -> int:
    """A 64-bit torch seed for example ``index`` under run seed ``seed`` (NumPy's SeedSequence hashing, so
    nearby seeds and indices give unrelated streams)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0])


# Markers that open a word in vocabularies that mark word starts rather than continuations: byte-level BPE
# (GPT-2, RoBERTa: "Ġ" is the byte of a leading space) and SentencePiece / Metaspace (T5, Llama 2: "▁").
_WORD_START_MARKERS = ("Ġ", "▁")


def _word_rule(tokenizer: Any) -> tuple[str, str]:
    """``("continuation", "##")`` for WordPiece-like vocabularies (a token continues a word when it starts
    with the prefix) or ``("start", marker)`` for those that mark word starts; ValueError for others."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    prefix = getattr(getattr(backend, "model", None), "continuing_subword_prefix", None)
    if prefix:
        return "continuation", prefix
    vocab = tokenizer.get_vocab()
    for marker in _WORD_START_MARKERS:
        if any(token.startswith(marker) for token in vocab):
            return "start", marker
    raise ValueError(
        "whole-word masking cannot find word boundaries in this tokenizer's vocabulary (no '##' continuation "
        f"prefix, no {' or '.join(map(repr, _WORD_START_MARKERS))} word-start marker); use whole_word=False"
    )


def word_start_mask(tokens: Sequence[str], rule: tuple[str, str]) -> np.ndarray:
    """Bool ``[len(tokens)]``: True where a token opens a word under ``rule`` (see :func:`_word_rule`)."""
    kind, affix = rule
    if kind == "continuation":
        return np.array([not t.startswith(affix) for t in tokens], dtype=bool)
    return np.array([t.startswith(affix) for t in tokens], dtype=bool)


def _word_offsets(starts: np.ndarray) -> torch.Tensor:
    """Made-up character offsets ``[len, 2]`` that encode word boundaries the way transformers' whole-word
    masking reads them: a token continues the previous word when its start equals the previous end, so
    each word start gets a one-character gap. The examples carry only ids, not the real offsets."""
    position = np.arange(len(starts)) + np.cumsum(starts)
    return torch.from_numpy(np.stack([position, position + 1], axis=1))


@dataclass
class MaskedLMCollator:
    """Collate ``{"ids", "index"}`` examples (plus optional ``token_type_ids`` and ``next_sentence_label``,
    from :func:`make_nsp_examples`) into BERT masked-LM batches.

    The masking is transformers' ``DataCollatorForLanguageModeling`` (``whole_word=True``: its
    ``whole_word_mask``, which replaces every token of a selected word by ``[MASK]``: no random or kept
    tokens there). It runs once per example inside ``torch.random.fork_rng`` with
    :func:`example_seed` ``(seed, index)``: a row's mask depends only on the example and the seed (not on
    the batch, the padding or the global RNG), so a resumed run sees the same masks. transformers' own
    ``seed`` would give one stream per process, whose state depends on the batches already drawn.

    Special tokens (``tokenizer.all_special_ids``: [CLS], [SEP], [PAD], [MASK], [UNK], ...) are never
    selected. Returns ``input_ids``, ``attention_mask``, ``labels`` (-100 where not predicted), all
    ``[batch, max_len]`` and right-padded, and, when the examples have them, ``token_type_ids``
    ``[batch, max_len]`` and ``next_sentence_label`` ``[batch]``.
    """

    tokenizer: Any
    mlm_probability: float = 0.15
    whole_word: bool = False
    seed: int = 0
    _collator: Any = field(init=False, repr=False)
    _rule: tuple[str, str] | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        from transformers import DataCollatorForLanguageModeling

        if self.tokenizer.mask_token is None or self.tokenizer.pad_token_id is None:
            raise ValueError("masked LM needs a tokenizer with a mask token and a pad token")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1); got {self.mlm_probability}")
        options: dict[str, Any] = {}
        if self.whole_word:
            if "whole_word_mask" not in {f.name for f in fields(DataCollatorForLanguageModeling)}:
                raise ValueError(
                    "whole-word masking needs a transformers version whose DataCollatorForLanguageModeling "
                    "has whole_word_mask; upgrade transformers or use whole_word=False"
                )
            self._rule = _word_rule(self.tokenizer)
            # transformers' whole-word masking only replaces by [MASK]: asking for that up front avoids its
            # warning, which some versions raise as a TypeError instead (fixed by transformers PR 42144).
            options = {"whole_word_mask": True, "mask_replace_prob": 1.0, "random_replace_prob": 0.0}
        self._collator = DataCollatorForLanguageModeling(
            tokenizer=self.tokenizer, mlm=True, mlm_probability=self.mlm_probability, **options
        )
        self._special_ids = torch.tensor(sorted(set(self.tokenizer.all_special_ids)), dtype=torch.long)

    def _mask_one(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, labels)`` ``[raw_len]`` of one example, drawn from the current global torch RNG."""
        rows = ids.clone().unsqueeze(0)  # [1, raw_len]; the collator writes into it
        special = torch.isin(rows, self._special_ids)  # [1, raw_len]
        offsets = None
        if self._rule is not None:
            tokens = self.tokenizer.convert_ids_to_tokens(ids.tolist())
            offsets = _word_offsets(word_start_mask(tokens, self._rule)).unsqueeze(0)  # [1, raw_len, 2]
        inputs, labels = self._collator.torch_mask_tokens(
            rows, special_tokens_mask=special, offset_mapping=offsets
        )
        return inputs[0], torch.as_tensor(labels[0], dtype=torch.long)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        inputs, labels = [], []
        # fork_rng restores the global CPU RNG afterwards: masking neither depends on nor disturbs the state
        # of the training loop (dropout, sampling). The masks are drawn on the CPU, so only the CPU generator
        # is seeded (torch.manual_seed would also reset the CUDA generators, which devices=[] leaves alone).
        with torch.random.fork_rng(devices=[]):
            for example in examples:
                ids, index = _example(example)
                torch.default_generator.manual_seed(example_seed(self.seed, index))
                masked, target = self._mask_one(ids)
                inputs.append(masked.tolist())
                labels.append(target.tolist())
        batch = {
            "input_ids": pad(inputs, self.tokenizer.pad_token_id),  # [batch, max_len]
            "attention_mask": pad([[1] * len(row) for row in inputs], 0),  # [batch, max_len]
            "labels": pad(labels, IGNORE_INDEX),  # [batch, max_len]
        }
        batch.update(_pair_fields(examples, self.tokenizer))
        return batch


def _pair_fields(examples: list[dict[str, Any]], tokenizer: Any) -> dict[str, torch.Tensor]:
    """``token_type_ids`` ``[batch, max_len]`` and ``next_sentence_label`` ``[batch]`` when the examples
    carry them (all or none)."""
    out: dict[str, torch.Tensor] = {}
    for key in ("token_type_ids", "next_sentence_label"):
        present = [key in example for example in examples]
        if not any(present):
            continue
        if not all(present):
            raise ValueError(f"some examples of the batch have {key!r} and some do not")
        if key == "token_type_ids":
            rows = [torch.as_tensor(example[key], dtype=torch.long).tolist() for example in examples]
            out[key] = pad(rows, getattr(tokenizer, "pad_token_type_id", 0))
        else:
            out[key] = torch.tensor([int(example[key]) for example in examples], dtype=torch.long)
    return out


# ---------------------------------------------------------------------------------------------------------
# next-sentence prediction (BERT)

# A sentence ends at . ! or ? (possibly followed by one closing quote or bracket) before whitespace, or at a
# blank line. Two lookbehinds because Python's re needs each one of fixed width.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'”’)\]])\s+|\n\s*\n")


def split_sentences(text: str) -> list[str]:
    """``text`` cut into sentences: after ``.``, ``!`` or ``?`` (optionally followed by a closing quote or
    bracket) and whitespace, and at blank lines; empty pieces dropped, whitespace stripped.

    Deliberately simple, and wrong on: abbreviations ("Dr. Smith", "e.g. this" are split), ellipses
    followed by a space, sentences ending without punctuation inside a paragraph (kept together),
    scripts without spaces between sentences (Chinese, Japanese "。") and ordinal dots ("the 3. place").
    For NSP only the order of the pieces matters, so a slightly wrong cut costs little.
    """
    return [piece.strip() for piece in _SENTENCE_BREAK.split(text) if piece and piece.strip()]


def _sentence_groups(sentences: Sequence[str], tokenizer: Any, budget: int) -> list[str]:
    """Consecutive sentences joined (with one space) into groups of at most ``budget`` tokens each; a longer
    sentence is a group of its own (the pair encoding truncates it)."""
    sentences = [s.strip() for s in sentences if s and s.strip()]
    if not sentences:
        return []
    counts = [len(ids) for ids in tokenizer(sentences, add_special_tokens=False)["input_ids"]]
    groups: list[str] = []
    current: list[str] = []
    size = 0
    for sentence, count in zip(sentences, counts):
        if current and size + count > budget:
            groups.append(" ".join(current))
            current, size = [], 0
        current.append(sentence)
        size += count
    groups.append(" ".join(current))
    return groups


def make_nsp_examples(
    documents: Sequence[Sequence[str]], tokenizer: Any, max_length: int, seed: int
) -> list[dict[str, Any]]:
    """BERT's next-sentence prediction pairs from ``documents`` (each a sequence of sentences, e.g. from
    :func:`split_sentences`).

    Each document's sentences are packed into groups of at most ``(max_length - specials) // 2`` tokens,
    so that a pair mostly fits. For every two consecutive groups A, B of a document: with probability 1/2
    the pair is (A, B), label :data:`IS_NEXT` (0); otherwise (A, a random group of a random other
    document), label :data:`NOT_NEXT` (1). A pair is encoded by the tokenizer's pair encoding
    (``[CLS] A [SEP] B [SEP]``, token types 0 then 1), truncated longest-first to ``max_length``.

    Returns ``{"ids": LongTensor [len], "token_type_ids": LongTensor [len], "next_sentence_label": int,
    "index": int}`` (``index`` = position in the list), the input of :class:`MaskedLMCollator`. Draws come
    from ``np.random.default_rng(seed)`` in document order: the same inputs and seed give the same pairs.
    """
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    if max_length < specials + 2:
        raise ValueError(
            f"max_length {max_length} leaves no room for two segments and {specials} special tokens"
        )
    budget = (max_length - specials) // 2
    groups = [_sentence_groups(document, tokenizer, budget) for document in documents]
    sources = [d for d, doc_groups in enumerate(groups) if doc_groups]  # documents a random B can come from
    position = {d: p for p, d in enumerate(sources)}
    if any(len(doc_groups) >= 2 for doc_groups in groups) and len(sources) < 2:
        raise ValueError("next-sentence prediction needs at least two non-empty documents (NotNext pairs)")

    rng = np.random.default_rng(seed)
    firsts: list[str] = []
    seconds: list[str] = []
    labels: list[int] = []
    for d, doc_groups in enumerate(groups):
        # a document with a pair is one of the sources: draw among the others by skipping its position
        # (a list of the others per document would cost documents^2 on a large corpus)
        own = position.get(d, 0)
        for i in range(len(doc_groups) - 1):
            if rng.random() < 0.5:
                second, label = doc_groups[i + 1], IS_NEXT
            else:
                pick = int(rng.integers(len(sources) - 1))
                other = groups[sources[pick + (pick >= own)]]
                second, label = other[rng.integers(len(other))], NOT_NEXT
            firsts.append(doc_groups[i])
            seconds.append(second)
            labels.append(label)
    if not firsts:
        return []
    encoded = tokenizer(
        firsts, seconds, truncation="longest_first", max_length=max_length, return_token_type_ids=True
    )
    return [
        {
            "ids": torch.tensor(ids, dtype=torch.long),
            "token_type_ids": torch.tensor(types, dtype=torch.long),
            "next_sentence_label": label,
            "index": index,
        }
        for index, (ids, types, label) in enumerate(
            zip(encoded["input_ids"], encoded["token_type_ids"], labels)
        )
    ]
