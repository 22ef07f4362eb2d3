"""LM judges (rlxf/feedback/lm_judge.py) and ``rlxf judge`` (rlxf/feedback/judge.py): both-order
combination, confidence and position consistency by hand on fake judges, the answer-token ids of several
tokenizer styles, the local judge against a hand-computed forward pass, the OpenAI-compatible backend
against a fake server, input errors before any model loads, and the command end to end on a tiny model
(its outputs read back by rlxf's readers, its figures logged and returned)."""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from rlxf.cli import main
from rlxf.data import DataError, encode_prompt, read_data
from rlxf.data.candidates import read_candidates
from rlxf.feedback.judge import JudgeConfig, judge, pairwise_summary
from rlxf.feedback.lm_judge import (
    ANSWER_INSTRUCTION,
    DEFAULT_PAIRWISE_TEMPLATE,
    LocalPairJudge,
    OpenAIPairJudge,
    Verdict,
    combine_orders,
    judge_pairs,
    letter_token_ids,
)
from rlxf.models.load import ModelConfig, load_tokenizer


class FakeJudge:
    """P(A) looked up from the pair as shown (response A, response B); ``default`` for any other pair."""

    name = "fake"

    def __init__(self, table: dict[tuple[str, str], float] | None = None, default: float = 0.5) -> None:
        self.table = table or {}
        self.default = default
        self.calls: list[tuple[str, str]] = []

    def verdicts(self, prompts, responses_a, responses_b):
        self.calls.extend(zip(responses_a, responses_b))
        return [Verdict(p_a=self.table.get((a, b), self.default)) for a, b in zip(responses_a, responses_b)]


# ---------------------------------------------------------------------------------------------- combining


def test_both_orders_cancel_a_constant_position_bias():
    backend = FakeJudge(default=0.7)  # prefers whatever is shown first, 70 : 30, whatever it reads
    judgements = judge_pairs(backend, ["p1", "p2"], ["x", "u"], ["y", "v"])
    assert backend.calls == [("x", "y"), ("u", "v"), ("y", "x"), ("v", "u")]  # each pair in both orders
    for j in judgements:
        assert j.p_first == pytest.approx(0.5) and j.confidence == pytest.approx(0.0)
        assert not j.consistent
    summary = pairwise_summary(judgements)
    assert summary["position_consistency"] == 0.0
    assert summary["first_shown/order1"] == summary["first_shown/order2"] == 1.0
    assert summary["p_first_shown/mean"] == pytest.approx(0.7)
    # a bias on top of a real preference: P(A) = truth(A beats B) + 0.2, in both orders
    biased = FakeJudge({("x", "y"): 0.6 + 0.2, ("y", "x"): 0.4 + 0.2})
    (j,) = judge_pairs(biased, ["p"], ["x"], ["y"])
    assert j.p_first == pytest.approx(0.6)  # the bias is gone, the preference kept


def test_confidence_consistency_and_agreement_by_hand():
    backend = FakeJudge({("x", "y"): 0.9, ("y", "x"): 0.2, ("u", "v"): 0.6, ("v", "u"): 0.7})
    first, second = judge_pairs(backend, ["p1", "p2"], ["x", "u"], ["y", "v"])
    assert first.p_first == pytest.approx((0.9 + 0.8) / 2) and first.confidence == pytest.approx(0.7)
    assert first.consistent and first.winner == 0
    assert second.p_first == pytest.approx((0.6 + 0.3) / 2) and second.confidence == pytest.approx(0.1)
    assert not second.consistent and second.winner == 1  # both orders said "A": not consistent
    summary = pairwise_summary([first, second], labels=[0, 0], min_confidence=0.5)
    assert summary["position_consistency"] == 0.5
    assert summary["first_shown/order1"] == 1.0 and summary["first_shown/order2"] == 0.5
    assert summary["confidence/mean"] == pytest.approx(0.4)
    assert summary["kept"] == 1 and summary["dropped"] == 1
    assert summary["agreement"] == 0.5 and summary["agreement/stderr"] == pytest.approx(math.sqrt(0.25 / 2))
    assert summary["agreement/n"] == 2 and summary["agreement/kept"] == 1.0
    assert combine_orders(1.0, 0.0) == 1.0 and combine_orders(0.0, 1.0) == 0.0


# ---------------------------------------------------------------------------------------------- answer tokens


def _bpe(pre_tokenizer, decoder, corpus, vocab_size, alphabet):
    from tokenizers import Tokenizer, models, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizer, decoder
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<eos>"], initial_alphabet=alphabet
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def test_answer_tokens_with_and_without_leading_space_variants():
    from tokenizers import decoders, pre_tokenizers

    corpus = ["A B AB A B BA A B"] * 20
    byte_level = pre_tokenizers.ByteLevel.alphabet()
    # byte-level (GPT-2, SmolLM2 style): "A" and "ĠA" (" A") both spell the letter; "ĠAB" does not
    spaced = _bpe(
        pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel(), corpus, 300, byte_level
    )
    vocab = spaced.get_vocab()
    assert "ĠA" in vocab and "ĠAB" in vocab
    assert sorted(letter_token_ids(spaced, "A")) == sorted([vocab["A"], vocab["ĠA"]])
    assert sorted(letter_token_ids(spaced, "B")) == sorted([vocab["B"], vocab["ĠB"]])
    # no merges at all: only the bare letter
    bare = _bpe(
        pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel(), corpus, 258, byte_level
    )
    assert "ĠA" not in bare.get_vocab()
    assert letter_token_ids(bare, "A") == [bare.get_vocab()["A"]]
    # SentencePiece style ("▁A"): the word-start marker decodes to a space
    meta = _bpe(pre_tokenizers.Metaspace(), decoders.Metaspace(), corpus, 40, ["A", "B", "▁"])
    vocab = meta.get_vocab()
    assert "▁A" in vocab
    assert vocab["▁A"] in letter_token_ids(meta, "A") and vocab["<eos>"] not in letter_token_ids(meta, "A")
    assert not set(letter_token_ids(meta, "A")) & set(letter_token_ids(meta, "B"))


# ---------------------------------------------------------------------------------------------- local judge


SHORT_TEMPLATE = "Prompt: {prompt}\nA: {response_a}\nB: {response_b}"
"""A rubric short enough for the tiny test model's 256-token context."""


@pytest.fixture(scope="module")
def tiny_judge(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32).eval()
    return model, load_tokenizer(tiny_model_dir)


def test_local_judge_reads_the_letters_from_one_forward_pass(tiny_judge):
    model, tokenizer = tiny_judge
    backend = LocalPairJudge(model, tokenizer, SHORT_TEMPLATE, batch_size=2)
    prompts, a, b = (
        ["The movie was", "Our trip", "The soup"],
        [" great.", " sunny", " cold"],
        [" bad.", " rainy", " hot"],
    )
    verdicts = backend.verdicts(prompts, a, b)
    ids_a, ids_b = letter_token_ids(tokenizer, "A"), letter_token_ids(tokenizer, "B")
    for i in range(3):
        rubric = SHORT_TEMPLATE.format(prompt=prompts[i], response_a=a[i], response_b=b[i])
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": rubric + ANSWER_INSTRUCTION}],
            tokenize=False,
            add_generation_prompt=True,
        )
        assert backend.render(prompts[i], a[i], b[i]) == text
        with torch.no_grad():
            probs = model(input_ids=torch.tensor([encode_prompt(tokenizer, text)])).logits[0, -1].softmax(-1)
        p_a, p_b = probs[ids_a].sum().item(), probs[ids_b].sum().item()
        assert verdicts[i].p_a == pytest.approx(p_a / (p_a + p_b), abs=1e-5)
        assert verdicts[i].mass == pytest.approx(p_a + p_b, rel=1e-4)


def test_local_judge_reasons_before_its_verdict(tiny_judge):
    model, tokenizer = tiny_judge
    backend = LocalPairJudge(model, tokenizer, SHORT_TEMPLATE, reasoning=True, reasoning_tokens=5)
    (verdict,) = backend.verdicts(["The movie was"], [" great."], [" bad."])
    assert isinstance(verdict.rationale, str) and 0.0 <= verdict.p_a <= 1.0
    assert "Verdict" not in verdict.rationale


def test_local_judge_refuses_inputs_longer_than_its_context(tiny_judge):
    model, tokenizer = tiny_judge  # a context of 256 positions; the default rubric alone is longer here
    backend = LocalPairJudge(model, tokenizer, DEFAULT_PAIRWISE_TEMPLATE)
    with pytest.raises(ValueError, match="judge input 0 .* tokens; the judge's context of 256"):
        backend.verdicts(["The movie was"], [" great."], [" bad."])


# ---------------------------------------------------------------------------------------------- HTTP judge


class _ChatServer(BaseHTTPRequestHandler):
    """OpenAI-style /v1/chat/completions: the verdict favours the response that says "good". Under /text/
    no log-probs come back, only the answer text."""

    requests: list[dict] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(
            {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
        )
        if not self.path.endswith("/v1/chat/completions"):
            self.send_error(404, "no such route")
            return
        content = body["messages"][0]["content"]
        good_is_a = "[Response A]\ngood" in content
        if body["max_tokens"] > 1:  # the rationale request
            message = "A says good things. Verdict: A" if good_is_a else "B says good things. Verdict: B"
            answer = {"choices": [{"message": {"role": "assistant", "content": message}}]}
        elif self.path.startswith("/text/"):
            answer = {"choices": [{"message": {"role": "assistant", "content": "A" if good_is_a else "B"}}]}
        else:
            p_a, p_b = (0.6, 0.2) if good_is_a else (0.3, 0.5)
            top = [
                {"token": "A", "logprob": math.log(p_a * 0.75)},
                {"token": " A", "logprob": math.log(p_a * 0.25)},
                {"token": "B", "logprob": math.log(p_b)},
                {"token": "The", "logprob": math.log(0.1)},
            ]
            first = {"token": "A", "logprob": top[0]["logprob"], "top_logprobs": top}
            answer = {"choices": [{"message": {"content": "A"}, "logprobs": {"content": [first]}}]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def chat_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_judge_reads_the_answer_logprobs(chat_server):
    _ChatServer.requests.clear()
    backend = OpenAIPairJudge(f"{chat_server}/v1", "judge-7b", api_key="sk-test")
    (j,) = judge_pairs(backend, ["Say something"], ["good"], ["meh"])
    assert j.order1.p_a == pytest.approx(0.6 / 0.8) and j.order1.mass == pytest.approx(0.8)
    assert j.order2.p_a == pytest.approx(0.3 / 0.8)
    assert j.p_first == pytest.approx((0.75 + 1 - 0.375) / 2) and j.consistent
    request = _ChatServer.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    body = request["body"]
    assert body["model"] == "judge-7b" and body["logprobs"] is True and body["top_logprobs"] == 20
    assert body["max_tokens"] == 1 and body["messages"][0]["content"].endswith(ANSWER_INSTRUCTION)


def test_http_judge_falls_back_to_the_text_and_reasons(chat_server):
    _ChatServer.requests.clear()
    backend = OpenAIPairJudge(f"{chat_server}/text/v1", "judge-7b", reasoning=True)
    (j,) = judge_pairs(backend, ["Say something"], ["meh"], ["good"])
    assert (j.order1.p_a, j.order2.p_a, j.p_first, j.confidence) == (0.0, 1.0, 0.0, 1.0)
    assert j.order1.rationale == "B says good things."  # cut before the judge's own "Verdict"
    verdict_request = _ChatServer.requests[1]["body"]
    assert [m["role"] for m in verdict_request["messages"]] == ["user", "assistant", "user"]
    assert _ChatServer.requests[0]["auth"] is None


def test_http_judge_errors_name_the_endpoint(chat_server):
    backend = OpenAIPairJudge(f"{chat_server}/missing", "m", retries=0)
    with pytest.raises(RuntimeError, match="/missing/chat/completions: HTTP 404"):
        backend.verdicts(["p"], ["a"], ["b"])


# ---------------------------------------------------------------------------------------------- input


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


GOOD = [
    {"prompt": "The movie was", "responses": [" a delight.", " a bore."], "id": "m1"},
    {"prompt": "The soup", "responses": [" was cold and bland.", " was hot and tasty."]},
    {"prompt": "Our trip to the coast", "responses": [" was sunny and calm.", " was ruined by rain."]},
    {"prompt": "The waiter", "responses": [" was rude.", " was kind and quick."]},
]


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"responses": ["a", "b"]}, "line 2, field 'prompt': missing"),
        (
            {"prompt": "p", "responses": ["a", "b", "c"]},
            "line 2, field 'responses': expected exactly 2 responses",
        ),
        (
            {"prompt": "p", "responses": ["a", ""]},
            "line 2, field 'responses[1]': expected a non-empty string",
        ),
        ({"prompt": "p", "responses": "a"}, "line 2, field 'responses': expected a list"),
        (
            {"prompt": "p", "chosen": "a", "rejected": "b"},
            "line 2, field 'chosen': this record is a preference",
        ),
        ({"prompt": "p", "responses": ["a", "a"]}, "line 2, field 'responses[1]': identical"),
    ],
)
def test_bad_input_names_file_line_and_field(tmp_path, bad, where):
    path = _write(tmp_path / "c.jsonl", [GOOD[0], bad])
    with pytest.raises(DataError, match=re.escape(f"c.jsonl, {where}")):
        read_candidates(path)


def test_bad_input_stops_the_command_before_the_model_loads(tmp_path, capsys):
    path = _write(tmp_path / "c.jsonl", [GOOD[0], {"prompt": "p", "responses": ["only one"]}])
    # a model reference that does not exist: reaching the loader would be a different error
    code = main(
        ["judge", "--data", str(path), "--out", str(tmp_path / "out"), "--model", str(tmp_path / "nope")]
    )
    assert code == 2
    assert "c.jsonl, line 2, field 'responses': expected exactly 2 responses" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    template = tmp_path / "rubric.txt"
    template.write_text("Which is better, {response_a} or {response_b}?")
    code = main(["judge", "--data", str(path), "--out", str(tmp_path / "out"), "--template", str(template)])
    assert code == 2 and "no {prompt} placeholder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- command


def test_judge_command_end_to_end_on_a_tiny_model(tiny_model_dir, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="rlxf")
    data = _write(tmp_path / "candidates.jsonl", GOOD)
    labels = _write(
        tmp_path / "labels.jsonl",
        [
            {"prompt": r["prompt"], "chosen": r["responses"][1], "rejected": r["responses"][0]}
            for r in GOOD[:3]
        ],
    )
    out = tmp_path / "judged"
    args = [
        "judge",
        "--data",
        str(data),
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
        "--labels",
        str(labels),
    ]
    template = tmp_path / "rubric.txt"
    template.write_text(SHORT_TEMPLATE)
    args += ["--template", str(template)]
    assert main([*args, "model.dtype=float32", "batch_size=3"]) == 0
    assert "position_consistency" in caplog.text and "agreement" in caplog.text  # the figures are logged

    summary = json.loads((out / "summary.json").read_text())
    metrics = summary["metrics"]
    assert metrics["pairs"] == 4 and metrics["labels/matched"] == 3 and metrics["agreement/n"] == 3
    assert 0.0 <= metrics["position_consistency"] <= 1.0 and metrics["kept"] + metrics["dropped"] == 4
    prefs = read_data(out / "preferences.jsonl")  # rlxf's own reader accepts what the judge wrote
    assert prefs.kind == "preferences" and len(prefs) == metrics["kept"]
    record = prefs.records[0]
    assert record["judge"]["p_chosen"] >= 0.5 and len(record["judge"]["orders"]) == 2
    assert {record["chosen"], record["rejected"]} == set(
        GOOD[[g["prompt"] for g in GOOD].index(record["prompt"])]["responses"]
    )
    if metrics["dropped"]:
        assert len(read_candidates(out / "dropped.jsonl")) == metrics["dropped"]

    # the same folder again is refused; --overwrite replaces it; a high bar sends pairs to dropped.jsonl
    assert main([*args, "model.dtype=float32"]) == 2
    assert "already holds rlxf judge output" in capsys.readouterr().err
    assert main([*args, "model.dtype=float32", "--overwrite", "--min-confidence", "1.0"]) == 0
    assert len(read_candidates(out / "dropped.jsonl")) == 4
    assert (out / "preferences.jsonl").read_text() == ""
    # ... and a labelling project takes dropped.jsonl as it is (the judge's detail rides in `meta`)
    from rlxf.feedback.label.schema import read_candidates as read_label_items

    assert len(read_label_items(out / "dropped.jsonl", "pairwise")) == 4


def test_judge_command_on_preferences_and_pointwise(tiny_model_dir, tmp_path):
    prefs = _write(
        tmp_path / "prefs.jsonl",
        [{"prompt": r["prompt"], "chosen": r["responses"][0], "rejected": r["responses"][1]} for r in GOOD],
    )
    template = tmp_path / "rubric.txt"
    template.write_text(SHORT_TEMPLATE)
    common = ["judge", "--data", str(prefs), "--model", str(tiny_model_dir)]
    out = tmp_path / "pairs"
    assert main([*common, "--out", str(out), "--limit", "3", "--template", str(template)]) == 0
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics["pairs"] == 3 and metrics["agreement/n"] == 3  # the file's own labels

    # from Python: the same command returns its folder and figures (read as a mapping)
    cfg = JudgeConfig(
        data=str(prefs),
        out=str(tmp_path / "lib"),
        limit=2,
        template=str(template),
        model=ModelConfig(str(tiny_model_dir)),
    )
    result = judge(cfg)
    assert result.out == tmp_path / "lib" and result["pairs"] == 2
    assert result.summary == json.loads((tmp_path / "lib" / "summary.json").read_text())

    out = tmp_path / "ratings"
    assert main([*common, "--out", str(out), "--mode", "pointwise"]) == 0
    ratings = read_data(out / "ratings.jsonl")
    assert ratings.kind == "ratings" and len(ratings) == 8
    assert all(1.0 <= r["rating"] <= 9.0 and len(r["judge"]["probs"]) == 9 for r in ratings.records)
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics["ratings"] == 8 and metrics["agreement/n"] == 4


@pytest.mark.real_model
def test_judge_command_on_the_default_model(tmp_path, caplog):
    """The acceptance path on a few pairs: SmolLM2-135M-Instruct judges in both orders on CPU."""
    caplog.set_level(logging.INFO, logger="rlxf")
    data = _write(tmp_path / "candidates.jsonl", GOOD)
    out = tmp_path / "judged"
    assert main(["judge", "--data", str(data), "--out", str(out), "--device", "cpu"]) == 0
    assert "position_consistency" in caplog.text
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics["pairs"] == 4 and 0.0 <= metrics["position_consistency"] <= 1.0
    assert metrics["answer_mass/mean"] > 0.05  # the instruction model does answer with a letter
    assert len(read_data(out / "preferences.jsonl")) == metrics["kept"]
