"""Tokenisation (loss masks, EOS, truncation) and collation (padding sides) with the tiny tokenizer.

Expectations are built from the tokenizer's encoding of each piece on its own and from literal texts,
so a wrong mask, a missing EOS or an off-by-one truncation shows.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tokenizers import processors

from rlxf.data import (
    IGNORE_INDEX,
    DataError,
    check_prompt_lengths,
    collate_preferences,
    collate_prompts,
    collate_sft,
    pad_token_id,
    prompt_token_ids,
    read_data,
    tokenize_dataset,
    tokenize_preference,
    tokenize_prompt,
    tokenize_sft,
)

PROMPT = "The movie was"
COMPLETION = " a delight from start to finish"
CHAT_PROMPT = [{"role": "user", "content": "hello there"}]
CHAT_HEADER = "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return tiny_tokenizer


def enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def eos(tok) -> int:
    assert tok.eos_token == "<|im_end|>"
    return tok.eos_token_id


@pytest.fixture(scope="module")
def bos_tok(tiny_tokenizer):
    """The tiny tokenizer made Llama-like: encoding adds <|im_start|> (its BOS) in front by default."""
    t = copy.deepcopy(tiny_tokenizer)
    t._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", t.bos_token_id)]
    )
    assert t("ab")["input_ids"][0] == t.bos_token_id
    return t


# ------------------------------------------------------------------------------------------------------
# prompts


def test_prompt_ids_raw_and_chat(tok):
    assert prompt_token_ids({"prompt": PROMPT}, tok) == enc(tok, PROMPT)
    assert prompt_token_ids({"prompt": CHAT_PROMPT}, tok) == enc(tok, CHAT_HEADER)
    assert prompt_token_ids({"messages": CHAT_PROMPT}, tok) == enc(tok, CHAT_HEADER)
    always = prompt_token_ids({"prompt": "hello there"}, tok, chat_template="always")
    assert always == enc(tok, CHAT_HEADER)


def test_prompt_gets_bos_once(bos_tok):
    bos = bos_tok.bos_token_id
    assert prompt_token_ids({"prompt": PROMPT}, bos_tok) == [bos, *enc(bos_tok, PROMPT)]
    # the chat template's text already starts with <|im_start|> (= BOS here): no second one
    chat = prompt_token_ids({"prompt": CHAT_PROMPT}, bos_tok)
    assert chat == enc(bos_tok, CHAT_HEADER) and chat[0] == bos and chat[1] != bos


def test_tokenize_prompt_truncation(tok):
    full = enc(tok, PROMPT)
    assert len(full) > 4
    assert tokenize_prompt({"prompt": PROMPT}, tok, max_length=4)["input_ids"] == full[-4:]
    assert (
        tokenize_prompt({"prompt": PROMPT}, tok, max_length=4, truncation="keep_start")["input_ids"]
        == full[:4]
    )
    with pytest.raises(DataError, match=f"the prompt has {len(full)} tokens, more than max_length=4"):
        tokenize_prompt({"prompt": PROMPT}, tok, max_length=4, truncation="error")


def test_messages_without_chat_template(tok):
    bare = copy.deepcopy(tok)
    bare.chat_template = None
    with pytest.raises(DataError, match="no chat template") as info:
        prompt_token_ids({"messages": CHAT_PROMPT}, bare)
    assert info.value.field == "messages"
    with pytest.raises(DataError, match="chat_template=never"):
        prompt_token_ids({"prompt": CHAT_PROMPT}, tok, chat_template="never")


# ------------------------------------------------------------------------------------------------------
# SFT


def test_sft_prompt_completion_masks_prompt_and_appends_eos(tok, eos):
    out = tokenize_sft({"prompt": PROMPT, "completion": COMPLETION}, tok)
    p, c = enc(tok, PROMPT), enc(tok, COMPLETION)
    assert out["input_ids"] == p + c + [eos]
    assert out["labels"] == [IGNORE_INDEX] * len(p) + c + [eos]
    assert out["completion_mask"] == [0] * len(p) + [1] * (len(c) + 1)
    assert tok.decode(out["input_ids"]) == PROMPT + COMPLETION + "<|im_end|>"


def test_sft_completion_already_ending_with_eos_gets_no_second(tok, eos):
    out = tokenize_sft({"prompt": PROMPT, "completion": COMPLETION + "<|im_end|>"}, tok)
    assert out["input_ids"][-1] == eos and out["input_ids"][-2] != eos


def test_sft_chat_prompt_with_string_completion(tok, eos):
    out = tokenize_sft({"prompt": CHAT_PROMPT, "completion": "Hi!"}, tok)
    head = enc(tok, CHAT_HEADER)
    assert out["input_ids"] == head + enc(tok, "Hi!") + [eos]
    assert out["labels"][: len(head)] == [IGNORE_INDEX] * len(head)


def trained_text(tok, out) -> list[str]:
    """The decoded runs of tokens that carry loss, in order."""
    runs, current = [], []
    for token, label in zip(out["input_ids"], out["labels"]):
        if label == IGNORE_INDEX:
            if current:
                runs.append(tok.decode(current))
            current = []
        else:
            assert label == token
            current.append(token)
    if current:
        runs.append(tok.decode(current))
    return runs


def test_sft_messages_loss_on_assistant_turns_only(tok, eos):
    messages = [
        {"role": "system", "content": "Be nice"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hello there"},
        {"role": "user", "content": "more"},
        {"role": "assistant", "content": "ok then"},
    ]
    out = tokenize_sft({"messages": messages}, tok)
    assert trained_text(tok, out) == ["Hello there<|im_end|>", "ok then<|im_end|>"]
    whole = (
        "<|im_start|>system\nBe nice<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
        "Hello there<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n<|im_start|>assistant\nok then<|im_end|>\n"
    )
    assert tok.decode(out["input_ids"]) == whole
    # the masked prefix is exactly the first assistant header and everything before it
    first = whole.index("Hello there")
    assert out["input_ids"][: len(enc(tok, whole[:first]))] == enc(tok, whole[:first])
    assert out["labels"][: len(enc(tok, whole[:first]))] == [IGNORE_INDEX] * len(enc(tok, whole[:first]))
    assert out["labels"][-1] == IGNORE_INDEX and tok.decode(out["input_ids"][-1:]) == "\n"
    assert sum(out["completion_mask"]) == len(enc(tok, "Hello there")) + len(enc(tok, "ok then")) + 2


def test_sft_messages_must_not_start_with_assistant(tok):
    with pytest.raises(DataError, match="starts with an assistant turn") as info:
        tokenize_sft({"messages": [{"role": "assistant", "content": "hi"}]}, tok)
    assert info.value.field == "messages[0].role"


def test_sft_truncation_exact(tok, eos):
    record = {"prompt": PROMPT, "completion": COMPLETION}
    full = tokenize_sft(record, tok)
    n = len(full["input_ids"])
    p = len(enc(tok, PROMPT))
    limit = p + 2
    start = tokenize_sft(record, tok, max_length=limit, truncation="keep_start")
    assert start["input_ids"] == full["input_ids"][:limit]
    assert start["labels"] == full["labels"][:limit]
    assert start["input_ids"][-1] != eos  # cut before the EOS
    end = tokenize_sft(record, tok, max_length=limit, truncation="keep_end")
    assert end["input_ids"] == full["input_ids"][n - limit :]
    assert end["input_ids"][-1] == eos
    with pytest.raises(DataError, match=f"the example has {n} tokens, more than max_length={limit}") as info:
        tokenize_sft(record, tok, max_length=limit, truncation="error")
    assert info.value.field == "completion"
    assert tokenize_sft(record, tok, max_length=n, truncation="error") == full  # exactly fits


def test_sft_truncation_leaving_no_completion_is_an_error(tok):
    p = len(enc(tok, PROMPT))
    with pytest.raises(DataError, match="no completion token is left"):
        tokenize_sft({"prompt": PROMPT, "completion": COMPLETION}, tok, max_length=p)


def test_sft_carries_rating_and_label(tok):
    out = tokenize_sft({"prompt": PROMPT, "completion": COMPLETION, "rating": 2.5}, tok)
    assert out["rating"] == 2.5
    assert tokenize_sft({"prompt": PROMPT, "completion": COMPLETION, "label": False}, tok)["label"] is False


# ------------------------------------------------------------------------------------------------------
# preferences

LONG_PROMPT = "Customer service answered quickly and fixed the problem"


def test_preference_ids(tok, eos):
    out = tokenize_preference({"prompt": PROMPT, "chosen": " great", "rejected": " bad", "margin": 1.0}, tok)
    assert out == {
        "prompt_ids": enc(tok, PROMPT),
        "chosen_ids": enc(tok, " great") + [eos],
        "rejected_ids": enc(tok, " bad") + [eos],
        "margin": 1.0,
    }


def test_preference_message_completions_end_at_eos(tok, eos):
    record = {
        "prompt": CHAT_PROMPT,
        "chosen": [{"role": "assistant", "content": "Hi!"}],
        "rejected": [{"role": "assistant", "content": "Go away"}],
    }
    out = tokenize_preference(record, tok)
    assert out["prompt_ids"] == enc(tok, CHAT_HEADER)
    assert out["chosen_ids"] == enc(tok, "Hi!") + [eos]  # the template's "\n" after <|im_end|> is dropped
    assert tok.decode(out["rejected_ids"]) == "Go away<|im_end|>"


def test_preference_truncation_rules(tok, eos):
    record = {"prompt": LONG_PROMPT, "chosen": " The movie was a delight", "rejected": " Terrible quality"}
    p = enc(tok, LONG_PROMPT)
    c = enc(tok, " The movie was a delight") + [eos]
    r = enc(tok, " Terrible quality") + [eos]
    assert len(p) > 6 and len(c) > 4 and len(r) > 4
    # 1. prompt cut from the left to max_prompt_length; 2. completions to max_length - len(prompt)
    out = tokenize_preference(record, tok, max_length=10, max_prompt_length=6)
    assert out["prompt_ids"] == p[-6:]
    assert out["chosen_ids"] == c[:4]
    assert out["rejected_ids"] == r[:4]
    start = tokenize_preference(record, tok, max_length=10, max_prompt_length=6, truncation="keep_start")
    assert start["prompt_ids"] == p[:6]
    # no max_prompt_length: the whole prompt stays, completions get what is left
    room = len(p) + 3
    out = tokenize_preference(record, tok, max_length=room)
    assert out["prompt_ids"] == p and out["chosen_ids"] == c[:3] and out["rejected_ids"] == r[:3]
    # nothing to cut: untouched, EOS kept
    big = tokenize_preference(record, tok, max_length=100, max_prompt_length=50)
    assert big["chosen_ids"] == c and big["rejected_ids"] == r and big["prompt_ids"] == p


def test_preference_truncation_errors(tok):
    record = {"prompt": LONG_PROMPT, "chosen": " yes indeed", "rejected": " no"}
    p = len(enc(tok, LONG_PROMPT))
    with pytest.raises(DataError, match="leaving no room") as info:
        tokenize_preference(record, tok, max_length=p)
    assert info.value.field == "prompt"
    with pytest.raises(DataError, match=f"the prompt has {p} tokens, more than max_prompt_length=3"):
        tokenize_preference(record, tok, max_length=50, max_prompt_length=3, truncation="error")
    with pytest.raises(DataError, match="prompt \\+ chosen have") as info:
        tokenize_preference(record, tok, max_length=p + 2, truncation="error")
    assert info.value.field == "chosen"
    with pytest.raises(ValueError, match="must be smaller than max_length"):
        tokenize_preference(record, tok, max_length=8, max_prompt_length=8)


# ------------------------------------------------------------------------------------------------------
# collation


def test_collate_sft_pads_right(tok, eos):
    pad = pad_token_id(tok)
    a = tokenize_sft({"prompt": "Hi", "completion": " there friend"}, tok)
    b = tokenize_sft({"prompt": PROMPT, "completion": COMPLETION}, tok)
    batch = collate_sft([a, b], pad_token_id=pad)
    n, m = len(a["input_ids"]), len(b["input_ids"])
    assert m > n
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, m)
    assert batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][0].tolist() == a["input_ids"] + [pad] * (m - n)
    assert batch["labels"][0].tolist() == a["labels"] + [IGNORE_INDEX] * (m - n)
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (m - n)
    assert batch["completion_mask"][0].tolist() == a["completion_mask"] + [0] * (m - n)
    assert batch["input_ids"][1].tolist() == b["input_ids"]
    assert collate_sft([a, b], pad_token_id=pad, pad_to_multiple_of=8)["input_ids"].shape[1] % 8 == 0


def test_collate_sft_scalars(tok):
    feats = [
        tokenize_sft({"prompt": "a", "completion": "b", "rating": r}, tok, max_length=None)
        for r in (1.0, -2.0)
    ]
    batch = collate_sft(feats, pad_token_id=pad_token_id(tok))
    assert batch["rating"].tolist() == [1.0, -2.0] and batch["rating"].dtype == torch.float32


def test_collate_prompts_pads_left(tok):
    pad = pad_token_id(tok)
    short = tokenize_prompt({"prompt": "Hi"}, tok)
    long = tokenize_prompt({"prompt": PROMPT}, tok)
    batch = collate_prompts([short, long], pad_token_id=pad)
    n, m = len(short["input_ids"]), len(long["input_ids"])
    assert batch["input_ids"].shape == (2, m)
    assert batch["input_ids"][0].tolist() == [pad] * (m - n) + short["input_ids"]
    assert batch["attention_mask"][0].tolist() == [0] * (m - n) + [1] * n
    assert batch["input_ids"][1].tolist() == long["input_ids"]
    assert batch["attention_mask"][1].tolist() == [1] * m


def test_collate_preferences_chosen_rows_then_rejected(tok, eos):
    pad = pad_token_id(tok)
    f1 = tokenize_preference({"prompt": "Hi", "chosen": " there", "rejected": " no", "margin": 0.5}, tok)
    f2 = tokenize_preference({"prompt": PROMPT, "chosen": " fine", "rejected": " awful in every way"}, tok)
    batch = collate_preferences([f1, f2], pad_token_id=pad)
    rows = [
        (f1["prompt_ids"], f1["chosen_ids"]),
        (f2["prompt_ids"], f2["chosen_ids"]),
        (f1["prompt_ids"], f1["rejected_ids"]),
        (f2["prompt_ids"], f2["rejected_ids"]),
    ]
    width = max(len(p) + len(c) for p, c in rows)
    assert batch["input_ids"].shape == batch["labels"].shape == (4, width)
    for i, (p, c) in enumerate(rows):
        fill = width - len(p) - len(c)
        assert batch["input_ids"][i].tolist() == p + c + [pad] * fill
        assert batch["labels"][i].tolist() == [IGNORE_INDEX] * len(p) + c + [IGNORE_INDEX] * fill
        assert batch["attention_mask"][i].tolist() == [1] * (len(p) + len(c)) + [0] * fill
    assert batch["prompt_lengths"].tolist() == [len(f1["prompt_ids"]), len(f2["prompt_ids"])]
    assert batch["margin"].tolist() == [0.5, 0.0]


# ------------------------------------------------------------------------------------------------------
# whole files


def test_check_prompt_lengths(tmp_path, tok):
    path = tmp_path / "prompts.jsonl"
    prompts = ["Hi", LONG_PROMPT, "Hi", LONG_PROMPT]
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    ds = read_data(path)
    n = len(enc(tok, LONG_PROMPT))
    check_prompt_lengths(ds, tok, max_prompt_tokens=n)  # exactly fits
    why = "the model's context of 64 tokens minus max_new_tokens 60"
    with pytest.raises(DataError) as info:
        check_prompt_lengths(ds, tok, max_prompt_tokens=n - 1, why=why)
    text = str(info.value)
    assert text.startswith(f"{path}, line 2, field 'prompt': the prompt has {n} tokens")
    assert f"more than the limit of {n - 1} ({why})" in text
    assert "2 prompts of this file are too long (lines 2, 4)" in text


def test_check_prompt_lengths_counts_the_chat_template(tmp_path, tok):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": CHAT_PROMPT}) + "\n", encoding="utf-8")
    ds = read_data(path)
    n = len(enc(tok, CHAT_HEADER))
    check_prompt_lengths(ds, tok, n)
    with pytest.raises(DataError, match=f"line 1, field 'messages': the prompt has {n} tokens"):
        check_prompt_lengths(ds, tok, n - 1)
    with pytest.raises(DataError, match="line 1, field 'messages': chat_template=never"):
        check_prompt_lengths(ds, tok, n, chat_template="never")


def test_tokenize_dataset_places_errors(tmp_path, tok):
    path = tmp_path / "sft.jsonl"
    records = [{"prompt": "a", "completion": "b"}, {"prompt": LONG_PROMPT, "completion": "c"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    ds = read_data(path)
    feats = tokenize_dataset(ds, tokenize_sft, tok, max_length=8, truncation="keep_end")
    assert [len(f["input_ids"]) for f in feats] == [3, 8]
    with pytest.raises(DataError, match="no completion token is left") as info:
        tokenize_dataset(ds, tokenize_sft, tok, max_length=8)  # keep_start keeps only prompt tokens
    assert str(info.value).startswith(f"{path}, line 2, field 'completion'")
    with pytest.raises(DataError) as info:
        tokenize_dataset(ds, tokenize_sft, tok, max_length=8, truncation="error")
    assert str(info.value).startswith(f"{path}, line 2, field 'completion': the example has")
