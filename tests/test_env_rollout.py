"""Environment episodes in the RL trainer (rlxf/rollout/episodes.py, `rlxf rl --env`), on a tiny model.

* token-exact: an episode's action tokens are the ids the engine sampled for that context, observation
  tokens are the chat template's turn, the policy mask covers the actions only;
* the same seed gives the same episodes, whatever other episodes run beside them;
* the token budget cuts an episode (finish reason ``length``, the cut action not stepped);
* the loss ignores observation tokens: what is stored at their positions (advantages, old / reference
  log-probs, rewards) changes neither the loss nor the gradients, and their log-probs get no gradient;
* multi-turn GAE and REINFORCE++ returns run over the actions packed together (hand-computed);
* `rlxf rl --env` trains with every estimator: finite loss, the policy changes, env metrics logged.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from rlxf.algos.advantages import gae_advantages, pack_actions, unpack_actions
from rlxf.algos.rl import RLConfig, RLTrainer, rl
from rlxf.config import load_config
from rlxf.models.load import ModelConfig, load_model
from rlxf.rollout import HFEngine, SamplingConfig
from rlxf.rollout.episodes import TurnRenderer, run_episodes
from rlxf.train.metrics import read_metrics
from rlxf.train.run import RunDir

ENV = "env_fixtures:LetterCountEnv"


@pytest.fixture
def engine(tiny_model_dir):
    model, tokenizer = load_model(ModelConfig(name_or_path=str(tiny_model_dir)), trainable=False)
    return HFEngine(model, tokenizer)


def make():
    from env_fixtures import LetterCountEnv

    return LetterCountEnv()


SAMPLING = SamplingConfig(max_new_tokens=6, batch_size=8)


def test_turn_renderer_writes_the_chat_templates_turns(tiny_tokenizer):
    renderer = TurnRenderer(tiny_tokenizer)
    text, ids = renderer.first("hi")
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    eos = tiny_tokenizer.eos_token_id
    after_eos = renderer.after_action("more", [5, eos], [eos])
    assert tiny_tokenizer.decode(after_eos) == "\n<|im_start|>user\nmore<|im_end|>\n<|im_start|>assistant\n"
    after_cut = renderer.after_action("more", [5, 6], [eos])  # the policy did not close its turn
    assert tiny_tokenizer.decode(after_cut).startswith("<|im_end|>\n<|im_start|>user\nmore")


def test_episodes_are_token_exact_and_mask_the_observations(engine):
    batch = run_episodes(engine, make, [3, 4], SAMPLING, seed=11)
    renderer = TurnRenderer(engine.tokenizer)
    for row, env_seed in enumerate([3, 4]):
        env = make()
        first, _ = env.reset(seed=env_seed)
        assert batch.prompt_ids[row][batch.prompt_mask[row].bool()].tolist() == renderer.first(first)[1]
        ids = batch.completion_ids[row][batch.completion_mask[row].bool()].tolist()
        action = batch.action_mask[row][: len(ids)].tolist()
        context = renderer.first(first)[1]
        position = 0
        for turn in range(3):  # every action is what the engine samples for the context so far
            sampled = engine.generate_ids([context], SAMPLING, seed=11 * 1009 + turn, rows=[row])
            taken = sampled.completion_ids[0][sampled.completion_mask[0].bool()].tolist()
            assert ids[position : position + len(taken)] == taken
            assert action[position : position + len(taken)] == [1] * len(taken)
            _, reward, _, _, _ = env.step(sampled.completions[0])
            end = position + len(taken) - 1
            assert batch.turn_rewards[row, end].item() == pytest.approx(reward)
            position += len(taken)
            context = context + taken
            if turn < 2:  # the observation follows: masked out of the policy's tokens
                following = renderer.after_action(f"Again, with {env.letter}", taken, engine.eos_token_ids)
                assert ids[position : position + len(following)] == following
                assert action[position : position + len(following)] == [0] * len(following)
                position += len(following)
                context = context + following
        assert position == len(ids)
        assert batch.episodes[row]["turns"] == 3
        assert batch.turn_rewards[row].sum().item() == pytest.approx(batch.episodes[row]["reward"])
    assert batch.policy_mask is batch.action_mask


def test_same_seed_same_episodes_whatever_runs_beside(engine):
    alone = run_episodes(engine, make, [7], SAMPLING, seed=5, rows=[1])
    together = run_episodes(engine, make, [9, 7, 2], SAMPLING, seed=5, rows=[0, 1, 2])
    again = run_episodes(engine, make, [9, 7, 2], SAMPLING, seed=5, rows=[0, 1, 2])
    width = int(alone.completion_mask[0].sum())
    assert together.completion_ids[1, :width].tolist() == alone.completion_ids[0, :width].tolist()
    assert torch.equal(together.completion_ids, again.completion_ids)
    assert together.completions == again.completions


def test_the_token_budget_cuts_an_episode(engine):
    batch = run_episodes(
        engine, make, [1], dataclasses.replace(SAMPLING, max_new_tokens=6), max_episode_tokens=4
    )
    assert batch.finish_reasons == ["length"]
    assert int(batch.completion_mask.sum()) == 4 and int(batch.action_mask.sum()) == 4
    assert batch.episodes[0]["truncated"] and batch.episodes[0]["turns"] == 1
    assert "reward" not in batch.episodes[0]["transcript"][0]  # the cut action was not stepped


def test_multi_turn_gae_runs_over_the_packed_actions():
    # actions at 0, 1 and 4 (an observation at 2..3): gamma = 1, lam = 1, V = 0 -> A_t = sum of later rewards
    mask = torch.tensor([[1, 1, 0, 0, 1, 0]])
    rewards = torch.tensor([[0.0, 1.0, 0.0, 0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.25, 9.0, 9.0, 1.0, 0.0]])  # values at observation positions are ignored
    packed_r, packed_m = pack_actions(rewards, mask)
    packed_v, _ = pack_actions(values, mask)
    assert packed_r.tolist() == [[0.0, 1.0, 2.0]] and packed_m.tolist() == [[1, 1, 1]]
    adv, ret = gae_advantages(packed_r, packed_v, packed_m, gamma=0.5, lam=1.0)
    # returns G = r_t + 0.5 G_{t+1} over the actions: G_2 = 2, G_1 = 1 + 1 = 2, G_0 = 0 + 1 = 1
    assert ret.tolist() == [[1.0, 2.0, 2.0]]
    assert adv.tolist() == [[0.5, 1.75, 1.0]]  # G - V
    assert unpack_actions(adv, mask).tolist() == [[0.5, 1.75, 0.0, 0.0, 1.0, 0.0]]


def trainer_config(tmp_path, model_dir, estimator: str, **extra) -> RLConfig:
    values = {
        "model": {"name_or_path": str(model_dir)},
        "env": {"name": ENV, "max_episode_tokens": 96, "eval_episodes": 4},
        "out": str(tmp_path / f"run-{estimator}"),
        "estimator": estimator,
        "sampling": {"n": 2, "max_new_tokens": 6, "batch_size": 8},
        "prompts_per_step": 2,
        "num_steps": 2,
        "micro_batch_size": 2,
        "train": {"learning_rate": 1e-2, "precision": "fp32", "eval_every": 1, "log_every": 1},
        "kl": {"coef": 0.05},
        **extra,
    }
    return load_config(RLConfig, overrides=values)


def test_observation_positions_change_neither_loss_nor_gradients(tmp_path, tiny_model_dir):
    cfg = trainer_config(
        tmp_path, tiny_model_dir, "ppo", ppo_epochs=2, kl={"coef": 0.05, "placement": "loss"}
    )
    with RunDir.create(cfg.out, cfg) as run:
        trainer = RLTrainer(cfg, run, None)
        batch = trainer.sample_episodes(3, cfg.sampling, [1, 2], "train", 0)
        exp, _ = trainer.make_experience(batch, trainer.score(batch))
        observation = (batch.completion_mask == 1) & (batch.action_mask == 0)  # [B, C]
        assert observation.any()

        def loss_and_grads(e):
            trainer.policy.zero_grad(set_to_none=True)
            rows = slice(0, len(e.input_ids))
            per_token, value_loss, _ = trainer.loss_terms(e, rows)
            loss = ((per_token + value_loss) * e.completion_mask).sum()  # both [b, C]
            loss.backward()
            grads = [p.grad.clone() for p in trainer.policy.parameters() if p.grad is not None]
            return loss.detach(), grads

        before, grads_before = loss_and_grads(exp)
        noise = lambda t: None if t is None else torch.where(observation, t + 3.7, t)  # noqa: E731
        changed = dataclasses.replace(
            exp,
            advantages=noise(exp.advantages),
            old_logprobs=noise(exp.old_logprobs),
            ref_logprobs=noise(exp.ref_logprobs),
            returns=noise(exp.returns),
            old_values=noise(exp.old_values),
        )
        after, grads_after = loss_and_grads(changed)
        assert after == before
        assert all(torch.equal(a, b) for a, b in zip(grads_before, grads_after))

        # and the log-prob of an observation token gets no gradient from the loss
        logprobs = torch.zeros(exp.advantages.shape, requires_grad=True)
        from rlxf.algos.policy_loss import clipped_policy_loss

        loss, _ = clipped_policy_loss(logprobs, logprobs.detach(), exp.advantages, exp.completion_mask, 0.2)
        (loss * exp.completion_mask).sum().backward()
        assert (logprobs.grad[observation] == 0).all() and logprobs.grad[
            batch.action_mask.bool()
        ].abs().sum() > 0


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce++", "ppo"])
def test_rl_with_an_environment_trains(tmp_path, tiny_model_dir, estimator):
    cfg = trainer_config(tmp_path, tiny_model_dir, estimator)
    start = {k: v.clone() for k, v in load_model(cfg.model, trainable=False)[0].state_dict().items()}
    result = rl(cfg)
    records = read_metrics(result.out / "metrics.jsonl")
    trained = [r for r in records if "policy/loss" in r]
    assert len(trained) == 2 and all(math.isfinite(r["policy/loss"]) for r in trained)
    assert all(0.0 <= r["env/success_rate"] <= 1.0 and r["env/turns"] == 3.0 for r in trained)
    evals = [r for r in records if "eval/success_rate" in r]
    assert [r["step"] for r in evals] == [0, 1, 2] and all(r["eval/turns"] == 3.0 for r in evals)
    samples = [json.loads(line) for line in (result.out / "samples" / "step-000002.jsonl").open()]
    assert len(samples) == 4 and all(len(s["transcript"]) == 3 for s in samples)
    final = load_model(ModelConfig(name_or_path=str(result.out / "model")), trainable=False)[0]
    assert any(not torch.equal(start[k], v) for k, v in final.state_dict().items())


def test_env_and_prompts_do_not_mix(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="leave --prompts and --reward unset"):
        trainer_config(tmp_path, tiny_model_dir, "grpo", reward="sentiment")
    with pytest.raises(ValueError, match="rollout.engine=hf"):
        trainer_config(tmp_path, tiny_model_dir, "grpo", rollout={"engine": "vllm"})


def test_resume_of_an_environment_run_continues_exactly(tmp_path, tiny_model_dir, monkeypatch):
    cfg_a = trainer_config(tmp_path, tiny_model_dir, "ppo", num_steps=3, out=str(tmp_path / "a"))
    rl(cfg_a)
    cfg_b = dataclasses.replace(
        cfg_a, out=str(tmp_path / "b"), train=dataclasses.replace(cfg_a.train, save_every=2)
    )
    original = RLTrainer.train_step

    def interrupted(self, step):
        if step == 2:  # after the checkpoint of step 2
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(RLTrainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rl(cfg_b)
    monkeypatch.setattr(RLTrainer, "train_step", original)
    rl(dataclasses.replace(cfg_b, resume=True))
    records_a = read_metrics(tmp_path / "a" / "metrics.jsonl")
    records_b = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in records_b] == [r["step"] for r in records_a]
    for record, reference in zip(records_b, records_a):
        for name in ("reward/mean", "env/success_rate", "policy/loss", "value/loss", "eval/reward/mean"):
            if name in reference:
                assert record[name] == pytest.approx(reference[name], abs=1e-5), (record["step"], name)
    weights = lambda run: load_model(ModelConfig(name_or_path=str(run / "model")), trainable=False)[0]  # noqa: E731
    for (name, a), b in zip(
        weights(tmp_path / "a").state_dict().items(), weights(tmp_path / "b").state_dict().values()
    ):
        assert torch.allclose(a, b, atol=1e-5), name


def test_eval_of_an_environment_run_compares_success_and_plots_it(tmp_path, tiny_model_dir):
    from rlxf.cli import main

    result = rl(
        trainer_config(tmp_path, tiny_model_dir, "grpo", train={"learning_rate": 5e-2, "precision": "fp32"})
    )
    out = tmp_path / "eval"
    # the environment comes from the run's config.yaml; the baseline is the run's starting model
    code = main(["eval", "--model", str(result.out), "--out", str(out), "--max-new-tokens", "6", "--precision", "fp32", "-n", "1", "env.eval_episodes=3", "env.max_episode_tokens=96"])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["env"]["name"] == ENV and summary["reward_spec"] == f"env:{ENV}"
    assert summary["num_prompts"] == 3 and summary["baseline"] == str(tiny_model_dir)
    for side in ("policy", "baseline"):
        assert 0.0 <= summary["success_rate"][side]["mean"] <= 1.0
    # k1 over the policy's own tokens of its episodes (3 episodes: noisy, of either sign, not 0)
    assert math.isfinite(summary["kl"]["mean"]) and summary["kl"]["mean"] != 0.0
    samples = [json.loads(line) for line in (out / "samples.jsonl").open()]
    assert len(samples) == 3 and all(len(s["policy_transcript"]) == 3 for s in samples)
    page = (out / "report.html").read_text()
    assert "success rate" in page and page.count("data:image/png;base64") >= 2
