"""Reward models: losses and metrics against hand-computed numbers, which token the head reads, training on
preferences / ratings / as an ensemble, the saved folder under plain transformers, eval and score, bad
input, resume."""

from __future__ import annotations

import json
import logging
import math
import random
import statistics
import subprocess
import sys

import pytest
import torch

from rlxf.algos.reward_eval import (
    RewardEvalConfig,
    RewardHead,
    RewardModel,
    RewardScoreConfig,
    average_ranks,
    collate_rewards,
    encode_reward_record,
    pearson,
    preference_metrics,
    rating_metrics,
    reward_eval,
    reward_pad_token_id,
    reward_score,
    spearman,
)
from rlxf.algos.reward_model import (
    RewardTrainConfig,
    bootstrap_counts,
    bradley_terry_loss,
    rating_mse_loss,
    reward_train,
)
from rlxf.config import ConfigError, load_config
from rlxf.data import DataError

WORDS = "the movie book trip food service cast ending soup product".split()


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def preference_records(n: int, seed: int = 0) -> list[dict]:
    """Chosen always ends with ' yes', rejected with ' no', after the same random words."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
        prompt = f"Review {i}: the {rng.choice(WORDS)} was"
        records.append({"prompt": prompt, "chosen": f" {words} yes", "rejected": f" {words} no"})
    return records


def config(model_dir, data, out, **options) -> RewardTrainConfig:
    """A RewardTrainConfig for the tiny model: 8 pairs per step, lr 1e-3, no warm-up."""
    train = {"learning_rate": 1e-3, "global_batch_size": 8, "micro_batch_size": 8, "warmup_ratio": 0.0}
    train.update(options.pop("train", {}))
    values = {"model": {"name_or_path": str(model_dir)}, "data": str(data), "out": str(out), "train": train}
    return load_config(RewardTrainConfig, overrides={**values, **options})


# ---------------------------------------------------------------------------------------------- losses


def test_bradley_terry_loss_hand_values():
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 2.0])
    expected = [math.log(1 + math.exp(-1.0)), math.log(2.0), math.log(1 + math.exp(3.0))]
    assert bradley_terry_loss(chosen, rejected).tolist() == pytest.approx(expected, rel=1e-6)
    # stable far out: -log sigmoid(-200) = 200 (a naive log(sigmoid) would give inf)
    assert bradley_terry_loss(torch.tensor([0.0]), torch.tensor([200.0])).item() == pytest.approx(200.0)


def test_margin_shifts_the_loss():
    chosen, rejected = torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.0])
    margin = torch.tensor([1.0, -1.0])
    # -log sigmoid(1 - 1) = log 2;  -log sigmoid(1 + 1) = log(1 + e^-2)
    expected = [math.log(2.0), math.log(1 + math.exp(-2.0))]
    assert bradley_terry_loss(chosen, rejected, margin).tolist() == pytest.approx(expected, rel=1e-6)
    # a margin is the same as lowering the chosen reward by it; it raises the loss of a won pair
    assert torch.equal(
        bradley_terry_loss(chosen, rejected, margin), bradley_terry_loss(chosen - margin, rejected)
    )
    assert bradley_terry_loss(chosen, rejected, margin)[0] > bradley_terry_loss(chosen, rejected)[0]
    # one margin per pair broadcasts over ensemble heads: [batch, heads]
    per_head = bradley_terry_loss(
        chosen[:, None].expand(2, 3), rejected[:, None].expand(2, 3), margin[:, None]
    )
    assert per_head.shape == (2, 3) and per_head[:, 1].tolist() == pytest.approx(expected, rel=1e-6)


def test_rating_mse_loss_hand_values():
    loss = rating_mse_loss(torch.tensor([1.0, 2.5, -1.0]), torch.tensor([3.0, 2.0, -1.0]))
    assert loss.tolist() == [4.0, 0.25, 0.0]


# ---------------------------------------------------------------------------------------------- metrics


def test_spearman_and_pearson_with_ties():
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0])).tolist() == [2.5, 1.0, 2.5]
    x, y = torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0, 10.0])
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]; centred [-1.5, 0, 0, 1.5] and [-1.5, .5, -.5, 1.5]
    # spearman = 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert spearman(x, y) == pytest.approx(math.sqrt(0.9))
    # pearson: centred x [-1, 0, 0, 1], y [-3, -1, -2, 6] -> 9 / sqrt(2 * 50) = 0.9
    assert pearson(x, y) == pytest.approx(0.9)
    metrics = rating_metrics(x, y)
    assert metrics["mse"] == pytest.approx((0 + 1 + 0 + 49) / 4)
    assert metrics["spearman"] == pytest.approx(math.sqrt(0.9)) and metrics["pearson"] == pytest.approx(0.9)
    assert math.isnan(spearman(torch.ones(4), y))  # constant scores: no correlation to speak of


def test_preference_metrics_count_ties_apart():
    chosen = torch.tensor([1.0, 2.0, 0.5, 3.0])
    rejected = torch.tensor([0.0, 2.0, 1.0, 3.0 + 1e-8])
    metrics = preference_metrics(chosen, rejected)
    assert metrics["accuracy"] == 0.25  # only the first pair is right
    assert metrics["ties"] == 0.5  # the second and fourth are neither right nor wrong
    assert metrics["margin/mean"] == pytest.approx((1.0 + 0.0 - 0.5 - 1e-8) / 4)


# ---------------------------------------------------------------------------------------------- inputs


def test_head_reads_the_closing_eos(tiny_model_dir, tiny_tokenizer):
    """Inputs are prompt + completion + one EOS, the pad token is not the EOS, and transformers reads the
    score at that EOS."""
    from transformers import AutoModelForSequenceClassification

    record = {"prompt": "Review 1: the movie was", "chosen": " good yes", "rejected": " bad no"}
    features = encode_reward_record(record, tiny_tokenizer, max_length=64)
    eos = tiny_tokenizer.eos_token_id  # == pad id for this tokenizer, as for SmolLM2
    prompt = tiny_tokenizer(record["prompt"], add_special_tokens=False)["input_ids"]
    completion = tiny_tokenizer(record["chosen"], add_special_tokens=False)["input_ids"]
    assert features["chosen_ids"] == prompt + completion + [eos]
    # a completion that already ends with EOS does not get a second one
    doubled = encode_reward_record({**record, "chosen": " good yes<|im_end|>"}, tiny_tokenizer, max_length=64)
    assert doubled["chosen_ids"] == features["chosen_ids"]

    pad_id = reward_pad_token_id(tiny_tokenizer)
    assert pad_id != eos
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).eval()
    model.config.pad_token_id = pad_id
    batch = collate_rewards([features], pad_token_id=pad_id)  # padded: 2 rows
    assert (batch["attention_mask"][1] == 0).any()  # the shorter row has padding
    with torch.no_grad():
        scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        for row, ids in enumerate([features["chosen_ids"], features["rejected_ids"]]):
            hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]  # at the EOS
            assert scores[row].item() == pytest.approx((model.score.weight[0] @ hidden).item(), abs=1e-5)

    # truncation keeps the end of the text, and the EOS stays last
    cut = encode_reward_record(record, tiny_tokenizer, max_length=5)
    assert cut["chosen_ids"] == features["chosen_ids"][-5:-1][-4:] + [eos] and len(cut["chosen_ids"]) == 5
    with pytest.raises(DataError, match="max_length"):
        encode_reward_record(record, tiny_tokenizer, max_length=5, truncation="error")


def test_conversations_are_read_at_the_end_of_the_answer(tiny_tokenizer):
    """A chat-format answer is read at its closing EOS, however the record gives it."""
    user = [{"role": "user", "content": "Is the soup good?"}]
    answer = [{"role": "assistant", "content": "yes"}]
    other = [{"role": "assistant", "content": "no"}]
    as_messages = encode_reward_record({"messages": user + answer}, tiny_tokenizer, max_length=64)
    as_completion = encode_reward_record(
        {"prompt": user, "completion": answer}, tiny_tokenizer, max_length=64
    )
    as_pair = encode_reward_record({"prompt": user, "chosen": answer, "rejected": other}, tiny_tokenizer, 64)
    assert as_messages["input_ids"] == as_completion["input_ids"] == as_pair["chosen_ids"]
    assert tiny_tokenizer.decode(as_messages["input_ids"]).endswith("<|im_start|>assistant\nyes<|im_end|>")


def test_bootstrap_counts_are_seeded_resamples():
    counts = bootstrap_counts(50, 3, seed=0)
    assert counts.shape == (50, 3) and counts.sum(0).tolist() == [50.0] * 3
    assert torch.equal(counts, bootstrap_counts(50, 3, seed=0))  # seeded
    assert not torch.equal(counts[:, 0], counts[:, 1])  # each head its own resample


# ---------------------------------------------------------------------------------------------- preferences


@pytest.fixture(scope="module")
def preference_run(tiny_model_dir, tmp_path_factory):
    """A reward model trained 30 steps on 48 marker pairs (12 held out), centred."""
    root = tmp_path_factory.mktemp("rm")
    data = write_jsonl(root / "prefs.jsonl", preference_records(48))
    cfg = config(
        tiny_model_dir, data, root / "run", eval_split=0.25, center_rewards=True, train={"max_steps": 30}
    )
    final = reward_train(cfg)
    return root, data, final


def test_preference_run_learns_the_marker(preference_run):
    root, _, final = preference_run
    run = root / "run"
    assert final["eval/accuracy"] == 1.0 and final["eval/ties"] == 0.0 and final["eval/margin/mean"] > 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    train_names = {"loss", "accuracy", "rewards/chosen", "rewards/rejected", "rewards/margins", "lr"}
    assert train_names <= set(train[0])
    eval_names = {"eval/accuracy", "eval/ties", "eval/margin/mean", "eval/loss"}
    assert records[0]["step"] == 0 and eval_names <= set(records[0]) and "loss" not in records[0]  # step 0
    assert records[-1]["step"] == 30 and eval_names <= set(records[-1])
    assert train[-1]["loss"] < train[0]["loss"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics"]["eval/accuracy"] == 1.0
    held_out = summary["held_out"]
    assert held_out["n"] == 12 and held_out["unit"] == "pairs" and held_out["warnings"] == []
    assert held_out["start"]["accuracy"] == records[0]["eval/accuracy"] and held_out["end"]["accuracy"] == 1.0
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForSequenceClassification"]
    assert saved["id2label"] == {"0": "reward"} and saved["rlxf_objective"] == "preferences"
    assert saved["rlxf_reward_weights"] == [1.0]
    assert saved["rlxf_reward_mean"] == pytest.approx(final["reward_mean"])


PLAIN_TRANSFORMERS = """
import json, sys, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
folder, texts = sys.argv[1], json.loads(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
assert tokenizer.pad_token_id != tokenizer.eos_token_id  # the saved pad token is not the EOS
batch = tokenizer(texts, padding=True, return_tensors="pt")  # right padding with that pad token
with torch.no_grad():
    print(json.dumps(model(**batch).logits[:, 0].tolist()))
"""


def test_saved_model_gives_the_same_scores_in_plain_transformers(preference_run):
    root, _, final = preference_run
    pairs = [(r["prompt"], c) for r in preference_records(4, seed=7) for c in (r["chosen"], r["rejected"])]
    prompts, completions = zip(*pairs)
    rm = RewardModel.load(root / "run", dtype="float32")  # a run folder: its model/ is used
    ours = rm.score(list(prompts), list(completions)).reward
    texts = [p + c + "<|im_end|>" for p, c in pairs]  # prompt + completion + EOS, as rlxf reads them
    out = subprocess.run(
        [sys.executable, "-c", PLAIN_TRANSFORMERS, str(root / "run" / "model"), json.dumps(texts)],
        capture_output=True,
        text=True,
        check=True,
    )
    plain = torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))
    # rlxf's scorer subtracts the stored mean; plain transformers gives the uncentred score
    assert (ours + final["reward_mean"]).tolist() == pytest.approx(plain.tolist(), abs=1e-5)
    assert (ours[0::2] > ours[1::2]).all()  # the chosen ("yes") completions win


def test_reward_eval_and_score(preference_run, tmp_path):
    root, data, _ = preference_run
    held_out = write_jsonl(tmp_path / "held_out.jsonl", preference_records(10, seed=3))
    metrics = reward_eval(
        RewardEvalConfig(model=str(root / "run"), data=str(held_out), out=str(tmp_path / "ev"))
    )
    assert metrics["accuracy"] == 1.0 and metrics["ties"] == 0.0 and metrics["num_examples"] == 10
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["metrics"]["accuracy"] == 1.0 and report["kind"] == "preferences"

    out = tmp_path / "scored.jsonl"
    scored = reward_score(
        RewardScoreConfig(model=str(root / "run" / "model"), data=str(held_out), out=str(out))
    )
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == scored and len(lines) == 10
    assert all(r["reward_chosen"] > r["reward_rejected"] for r in lines) and "prompt" in lines[0]

    sft = write_jsonl(
        tmp_path / "sft.jsonl", [{"prompt": "Review 1: the food was", "completion": " fine yes"}]
    )
    scored = reward_score(
        RewardScoreConfig(model=str(root / "run"), data=str(sft), out=str(tmp_path / "s.jsonl"))
    )
    assert set(scored[0]) == {"prompt", "completion", "reward"}


def test_ties_counted_apart_when_the_score_ignores_the_completion(preference_run):
    """With its head zeroed, the model scores every completion alike: all pairs tie, none is right."""
    root, _, _ = preference_run
    rm = RewardModel.load(root / "run", dtype="float32")
    rm.model.score.weight.data.zero_()
    features = [rm.encode(r) for r in preference_records(6, seed=5)]
    chosen = rm.score_ids([f["chosen_ids"] for f in features]).reward
    rejected = rm.score_ids([f["rejected_ids"] for f in features]).reward
    metrics = preference_metrics(chosen, rejected)
    assert (metrics["accuracy"], metrics["ties"], metrics["margin/mean"]) == (0.0, 1.0, 0.0)


# ---------------------------------------------------------------------------------------------- ratings


def rating_records(n: int, seed: int = 0) -> list[dict]:
    """Two aspects: 'helpful' rates ' yes' 3 and ' no' 0; 'safe' rates ' yes' -1 and ' no' 2."""
    rng = random.Random(seed)
    targets = {("helpful", "yes"): 3.0, ("helpful", "no"): 0.0, ("safe", "yes"): -1.0, ("safe", "no"): 2.0}
    records = []
    for i in range(n):
        aspect, marker = rng.choice(["helpful", "safe"]), rng.choice(["yes", "no"])
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
        records.append(
            {
                "prompt": f"Item {i}: the {rng.choice(WORDS)}",
                "completion": f" {words} {marker}",
                "rating": targets[aspect, marker],
                "aspect": aspect,
            }
        )
    return records


def test_an_empty_completion_is_scored_as_the_prompt_and_eos(preference_run):
    """A policy that stops at once wrote nothing: a real output, scored (prompt + EOS), not a data error."""
    root, _, _ = preference_run
    rm = RewardModel.load(root / "run", dtype="float32")
    prompt = "Review 3: the meal was"
    empty, spaces, words = rm.score([prompt] * 3, ["", "  ", " calm yes"]).reward.tolist()
    assert math.isfinite(empty) and empty == spaces
    assert empty != words


def test_ratings_with_two_aspects(tiny_model_dir, tmp_path):
    records_in = rating_records(64)
    data = write_jsonl(tmp_path / "ratings.jsonl", records_in)
    cfg = config(
        tiny_model_dir,
        data,
        tmp_path / "run",
        eval_split=0.25,
        aspect_weights=["safe=0.25", "helpful=0.75"],
        train={"max_steps": 200, "learning_rate": 3e-3},
    )
    final = reward_train(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = records[1]  # records[0]: the held-out figures before training (step 0)
    assert "mse" in first and final["mse"] < first["mse"] / 5  # the outputs learn their targets
    # judged by the held-out MSE: it fell, so no warning
    assert final.summary["held_out"]["end"]["mse"] < final.summary["held_out"]["start"]["mse"]
    assert (
        final.summary["held_out"]["warnings"] == [] and final.summary["held_out"]["unit"] == "rated examples"
    )
    # Held out: the error is under a quarter of the ratings' variance (what predicting their mean scores),
    # and the order is right.
    variance = statistics.pvariance([r["rating"] for r in records_in])
    assert (
        final["eval/mse"] < 0.25 * variance
        and final["eval/spearman"] > 0.8
        and "eval/pearson/helpful" in final
    )

    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["id2label"] == {"0": "helpful", "1": "safe"} and saved["rlxf_reward_weights"] == [0.75, 0.25]
    rm = RewardModel.load(tmp_path / "run", dtype="float32")
    scores = rm.score(["Item 1: the book"], [" cast yes"])
    assert scores.outputs.shape == (1, 2) and scores.std is None
    weighted = scores.outputs[0] @ torch.tensor([0.75, 0.25])  # reward = 0.75 helpful + 0.25 safe
    assert scores.reward.item() == pytest.approx(weighted.item(), abs=1e-6)
    yes, no = rm.score(["Item 1: the book"] * 2, [" cast yes", " cast no"]).outputs.tolist()
    assert yes[0] > no[0] + 1 and yes[1] < no[1] - 1  # 'helpful' prefers yes (3 vs 0), 'safe' no (-1 vs 2)

    held_out = write_jsonl(tmp_path / "held.jsonl", rating_records(16, seed=9))
    metrics = reward_eval(RewardEvalConfig(model=str(tmp_path / "run"), data=str(held_out), dtype="float32"))
    assert metrics["mse"] < 0.5 and metrics["spearman"] > 0.8


# ---------------------------------------------------------------------------------------------- ensembles


def test_ensemble_exposes_mean_and_spread(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_records(32))
    cfg = config(tiny_model_dir, data, tmp_path / "run", ensemble_size=3, train={"max_steps": 12})
    final = reward_train(cfg)
    assert final["rewards/ensemble_std"] > 0
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["id2label"] == {"0": "reward_0", "1": "reward_1", "2": "reward_2"}
    assert saved["rlxf_ensemble_size"] == 3 and saved["rlxf_reward_weights"] == pytest.approx([1 / 3] * 3)

    rm = RewardModel.load(tmp_path / "run", dtype="float32")
    scores = rm.score(["Review 2: the trip was", "Review 2: the trip was"], [" calm yes", " calm no"])
    assert scores.outputs.shape == (2, 3)
    assert torch.allclose(scores.reward, scores.outputs.mean(-1))  # the reward: the heads' mean
    assert torch.allclose(scores.std, scores.outputs.std(-1))  # the uncertainty: their spread
    assert (scores.std > 0).all() and scores.reward[0] > scores.reward[1]

    scored = reward_score(RewardScoreConfig(model=str(tmp_path / "run"), data=str(data)))
    assert {"reward_chosen", "reward_chosen_std", "reward_rejected", "reward_rejected_std"} <= set(scored[0])


def test_head_round_trips_through_a_config():
    from transformers import LlamaConfig

    head = RewardHead("ratings", ["a", "b"], [0.7, 0.3], reward_mean=0.5)
    config = LlamaConfig(num_labels=2)
    head.save_to(config)
    assert RewardHead.from_config(LlamaConfig.from_dict(config.to_dict())) == head
    reward, std = head.combine(torch.tensor([[1.0, 2.0]]))
    assert reward.item() == pytest.approx(0.7 + 0.6 - 0.5) and std is None
    assert RewardHead.from_config(LlamaConfig(num_labels=1)).weights == [1.0]  # a foreign single-output RM
    with pytest.raises(ValueError, match="rlxf_reward_weights"):
        RewardHead.from_config(LlamaConfig(num_labels=2))


def test_lora_reward_model_saves_merged(tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    data = write_jsonl(tmp_path / "prefs.jsonl", preference_records(16))
    cfg = config(
        tiny_model_dir,
        data,
        tmp_path / "run",
        model={"name_or_path": str(tiny_model_dir), "lora": {"r": 4}},
        train={"max_steps": 2},
    )
    reward_train(cfg)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model").eval()
    assert not any("lora" in name for name, _ in plain.named_parameters())
    rm = RewardModel.load(tmp_path / "run", dtype="float32")
    ids = encode_reward_record(preference_records(1)[0], rm.tokenizer, max_length=64)["chosen_ids"]
    with torch.no_grad():
        plain_score = plain(input_ids=torch.tensor([ids])).logits[0, 0].item()
    assert plain_score == pytest.approx(rm.score_ids([ids]).reward.item(), abs=1e-5)


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"prompt": "p", "chosen": " same", "rejected": " same"}] * 8, "field 'rejected'"),
        (
            [{"prompt": "p", "completion": " c", "rating": float("nan")}] * 8,
            "field 'rating': expected a finite",
        ),
        ([{"prompt": "p", "completion": " c", "rating": "5"}] * 8, "field 'rating'"),
        (
            [
                {"prompt": "p", "chosen": " a", "rejected": " b"},
                {"prompt": "p", "completion": " c", "rating": 1.0},
            ]
            * 4,
            "mixes kinds",
        ),
        ([{"prompt": "p", "completion": " c"}] * 8, "reward model trains on preferences"),
    ],
    ids=["chosen-is-rejected", "nan-rating", "string-rating", "mixed-kinds", "sft-kind"],
)
def test_bad_input_stops_before_writing(tiny_model_dir, tmp_path, records, message):
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))  # NaN is written as a bare NaN
    out = tmp_path / "run"
    with pytest.raises(DataError, match=message) as info:
        reward_train(config(tiny_model_dir, data, out))
    assert str(data) in str(info.value)
    assert not out.exists()


def test_config_mismatches_stop_before_writing(tiny_model_dir, tmp_path):
    ratings = write_jsonl(tmp_path / "r.jsonl", rating_records(16))
    with pytest.raises(DataError, match="aspect_weights names unknown \\['style'\\]"):
        reward_train(config(tiny_model_dir, ratings, tmp_path / "a", aspect_weights=["helpful=1", "style=1"]))
    with pytest.raises(DataError, match="ensemble_size > 1 is for preferences"):
        reward_train(config(tiny_model_dir, ratings, tmp_path / "b", ensemble_size=2))
    prefs = write_jsonl(tmp_path / "p.jsonl", preference_records(4))
    with pytest.raises(DataError, match="no full batch"):
        reward_train(config(tiny_model_dir, prefs, tmp_path / "c"))
    assert not any((tmp_path / name).exists() for name in "abc")

    with pytest.raises(ConfigError, match="name=weight"):
        config(tiny_model_dir, ratings, tmp_path / "d", aspect_weights=["helpful=1", 0.5])
    with pytest.raises(ConfigError, match="twice"):
        config(tiny_model_dir, ratings, tmp_path / "d", aspect_weights=["a=1", "a=2"])
    with pytest.raises(ConfigError, match="ensemble_size"):
        config(tiny_model_dir, ratings, tmp_path / "d", objective="ratings", ensemble_size=3)


# ---------------------------------------------------------------------------------------------- resume


def test_resume_continues_from_the_checkpoint(tiny_model_dir, tmp_path):
    """A run stopped after step 2 continues at step 3 (exact resume itself is the loop's tests' job)."""
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_records(32))
    train = {"max_steps": 2, "lr_schedule": "constant", "keep_final_checkpoint": True}
    reward_train(config(tiny_model_dir, data, tmp_path / "run", train=train))
    reward_train(config(tiny_model_dir, data, tmp_path / "run", resume=True, train={**train, "max_steps": 4}))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["resumed_from_step"] == 2
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4]
    assert (tmp_path / "run" / "checkpoints" / "step-000004").is_dir()


# ---------------------------------------------------------------------------------------------- chance


def test_random_labels_end_with_the_chance_warning(tiny_model_dir, tmp_path, caplog):
    """120 pairs whose label is a coin flip: the default split holds out 32 (a tenth is 12, raised to the
    minimum), nothing can be learned, and the run ends with the chance warning naming n and the bound."""
    rng = random.Random(5)
    records = []
    for record in preference_records(120, seed=4):
        if rng.random() < 0.5:
            record["chosen"], record["rejected"] = record["rejected"], record["chosen"]
        records.append(record)
    data = write_jsonl(tmp_path / "prefs.jsonl", records)
    with caplog.at_level(logging.INFO, logger="rlxf"):
        result = reward_train(config(tiny_model_dir, data, tmp_path / "run", train={"max_steps": 4}))
    assert "holding out 32 of 120 records" in caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "within noise of chance" in warnings[0]
    # bound: 2 * sqrt(0.25 / 32) = 0.177
    assert "on 32 pairs" in warnings[0] and "0.5 + 0.177" in warnings[0] and "learning_rate" in warnings[0]
    held_out = result.summary["held_out"]
    assert held_out["n"] == 32 and held_out["warnings"] == warnings
    assert held_out["end"]["accuracy"] - 0.5 < 0.177
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["held_out"] == held_out
