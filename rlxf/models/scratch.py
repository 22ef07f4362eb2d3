"""Models from scratch: tokenizers trained on a corpus, model configurations by size, fresh models.

``rlxf pretrain`` starts from an existing model (continued pre-training) or from nothing. From nothing it
needs three pieces, all here:

* **A tokenizer trained on the corpus** (:func:`train_tokenizer`, with the ``tokenizers`` library, no
  download). The *family* (the model it serves) fixes the special tokens and the post-processor; the
  *kind* fixes the subword model with its normaliser, pre-tokeniser and decoder::

      family  special tokens, ids 0, 1, ... in this order             post-processor (pairs: token types)
      causal  <|endoftext|> (bos = eos; unk for bpe), <|pad|>          none: the packer appends eos
              [<|unk|> for wordpiece / unigram]
      bert    [PAD] [UNK] [CLS] [SEP] [MASK]                           [CLS] A [SEP] (B [SEP]), types 0 / 1
      t5      <pad> </s> <unk> <extra_id_0> .. <extra_id_{n-1}>       A </s> (B </s>)
      then the ``extra_special`` tokens (e.g. conditional training's control tokens)

      kind       model      normaliser              pre-tokeniser / decoder
      bpe        BPE        none                    ByteLevel: every string encodes, no unknown token
      wordpiece  WordPiece  BertNormalizer (lower)  BertPreTokenizer / WordPiece ("##" continues a word)
      unigram    Unigram    NFKC, whitespace runs   Metaspace ("▁" marks a space), SentencePiece-like
                            -> one space, stripped

  The unigram kind normalises whitespace as SentencePiece does by default (``remove_extra_whitespaces``,
  with which T5's vocabulary was built): a run of spaces, tabs or newlines is one space. Without it the
  indentation in code and docstrings becomes runs of lone "▁" tokens (13% of the stdlib-docstring
  corpus; 2.6% with it), which the span objective then mostly asks the model to predict. The text's
  layout is not kept, as in T5.

  A family's default kind is its model's: GPT-2's byte-level BPE (Radford et al. 2019, section 2.2),
  BERT's WordPiece (Devlin et al. 2019, section 3; Wu et al. 2016) and T5's SentencePiece unigram model
  (Raffel et al. 2020, section 2.2; Kudo 2018). Every kind works with every family: tests/test_scratch.py
  trains all nine pairs, encodes, decodes, saves and reloads them.

  The same texts give the same ``tokenizer.json``. tokenizers' own WordPiece and unigram trainers do not
  (hash-map order; huggingface/tokenizers#1794): see :func:`_continuation_tokens` and
  :func:`_canonical_unigram` for what is done about it.

  T5's sentinels ``<extra_id_k>`` get *increasing* ids in ``k`` (``<extra_id_0>`` = 3), unlike the
  released T5 vocabularies, where ``<extra_id_0>`` is the last id. Span corruption asks
  :func:`sentinel_ids` and so works with both.

* **A configuration** (:func:`build_config`) of one of four architectures in one of three sizes
  (:data:`SIZES`): GPT-2 and Llama (causal LM), BERT (masked LM, optionally with next-sentence
  prediction) and T5 (span corruption, encoder-decoder), with the tokenizer's vocabulary size and special
  ids. A user's own ``config.json`` is read by :func:`config_from_file` (and matched to a tokenizer by
  :func:`fit_config_to_tokenizer`).

* **A freshly initialised model** (:func:`model_for`, the objective's ``AutoModelFor*`` class) and the
  Auto class that loads the saved folder back (:func:`auto_class_for`).

:func:`add_control_tokens` appends the control tokens of conditional training (Korbak et al. 2023,
"Pretraining Language Models with Human Preferences", section 3: ``<|good|>`` / ``<|bad|>``) to a model
and its tokenizer, each new embedding row set to the mean of the existing rows (Hewitt 2021,
"Initializing New Word Embeddings for Pretrained Language Models"). The logit of a token is
``h . e_tok``; the mean row gives the new token ``h . mean(e) = mean(h . e)``, the average logit, so it
starts neither likely nor impossible, and the model's distribution over the old tokens barely moves
(a random row could give it any logit, a zero row one that is too high wherever logits are negative).

Left out: tokenizer training on a sample of a huge corpus (the caller chooses the texts), byte fallback
for WordPiece and unigram (their unknown characters become the unknown token), T5 v1.1's gated-GELU and
untied head (a user's ``config.json`` can ask for them), and initialisation schemes other than each
architecture's own ``_init_weights``. Seeding is the caller's: :func:`model_for` draws from torch's global
generator.
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

__all__ = [
    "ARCH_OBJECTIVE",
    "SIZES",
    "Arch",
    "Family",
    "ModelSize",
    "Objective",
    "Size",
    "TokenizerKind",
    "add_control_tokens",
    "auto_class_for",
    "build_config",
    "check_arch",
    "config_from_file",
    "count_parameters",
    "family_of",
    "fit_config_to_tokenizer",
    "model_for",
    "sentinel_ids",
    "train_tokenizer",
]

Arch = Literal["gpt2", "llama", "bert", "t5"]
Size = Literal["tiny", "small", "base"]
Objective = Literal["clm", "mlm", "span"]
TokenizerKind = Literal["bpe", "wordpiece", "unigram"]
Family = Literal["causal", "bert", "t5"]


@dataclass(frozen=True)
class ModelSize:
    """The shape of a transformer stack: ``layers`` blocks of width ``hidden`` with ``heads`` attention
    heads and a feed-forward inner width ``ffn``. T5 has ``layers`` blocks in the encoder *and* in the
    decoder."""

    layers: int
    hidden: int
    heads: int
    ffn: int


SIZES: dict[Size, ModelSize] = {
    # A few minutes of training on a 2-core CPU. Besides the embeddings: ~0.8M parameters (GPT-2, BERT),
    # ~1.0M (Llama: a gated MLP has three matrices), ~1.8M (T5: encoder + decoder with cross-attention).
    "tiny": ModelSize(layers=4, hidden=128, heads=4, ffn=512),
    # For a GPU: ~10.6M parameters besides the embeddings (GPT-2); depth and width of MiniLM-L6-H384.
    "small": ModelSize(layers=6, hidden=384, heads=6, ffn=1536),
    # BERT-base / GPT-2 small (Devlin et al. 2019; Radford et al. 2019): ~85M besides the embeddings.
    "base": ModelSize(layers=12, hidden=768, heads=12, ffn=3072),
}

ARCH_OBJECTIVE: dict[Arch, Objective] = {"gpt2": "clm", "llama": "clm", "bert": "mlm", "t5": "span"}

_ARCH_FAMILY: dict[Arch, Family] = {"gpt2": "causal", "llama": "causal", "bert": "bert", "t5": "t5"}

_OBJECTIVE_NAMES: dict[Objective, str] = {
    "clm": "causal language modelling",
    "mlm": "masked language modelling",
    "span": "span corruption",
}

CAUSAL_EOS = "<|endoftext|>"
CAUSAL_PAD = "<|pad|>"
CAUSAL_UNK = "<|unk|>"  # causal family with a WordPiece or unigram model only (see _family_specials)
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"
WORDPIECE_PREFIX = "##"
# tokenizers' UnigramTrainer::finalize: the score step between the characters it re-adds after pruning.
UNIGRAM_FALLBACK_STEP = 1e-4


def _choice(value: str, allowed: Any, what: str) -> None:
    if value not in get_args(allowed):
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(get_args(allowed))}")


def check_arch(arch: Arch, objective: Objective) -> None:
    """Raise ``ValueError`` unless ``objective`` is the pre-training objective of ``arch``
    (:data:`ARCH_OBJECTIVE`: gpt2 and llama -> clm, bert -> mlm, t5 -> span)."""
    _choice(arch, Arch, "architecture")
    _choice(objective, Objective, "objective")
    expected = ARCH_OBJECTIVE[arch]
    if objective != expected:
        pairs = "; ".join(
            f"{name} ({_OBJECTIVE_NAMES[name]}) with "
            + " or ".join(a for a, o in ARCH_OBJECTIVE.items() if o == name)
            for name in get_args(Objective)
        )
        raise ValueError(
            f"architecture {arch!r} is pre-trained with objective {expected!r}, not {objective!r}. "
            f"Each objective goes with its architectures: {pairs}"
        )


def family_of(arch: Arch) -> Family:
    """The tokenizer family of ``arch``: ``causal`` (gpt2, llama), ``bert`` or ``t5``."""
    _choice(arch, Arch, "architecture")
    return _ARCH_FAMILY[arch]


# ---------------------------------------------------------------------------------------------------------
# tokenizers


def _family_specials(family: Family, kind: TokenizerKind, num_sentinels: int) -> list[str]:
    """The family's special tokens in id order (ids 0, 1, ...)."""
    if family == "causal":
        # GPT-2's <|endoftext|> is also its unknown token, harmless for byte-level BPE, which never needs
        # one. WordPiece and unigram do produce unknown tokens: they get their own, so that an unknown
        # character does not read as the end of a document.
        return [CAUSAL_EOS, CAUSAL_PAD] + ([] if kind == "bpe" else [CAUSAL_UNK])
    if family == "bert":
        return list(BERT_SPECIALS)
    return [T5_PAD, T5_EOS, T5_UNK] + [f"<extra_id_{k}>" for k in range(num_sentinels)]


def _unk_of(family: Family, kind: TokenizerKind) -> str:
    if family == "causal":
        return CAUSAL_EOS if kind == "bpe" else CAUSAL_UNK
    return "[UNK]" if family == "bert" else T5_UNK


def _byte_alphabet() -> list[str]:
    """The 256 symbols of byte-level BPE (each byte mapped to a printable character, as in GPT-2), sorted."""
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def _backend(kind: TokenizerKind, unk: str) -> Any:
    """An untrained ``tokenizers.Tokenizer`` of ``kind``: model, normaliser, pre-tokeniser and decoder."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    if kind == "bpe":
        # The unknown token is named so that the model has one; byte-level BPE never produces it.
        tokenizer = Tokenizer(models.BPE(unk_token=unk))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
    elif kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token=unk, continuing_subword_prefix=WORDPIECE_PREFIX))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix=WORDPIECE_PREFIX)
    else:
        tokenizer = Tokenizer(models.Unigram())
        # SentencePiece's default normalisation (module docstring): NFKC, whitespace runs -> one space
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
        )
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tokenizer


def _continuation_tokens(backend: Any, texts: Iterable[str]) -> list[str]:
    """``##c`` for every character ``c`` that occurs inside a word (not first) of ``texts``, sorted.

    tokenizers' WordPiece trainer (its BPE trainer with a prefix) creates these tokens while iterating a
    hash map, so their ids change from run to run, and through the tie-break between merges of equal count
    (by the pair's ids) so do the merges (huggingface/tokenizers#1794). Passed to the trainer as special
    tokens they exist before it starts, with ids fixed by this order; the trainer would have added each of
    them anyway. (:func:`train_tokenizer` then removes them from the added, unsplittable, tokens.)
    """
    chars: set[str] = set()
    for text in texts:
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)):
            chars.update(word[1:])
    return [WORDPIECE_PREFIX + c for c in sorted(chars)]


def _drop_added_tokens(backend: Any, tokens: set[str]) -> Any:
    """``backend`` without ``tokens`` among its added tokens (they stay in the model's vocabulary)."""
    from tokenizers import Tokenizer

    data = json.loads(backend.to_str())
    data["added_tokens"] = [token for token in data["added_tokens"] if token["content"] not in tokens]
    return Tokenizer.from_str(json.dumps(data))


def _unigram_fallback(pieces: list[list[Any]]) -> list[str]:
    """The characters tokenizers' ``UnigramTrainer`` re-added after pruning them: the single characters
    scored ``lowest + k * UNIGRAM_FALLBACK_STEP`` for ``k = 0, 1, 2, ...`` without a gap. (The first one ties
    with the lowest piece of the model, which is counted in when it is a single character too: the two are
    indistinguishable.)"""
    lowest = min(score for _, score in pieces)
    at_step: dict[int, list[str]] = {}
    for piece, score in pieces:
        k = round((score - lowest) / UNIGRAM_FALLBACK_STEP)
        if len(piece) == 1 and abs(score - (lowest + k * UNIGRAM_FALLBACK_STEP)) < 1e-9:
            at_step.setdefault(k, []).append(piece)
    fallback: list[str] = []
    k = 0
    while k in at_step:
        fallback += at_step[k]
        k += 1
    return fallback


def _canonical_unigram(backend: Any, num_specials: int) -> Any:
    """``backend``'s unigram model without its run-to-run noise, so that the same texts give the same model.

    tokenizers' ``UnigramTrainer`` sums the EM statistics in hash-map order (scores differ between runs by
    ~1e-10, and pieces of equal score come out in any order) and hands the scores ``lowest + k * 1e-4`` to
    the characters it re-adds after pruning them (so that every character encodes) in hash order. Here
    those characters take the same scores in code-point order, every score is rounded to 1e-6
    (SentencePiece itself stores float32 scores, ~1e-6 at these magnitudes), and the pieces are ordered by
    score, ties by the piece. A score within ~1e-10 of a rounding boundary could still come out 1e-6 apart
    between two runs; on the corpora we tried (up to 0.8 MB of the standard library's docstrings), none did.
    """
    from tokenizers import Tokenizer

    data = json.loads(backend.to_str())
    vocab = data["model"]["vocab"]  # [[piece, score], ...]: the specials first, in their order
    specials, pieces = vocab[:num_specials], vocab[num_specials:]
    if pieces:
        fallback = _unigram_fallback(pieces)
        score_of = {piece: score for piece, score in pieces}
        # The same scores, whichever character the hash order gave each: the lowest to the first code point.
        rescored = dict(zip(sorted(fallback), sorted(score_of[piece] for piece in fallback)))
        pieces = [[piece, round(rescored.get(piece, score), 6)] for piece, score in pieces]
        pieces.sort(key=lambda item: (-item[1], item[0]))
    data["model"]["vocab"] = specials + pieces
    return Tokenizer.from_str(json.dumps(data))


def _post_processor(family: Family, backend: Any) -> Any:
    """BERT's ``[CLS] A [SEP] B [SEP]`` with token types 0 / 1, T5's ``A </s> B </s>``, or ``None``."""
    from tokenizers import processors

    def ids(*tokens: str) -> list[tuple[str, int]]:
        return [(token, backend.token_to_id(token)) for token in tokens]

    if family == "bert":
        return processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=ids("[CLS]", "[SEP]")
        )
    if family == "t5":
        return processors.TemplateProcessing(
            single=f"$A {T5_EOS}", pair=f"$A {T5_EOS} $B:1 {T5_EOS}:1", special_tokens=ids(T5_EOS)
        )
    return None


def train_tokenizer(
    texts: Iterable[str],
    kind: TokenizerKind,
    vocab_size: int,
    family: Family,
    *,
    num_sentinels: int = 100,
    extra_special: Sequence[str] = (),
) -> PreTrainedTokenizerFast:
    """A fast tokenizer of ``kind`` for ``family``, trained on ``texts`` (the module has the tables).

    ``vocab_size`` counts every token, the special ones included; the trainers stop below it when the
    corpus is too small to fill it (unigram keeps only pieces it expects to be used). Byte-level BPE needs
    at least 256 + the number of special tokens. ``num_sentinels`` is the number of T5 sentinels
    ``<extra_id_k>`` (t5 family only). ``extra_special`` (e.g. conditional training's control tokens)
    become special tokens after the family's own: never split, ids right after them.

    The same texts give the same tokenizer. WordPiece reads ``texts`` twice (an iterator is gathered
    into a list first). Only BERT's tokenizer returns ``token_type_ids`` (a Llama's forward rejects them).
    """
    from tokenizers import trainers
    from transformers import PreTrainedTokenizerFast

    _choice(kind, TokenizerKind, "tokenizer kind")
    _choice(family, Family, "tokenizer family")
    if num_sentinels < 0:
        raise ValueError(f"num_sentinels must be >= 0, got {num_sentinels}")
    if family != "t5":
        num_sentinels = 0
    specials = _family_specials(family, kind, num_sentinels)
    extra = [token for token in dict.fromkeys(extra_special) if token not in specials]
    specials += extra
    if vocab_size <= len(specials):
        raise ValueError(f"vocab_size {vocab_size} leaves no room beside the {len(specials)} special tokens")
    unk = _unk_of(family, kind)
    backend = _backend(kind, unk)
    if kind == "bpe":
        alphabet = _byte_alphabet()
        least = len(alphabet) + len(specials)
        if vocab_size < least:
            raise ValueError(
                f"a byte-level BPE vocabulary holds the {len(alphabet)} bytes and the {len(specials)} "
                f"special tokens: vocab_size must be at least {least}, got {vocab_size}"
            )
        # With the whole (sorted) byte alphabet given, no token is created in hash order: deterministic.
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
        )
        backend.train_from_iterator(texts, trainer=trainer)
    elif kind == "wordpiece":
        texts = texts if isinstance(texts, Sequence) else list(texts)
        continuation = _continuation_tokens(backend, texts)
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            special_tokens=specials + continuation,
            continuing_subword_prefix=WORDPIECE_PREFIX,
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        backend = _drop_added_tokens(backend, set(continuation))
    else:
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=specials, unk_token=unk, show_progress=False
        )
        backend.train_from_iterator(texts, trainer=trainer)
        backend = _canonical_unigram(backend, len(specials))
    backend.post_processor = _post_processor(family, backend)

    named: dict[str, str]
    if family == "causal":
        named = {"bos_token": CAUSAL_EOS, "eos_token": CAUSAL_EOS, "unk_token": unk, "pad_token": CAUSAL_PAD}
    elif family == "bert":
        named = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), BERT_SPECIALS))
    else:
        named = {"pad_token": T5_PAD, "eos_token": T5_EOS, "unk_token": T5_UNK}
    inputs = ["input_ids", "attention_mask"]
    if family == "bert":
        inputs.insert(1, "token_type_ids")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        # transformers 4's name; 5 reads it as extra_special_tokens
        additional_special_tokens=[f"<extra_id_{k}>" for k in range(num_sentinels)] + extra,
        model_input_names=inputs,
        **named,
    )


def sentinel_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """The ids of ``<extra_id_0>``, ``<extra_id_1>``, ... in the order of ``k``, up to the first missing
    one (increasing for :func:`train_tokenizer`'s, decreasing for the released T5 tokenizers).

    Raises ``ValueError`` when the tokenizer has no ``<extra_id_0>``: span corruption needs sentinels.
    """
    vocab = tokenizer.get_vocab()
    ids: list[int] = []
    while (token := f"<extra_id_{len(ids)}>") in vocab:
        ids.append(vocab[token])
    if not ids:
        raise ValueError(
            "the tokenizer has no sentinel tokens <extra_id_0>, <extra_id_1>, ...: span corruption needs "
            "them (a t5-family tokenizer trained by rlxf, or a T5 model's tokenizer, has them)"
        )
    return ids


# ---------------------------------------------------------------------------------------------------------
# configurations and models


def build_config(
    arch: Arch,
    size: Size,
    tokenizer: PreTrainedTokenizerFast,
    max_length: int,
    *,
    nsp: bool = False,
    dropout: float | None = None,
) -> PretrainedConfig:
    """The ``transformers`` configuration of ``arch`` at ``size`` for ``tokenizer`` and sequences of up to
    ``max_length`` tokens.

    ``vocab_size`` is ``len(tokenizer)``; the special ids are the tokenizer's (GPT-2 and Llama: bos, eos,
    pad; BERT: pad; T5: pad, eos, and pad as the decoder's start token). GPT-2's and BERT's learned
    positions and Llama's RoPE range cover ``max_length``; T5's relative position buckets need no length.

    Dropout (``dropout`` unset) is 0 for ``tiny``: a CPU run of a few minutes sees each block a few times
    and dropout only slows the descent; ``small`` and ``base`` keep the architectures' published dropout
    (0.1; Llama has none). A value sets every dropout of the model (longer runs on a small corpus overfit
    without it). GPT-2 and
    Llama tie their input and output embeddings (GPT-2's own choice, Llama's smallest models' too), so do
    BERT and T5 (their defaults). ``nsp`` asks for BERT's next-sentence-prediction head.
    """
    from transformers import BertConfig, GPT2Config, LlamaConfig, T5Config

    _choice(arch, Arch, "architecture")
    _choice(size, Size, "size")
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if nsp and arch != "bert":
        raise ValueError(
            f"next-sentence prediction is a BERT objective; architecture {arch!r} has no NSP head"
        )
    shape = SIZES[size]
    tiny = size == "tiny"
    if dropout is not None and not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    p = dropout if dropout is not None else (0.0 if tiny else None)  # None: the architecture's default
    vocab_size = len(tokenizer)
    if arch == "gpt2":
        # (summary_first_dropout: only GPT2DoubleHeadsModel's head uses it; 0 too, for one rule)
        names = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout")
        rates = dict.fromkeys(names, p) if p is not None else {}
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=max_length,
            n_embd=shape.hidden,
            n_layer=shape.layers,
            n_head=shape.heads,
            n_inner=shape.ffn,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
            architectures=["GPT2LMHeadModel"],
            **rates,
        )
    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=shape.hidden,
            intermediate_size=shape.ffn,
            num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads,
            num_key_value_heads=shape.heads,  # no grouped-query attention at these sizes
            max_position_embeddings=max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
            architectures=["LlamaForCausalLM"],
            attention_dropout=p or 0.0,
        )
    if arch == "bert":
        rates = {"hidden_dropout_prob": p, "attention_probs_dropout_prob": p} if p is not None else {}
        return BertConfig(
            vocab_size=vocab_size,
            hidden_size=shape.hidden,
            num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads,
            intermediate_size=shape.ffn,
            max_position_embeddings=max_length,
            type_vocab_size=2,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
            architectures=["BertForPreTraining" if nsp else "BertForMaskedLM"],
            **rates,
        )
    return T5Config(
        vocab_size=vocab_size,
        d_model=shape.hidden,
        d_kv=shape.hidden // shape.heads,
        d_ff=shape.ffn,
        num_layers=shape.layers,
        num_decoder_layers=shape.layers,
        num_heads=shape.heads,
        dropout_rate=p if p is not None else 0.1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,  # T5's _shift_right starts the labels with it
        tie_word_embeddings=True,
        architectures=["T5ForConditionalGeneration"],
    )


def config_from_file(path: str | Path) -> PretrainedConfig:
    """A user's model configuration: a ``.json`` file or a folder holding ``config.json``, read with
    ``AutoConfig.from_pretrained`` without the network.

    Raises ``FileNotFoundError`` naming the path when there is no such file or folder or the folder holds
    no ``config.json``, and ``ValueError`` naming the file when it is not a configuration transformers
    knows (not JSON, no ``model_type``, an unknown one).
    """
    from transformers import AutoConfig

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model config {path}: no such file or folder")
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"model config {path}: the folder holds no config.json")
    try:
        json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"model config {file}: not a JSON file ({error})") from error
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"model config {file}: {error}") from error


def fit_config_to_tokenizer(config: PretrainedConfig, tokenizer: PreTrainedTokenizerFast) -> PretrainedConfig:
    """A copy of ``config`` (e.g. a user's, from :func:`config_from_file`) with ``vocab_size`` =
    ``len(tokenizer)`` and the tokenizer's pad / bos / eos ids (and T5's decoder start = pad) in the
    fields the config has: a model built from scratch must match the tokenizer it is trained with."""
    config = copy.deepcopy(config)
    config.vocab_size = len(tokenizer)
    for field in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, field)
        if value is not None and hasattr(config, field):
            setattr(config, field, value)
    if getattr(config, "is_encoder_decoder", False) and tokenizer.pad_token_id is not None:
        config.decoder_start_token_id = tokenizer.pad_token_id
    return config


def auto_class_for(objective: Objective, nsp: bool = False) -> Any:
    """The ``transformers`` Auto class that builds (:func:`model_for`) and loads back a model saved for
    ``objective``: ``AutoModelForCausalLM`` (clm), ``AutoModelForMaskedLM`` (mlm),
    ``AutoModelForPreTraining`` (mlm with next-sentence prediction: ``BertForPreTraining``, both heads) or
    ``AutoModelForSeq2SeqLM`` (span).

    A folder saved from ``BertForPreTraining`` also loads with ``AutoModelForMaskedLM``
    (``BertForMaskedLM``): the encoder and the MLM head load, the pooler and the NSP head are left out
    (transformers reports them as unused weights), and the MLM logits are the same; tests/test_scratch.py
    checks both.
    """
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForPreTraining,
        AutoModelForSeq2SeqLM,
    )

    _choice(objective, Objective, "objective")
    if nsp and objective != "mlm":
        raise ValueError(f"next-sentence prediction goes with objective 'mlm', not {objective!r}")
    if objective == "clm":
        return AutoModelForCausalLM
    if objective == "mlm":
        return AutoModelForPreTraining if nsp else AutoModelForMaskedLM
    return AutoModelForSeq2SeqLM


def model_for(config: PretrainedConfig, objective: Objective, *, nsp: bool = False) -> PreTrainedModel:
    """A freshly initialised model of ``config`` with the head of ``objective`` (see :func:`auto_class_for`;
    ``nsp``: ``BertForPreTraining``, which needs a BERT config). The weights come from torch's global
    generator: the caller seeds it."""
    auto_class = auto_class_for(objective, nsp)
    if nsp:
        from transformers import BertForPreTraining

        if config.model_type != "bert":
            raise ValueError(
                f"next-sentence prediction needs a BERT config (BertForPreTraining); got model_type "
                f"{config.model_type!r}"
            )
        return BertForPreTraining(config)
    try:
        return auto_class.from_config(config)
    except ValueError as error:  # transformers' message lists every model type it knows
        raise ValueError(
            f"model_type {config.model_type!r} has no {_OBJECTIVE_NAMES[objective]} model in transformers "
            f"({auto_class.__name__} does not know it)"
        ) from error


def count_parameters(model: torch.nn.Module, *, embeddings: bool = True) -> int:
    """The number of parameters of ``model``, a tied weight once. ``embeddings=False`` leaves out every
    embedding table (token, position, token type, T5's relative position biases) and an untied output
    matrix: Kaplan et al. 2020's non-embedding count ``N``, the one that sets the compute of a step."""
    skip: set[int] = set()
    if not embeddings:
        skip = {id(module.weight) for module in model.modules() if isinstance(module, torch.nn.Embedding)}
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if output is not None:
            skip.add(id(output.weight))
    # parameters() yields a tensor shared by two modules once
    return sum(parameter.numel() for parameter in model.parameters() if id(parameter) not in skip)


# ---------------------------------------------------------------------------------------------------------
# control tokens


def _add_special_tokens(tokenizer: PreTrainedTokenizerFast, tokens: list[str]) -> None:
    """Append ``tokens`` to the tokenizer's additional special tokens, keeping those it has (T5's
    sentinels): the keyword is ``replace_additional_special_tokens`` in transformers 4 and
    ``replace_extra_special_tokens`` in 5."""
    parameters = inspect.signature(tokenizer.add_special_tokens).parameters
    keep = next(
        {name: False}
        for name in ("replace_extra_special_tokens", "replace_additional_special_tokens")
        if name in parameters
    )
    tokenizer.add_special_tokens({"additional_special_tokens": tokens}, **keep)


@torch.no_grad()
def add_control_tokens(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, tokens: Sequence[str]
) -> list[int]:
    """Add ``tokens`` (e.g. ``<|good|>``, ``<|bad|>``) to ``tokenizer`` as special tokens and to ``model``'s
    embeddings; returns their ids in the order of ``tokens``.

    Tokens the tokenizer already has keep their id and their rows. New tokens take the next ids; the
    embedding grows when it has no spare rows. Each new input-embedding row is the mean of the rows of
    the tokens that were there before (Hewitt 2021; see the module), and so is each new row of an untied
    output matrix; a new entry of an output bias is the mean of the old ones. A new token's logit thus
    starts at the average logit.
    """
    new = [token for token in dict.fromkeys(tokens) if token not in tokenizer.get_vocab()]
    if new:
        # Rows of real tokens only: a vocabulary padded to a multiple (T5's 32128 rows for 32100 tokens)
        # has untrained rows past the last token.
        known = min(len(tokenizer), model.get_input_embeddings().weight.shape[0])
        _add_special_tokens(tokenizer, new)
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            # mean_resizing=False: the new rows are set to the exact mean below (transformers' own mean
            # resizing draws them around the mean).
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        new_ids = tokenizer.convert_tokens_to_ids(new)
        input_weight = model.get_input_embeddings().weight  # [vocab, hidden]
        input_weight[new_ids] = input_weight[:known].mean(dim=0)
        output = model.get_output_embeddings()
        if output is not None:
            if output.weight is not input_weight:  # untied: its own rows
                output.weight[new_ids] = output.weight[:known].mean(dim=0)
            bias = getattr(output, "bias", None)
            if bias is not None:  # [vocab]
                bias[new_ids] = bias[:known].mean()
    return tokenizer.convert_tokens_to_ids(list(tokens))
