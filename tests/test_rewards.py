"""Reward sources: every spec form parses and scores (fn: module and file, http:, model:, judge:, sentiment,
weighted sums), every failure names its source, the JSON poster behind http: and the HTTP judge (what it
retries and what not), and reward shaping (length penalty, batch and running
normalisation, clipping) against hand-computed numbers."""

from __future__ import annotations

import json
import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from rlxf.algos.reward_shaping import (
    RewardShapingConfig,
    RunningMoments,
    indicator_reward,
    logsigmoid_reward,
    shape_rewards,
)
from rlxf.data import encode_prompt
from rlxf.feedback import (
    DEFAULT_JUDGE_TEMPLATE,
    PointwiseJudge,
    RemoteError,
    RewardError,
    RewardHead,
    RewardModel,
    RewardOptions,
    parse_reward_spec,
    post_json,
    sentiment_scores,
)
from rlxf.feedback.reward_model import reward_pad_token_id
from rlxf.models.load import load_tokenizer

PROMPTS = ["The movie was", "Our trip to the coast", "The soup"]
COMPLETIONS = [" a delight from start to finish.", " sunny", " cold and the waiter was rude."]
CPU = RewardOptions(device="cpu", dtype="float32", batch_size=2)  # batch 2 of 3: two batches, one padded

REWARD_FUNCTIONS = """
import math

def length(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]

def boom(prompts, completions):
    return 1 / 0

def nan_at_3(prompts, completions):
    return [math.nan if i == 3 else 0.0 for i in range(len(completions))]

def one_short(prompts, completions):
    return [0.0] * (len(completions) - 1)

def words(prompts, completions):
    return ["good"] * len(completions)

def as_array(prompts, completions):
    import numpy
    return numpy.arange(len(completions), dtype=numpy.float32)
"""


@pytest.fixture(scope="module")
def rewards_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fn") / "my_rewards.py"
    path.write_text(REWARD_FUNCTIONS)
    return path


# ---------------------------------------------------------------------------------------------- fn:


def test_fn_from_a_file_and_from_a_module(rewards_file, monkeypatch):
    by_file = parse_reward_spec(f"fn:{rewards_file}:length")
    assert by_file.name == f"fn:{rewards_file}:length"
    assert by_file(PROMPTS, COMPLETIONS) == [float(len(c)) for c in COMPLETIONS]

    module = rewards_file.parent / "rlxf_test_reward_module.py"
    module.write_text(REWARD_FUNCTIONS)
    monkeypatch.syspath_prepend(str(module.parent))
    by_module = parse_reward_spec("fn:rlxf_test_reward_module:length")
    assert by_module(PROMPTS, COMPLETIONS) == by_file(PROMPTS, COMPLETIONS)
    # numpy arrays (and tensors) are accepted and come back as floats
    assert parse_reward_spec(f"fn:{rewards_file}:as_array")(PROMPTS, COMPLETIONS) == [0.0, 1.0, 2.0]


def test_fn_called_with_keyword_arguments(tmp_path):
    path = tmp_path / "kw.py"
    path.write_text("def score(*, completions, prompts):\n    return [len(p) for p in prompts]\n")
    assert parse_reward_spec(f"fn:{path}:score")(PROMPTS, COMPLETIONS) == [float(len(p)) for p in PROMPTS]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("fn:no/such/file.py:score", "no such file"),
        ("fn:rlxf_no_such_module_xyz:score", "cannot import rlxf_no_such_module_xyz"),
        ("fn:{file}:scor", "has no function 'scor'"),
        ("fn:{file}", "expected fn:module:function"),
    ],
)
def test_bad_fn_specs_name_the_spec(rewards_file, spec, message):
    spec = spec.format(file=rewards_file)
    with pytest.raises(ValueError, match=message) as info:
        parse_reward_spec(spec)
    assert repr(spec) in str(info.value)


def test_unknown_spec_lists_the_forms():
    with pytest.raises(ValueError, match="unknown reward spec 'sentimental'") as info:
        parse_reward_spec("sentimental")
    for form in ("model:PATH", "fn:module:function", "sentiment", "judge:MODEL", "http://", "0.7*sentiment"):
        assert form in str(info.value)


# ---------------------------------------------------------------------------------------------- checks


@pytest.mark.parametrize(
    "function, message",
    [
        ("boom", r"reward source 'fn:.*:boom' failed: ZeroDivisionError: division by zero"),
        (
            "nan_at_3",
            r"reward source 'fn:.*:nan_at_3' returned nan for completion 3 of 8 \(prompt 'The movie",
        ),
        ("one_short", r"reward source 'fn:.*:one_short' returned 7 values for 8 completions"),
        ("words", r"reward source 'fn:.*:words' returned 'good' \(str, not a number\) for completion 0 of 8"),
    ],
)
def test_bad_rewards_fail_naming_the_source(rewards_file, function, message):
    source = parse_reward_spec(f"fn:{rewards_file}:{function}")
    with pytest.raises(RewardError, match=message) as info:
        source(["The movie was"] * 8, [" fine"] * 8)
    if function == "boom":
        assert isinstance(info.value.__cause__, ZeroDivisionError)  # the original error is chained


def test_a_failing_part_of_a_sum_is_named(rewards_file):
    total = parse_reward_spec(f"0.5*fn:{rewards_file}:length + 2*fn:{rewards_file}:nan_at_3")
    with pytest.raises(RewardError, match=r"reward source 'fn:.*:nan_at_3' returned nan for completion 3"):
        total(["p"] * 4, ["c"] * 4)


# ---------------------------------------------------------------------------------------------- sums


def test_weighted_sum_from_a_string_and_from_a_yaml_list(rewards_file):
    pytest.importorskip("vaderSentiment")
    length = [float(len(c)) for c in COMPLETIONS]
    sentiment = sentiment_scores(COMPLETIONS)
    expected = [0.7 * s + 0.3 * n for s, n in zip(sentiment, length)]

    from_string = parse_reward_spec(f"0.7*sentiment + 0.3*fn:{rewards_file}:length")
    assert from_string.name == f"0.7*sentiment + 0.3*fn:{rewards_file}:length"
    assert from_string(PROMPTS, COMPLETIONS) == pytest.approx(expected)

    items = [{"source": "sentiment", "weight": 0.7}, {"source": f"fn:{rewards_file}:length", "weight": 0.3}]
    assert parse_reward_spec(items)(PROMPTS, COMPLETIONS) == pytest.approx(expected)

    # a bare spec weighs 1, a term without a weight too
    unweighted = [s + n for s, n in zip(sentiment, length)]
    assert parse_reward_spec(["sentiment", f"fn:{rewards_file}:length"])(
        PROMPTS, COMPLETIONS
    ) == pytest.approx(unweighted)
    assert parse_reward_spec(f"sentiment + fn:{rewards_file}:length")(PROMPTS, COMPLETIONS) == pytest.approx(
        unweighted
    )
    assert parse_reward_spec("sentiment")(PROMPTS, COMPLETIONS) == sentiment


@pytest.mark.parametrize(
    "spec, message",
    [
        ([], "empty"),
        ([{"source": "sentiment", "weight": "high"}], "must be a finite number"),
        ([{"source": "sentiment", "wieght": 2}], "unknown keys"),
        ([{"weight": 2}], "source: SPEC"),
        ("0.5*sentiment + 0.5*nonsense", "unknown reward spec 'nonsense'"),
    ],
)
def test_bad_weighted_sums(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_reward_spec(spec)


# ---------------------------------------------------------------------------------------------- http:


class _Scorer(BaseHTTPRequestHandler):
    """/score: reward = len(completion); /fail: HTTP 500; /short: one reward too few; /text: not JSON;
    /other: JSON without rewards; /echo: the body and the Authorization header sent back."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = 200
        if self.path == "/fail":
            status, answer = 500, "the scorer broke"
        elif self.path == "/short":
            answer = json.dumps({"rewards": [1.0] * (len(body["completions"]) - 1)})
        elif self.path == "/text":
            answer = "hello"
        elif self.path == "/other":
            answer = json.dumps({"scores": [1.0]})
        elif self.path == "/echo":
            answer = json.dumps({"body": body, "auth": self.headers.get("Authorization")})
        else:
            answer = json.dumps({"rewards": [float(len(c)) for c in body["completions"]]})
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(answer.encode())

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass


@pytest.fixture(scope="module")
def server_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scorer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_scorer(server_url):
    source = parse_reward_spec(f"{server_url}/score")
    assert source.name == f"{server_url}/score"
    assert source(PROMPTS, COMPLETIONS) == [float(len(c)) for c in COMPLETIONS]


@pytest.mark.parametrize(
    "path, message",
    [
        ("/fail", "failed: RemoteError: .*/fail: HTTP 500 .*the scorer broke"),
        ("/short", "returned 2 values for 3 completions"),
        ("/text", "failed: RemoteError: .*/text: the answer is not JSON: b'hello'"),
        ("/other", 'failed: ValueError: the answer has no "rewards" field'),
    ],
)
def test_http_errors_name_the_url(server_url, path, message):
    source = parse_reward_spec(f"{server_url}{path}")
    with pytest.raises(RewardError, match=f"reward source '{server_url}{path}' {message}"):
        source(PROMPTS, COMPLETIONS)


def test_http_connection_refused_after_retries():
    with socket.socket() as s:  # a port nobody listens on once this socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/score"
    source = parse_reward_spec(url, RewardOptions(retries=1, timeout=5))
    with pytest.raises(
        RewardError, match=f"reward source '{url}' failed: RemoteError: {url}: no answer after 2"
    ):
        source(PROMPTS, COMPLETIONS)


def test_post_json_sends_json_and_headers_and_retries_only_connections(server_url, monkeypatch):
    answer = post_json(f"{server_url}/echo", {"x": [1, "é"]}, headers={"Authorization": "Bearer k"})
    assert answer == {"body": {"x": [1, "é"]}, "auth": "Bearer k"}

    pauses: list[float] = []
    monkeypatch.setattr("rlxf.feedback.http.time.sleep", pauses.append)
    with pytest.raises(RemoteError, match="HTTP 500"):  # the server answered: asked once
        post_json(f"{server_url}/fail", {}, retries=3)
    assert pauses == []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RemoteError, match=r"no answer after 4 attempts \(URLError"):
        post_json(f"http://127.0.0.1:{port}/", {}, retries=3)
    assert pauses == [0.5, 1.0, 2.0]  # a growing pause between the 4 attempts
    with pytest.raises(ValueError, match="retries >= 0"):
        post_json(f"{server_url}/echo", {}, retries=-1)


# ---------------------------------------------------------------------------------------------- model:


def save_reward_model(base, out, ensemble_size: int = 1):
    """An untrained reward model saved as training saves one: random head, rlxf head fields, pad != EOS."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    tokenizer = load_tokenizer(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=ensemble_size)
    RewardHead.for_preferences(ensemble_size).save_to(model.config)
    pad_id = reward_pad_token_id(tokenizer)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
    model.config.pad_token_id = pad_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_model_source_equals_reward_model_score(tiny_model_dir, tmp_path):
    folder = save_reward_model(tiny_model_dir, tmp_path / "rm")
    source = parse_reward_spec(f"model:{folder}", CPU)
    expected = RewardModel.load(folder, dtype="float32").score(PROMPTS, COMPLETIONS).reward
    assert source(PROMPTS, COMPLETIONS) == pytest.approx(expected.tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="uncertainty_penalty needs an ensemble"):
        parse_reward_spec(f"model:{folder}", RewardOptions(uncertainty_penalty=1.0))
    with pytest.raises(ValueError, match=f"reward spec 'model:{tmp_path}/missing'"):
        parse_reward_spec(f"model:{tmp_path}/missing")


def test_ensemble_source_is_the_mean_minus_k_std(tiny_model_dir, tmp_path):
    folder = save_reward_model(tiny_model_dir, tmp_path / "rm", ensemble_size=3)
    scores = RewardModel.load(folder, dtype="float32").score(PROMPTS, COMPLETIONS)
    assert torch.allclose(scores.reward, scores.outputs.mean(dim=1), atol=1e-6)  # the mean of the heads
    mean = parse_reward_spec(f"model:{folder}", CPU)
    assert mean(PROMPTS, COMPLETIONS) == pytest.approx(scores.reward.tolist(), abs=1e-6)
    options = RewardOptions(device="cpu", dtype="float32", uncertainty_penalty=0.5)
    pessimistic = parse_reward_spec(f"model:{folder}", options)
    expected = scores.reward - 0.5 * scores.std
    assert pessimistic(PROMPTS, COMPLETIONS) == pytest.approx(expected.tolist(), abs=1e-6)


# ---------------------------------------------------------------------------------------------- judge:


def test_judge_is_the_expected_digit_under_the_judge(tiny_model_dir, tiny_tokenizer):
    source = parse_reward_spec(f"judge:{tiny_model_dir}", CPU)
    judge = source.scorer.judge  # the reward source adapts a pointwise judge
    rewards = source(PROMPTS, COMPLETIONS)
    assert all(0.0 <= r <= 1.0 for r in rewards)
    ratings = judge.rate(PROMPTS, COMPLETIONS)
    assert ratings.probs.shape == (3, 9) and torch.allclose(ratings.probs.sum(1), torch.ones(3))
    assert rewards == pytest.approx(((ratings.expected - 1) / 8).tolist())

    # by hand: one unpadded forward pass per completion, P(d) read at the tokens "1".."9"
    digit_ids = tiny_tokenizer.convert_tokens_to_ids(list("123456789"))
    for i, (prompt, completion) in enumerate(zip(PROMPTS, COMPLETIONS)):
        rubric = DEFAULT_JUDGE_TEMPLATE.format(prompt=prompt, completion=completion)
        text = tiny_tokenizer.apply_chat_template(
            [{"role": "user", "content": rubric}], tokenize=False, add_generation_prompt=True
        )
        assert judge.render(prompt, completion) == text  # through the chat template
        with torch.no_grad():
            logits = judge.model(input_ids=torch.tensor([encode_prompt(tiny_tokenizer, text)])).logits[0, -1]
        p = logits.softmax(-1)[digit_ids]
        expected = sum(p_d.item() * d for d, p_d in zip(range(1, 10), p / p.sum()))
        assert ratings.expected[i].item() == pytest.approx(expected, abs=1e-4)
        assert ratings.confidence[i].item() == pytest.approx(p.sum().item(), rel=1e-4)


def test_judge_without_a_chat_template_and_with_a_custom_rubric(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = None
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    judge = PointwiseJudge(model, tokenizer, template="Is '{completion}' a good end of '{prompt}'?")
    assert judge.render("a", "b") == "Is 'b' a good end of 'a'?\nRating:"
    assert all(1.0 <= x <= 9.0 for x in judge.rate(PROMPTS, COMPLETIONS).expected.tolist())
    with pytest.raises(ValueError, match="no {completion} placeholder"):
        RewardOptions(judge_template="Rate {prompt}")
    with pytest.raises(ValueError, match="only {prompt} and {completion}"):
        RewardOptions(judge_template="Rate {prompt} {completion} {style}")


# ---------------------------------------------------------------------------------------------- shaping


def test_length_penalty_applies_only_to_truncated_completions():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0])
    shaped = shape_rewards(
        rewards, ["eos", "length", "stop", "length"], RewardShapingConfig(length_penalty=0.5)
    )
    assert shaped.tolist() == [1.0, 1.5, 3.0, 3.5]
    assert shaped.dtype == rewards.dtype


def test_batch_normalisation_gives_mean_0_std_1():
    rewards = torch.tensor([3.0, -1.0, 7.5, 0.25, 2.0])
    shaped = shape_rewards(rewards, ["eos"] * 5, RewardShapingConfig(normalize="batch"))
    assert shaped.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert shaped.std().item() == pytest.approx(1.0, abs=1e-6)
    one = shape_rewards(torch.tensor([4.0]), ["eos"], RewardShapingConfig(normalize="batch"))
    assert one.tolist() == [0.0]  # no spread: centred, not divided by zero


def test_running_normalisation_matches_numpy_and_resumes_exactly():
    rng = np.random.default_rng(0)
    batches = [rng.normal(5.0, 3.0, size=n).astype(np.float32) for n in (4, 7, 1, 5)]
    cfg = RewardShapingConfig(normalize="running")
    stats = RunningMoments()
    seen: list[float] = []
    for batch in batches:
        shaped = shape_rewards(torch.from_numpy(batch), ["eos"] * len(batch), cfg, stats)
        seen.extend(batch.astype(np.float64))
        mean, std = np.mean(seen), np.std(seen, ddof=1)
        assert stats.count == len(seen)
        assert stats.mean == pytest.approx(mean, rel=1e-12) and stats.std == pytest.approx(std, rel=1e-12)
        assert shaped.numpy() == pytest.approx((batch - mean) / std, rel=1e-5)

    # a resumed run (state saved with a checkpoint, as JSON) continues exactly
    restored = RunningMoments()
    restored.load_state_dict(json.loads(json.dumps(stats.state_dict())))
    nxt = torch.tensor([1.0, 9.0, 4.0])
    assert torch.equal(
        shape_rewards(nxt, ["eos"] * 3, cfg, restored), shape_rewards(nxt, ["eos"] * 3, cfg, stats)
    )
    assert restored.state_dict() == stats.state_dict()
    with pytest.raises(ValueError, match="needs the RunningMoments"):
        shape_rewards(nxt, ["eos"] * 3, cfg)


def test_logsigmoid_transform_by_hand():
    # log sigmoid(x) = -log(1 + e^-x): x = 0 -> -log 2; x = 2 -> -log(1 + e^-2); x = -2 -> -log(1 + e^2)
    got = logsigmoid_reward(torch.tensor([1.0, 3.0, -1.0]), center=1.0)
    want = [-math.log(2.0), -math.log(1.0 + math.exp(-2.0)), -math.log(1.0 + math.exp(2.0))]
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    # diminishing returns: +2 above the reference gains 0.57, +2 below it loses 1.43
    assert got[1] - got[0] < got[0] - got[2]
    # order: the length penalty (raw units), then the transform, then normalisation
    cfg = RewardShapingConfig(transform="logsigmoid", length_penalty=1.0)
    shaped = shape_rewards(torch.tensor([1.0, 3.0]), ["eos", "length"], cfg, center=1.0)
    assert shaped.tolist() == pytest.approx([-math.log(2.0), -math.log(1.0 + math.exp(-1.0))], abs=1e-6)
    with pytest.raises(ValueError, match="needs the reference reward"):
        shape_rewards(torch.tensor([1.0]), ["eos"], cfg)
    with pytest.raises(ValueError, match="set transform too"):
        RewardShapingConfig(center=0.5)
    with pytest.raises(ValueError, match="center must be a finite"):
        RewardShapingConfig(transform="logsigmoid", center=float("nan"))


def test_indicator_transform_by_hand():
    # 1 strictly above the threshold, 0 at or below it
    got = indicator_reward(torch.tensor([-0.5, 0.0, 0.05, 0.06, 0.9]), threshold=0.05)
    assert got.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    # after the length penalty (raw units): 0.9 cut off at the limit with penalty 1 is -0.1, a failure
    cfg = RewardShapingConfig(transform="indicator", center=0.05, length_penalty=1.0)
    shaped = shape_rewards(torch.tensor([0.9, 0.9, 0.0]), ["eos", "length", "eos"], cfg, center=0.05)
    assert shaped.tolist() == [1.0, 0.0, 0.0]
    # then normalisation: [1, 0, 0] whitened by the batch (mean 1/3, unbiased std 1/sqrt(3))
    batch = RewardShapingConfig(transform="indicator", center=0.05, normalize="batch")
    shaped = shape_rewards(torch.tensor([0.9, 0.0, -0.3]), ["eos"] * 3, batch, center=0.05)
    assert shaped.tolist() == pytest.approx(
        [(2 / 3) * math.sqrt(3), -(1 / 3) * math.sqrt(3), -(1 / 3) * math.sqrt(3)]
    )
    with pytest.raises(ValueError, match="needs its threshold"):
        RewardShapingConfig(transform="indicator")


def test_clip_bounds_the_shaped_rewards():
    rewards = torch.tensor([-10.0, -0.5, 0.0, 0.5, 10.0])
    shaped = shape_rewards(rewards, ["eos"] * 5, RewardShapingConfig(clip=1.0))
    assert shaped.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    # order: penalty, then normalisation, then clip (the clip bounds what the learner sees)
    cfg = RewardShapingConfig(normalize="batch", clip=1.0, length_penalty=100.0)
    shaped = shape_rewards(torch.tensor([1.0, 2.0, 3.0, 4.0]), ["eos", "eos", "eos", "length"], cfg)
    assert shaped.min().item() == -1.0 and shaped.max().item() <= 1.0 and shaped[3].item() == -1.0
    with pytest.raises(ValueError, match="clip must be > 0"):
        RewardShapingConfig(clip=0.0)
    with pytest.raises(ValueError, match="do not match"):
        shape_rewards(rewards, ["eos"], RewardShapingConfig())
    assert math.isfinite(RewardShapingConfig().length_penalty)


@pytest.mark.parametrize("name", ["sentiment-grpo.yaml", "sentiment-ppo.yaml"])
def test_sentiment_examples_build_their_configs(name):
    # The examples are configs users copy: each must build (every field checked) before a model loads.
    from rlxf.algos.rl import RLConfig
    from rlxf.config import load_config

    cfg = load_config(RLConfig, Path(__file__).resolve().parents[1] / "examples" / name)
    assert cfg.reward == "sentiment" and cfg.eval_prompts_split == "test"
    if name == "sentiment-grpo.yaml":  # positive share first: the indicator at VADER's positive threshold
        assert (cfg.shaping.transform, cfg.shaping.center) == ("indicator", 0.05)
