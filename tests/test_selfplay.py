"""Two-agent RL (`rlxf selfplay`, rlxf/algos/selfplay.py) on a tiny random model.

* each schedule trains exactly the roles it names: a role that does not train keeps its weights, one that
  trains changes them; finite losses; the metrics and held-out figures are logged;
* with two adapters on one base, the base weights never change and each role's adapter is its own;
* resume after an interruption continues exactly (weights of both roles, metrics, novelty history);
* the saved models are plain HF folders, one per role;
* a bad game or option stops before any model loads.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from rlxf.algos.selfplay import (
    SELFPLAY_EVAL_METRICS,
    SELFPLAY_METRICS,
    SelfPlayConfig,
    SelfPlayTrainer,
    selfplay,
)
from rlxf.config import load_config
from rlxf.models.load import ModelConfig, load_model
from rlxf.train.metrics import read_metrics


@pytest.fixture(autouse=True)
def letter_game(monkeypatch):
    """A game whose scores vary on the tiny model's text (tests/env_fixtures.py), as a built-in name."""
    from env_fixtures import letter_game

    from rlxf.algos import selfplay_games

    monkeypatch.setitem(selfplay_games.GAMES, "letters", letter_game())


def config(tmp_path, model_dir, **extra) -> SelfPlayConfig:
    values = {
        "model": {"name_or_path": str(model_dir), "lora": {"r": 4, "alpha": 8}},
        "game": "letters",
        "out": str(tmp_path / "run"),
        "prompter": {"n": 2, "max_new_tokens": 6, "learning_rate": 5e-2},
        "responder": {"n": 2, "max_new_tokens": 6, "learning_rate": 5e-2},
        "tasks_per_step": 2,
        "num_steps": 2,
        "micro_batch_size": 4,
        "eval_tasks": 3,
        "novelty_coef": 0.5,
        "train": {"precision": "fp32", "eval_every": 1},
        **extra,
    }
    return load_config(SelfPlayConfig, overrides=values)


def adapter_weights(model: torch.nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if f".{adapter}." in n}


def base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    ("schedule", "prompter_trains", "responder_trains"),
    [("simultaneous", True, True), ("prompter", True, False), ("responder", False, True)],
)
def test_a_schedule_trains_the_roles_it_names(
    tmp_path, tiny_model_dir, schedule, prompter_trains, responder_trains
):
    from rlxf.train.run import RunDir

    cfg = config(tmp_path, tiny_model_dir, schedule=schedule)
    with RunDir.create(cfg.out, cfg) as run:
        trainer = SelfPlayTrainer(cfg, run)
        model = trainer.prompter.model
        assert trainer.responder.model is model  # two adapters on one base
        before = {r: adapter_weights(model, r) for r in ("prompter", "responder")}
        base = base_weights(model)
        metrics = trainer.train_step(0)
        assert changed(before["prompter"], adapter_weights(model, "prompter")) == prompter_trains
        assert changed(before["responder"], adapter_weights(model, "responder")) == responder_trains
        assert not changed(base, base_weights(model))
        for role, trains in (("prompter", prompter_trains), ("responder", responder_trains)):
            assert (f"{role}/loss" in metrics) == trains
            if trains:
                assert math.isfinite(metrics[f"{role}/loss"]) and metrics[f"{role}/kl"] >= 0.0
        assert 0.0 <= metrics["attack_success_rate"] <= 1.0 and 0.0 <= metrics["prompter/novelty"] <= 1.0


def test_alternate_switches_roles_every_round_steps():
    cfg = SelfPlayConfig(out="x", schedule="alternate", round_steps=2)
    assert [cfg.trains("prompter", s) for s in range(6)] == [True, True, False, False, True, True]
    assert [cfg.trains("responder", s) for s in range(6)] == [False, False, True, True, False, False]


def test_selfplay_runs_evaluates_and_saves_both_models(tmp_path, tiny_model_dir):
    result = selfplay(config(tmp_path, tiny_model_dir))
    records = read_metrics(result.out / "metrics.jsonl")
    step_names = {k for r in records for k in r if k != "step" and not k.startswith("eval/")}
    assert step_names == set(SELFPLAY_METRICS)  # simultaneous: both roles' figures, every one promised
    evals = [r for r in records if "eval/attack_success_rate" in r]
    assert [r["step"] for r in evals] == [0, 1, 2]  # step 0, each step (eval_every 1; the last: at the end)
    for record in evals:
        for name in SELFPLAY_EVAL_METRICS:
            assert math.isfinite(record[f"eval/{name}"]), name
    for role in ("prompter", "responder"):
        model, _ = load_model(ModelConfig(name_or_path=str(result.out / "model" / role)), trainable=False)
        assert not any("lora" in n for n, _ in model.named_parameters())  # merged: a plain model
    assert (result.out / "samples" / "step-000002.jsonl").is_file()
    crossplay = json.loads((result.out / "crossplay.json").read_text())
    assert crossplay["steps"] == [0, 1, 2] and crossplay["tasks"] == 3  # 0, num_steps // 2, num_steps
    matrix = crossplay["attack_success_rate"]
    assert len(matrix) == 3 and all(len(row) == 3 and all(0.0 <= v <= 1.0 for v in row) for row in matrix)
    page = (result.out / "report.html").read_text()
    assert "cross-play" in page.lower() and page.count("data:image/png;base64") == 2
    assert not (result.out / "checkpoints").exists()  # snapshots and checkpoints gone with the run's end


def test_sentiment_anchor_rewards_keeping_the_start_models_sentiment(tmp_path, tiny_model_dir, monkeypatch):
    """benign_anchor=sentiment: s_0(x) is sampled once from R's starting weights (the same figures after R
    has moved), written to benign_reference.json; the multiplier is kp x the step's mean deviation + ki x
    their sum, and the advantages it gives the benign answers move R at the first step, where the KL
    alone cannot (k3's gradient is 0 at the reference)."""
    from rlxf.feedback import sentiment
    from rlxf.train.run import RunDir

    # VADER gives 0 to the tiny model's random text; a score that varies with it instead
    monkeypatch.setattr(sentiment, "sentiment_scores", lambda texts: [(len(t) % 5 - 2) / 2 for t in texts])
    with pytest.raises(ValueError, match="set benign_per_step > 0"):
        config(tmp_path, tiny_model_dir, benign_anchor="sentiment")
    with pytest.raises(ValueError, match="benign_lambda_kp and benign_lambda_ki"):
        config(tmp_path, tiny_model_dir, benign_per_step=1, benign_lambda_ki=-1.0)
    with pytest.raises(ValueError, match="benign_reference_samples"):
        config(tmp_path, tiny_model_dir, benign_per_step=1, benign_reference_samples=0)
    with pytest.raises(ValueError, match="benign_anchor"):
        config(tmp_path, tiny_model_dir, benign_per_step=1, benign_anchor="vader")

    weights = []
    for anchor in ("kl", "sentiment"):
        cfg = config(
            tmp_path,
            tiny_model_dir,
            schedule="responder",
            benign_per_step=2,
            benign_kl_coef=1.0,
            benign_anchor=anchor,
            benign_reference_samples=3,
            benign_lambda_kp=2.5,
            benign_lambda_ki=0.5,
            out=str(tmp_path / anchor),
        )
        with RunDir.create(cfg.out, cfg) as run:
            trainer = SelfPlayTrainer(cfg, run)
            metrics = trainer.train_step(0)
            weights.append(adapter_weights(trainer.responder.model, "responder"))
            if anchor == "sentiment":
                path = run.path / "benign_reference.json"
                means = json.loads(path.read_text())
                assert sorted(means) == ["Tell me about the sea", "Write a review"]
                assert all(-1.0 <= v <= 1.0 for v in means.values())
                # both inputs answered n=2 times: the deviation is the answers' mean minus the mean s_0
                deviation = metrics["responder/benign_sentiment"] - sum(means.values()) / 2
                assert metrics["responder/benign_deviation"] == pytest.approx(deviation)
                assert deviation != 0.0
                assert metrics["responder/benign_lambda"] == pytest.approx((2.5 + 0.5) * deviation)
                assert trainer.benign_error_sum == pytest.approx(deviation)
                path.unlink()  # sampled again after R's step: from its starting weights, so the same
                assert trainer.benign_reference() == means
                assert json.loads(path.read_text()) == means
    assert changed(weights[0], weights[1])  # the reward term moved R where the KL could not


def test_benign_anchor_is_the_kl_to_the_reference_on_benign_answers(tmp_path, tiny_model_dir):
    """benign_per_step: R also answers benign training inputs, where its only loss is the KL to its
    reference. At the first step R is its reference (LoRA's B starts at 0), so k3's gradient is exactly 0
    there and R's update equals the one without the anchor; once R has moved, the anchor pulls back
    and the update differs."""
    from rlxf.train.run import RunDir

    responders = []
    for anchored in (False, True):
        extra = {"benign_per_step": 2, "benign_kl_coef": 5.0} if anchored else {}
        cfg = config(
            tmp_path, tiny_model_dir, schedule="responder", out=str(tmp_path / f"r{anchored}"), **extra
        )
        with RunDir.create(cfg.out, cfg) as run:
            trainer = SelfPlayTrainer(cfg, run)
            model = trainer.responder.model
            first = trainer.train_step(0)
            after_first = adapter_weights(model, "responder")
            second = trainer.train_step(1)
            responders.append((first, second, after_first, adapter_weights(model, "responder")))
    (plain_1, plain_2, plain_w1, plain_w2), (anch_1, anch_2, anch_w1, anch_w2) = responders
    assert "responder/benign_kl" not in plain_1
    assert anch_1["responder/benign_kl"] == 0.0  # R = reference: every benign token's k3 is 0
    assert not changed(plain_w1, anch_w1)  # ... and so is its gradient
    assert anch_2["responder/benign_kl"] > 0.0
    assert changed(plain_w2, anch_w2)
    assert anch_2["responder/loss"] > plain_2["responder/loss"] - 1e-6  # + coef x a positive KL


def test_benign_anchor_needs_benign_inputs_and_evaluation_takes_several_answers(
    tmp_path, tiny_model_dir, monkeypatch
):
    from rlxf.algos import selfplay_games
    from rlxf.train.run import RunDir

    with pytest.raises(ValueError, match="benign_per_step and benign_kl_coef"):
        config(tmp_path, tiny_model_dir, benign_per_step=-1)
    with pytest.raises(ValueError, match="eval_benign_samples"):
        config(tmp_path, tiny_model_dir, eval_benign_samples=0)

    class NoBenign(selfplay_games.GAMES["letters"]):
        def benign_prompts(self, split):
            return []

    monkeypatch.setitem(selfplay_games.GAMES, "nobenign", NoBenign)
    cfg = config(tmp_path, tiny_model_dir, game="nobenign", benign_per_step=1)
    with RunDir.create(cfg.out, cfg) as run, pytest.raises(ValueError, match="no benign training inputs"):
        SelfPlayTrainer(cfg, run)

    cfg = config(tmp_path, tiny_model_dir, eval_benign_samples=3, out=str(tmp_path / "three"))
    with RunDir.create(cfg.out, cfg) as run:
        trainer = SelfPlayTrainer(cfg, run)
        metrics = trainer.evaluate(0)
    assert -1.0 <= metrics["eval/benign_sentiment"] <= 1.0
    rows = [json.loads(line) for line in (trainer.samples_dir / "step-000000.jsonl").read_text().splitlines()]
    benign = [r["benign"] for r in rows if "benign" in r]
    assert benign == ["Tell me about the sea"] * 3 + ["Write a review"] * 3


@pytest.mark.parametrize("anchor", [None, "sentiment"])
def test_resume_continues_exactly(tmp_path, tiny_model_dir, monkeypatch, anchor):
    """... with the sentiment anchor too: its multiplier and s_0 (benign_reference.json) carry over."""
    extra = {}
    if anchor:
        from rlxf.feedback import sentiment

        monkeypatch.setattr(
            sentiment, "sentiment_scores", lambda texts: [(len(t) % 5 - 2) / 2 for t in texts]
        )
        extra = {"benign_per_step": 2, "benign_anchor": anchor, "benign_reference_samples": 2}
    cfg_a = config(tmp_path, tiny_model_dir, num_steps=3, out=str(tmp_path / "a"), **extra)
    selfplay(cfg_a)
    cfg_b = dataclasses.replace(
        cfg_a, out=str(tmp_path / "b"), train=dataclasses.replace(cfg_a.train, save_every=1)
    )
    original = SelfPlayTrainer.train_step

    def interrupted(self, step):
        if step == 2:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(SelfPlayTrainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        selfplay(cfg_b)
    monkeypatch.setattr(SelfPlayTrainer, "train_step", original)
    selfplay(dataclasses.replace(cfg_b, resume=True))
    crossplay = [json.loads((tmp_path / run / "crossplay.json").read_text()) for run in ("a", "b")]
    assert crossplay[0] == crossplay[1]  # the snapshots of the interrupted session were kept on disk
    records_a = read_metrics(tmp_path / "a" / "metrics.jsonl")
    records_b = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in records_b] == [r["step"] for r in records_a]
    if anchor:
        assert records_a[-2]["responder/benign_lambda"] != 0.0  # step 3's: its integral holds steps 1-2
    for record, reference in zip(records_b, records_a):
        for name, value in reference.items():
            if not name.startswith("time/"):
                assert record[name] == pytest.approx(value, abs=1e-5), (record["step"], name)
    for role in ("prompter", "responder"):
        a = load_model(ModelConfig(name_or_path=str(tmp_path / "a" / "model" / role)), trainable=False)[0]
        b = load_model(ModelConfig(name_or_path=str(tmp_path / "b" / "model" / role)), trainable=False)[0]
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.allclose(x, y, atol=1e-6), (role, name)


def test_bad_options_stop_early(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="lora.r > 0"):
        config(tmp_path, tiny_model_dir, model={"name_or_path": str(tiny_model_dir), "lora": {"r": 0}})
    with pytest.raises(ValueError, match="schedule=responder"):
        config(tmp_path, tiny_model_dir, prompt_pool="p.jsonl")
    with pytest.raises(ValueError, match="tug-of-war"):
        selfplay(config(tmp_path, tiny_model_dir, game="chess"))
    assert not (tmp_path / "run").exists()


def test_two_models_each_with_its_frozen_reference(tmp_path, tiny_model_dir):
    from rlxf.train.run import RunDir

    cfg = config(
        tmp_path,
        tiny_model_dir,
        roles="models",
        model={"name_or_path": str(tiny_model_dir), "lora": {"r": 0}},
    )
    with RunDir.create(cfg.out, cfg) as run:
        trainer = SelfPlayTrainer(cfg, run)
        p, r = trainer.prompter, trainer.responder
        assert p.model is not r.model and p.reference is not None and r.reference is not None
        before = [{n: t.detach().clone() for n, t in m.named_parameters()} for m in (p.model, r.model)]
        trainer.train_step(0)
        after = [{n: t.detach().clone() for n, t in m.named_parameters()} for m in (p.model, r.model)]
        assert changed(before[0], after[0]) and changed(before[1], after[1])
        reference = {n: t for n, t in p.reference.named_parameters()}
        assert not changed(before[0], reference)  # the reference keeps the starting weights


def test_a_reward_spec_game_scores_the_responder_and_pays_the_prompter_the_opposite(tmp_path, tiny_model_dir):
    from rlxf.algos.selfplay_games import Task, make_game

    reward = tmp_path / "reward.py"
    reward.write_text(
        "def score(prompts, completions):\n    return [c.count('e') / max(len(c), 1) - 0.05 for c in completions]\n"
    )
    game = make_game("reward", reward=f"fn:{reward}:score", attack_threshold=0.0)
    tasks = game.tasks("train", 0, 2)
    scores = game.score(tasks, ["x", "y"], ["eeee", "zzzz"])
    assert scores.responder == pytest.approx([0.95, -0.05])
    assert scores.prompter == pytest.approx([-0.95, 0.05]) and scores.attack_success == [False, True]
    assert make_game("reward", reward=f"fn:{reward}:score", mode="cooperative").score(
        tasks, ["x", "y"], ["eeee", "zzzz"]
    ).prompter == pytest.approx([0.95, -0.05])
    assert game.benign_prompts("test") == [] and isinstance(tasks[0], Task)
    result = selfplay(
        config(tmp_path, tiny_model_dir, game="reward", game_args={"reward": f"fn:{reward}:score"})
    )
    records = read_metrics(result.out / "metrics.jsonl")
    assert "eval/benign_sentiment" not in records[0] and math.isfinite(
        records[-1]["eval/attack_success_rate"]
    )
