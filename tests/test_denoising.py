"""The denoising objectives' data (rlxf.data.denoising): T5 span corruption worked by hand and measured over
many blocks, BERT masked LM through transformers' collator (proportions, special tokens, determinism, whole
words) and next-sentence prediction pairs, on a tiny WordPiece tokenizer built here (no download)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from rlxf.data.denoising import (
    IS_NEXT,
    NOT_NEXT,
    MaskedLMCollator,
    SpanCorruptionCollator,
    compute_input_and_target_lengths,
    example_seed,
    make_nsp_examples,
    noise_counts,
    random_spans_noise_mask,
    reassemble,
    span_corrupt,
    split_sentences,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [".", "!", "?", "doc", "line", "the", "cat", "sat", "on", "mat", "un", "##believ", "##able"]
WORDS += ["play", "##ing"] + [str(d) for d in range(10)] + [f"##{d}" for d in range(10)]
PAD, UNK, CLS, SEP, MASK = range(5)


def build_bert_tokenizer():
    """A WordPiece tokenizer with a fixed 40-token vocabulary, BERT's normaliser, pre-tokeniser and
    [CLS] A [SEP] B [SEP] post-processor (token types 0 then 1)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


@pytest.fixture(scope="module")
def bert_tokenizer():
    return build_bert_tokenizer()


def runs(mask: np.ndarray) -> list[tuple[bool, int]]:
    """``[(value, length), ...]`` of the maximal runs of a bool array."""
    out: list[tuple[bool, int]] = []
    for value in mask.tolist():
        if out and out[-1][0] == value:
            out[-1] = (value, out[-1][1] + 1)
        else:
            out.append((value, 1))
    return out


# ---------------------------------------------------------------------------------------------------------
# span corruption


def test_span_corrupt_by_hand():
    ids = np.arange(10, 20)  # 10 11 12 13 14 15 16 17 18 19
    mask = np.array([0, 1, 1, 0, 0, 1, 0, 0, 1, 1], dtype=bool)  # spans {11, 12}, {15}, {18, 19}
    sentinels, eos = [99, 98, 97, 96], 1
    inputs, targets = span_corrupt(ids, mask, sentinels, eos)
    assert inputs.tolist() == [10, 99, 13, 14, 98, 16, 17, 97, 1]
    assert targets.tolist() == [99, 11, 12, 98, 15, 97, 18, 19, 1]
    assert reassemble(inputs, targets, sentinels, eos) == ids.tolist()

    # a block that opens with noise and ends with kept tokens numbers its spans the same way
    mask = np.array([1, 0, 0, 0, 0, 0, 0, 1, 1, 0], dtype=bool)
    inputs, targets = span_corrupt(ids, mask, sentinels, eos)
    assert inputs.tolist() == [99, 11, 12, 13, 14, 15, 16, 98, 19, 1]
    assert targets.tolist() == [99, 10, 98, 17, 18, 1]
    assert reassemble(inputs, targets, sentinels, eos) == ids.tolist()

    # no noise: the block and EOS, empty targets
    inputs, targets = span_corrupt(ids, np.zeros(10, dtype=bool), sentinels, eos)
    assert inputs.tolist() == [*range(10, 20), 1] and targets.tolist() == [1]


def test_span_corrupt_rejects_more_spans_than_sentinels_and_reassemble_bad_pairs():
    mask = np.array([1, 0, 1, 0, 1, 0], dtype=bool)
    with pytest.raises(ValueError, match="3 noise spans but only 2 sentinel ids"):
        span_corrupt(np.arange(6), mask, [99, 98], 1)
    with pytest.raises(ValueError, match="end with eos_id"):
        reassemble([5, 99], [99, 6, 1], [99], 1)
    with pytest.raises(ValueError, match="in the inputs but not in the targets"):
        reassemble([5, 98, 1], [99, 6, 1], [99, 98], 1)


def test_noise_counts_by_hand():
    # 512 * 0.15 = 76.8 -> 77 noise tokens; 77 / 3 = 25.67 -> 26 spans
    assert noise_counts(512, 0.15, 3.0) == (77, 26)
    # 10 * 0.15 = 1.5 rounds half to even -> 2; 2 / 3 -> 1 span
    assert noise_counts(10, 0.15, 3.0) == (2, 1)
    # 5 * 0.9 = 4.5 -> 4 noise tokens, 1 kept: 4 spans asked, capped by the single kept token
    assert noise_counts(5, 0.9, 1.0) == (4, 1)
    # 3 * 0.01 = 0.03 -> 0, raised to one noise token
    assert noise_counts(3, 0.01, 3.0) == (1, 1)


def test_noise_mask_shape_follows_t5():
    rng = np.random.default_rng(0)
    for length in (2, 3, 10, 37, 512):
        mask = random_spans_noise_mask(length, 0.15, 3.0, rng)
        n_noise, n_spans = noise_counts(length, 0.15, 3.0)
        pieces = runs(mask)
        assert mask.shape == (length,) and int(mask.sum()) == n_noise
        # kept, noise, kept, noise, ...: starts kept, ends in noise, one noise run per span
        assert pieces[0][0] is False and pieces[-1][0] is True
        assert sum(1 for value, _ in pieces if value) == n_spans
    assert random_spans_noise_mask(1, 0.15, 3.0, rng).tolist() == [False]
    with pytest.raises(ValueError, match="noise_density"):
        random_spans_noise_mask(10, 1.5, 3.0, rng)


def test_noise_share_and_span_length_over_many_blocks():
    rng = np.random.default_rng(1)
    for density, mean_span in ((0.15, 3.0), (0.3, 8.0)):
        masks = np.stack([random_spans_noise_mask(512, density, mean_span, rng) for _ in range(400)])
        spans = [length for mask in masks for value, length in runs(mask) if value]
        assert abs(masks.mean() - density) <= 0.02
        assert abs(np.mean(spans) - mean_span) <= 0.5
        # the spans really are random: varied lengths, noise over both halves of the block (the second a
        # little more: T5's blocks open with kept tokens and close with noise) and at every position but 0
        assert np.std(spans) > 1.0
        for half in (masks[:, :256], masks[:, 256:]):
            assert abs(half.mean() - density) < 0.03
        assert not masks[:, 0].any() and masks[:, 1:].any(axis=0).all() and masks[:, -1].all()
        assert len({mask.tobytes() for mask in masks}) == 400


def test_reassembly_gives_back_200_random_blocks():
    rng = np.random.default_rng(2)
    sentinels = list(range(399, 99, -1))  # like T5: <extra_id_0> is the highest id; enough for 200 spans
    for _ in range(200):
        length = int(rng.integers(2, 400))
        density = float(rng.uniform(0.05, 0.5))
        mean_span = float(rng.uniform(1.0, 10.0))
        ids = rng.integers(400, 5000, size=length)
        mask = random_spans_noise_mask(length, density, mean_span, rng)
        inputs, targets = span_corrupt(ids, mask, sentinels, 1)
        n_noise, n_spans = noise_counts(length, density, mean_span)
        assert len(inputs) == length - n_noise + n_spans + 1 and len(targets) == n_noise + n_spans + 1
        assert reassemble(inputs, targets, sentinels, 1) == ids.tolist()


@pytest.mark.parametrize(
    "inputs_length, density, mean_span",
    [(512, 0.15, 3.0), (128, 0.15, 3.0), (256, 0.3, 8.0), (64, 0.5, 2.0), (100, 0.25, 1.0), (16, 0.15, 3.0)],
)
def test_input_and_target_lengths_are_exact(inputs_length, density, mean_span):
    raw, targets_length = compute_input_and_target_lengths(inputs_length, density, mean_span)
    rng = np.random.default_rng(3)
    for _ in range(5):
        mask = random_spans_noise_mask(raw, density, mean_span, rng)
        inputs, targets = span_corrupt(np.arange(1000, 1000 + raw), mask, list(range(100)), 1)
        assert (len(inputs), len(targets)) == (inputs_length, targets_length)
    # one more raw token would not fit
    n_noise, n_spans = noise_counts(raw + 1, density, mean_span)
    assert raw + 1 - n_noise + n_spans + 1 > inputs_length


def test_input_and_target_lengths_match_t5():
    # T5's span corruption setting: 568 raw tokens -> 512 inputs, 114 targets (Raffel et al. 2020)
    assert compute_input_and_target_lengths(512, 0.15, 3.0) == (568, 114)
    with pytest.raises(ValueError, match="too short"):
        compute_input_and_target_lengths(2, 0.15, 3.0)


def test_span_collator_pads_and_is_deterministic_per_example():
    collate = SpanCorruptionCollator(sentinel_ids=list(range(99, 49, -1)), eos_id=1, pad_id=0, seed=7)
    examples = [{"ids": torch.arange(200, 200 + n), "index": i} for i, n in [(0, 40), (5, 25), (9, 33)]]
    batch = collate(examples)
    again = collate(examples[::-1])
    alone = collate([examples[1]])

    for row, example in enumerate(examples):
        ids = example["ids"].numpy()
        mask = random_spans_noise_mask(len(ids), 0.15, 3.0, np.random.default_rng([7, example["index"]]))
        inputs, targets = span_corrupt(ids, mask, collate.sentinel_ids, 1)
        n_in, n_out = len(inputs), len(targets)
        assert batch["input_ids"][row, :n_in].tolist() == inputs.tolist()
        assert batch["input_ids"][row, n_in:].eq(0).all()
        assert batch["attention_mask"][row].tolist() == [1] * n_in + [0] * (
            batch["input_ids"].shape[1] - n_in
        )
        assert batch["labels"][row, :n_out].tolist() == targets.tolist()
        assert batch["labels"][row, n_out:].eq(-100).all()
        # same row whatever the batch order (the widths may differ: compare the unpadded parts)
        back = len(examples) - 1 - row
        assert again["input_ids"][back, :n_in].tolist() == inputs.tolist()
        assert again["labels"][back, :n_out].tolist() == targets.tolist()
    assert alone["input_ids"][0].tolist() == batch["input_ids"][1, : alone["input_ids"].shape[1]].tolist()
    # noise tokens: round(40 * .15) = 6, round(25 * .15) = round(3.75) = 4, round(33 * .15) = round(4.95) = 5
    assert batch["noise_tokens"] == 6 + 4 + 5

    other_seed = SpanCorruptionCollator(sentinel_ids=collate.sentinel_ids, eos_id=1, pad_id=0, seed=8)
    assert not torch.equal(other_seed(examples)["labels"], batch["labels"])


# ---------------------------------------------------------------------------------------------------------
# masked LM


def random_examples(tokenizer, count: int, length: int, seed: int) -> list[dict]:
    """[CLS] words [SEP] words [SEP] with an [UNK] inside: ordinary ids drawn at random."""
    rng = np.random.default_rng(seed)
    ordinary = np.arange(len(SPECIALS), len(tokenizer))
    examples = []
    for index in range(count):
        words = rng.choice(ordinary, size=length - 4).tolist()
        half = len(words) // 2
        ids = [CLS, *words[:half], UNK, SEP, *words[half:], SEP]
        examples.append({"ids": torch.tensor(ids), "index": index})
    return examples


def test_mlm_proportions_and_special_tokens(bert_tokenizer):
    collate = MaskedLMCollator(bert_tokenizer, seed=0)
    examples = random_examples(bert_tokenizer, 64, 128, seed=0)
    batch = collate(examples)
    originals = torch.stack([example["ids"] for example in examples])
    labels, inputs = batch["labels"], batch["input_ids"]

    special = torch.isin(originals, torch.tensor([CLS, SEP, UNK]))
    assert labels[special].eq(-100).all() and torch.equal(inputs[special], originals[special])
    # unpredicted tokens are untouched; labels hold the original ids
    predicted = labels != -100
    assert torch.equal(inputs[~predicted], originals[~predicted])
    assert torch.equal(labels[predicted], originals[predicted])

    # 64 * 124 ordinary tokens, 15% predicted: about 1190, of which 80% [MASK], 10% random, 10% unchanged
    assert abs(predicted.sum().item() / (~special).sum().item() - 0.15) < 0.02
    n = predicted.sum().item()
    masked = (inputs[predicted] == MASK).sum().item() / n
    unchanged = (inputs[predicted] == originals[predicted]).sum().item() / n
    replaced = 1 - masked - unchanged
    assert abs(masked - 0.8) < 0.03 and abs(replaced - 0.1) < 0.03 and abs(unchanged - 0.1) < 0.03
    assert batch["attention_mask"].eq(1).all() and "token_type_ids" not in batch


def test_mlm_is_deterministic_per_example_and_leaves_the_global_rng(bert_tokenizer):
    collate = MaskedLMCollator(bert_tokenizer, seed=3)
    examples = random_examples(bert_tokenizer, 6, 40, seed=1)
    examples[2] = {"ids": examples[2]["ids"][:25], "index": 2}  # a shorter one: padding

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    batch = collate(examples)
    assert torch.equal(torch.rand(3), expected_next)

    again = collate(examples[::-1])
    alone = collate([examples[2]])
    for row in range(6):
        back = 5 - row
        assert torch.equal(again["input_ids"][back], batch["input_ids"][row])
        assert torch.equal(again["labels"][back], batch["labels"][row])
    assert torch.equal(alone["input_ids"][0], batch["input_ids"][2, :25])
    assert batch["input_ids"][2, 25:].eq(PAD).all() and batch["labels"][2, 25:].eq(-100).all()
    assert batch["attention_mask"][2].tolist() == [1] * 25 + [0] * 15
    assert not torch.equal(MaskedLMCollator(bert_tokenizer, seed=4)(examples)["labels"], batch["labels"])
    assert example_seed(3, 2) != example_seed(2, 3)


def test_mlm_passes_nsp_fields_through(bert_tokenizer):
    collate = MaskedLMCollator(bert_tokenizer, seed=0)
    examples = [
        {"ids": torch.tensor([CLS, 5, 6, SEP, 7, SEP]), "token_type_ids": torch.tensor([0, 0, 0, 0, 1, 1])},
        {"ids": torch.tensor([CLS, 5, SEP, 8, SEP]), "token_type_ids": torch.tensor([0, 0, 0, 1, 1])},
    ]
    for index, label in enumerate((IS_NEXT, NOT_NEXT)):
        examples[index].update(index=index, next_sentence_label=label)
    batch = collate(examples)
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 0]]
    assert batch["next_sentence_label"].tolist() == [0, 1]
    del examples[1]["next_sentence_label"]
    with pytest.raises(ValueError, match="next_sentence_label"):
        collate(examples)


def test_mlm_whole_word_masks_every_piece_of_a_word(bert_tokenizer):
    collate = MaskedLMCollator(bert_tokenizer, mlm_probability=0.3, whole_word=True, seed=0)
    text = "the cat unbelievable playing on the mat unbelievable sat playing"
    encoded = bert_tokenizer(text)["input_ids"]
    tokens = bert_tokenizer.convert_ids_to_tokens(encoded)
    assert tokens[3:6] == ["un", "##believ", "##able"] and tokens[6:8] == ["play", "##ing"]
    # word number of each token (-1 on [CLS], [SEP])
    words, word = [], -1
    for token in tokens:
        if token in ("[CLS]", "[SEP]"):
            words.append(-1)
            continue
        word += 0 if token.startswith("##") else 1
        words.append(word)
    words = torch.tensor(words)

    batch = collate([{"ids": torch.tensor(encoded), "index": i} for i in range(200)])
    predicted = batch["labels"] != -100
    assert predicted[:, words == -1].sum() == 0
    for w in range(word + 1):
        pieces = predicted[:, words == w]
        assert (pieces.all(dim=1) | ~pieces.any(dim=1)).all(), f"word {w} masked in part"
    # whole-word masking in transformers replaces by [MASK] only; about 30% of the 10 words are picked
    assert batch["input_ids"][predicted].eq(MASK).all()
    share = predicted[:, words >= 0].float().mean().item()
    assert 0.2 < share < 0.4


def test_mlm_needs_a_mask_token(tiny_tokenizer):
    with pytest.raises(ValueError, match="mask token"):
        MaskedLMCollator(tiny_tokenizer)


# ---------------------------------------------------------------------------------------------------------
# next-sentence prediction


def numbered_documents(count: int, sentences: int) -> list[list[str]]:
    return [[f"doc {d} line {k} ." for k in range(sentences)] for d in range(count)]


def lines(tokenizer, ids: torch.Tensor) -> list[tuple[int, int]]:
    """The (doc, line) numbers of the sentences in ``ids``."""
    text = tokenizer.decode(ids.tolist(), skip_special_tokens=True)
    return [(int(d), int(k)) for d, k in re.findall(r"doc (\d+) line (\d+)", text)]


def test_nsp_pairs(bert_tokenizer):
    documents = numbered_documents(60, 12)
    examples = make_nsp_examples(documents, bert_tokenizer, max_length=40, seed=0)
    assert len(examples) >= 200
    assert [example["index"] for example in examples] == list(range(len(examples)))
    share = np.mean([example["next_sentence_label"] for example in examples])
    assert abs(share - 0.5) <= 0.1

    for example in examples:
        ids, types = example["ids"], example["token_type_ids"]
        assert len(ids) <= 40 and ids[0] == CLS and ids[-1] == SEP
        # token types: 0 over [CLS] A [SEP], then 1 over B [SEP]
        first_sep = ids.tolist().index(SEP)
        assert types.tolist() == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
        a, b = lines(bert_tokenizer, ids[: first_sep + 1]), lines(bert_tokenizer, ids[first_sep + 1 :])
        assert a and b
        # sentences inside a segment are consecutive lines of one document
        for segment in (a, b):
            assert all(
                doc == segment[0][0] and line == segment[0][1] + i for i, (doc, line) in enumerate(segment)
            )
        if example["next_sentence_label"] == IS_NEXT:
            assert b[0] == (a[-1][0], a[-1][1] + 1)
        else:
            assert b[0][0] != a[0][0]

    assert [e["ids"].tolist() for e in make_nsp_examples(documents, bert_tokenizer, 40, seed=0)] == [
        e["ids"].tolist() for e in examples
    ]
    other = make_nsp_examples(documents, bert_tokenizer, 40, seed=1)
    assert [e["next_sentence_label"] for e in other] != [e["next_sentence_label"] for e in examples]


def test_nsp_groups_truncation_and_errors(bert_tokenizer):
    # max_length 20 leaves (20 - 3) // 2 = 8 tokens per group: one "doc d line k ." (5 tokens) each,
    # so 12 sentences give 11 pairs per document
    examples = make_nsp_examples(numbered_documents(3, 12), bert_tokenizer, max_length=20, seed=0)
    assert len(examples) == 33
    long_sentence = " ".join(["the cat sat on the mat"] * 10) + " ."
    documents = [[long_sentence, long_sentence], ["doc 1 line 0 .", "doc 1 line 1 ."]]
    examples = make_nsp_examples(documents, bert_tokenizer, max_length=20, seed=0)
    assert len(examples) == 2 and all(len(e["ids"]) <= 20 and e["ids"][-1] == SEP for e in examples)
    assert len(examples[0]["ids"]) == 20  # the long pair was cut, longest first
    with pytest.raises(ValueError, match="two non-empty documents"):
        make_nsp_examples([["doc 0 line 0 .", "doc 0 line 1 ."], []], bert_tokenizer, 20, seed=0)
    assert make_nsp_examples([["one sentence ."]], bert_tokenizer, 20, seed=0) == []


def test_split_sentences():
    text = 'The cat sat. Did it?  Yes! It said "no." Then\nit slept.\n\nNew paragraph without a stop\n\nEnd'
    assert split_sentences(text) == [
        "The cat sat.",
        "Did it?",
        "Yes!",
        'It said "no."',
        "Then\nit slept.",
        "New paragraph without a stop",
        "End",
    ]
    # the known limit: abbreviations are cut
    assert split_sentences("Dr. Smith came. 3.5 stayed") == ["Dr.", "Smith came.", "3.5 stayed"]
    assert split_sentences("   ") == []
