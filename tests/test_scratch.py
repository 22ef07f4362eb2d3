"""Models from scratch (rlxf/models/scratch.py): tokenizers trained here on a few sentences, the four
architectures at size tiny (forward, save, reload), the documented shapes of small and base, control tokens.
No download: every tokenizer and model is built in the test."""

from __future__ import annotations

import copy
import json
import math
import random

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig

from rlxf.models.scratch import (
    ARCH_OBJECTIVE,
    SIZES,
    ModelSize,
    add_control_tokens,
    auto_class_for,
    build_config,
    check_arch,
    config_from_file,
    count_parameters,
    family_of,
    fit_config_to_tokenizer,
    model_for,
    sentinel_ids,
    train_tokenizer,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A small cat sleeps on the warm window sill.",
    "Rain fell on the old town all night long.",
    "She reads a book about the history of the sea.",
    "We walked to the market and bought fresh bread.",
    "The river runs quietly under the stone bridge.",
    "My brother plays the piano every evening.",
    "Birds sing in the tall trees before sunrise.",
    "The train to the city leaves at seven o'clock.",
    "He wrote a long letter to his best friend.",
    "Children laugh and run across the green park.",
    "The soup was hot, salty and very good.",
    "Our teacher explained the lesson twice.",
    "A strong wind blew the leaves down the street.",
    "They painted the kitchen a bright yellow colour.",
    "The museum opens at nine and closes at five.",
    "I forgot my umbrella at the station again.",
    "The farmer grows apples, pears and plums.",
    "Snow covered the mountains in early winter.",
    "The dog barked at the postman this morning.",
    "She found an old coin buried in the garden.",
    "The library is quiet, warm and full of light.",
    "We watched the stars from the roof last night.",
    "The baker starts work long before dawn.",
    "His new bicycle is red with black wheels.",
    "The meeting was moved to Thursday afternoon.",
    "Fresh coffee smells wonderful in the morning.",
    "The ship sailed slowly out of the harbour.",
    "A young girl counted the boats on the lake.",
    "The old clock in the hall stopped at noon.",
    "They built a small house near the forest.",
    "The students asked many questions after class.",
    "Please close the door when you leave the room.",
    "The garden is full of roses and tulips in May.",
    "He cooked rice and beans for the whole family.",
    "The road to the village is narrow and steep.",
    "Two horses stood still in the foggy field.",
    "The shop on the corner sells maps and books.",
    "She learned to swim when she was six years old.",
    "The moon rose above the hills at midnight.",
    "Our neighbours keep three chickens and a goat.",
    "The concert ended with a long, loud song.",
    "A tired traveller rested under an oak tree.",
    "The price of milk went up again this week.",
    "He fixed the broken chair with glue and nails.",
    "The lake froze over during the cold January.",
    "We planted tomatoes and beans in the spring.",
    "The cook tasted the sauce and added pepper.",
    "Thunder rolled over the valley after lunch.",
    "The quiet town woke slowly to a sunny day.",
]

VOCAB = 400
MAX_LENGTH = 64
DEFAULT_KIND = {"causal": "bpe", "bert": "wordpiece", "t5": "unigram"}
ARCHS = ["gpt2", "llama", "bert", "t5"]

_tokenizers: dict[tuple[str, str], object] = {}


def tokenizer_for(family: str, kind: str | None = None):
    """A tokenizer of ``family`` trained on CORPUS (cached: training is deterministic, tests only read it)."""
    key = (family, kind or DEFAULT_KIND[family])
    if key not in _tokenizers:
        _tokenizers[key] = train_tokenizer(CORPUS, key[1], VOCAB, family)
    return _tokenizers[key]


def fresh(arch: str, *, nsp: bool = False, seed: int = 0):
    """(tokenizer, model) of ``arch`` at size tiny, seeded."""
    tokenizer = tokenizer_for(family_of(arch))
    config = build_config(arch, "tiny", tokenizer, MAX_LENGTH, nsp=nsp)
    torch.manual_seed(seed)
    return tokenizer, model_for(config, ARCH_OBJECTIVE[arch], nsp=nsp)


def batch_for(arch: str, tokenizer) -> dict[str, torch.Tensor]:
    """Model inputs with labels for one forward pass of ``arch``'s objective (no masking: a smoke batch)."""
    enc = dict(tokenizer(CORPUS[:3], padding=True, return_tensors="pt"))  # [3, seq]
    if arch == "t5":
        enc["labels"] = tokenizer(CORPUS[3:6], padding=True, return_tensors="pt").input_ids
        enc["labels"][enc["labels"] == tokenizer.pad_token_id] = -100
    else:
        enc["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return enc


# ---------------------------------------------------------------------------------------------------------
# architectures, objectives, sizes


def test_check_arch_accepts_each_pair_and_names_the_right_objective():
    for arch, objective in ARCH_OBJECTIVE.items():
        check_arch(arch, objective)
    assert ARCH_OBJECTIVE == {"gpt2": "clm", "llama": "clm", "bert": "mlm", "t5": "span"}
    with pytest.raises(
        ValueError, match=r"architecture 't5' is pre-trained with objective 'span', not 'clm'"
    ) as info:
        check_arch("t5", "clm")
    assert "clm (causal language modelling) with gpt2 or llama" in str(info.value)
    assert "mlm (masked language modelling) with bert" in str(info.value)
    with pytest.raises(ValueError, match="'bert' is pre-trained with objective 'mlm'"):
        check_arch("bert", "span")
    with pytest.raises(ValueError, match="unknown architecture 'roberta'"):
        check_arch("roberta", "mlm")
    with pytest.raises(ValueError, match="unknown objective 'dpo'"):
        check_arch("gpt2", "dpo")


def test_family_of():
    assert [family_of(arch) for arch in ARCHS] == ["causal", "causal", "bert", "t5"]


def test_sizes_have_the_documented_shapes():
    assert SIZES["tiny"] == ModelSize(layers=4, hidden=128, heads=4, ffn=512)
    assert SIZES["small"] == ModelSize(layers=6, hidden=384, heads=6, ffn=1536)
    assert SIZES["base"] == ModelSize(layers=12, hidden=768, heads=12, ffn=3072)


@pytest.mark.parametrize("size", ["small", "base"])
def test_small_and_base_configs_have_the_documented_shapes(size):
    # configurations only: no model of these sizes is built here
    s = SIZES[size]
    gpt2 = build_config("gpt2", size, tokenizer_for("causal"), 1024)
    assert (gpt2.n_layer, gpt2.n_embd, gpt2.n_head, gpt2.n_inner, gpt2.n_positions) == (
        s.layers,
        s.hidden,
        s.heads,
        s.ffn,
        1024,
    )
    assert gpt2.resid_pdrop == gpt2.embd_pdrop == gpt2.attn_pdrop == 0.1  # published dropout kept
    llama = build_config("llama", size, tokenizer_for("causal"), 1024)
    assert (
        llama.num_hidden_layers,
        llama.hidden_size,
        llama.num_attention_heads,
        llama.intermediate_size,
    ) == (
        s.layers,
        s.hidden,
        s.heads,
        s.ffn,
    )
    assert llama.num_key_value_heads == s.heads and llama.max_position_embeddings == 1024
    bert = build_config("bert", size, tokenizer_for("bert"), 512)
    assert (bert.num_hidden_layers, bert.hidden_size, bert.num_attention_heads, bert.intermediate_size) == (
        s.layers,
        s.hidden,
        s.heads,
        s.ffn,
    )
    assert bert.max_position_embeddings == 512 and bert.hidden_dropout_prob == 0.1
    t5 = build_config("t5", size, tokenizer_for("t5"), 512)
    assert (t5.num_layers, t5.num_decoder_layers, t5.d_model, t5.num_heads, t5.d_ff) == (
        s.layers,
        s.layers,
        s.hidden,
        s.heads,
        s.ffn,
    )
    assert t5.d_kv * t5.num_heads == s.hidden and t5.dropout_rate == 0.1


@pytest.mark.parametrize("arch", ARCHS)
def test_configs_carry_the_tokenizer(arch):
    tokenizer = tokenizer_for(family_of(arch))
    config = build_config(arch, "tiny", tokenizer, MAX_LENGTH)
    assert config.vocab_size == len(tokenizer)
    assert config.pad_token_id == tokenizer.pad_token_id
    assert config.tie_word_embeddings is True
    assert config.architectures == [
        {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "bert": "BertForMaskedLM"}.get(
            arch, "T5ForConditionalGeneration"
        )
    ]
    if arch in ("gpt2", "llama"):
        assert config.bos_token_id == config.eos_token_id == tokenizer.eos_token_id == 0
    if arch == "t5":
        assert (config.pad_token_id, config.eos_token_id, config.decoder_start_token_id) == (0, 1, 0)
    # tiny: no dropout anywhere
    dropouts = [v for k, v in config.to_dict().items() if "drop" in k and isinstance(v, float)]
    assert dropouts and all(v == 0.0 for v in dropouts)
    assert build_config("bert", "tiny", tokenizer_for("bert"), MAX_LENGTH, nsp=True).architectures == [
        "BertForPreTraining"
    ]
    with pytest.raises(ValueError, match="next-sentence prediction is a BERT objective"):
        build_config("gpt2", "tiny", tokenizer_for("causal"), MAX_LENGTH, nsp=True)
    # dropout given: every dropout of the model takes it (attention dropout included)
    config = build_config(arch, "tiny", tokenizer, MAX_LENGTH, dropout=0.1)
    dropouts = {k: v for k, v in config.to_dict().items() if "drop" in k and isinstance(v, float)}
    wanted = {"llama": {"attention_dropout"}, "t5": {"dropout_rate"}}.get(arch)
    assert all(v == 0.1 for k, v in dropouts.items() if wanted is None or k in wanted), dropouts
    with pytest.raises(ValueError, match="dropout must be in"):
        build_config(arch, "tiny", tokenizer, MAX_LENGTH, dropout=1.0)


# ---------------------------------------------------------------------------------------------------------
# tiny models: forward, save, reload


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_forward_save_and_identical_reload(arch, tmp_path):
    tokenizer, model = fresh(arch)
    assert len(tokenizer) <= VOCAB
    model.eval()
    batch = batch_for(arch, tokenizer)
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out.loss)
    # A fresh model predicts nearly uniformly: cross-entropy close to log(vocabulary size).
    assert abs(out.loss.item() - math.log(len(tokenizer))) < 1.0

    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    auto_class = auto_class_for(ARCH_OBJECTIVE[arch])
    reloaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    for text in CORPUS[:5] + ["Unseen words: zebra, quartz, 42!"]:
        assert reloaded_tokenizer(text).input_ids == tokenizer(text).input_ids
    assert reloaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert reloaded_tokenizer.all_special_tokens == tokenizer.all_special_tokens
    with torch.no_grad():
        again = reloaded(**batch)
    assert torch.equal(again.logits, out.logits)


def test_bert_with_nsp_reloads_with_both_auto_classes(tmp_path):
    tokenizer, model = fresh("bert", nsp=True)
    assert type(model).__name__ == "BertForPreTraining"
    model.eval()
    enc = tokenizer(CORPUS[:2], CORPUS[2:4], padding=True, return_tensors="pt")
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    with torch.no_grad():
        out = model(**enc, labels=labels, next_sentence_label=torch.tensor([0, 1]))
    assert torch.isfinite(out.loss)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    both = auto_class_for("mlm", nsp=True).from_pretrained(tmp_path).eval()
    assert type(both).__name__ == "BertForPreTraining"
    mlm_only = auto_class_for("mlm").from_pretrained(tmp_path).eval()  # pooler and NSP head left out
    assert type(mlm_only).__name__ == "BertForMaskedLM"
    with torch.no_grad():
        again = both(**enc)
        masked = mlm_only(**enc)
    assert torch.equal(again.prediction_logits, out.prediction_logits)
    assert torch.equal(again.seq_relationship_logits, out.seq_relationship_logits)
    assert torch.equal(masked.logits, out.prediction_logits)


def test_auto_class_for_and_model_for_refuse_mismatches():
    assert auto_class_for("clm").__name__ == "AutoModelForCausalLM"
    assert auto_class_for("mlm").__name__ == "AutoModelForMaskedLM"
    assert auto_class_for("mlm", nsp=True).__name__ == "AutoModelForPreTraining"
    assert auto_class_for("span").__name__ == "AutoModelForSeq2SeqLM"
    with pytest.raises(ValueError, match="next-sentence prediction goes with objective 'mlm'"):
        auto_class_for("clm", nsp=True)
    t5_config = build_config("t5", "tiny", tokenizer_for("t5"), MAX_LENGTH)
    with pytest.raises(ValueError, match="model_type 't5' has no causal language modelling model"):
        model_for(t5_config, "clm")
    with pytest.raises(ValueError, match="needs a BERT config"):
        model_for(build_config("gpt2", "tiny", tokenizer_for("causal"), MAX_LENGTH), "mlm", nsp=True)


def test_tiny_parameter_counts():
    # GPT-2 block by hand (h = 128, ffn = 4h): ln_1 2h + qkv (h*3h + 3h) + proj (h*h + h) + ln_2 2h
    # + fc (h*4h + 4h) + proj (4h*h + h) = 12h^2 + 13h = 198272; 4 blocks + ln_f (2h) = 793344.
    _, gpt2 = fresh("gpt2")
    assert count_parameters(gpt2, embeddings=False) == 4 * (12 * 128**2 + 13 * 128) + 2 * 128
    # with the (tied) token table and the 64 positions
    assert count_parameters(gpt2) == 793344 + (len(tokenizer_for("causal")) + MAX_LENGTH) * 128
    counts = {}
    for arch in ARCHS:
        tokenizer, model = fresh(arch)
        counts[arch] = (count_parameters(model, embeddings=False), count_parameters(model), len(tokenizer))
        print(
            f"{arch}: {counts[arch][0]:,} parameters besides the embeddings, {counts[arch][1]:,} in all "
            f"(vocabulary {counts[arch][2]})"
        )
    assert all(0.7e6 < without < 2e6 for without, _, _ in counts.values())


# ---------------------------------------------------------------------------------------------------------
# tokenizers


def test_bert_tokenizer_gives_token_types_for_a_pair():
    tokenizer = tokenizer_for("bert")
    enc = tokenizer("the dog barked", "the cat slept")
    ids, types = enc.input_ids, enc.token_type_ids
    first_sep = ids.index(tokenizer.sep_token_id)
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
    assert set(types) == {0, 1}
    single = tokenizer("the dog barked")
    assert single.token_type_ids == [0] * len(single.input_ids)
    assert tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [0, 1, 2, 3, 4]
    assert tokenizer.decode(enc.input_ids, skip_special_tokens=True) == "the dog barked the cat slept"
    # causal tokenizers give no token types (a Llama forward would reject them)
    assert "token_type_ids" not in tokenizer_for("causal")("the dog barked")


def test_t5_tokenizer_has_100_increasing_sentinels(tmp_path):
    tokenizer = tokenizer_for("t5")
    assert tokenizer.convert_tokens_to_ids(["<pad>", "</s>", "<unk>"]) == [0, 1, 2]
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    sentinels = sentinel_ids(tokenizer)
    assert len(sentinels) == 100
    assert sentinels == list(range(3, 103))  # <extra_id_k> = 3 + k: increasing in k, as documented
    assert tokenizer.convert_ids_to_tokens(sentinels[:2]) == ["<extra_id_0>", "<extra_id_1>"]
    # A sentinel in the text is one token; every encoding ends with </s>.
    ids = tokenizer("the dog <extra_id_7> the park").input_ids
    assert ids[-1] == tokenizer.eos_token_id and ids.count(sentinels[7]) == 1
    assert (
        tokenizer.decode(tokenizer("the dog barked").input_ids, skip_special_tokens=True) == "the dog barked"
    )
    tokenizer.save_pretrained(tmp_path)
    assert sentinel_ids(AutoTokenizer.from_pretrained(tmp_path)) == sentinels
    assert len(sentinel_ids(train_tokenizer(CORPUS, "unigram", VOCAB, "t5", num_sentinels=5))) == 5
    with pytest.raises(ValueError, match="no sentinel tokens <extra_id_0>"):
        sentinel_ids(tokenizer_for("bert"))


def test_byte_level_bpe_round_trips_any_unicode():
    tokenizer = tokenizer_for("causal")
    texts = [
        "Ünïcödé naïve café — “quotes” ‘single’ … and € 42.",
        "日本語のテキスト, 中文, 한국어, Ελληνικά, русский, עברית, العربية",
        "emoji 🦊🐕‍🦺👩🏽‍💻 and flags 🇫🇷",
        "tabs\tand\nnewlines\r\n  double  spaces and trailing space ",
        "combining e\u0301 and zero\u200bwidth and \x00 nul and \x7f del",
        "",
    ]
    rng = random.Random(0)
    code_points = [c for c in range(1, 0x2FFFF) if not 0xD800 <= c <= 0xDFFF]  # no surrogates
    texts += ["".join(chr(rng.choice(code_points)) for _ in range(40)) for _ in range(20)]
    for text in texts:
        ids = tokenizer(text).input_ids
        assert tokenizer.unk_token_id not in ids  # every byte has a symbol: nothing is unknown
        assert all(0 <= i < len(tokenizer) for i in ids)
        assert tokenizer.decode(ids) == text
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|pad|>"]) == [0, 1]
    assert tokenizer.bos_token == tokenizer.eos_token == tokenizer.unk_token == "<|endoftext|>"
    # the special token in a text stays one token
    assert tokenizer("end<|endoftext|>").input_ids[-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("family", ["causal", "bert", "t5"])
@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_every_kind_works_with_every_family(kind, family, tmp_path):
    tokenizer = tokenizer_for(family, kind)
    assert 100 < len(tokenizer) <= VOCAB
    text = "the quick brown fox jumps over the lazy dog"  # lowercase: WordPiece lowercases
    ids = tokenizer(text).input_ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert len(tokenizer(text, add_special_tokens=False).input_ids) < 0.8 * len(text)  # merges were learnt
    expected_unk = {"causal": "<|endoftext|>" if kind == "bpe" else "<|unk|>", "bert": "[UNK]", "t5": "<unk>"}
    assert tokenizer.unk_token == expected_unk[family]
    assert tokenizer.pad_token_id is not None
    if kind != "bpe":  # an unseen character is the unknown token (no byte fallback)
        assert tokenizer.unk_token_id in tokenizer("the ☃ dog").input_ids
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text).input_ids == ids
    assert reloaded.get_vocab() == tokenizer.get_vocab()


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_training_is_deterministic(kind):
    # tokenizers' own WordPiece and unigram trainers are not (hash-map order); rlxf's wrapper is
    first = train_tokenizer(CORPUS, kind, VOCAB, "t5").backend_tokenizer.to_str()
    for _ in range(3):
        assert train_tokenizer(iter(CORPUS), kind, VOCAB, "t5").backend_tokenizer.to_str() == first


def test_wordpiece_helper_tokens_are_not_special():
    tokenizer = tokenizer_for("bert")
    # "##e" (registered before training so that its id is fixed) is an ordinary vocabulary entry, not an
    # added token: "##e" in a text is split like any other text ("#" is not in CORPUS: unknown)
    assert "##e" in tokenizer.get_vocab()
    assert "##e" not in tokenizer.all_special_tokens
    assert tokenizer.tokenize("a ##e") == ["a", "[UNK]", "[UNK]", "e"]
    assert tokenizer.tokenize("cake")[-1] == "##e"  # and it continues words


def test_extra_special_tokens_follow_the_family_specials():
    tokenizer = train_tokenizer(
        CORPUS, "bpe", VOCAB, "causal", extra_special=["<|good|>", "<|bad|>", "<|good|>"]
    )
    assert tokenizer.convert_tokens_to_ids(["<|good|>", "<|bad|>"]) == [2, 3]
    assert tokenizer("<|good|>The dog<|bad|>").input_ids[0] == 2
    assert tokenizer.decode(tokenizer("<|bad|>The dog").input_ids, skip_special_tokens=True) == "The dog"
    t5 = train_tokenizer(CORPUS, "unigram", VOCAB, "t5", num_sentinels=4, extra_special=["<|good|>"])
    assert t5.convert_tokens_to_ids("<|good|>") == 7  # <pad> </s> <unk>, 4 sentinels, then the extra
    assert sentinel_ids(t5) == [3, 4, 5, 6]


def test_train_tokenizer_refuses_bad_settings():
    with pytest.raises(ValueError, match="vocab_size must be at least 258"):
        train_tokenizer(CORPUS, "bpe", 200, "causal")
    with pytest.raises(ValueError, match="leaves no room beside the 103 special tokens"):
        train_tokenizer(CORPUS, "unigram", 103, "t5")
    with pytest.raises(ValueError, match="unknown tokenizer kind 'sentencepiece'"):
        train_tokenizer(CORPUS, "sentencepiece", VOCAB, "t5")
    with pytest.raises(ValueError, match="unknown tokenizer family 'gpt2'"):
        train_tokenizer(CORPUS, "bpe", VOCAB, "gpt2")


# ---------------------------------------------------------------------------------------------------------
# control tokens


@pytest.mark.parametrize("arch", ARCHS + ["llama-untied"])
def test_add_control_tokens_appends_mean_rows(arch):
    tokenizer = _copy_tokenizer(arch)  # add_control_tokens changes it: the cached one stays as it is
    if arch == "llama-untied":
        config = build_config("llama", "tiny", tokenizer, MAX_LENGTH)
        config.tie_word_embeddings = False
        torch.manual_seed(0)
        model = model_for(config, "clm")
    else:
        _, model = fresh(arch)
    size = len(tokenizer)
    output = model.get_output_embeddings()
    if getattr(output, "bias", None) is not None:  # BERT's MLM head: zeros at init, made non-trivial here
        with torch.no_grad():
            output.bias.normal_()
    old_input = model.get_input_embeddings().weight.detach().clone()
    old_output = output.weight.detach().clone()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == (arch != "llama-untied")

    ids = add_control_tokens(model, tokenizer, ["<|good|>", "<|bad|>"])

    assert ids == [size, size + 1]  # at the end of the vocabulary, in order
    assert len(tokenizer) == size + 2
    assert {"<|good|>", "<|bad|>"} <= set(tokenizer.all_special_tokens)
    embedding = model.get_input_embeddings().weight
    assert embedding.shape[0] == size + 2
    torch.testing.assert_close(embedding[:size], old_input)  # old rows untouched
    for i in ids:
        torch.testing.assert_close(embedding[i], old_input.mean(dim=0))
    output = model.get_output_embeddings()
    if not tied:
        for i in ids:
            torch.testing.assert_close(output.weight[i], old_output.mean(dim=0))
    else:
        assert output.weight is embedding
    if getattr(output, "bias", None) is not None:
        for i in ids:
            torch.testing.assert_close(output.bias[i], output.bias[:size].mean())

    def logits(text: str) -> torch.Tensor:  # [1, seq, vocab]
        input_ids = tokenizer(text, return_tensors="pt").input_ids
        extra = {"decoder_input_ids": input_ids} if arch == "t5" else {}
        with torch.no_grad():
            return model.eval()(input_ids=input_ids, **extra).logits

    # Hewitt 2021: with the mean row (and mean bias), a new token's logit is the mean of the old logits
    plain = logits("the dog barked")
    torch.testing.assert_close(plain[..., ids[0]], plain[..., :size].mean(dim=-1), atol=1e-5, rtol=1e-4)
    # the control token is one token in a text, and the model runs on it
    assert ids[0] in tokenizer("<|good|> the dog").input_ids
    assert torch.isfinite(logits("<|good|> the dog")).all()

    # again, with one known token: nothing grows, known ids come back
    again = add_control_tokens(model, tokenizer, ["<|bad|>", "<|good|>", "<|neutral|>"])
    assert again == [size + 1, size, size + 2]
    assert model.get_input_embeddings().weight.shape[0] == size + 3
    torch.testing.assert_close(model.get_input_embeddings().weight[size + 2], old_input.mean(dim=0))


def _copy_tokenizer(arch: str):
    """A copy of the cached tokenizer of ``arch`` (or ``llama-untied``)."""
    return copy.deepcopy(tokenizer_for(family_of(arch.split("-")[0])))


def test_add_control_tokens_uses_spare_rows_and_keeps_sentinels():
    # A vocabulary padded past the last token (as T5's 32128 rows for 32100 tokens): the spare rows are
    # used, the mean is over the real tokens only, and T5's sentinels stay special tokens.
    tokenizer = _copy_tokenizer("t5")
    size = len(tokenizer)
    config = build_config("t5", "tiny", tokenizer, MAX_LENGTH)
    config.vocab_size = size + 8
    torch.manual_seed(0)
    model = model_for(config, "span")
    real_mean = model.get_input_embeddings().weight[:size].detach().mean(dim=0)
    ids = add_control_tokens(model, tokenizer, ["<|good|>"])
    assert ids == [size]
    assert model.get_input_embeddings().weight.shape[0] == size + 8  # no resize
    torch.testing.assert_close(model.get_input_embeddings().weight[size], real_mean)
    assert len(sentinel_ids(tokenizer)) == 100
    assert "<extra_id_0>" in tokenizer.all_special_tokens and "<|good|>" in tokenizer.all_special_tokens


# ---------------------------------------------------------------------------------------------------------
# a user's config


def test_config_from_file_reads_a_file_or_a_folder(tmp_path):
    config = build_config("llama", "tiny", tokenizer_for("causal"), MAX_LENGTH)
    config.save_pretrained(tmp_path / "folder")
    from_folder = config_from_file(tmp_path / "folder")
    assert isinstance(from_folder, LlamaConfig) and from_folder.num_hidden_layers == 4
    (tmp_path / "mine.json").write_text((tmp_path / "folder" / "config.json").read_text())
    assert config_from_file(str(tmp_path / "mine.json")).hidden_size == 128

    with pytest.raises(FileNotFoundError, match="nowhere: no such file or folder"):
        config_from_file(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: the folder holds no config.json"):
        config_from_file(tmp_path / "empty")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken.json: not a JSON file"):
        config_from_file(tmp_path / "broken.json")
    (tmp_path / "plain.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ValueError, match=r"plain.json: .*model_type"):
        config_from_file(tmp_path / "plain.json")
    (tmp_path / "alien.json").write_text(json.dumps({"model_type": "no-such-model"}))
    with pytest.raises(ValueError, match=r"alien.json: .*no-such-model"):
        config_from_file(tmp_path / "alien.json")


def test_fit_config_to_tokenizer():
    user = build_config("t5", "tiny", tokenizer_for("t5"), MAX_LENGTH)
    user.vocab_size, user.pad_token_id, user.decoder_start_token_id = 32128, 7, 7
    tokenizer = tokenizer_for("t5")
    fitted = fit_config_to_tokenizer(user, tokenizer)
    assert (fitted.vocab_size, fitted.pad_token_id, fitted.eos_token_id, fitted.decoder_start_token_id) == (
        len(tokenizer),
        0,
        1,
        0,
    )
    assert user.vocab_size == 32128  # a copy
