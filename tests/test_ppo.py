"""The online RL trainer (`rlxf rl`, rlxf/algos/rl.py) on a tiny random model.

* every estimator (ppo with a separate and a shared critic, grpo, rloo, reinforce++) runs, changes the
  policy, logs exactly the metrics of RL_METRICS / RL_EVAL_METRICS (finite), which docs/rl.md lists, and
  saves a model plain transformers loads; the finished run keeps no checkpoint unless asked to;
* the flat keys of earlier releases still work, with a deprecation message (warmup_steps converted
  exactly to train.warmup_ratio);
* on-policy: at step 0 the policy equals the reference, so the logged KL is 0 (engine log-probs agree with
  the training forward); the ratio is 1, nothing is clipped;
* one mini-batch of 8 equals 8 accumulated micro-batches of 1 (same update);
* resume after an interruption continues exactly (the same metrics and final weights);
* a reward source that returns NaN stops the step with a message naming the source;
* a bad reward spec or prompt file stops before the run folder is made.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from rlxf.algos.rl import RL_EVAL_METRICS, RL_METRICS, RLConfig, RLTrainer, rl
from rlxf.config import ConfigError, load_config
from rlxf.train.metrics import read_metrics
from rlxf.train.run import RunDir

REWARD_FILE = """
def score(prompts, completions):
    # Deterministic, varied: the share of the letter "e" among the completion's characters.
    return [c.count("e") / max(len(c), 1) for c in completions]


def nan_reward(prompts, completions):
    return [float("nan")] * len(completions)

"""

PROMPTS = [
    "The movie was",
    "Our trip to the coast",
    "The restaurant served",
    "This book is",
    "Customer service answered",
    "The product broke",
    "The cast was",
    "The ending",
]


@pytest.fixture
def setup(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": p, "split": "train" if i < 6 else "test"}) + "\n"
            for i, p in enumerate(PROMPTS)
        )
    )
    reward = tmp_path / "reward_fn.py"
    reward.write_text(REWARD_FILE)
    return tmp_path, prompts, reward, tiny_model_dir


def base_values(setup) -> dict:
    tmp_path, prompts, reward, model_dir = setup
    return {
        "model": {"name_or_path": str(model_dir)},
        "prompts": str(prompts),
        "prompts_split": "train",
        "eval_prompts": str(prompts),
        "eval_prompts_split": "test",
        "reward": f"fn:{reward}:score",
        "out": str(tmp_path / "run"),
        "estimator": "grpo",
        "sampling": {"n": 2, "max_new_tokens": 6, "batch_size": 8},
        "prompts_per_step": 4,
        "num_steps": 2,
        "micro_batch_size": 4,
        "train": {"learning_rate": 1e-2, "precision": "fp32"},
    }


def make_config(setup, **overrides) -> RLConfig:
    base = base_values(setup)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return load_config(RLConfig, overrides=base)


def initial_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def saved_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "model" / "model.safetensors")


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if k in b)


ESTIMATORS = [
    ("grpo", {}),
    ("rloo", {}),
    ("reinforce++", {}),
    ("ppo", {"critic": {"kind": "separate"}, "ppo_epochs": 2, "mini_batch_size": 4}),
    ("ppo", {"critic": {"kind": "shared"}}),
    ("grpo", {"kl": {"coef": 0.0}}),  # no reference: no kl
]


def expected_metrics(estimator: str, with_reference: bool) -> tuple[set[str], set[str]]:
    """The per-step and held-out metric names the constants promise for this setting (clipping on)."""
    step = {m for m in RL_METRICS if estimator == "ppo" or not m.startswith("value/")}
    step -= {"env/success_rate", "env/turns"}  # with an environment only (tests/test_env_rollout.py)
    held_out = {f"eval/{m}" for m in RL_EVAL_METRICS if m not in ("success_rate", "turns")}
    held_out -= {"eval/gold_reward/mean", "eval/gold_reward/std"}  # with gold_reward only (test_rl_gold.py)
    if not with_reference:
        step.discard("kl")
        held_out.discard("eval/kl")
    return step, held_out


@pytest.mark.parametrize(
    ("estimator", "extra"), ESTIMATORS, ids=["grpo", "rloo", "reinforce++", "ppo", "ppo-shared", "grpo-no-kl"]
)
def test_each_estimator_trains_and_saves(setup, estimator, extra):
    cfg = make_config(setup, estimator=estimator, **extra)
    result = rl(cfg)
    out = Path(cfg.out)
    assert result.out == out and result.model_dir == out / "model"
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2, 2]  # held-out before, two steps, held-out after
    step_names, eval_names = expected_metrics(estimator, with_reference=cfg.kl.coef > 0)
    for record in records[1:3]:
        assert set(record) - {"step"} == step_names
        for name in step_names - {"value/explained_variance"}:
            assert math.isfinite(record[name]), (name, record[name])
    assert set(records[0]) - {"step"} == eval_names == set(records[3]) - {"step"}
    assert set(result.metrics) == step_names | eval_names
    assert (out / "samples" / "step-000000.jsonl").is_file()
    assert (out / "samples" / "step-000002.jsonl").is_file()
    assert max_difference(saved_weights(out), initial_weights(Path(cfg.model.name_or_path))) > 1e-4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and result.summary == summary
    assert not list(out.glob("checkpoints/step-*"))  # a finished run keeps model/, no optimizer state


def test_docs_list_every_metric():
    text = (Path(__file__).parents[1] / "docs" / "rl.md").read_text(encoding="utf-8")
    missing = [m for m in RL_METRICS if f"`{m}`" not in text]
    missing += [f"eval/{m}" for m in RL_EVAL_METRICS if f"`eval/{m}`" not in text]
    assert not missing, f"docs/rl.md does not list {missing}"


def test_keep_final_checkpoint_keeps_the_last_ones(setup):
    cfg = make_config(
        setup, num_steps=3, train={"save_every": 1, "keep_last": 2, "keep_final_checkpoint": True}
    )
    rl(cfg)
    kept = sorted(p.name for p in Path(cfg.out).glob("checkpoints/step-*"))
    assert kept == ["step-000002", "step-000003"]


def test_flat_keys_of_earlier_releases_still_work(setup, caplog):
    flat = {"learning_rate": 3e-3, "precision": "fp32", "save_every": 2, "lr_schedule": "linear"}
    values = {k: v for k, v in base_values(setup).items() if k != "train"} | flat
    with pytest.warns(DeprecationWarning) as caught:
        cfg = load_config(RLConfig, overrides=values)
    assert sorted(str(w.message).split("`")[1] for w in caught) == sorted(flat)
    assert "RLConfig: `learning_rate` is deprecated and will be removed in the next release" in caplog.text
    assert cfg.train.learning_rate == 3e-3 and cfg.train.save_every == 2 and cfg.train.lr_schedule == "linear"
    assert cfg.train.keep_last == 2 and cfg.train.warmup_ratio == 0.0  # RL's defaults for the rest
    assert "write `train.precision`" in caplog.text
    with pytest.raises(ConfigError, match="learning_rate and train.learning_rate are both given"):
        make_config(setup, learning_rate=3e-3)  # make_config's base sets train.learning_rate


def test_flat_warmup_steps_become_an_exact_warmup_ratio(setup):
    # 4 prompts x 2 samples = 8 rows, mini-batches of 4, 2 epochs: 4 optimizer steps per rollout step.
    cfg = make_config(setup, num_steps=10, ppo_epochs=2, mini_batch_size=4)
    assert cfg.total_updates == 40
    with pytest.warns(DeprecationWarning, match=r"train.warmup_ratio=0.075"):
        cfg = make_config(setup, num_steps=10, ppo_epochs=2, mini_batch_size=4, warmup_steps=3)
    assert cfg.train.warmup_ratio == 0.075
    for total in (40, 7, 333):  # the trainer's round(ratio x total) gives every count back
        for count in range(total):
            assert round(count / total * total) == count
    with pytest.raises(ConfigError, match="cover all 40 optimizer steps"):
        make_config(setup, num_steps=10, ppo_epochs=2, mini_batch_size=4, warmup_steps=40)


def test_saved_model_loads_with_plain_transformers(setup):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = make_config(setup, num_steps=1)
    rl(cfg)
    model = AutoModelForCausalLM.from_pretrained(Path(cfg.out) / "model")
    tokenizer = AutoTokenizer.from_pretrained(Path(cfg.out) / "model")
    ids = tokenizer("The movie was", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()


def test_on_policy_first_step_has_zero_kl_and_no_clipping(setup):
    cfg = make_config(setup, num_steps=1, kl={"coef": 0.1})
    rl(cfg)
    record = [r for r in read_metrics(Path(cfg.out) / "metrics.jsonl") if r["step"] == 1][0]
    # The policy IS the reference before its first update: engine log-probs vs reference forward.
    assert abs(record["kl"]) < 1e-4
    assert record["policy/clip_frac"] == 0.0
    assert record["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-6)


def test_micro_batches_accumulate_to_the_same_update(setup, tmp_path, monkeypatch):
    """8 x 1 and 1 x 8 micro-batches give the same weights after a step. Adam's update g / (sqrt(v) + eps)
    turns float32 summation-order noise in a gradient near eps (~1e-11) into weight differences of up to
    lr / (4 eps) times it (~1e-5 at lr 1e-2, eps 1e-8); eps 1e-6 bounds that, so the comparison measures the
    accumulation (a wrong normaliser moves weights by ~lr), not the rounding."""
    from functools import partial

    import rlxf.algos.rl as rl_module
    from rlxf.train.optim import adamw

    monkeypatch.setattr(rl_module, "adamw", partial(adamw, eps=1e-6))
    runs = {}
    for micro in (8, 1):
        cfg = make_config(
            setup, num_steps=1, micro_batch_size=micro, out=str(tmp_path / f"micro{micro}"), kl={"coef": 0.1}
        )
        rl(cfg)
        runs[micro] = saved_weights(Path(cfg.out))
    assert max_difference(runs[8], runs[1]) < 1e-5


def test_resume_continues_exactly(setup, tmp_path, monkeypatch):
    # With the logsigmoid transform the resumed run must keep the first step's reference reward (saved
    # with the checkpoint), not take step 4's batch mean.
    cfg_a = make_config(
        setup,
        num_steps=4,
        out=str(tmp_path / "a"),
        estimator="ppo",
        ppo_epochs=2,
        mini_batch_size=4,
        shaping={"transform": "logsigmoid"},
    )
    rl(cfg_a)
    records_a = read_metrics(tmp_path / "a" / "metrics.jsonl")

    cfg_b = dataclasses.replace(
        cfg_a, out=str(tmp_path / "b"), train=dataclasses.replace(cfg_a.train, save_every=2)
    )
    original = RLTrainer.train_step

    def interrupted(self, step):
        if step == 3:  # after the checkpoint of step 2, during step 4 (step 3 logged, not saved)
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(RLTrainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rl(cfg_b)
    monkeypatch.setattr(RLTrainer, "train_step", original)
    assert [p.name for p in (tmp_path / "b" / "checkpoints").glob("step-*")] == ["step-000002"]

    rl(dataclasses.replace(cfg_b, resume=True))
    records_b = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in records_b] == [0, 1, 2, 3, 4, 4]  # eval at 0; step 4 + final eval
    assert [sorted(r) for r in records_b] == [sorted(r) for r in records_a]
    for record, reference in zip(records_b, records_a):
        for name in (
            "reward/mean",
            "reward/shaped_mean",
            "kl",
            "policy/loss",
            "value/loss",
            "eval/reward/mean",
            "eval/kl",
        ):
            if name in record:
                assert record[name] == pytest.approx(reference[name], abs=1e-5), (record["step"], name)
    assert max_difference(saved_weights(tmp_path / "b"), saved_weights(tmp_path / "a")) < 1e-5


def test_cadence_evaluates_logs_then_saves_as_the_offline_loop(setup, monkeypatch):
    calls = []

    def recording(name, original):
        def wrapper(self, step, *args):
            calls.append((name, step))
            return original(self, step, *args)

        return wrapper

    monkeypatch.setattr(RLTrainer, "evaluate", recording("evaluate", RLTrainer.evaluate))
    monkeypatch.setattr(RLTrainer, "save", recording("save", RLTrainer.save))
    monkeypatch.setattr(RunDir, "log", recording("log", RunDir.log))
    rl(make_config(setup, num_steps=3, train={"eval_every": 2, "save_every": 1}))
    assert calls == [
        ("evaluate", 0), ("log", 0),
        ("log", 1), ("save", 1),
        ("evaluate", 2), ("log", 2), ("save", 2),
        ("log", 3), ("evaluate", 3), ("log", 3), ("save", 3),  # the last step, then the final eval
    ]  # fmt: skip


def test_nan_reward_names_the_source(setup):
    tmp_path, _, reward, _ = setup
    cfg = make_config(setup, reward=f"fn:{reward}:nan_reward")
    with pytest.raises(Exception, match="nan_reward"):
        rl(cfg)


def test_each_completion_is_scored_with_its_own_prompt(setup):
    """With n samples per prompt, row k of the batch belongs to prompt k // n: the reward source must see
    that prompt beside the completion (a reward model reads both)."""
    calls = []

    def recorder(prompts, completions):
        calls.append((list(prompts), list(completions)))
        return [0.0] * len(completions)

    cfg = make_config(setup, num_steps=1, sampling={"n": 3})
    with RunDir.create(cfg.out, cfg) as run:
        trainer = RLTrainer(cfg, run, recorder)
        batch = trainer.sample(trainer.step_prompts(0), cfg.sampling, seed=0)
        trainer.score(batch)
    prompts, completions = calls[-1]
    assert prompts == [p for p in trainer.step_prompts(0) for _ in range(3)]
    assert completions == list(batch.completions)


def test_bad_spec_or_prompts_stop_before_the_run_folder(setup, tmp_path):
    cfg = make_config(setup, reward="no-such-scorer")
    with pytest.raises(ValueError, match="no-such-scorer"):
        rl(cfg)
    assert not Path(cfg.out).exists()

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": ""}\n')
    cfg = make_config(setup, prompts=str(bad), prompts_split=None)
    with pytest.raises(Exception, match="bad.jsonl"):
        rl(cfg)
    assert not Path(cfg.out).exists()


def test_config_checks_before_any_model_loads(setup):
    with pytest.raises(ValueError, match="sampling.n >= 2"):
        make_config(setup, sampling={"n": 1})
    with pytest.raises(ValueError, match="micro-batches"):
        make_config(setup, micro_batch_size=3)
    with pytest.raises(Exception, match="estimator"):
        make_config(setup, estimator="a2c")


def test_one_autocast_region_per_mini_batch_gives_the_same_gradients(tiny_model_dir):
    """The update runs a mini-batch's micro-batches in one bf16 autocast region (weights cast once, from
    autocast's cache) with each backward outside autocast: the gradients equal those of one region per
    micro-batch, every micro-batch's share included."""
    from transformers import AutoModelForCausalLM

    from rlxf.rollout.logprobs import completion_forward

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, model.config.vocab_size, (4, 10), generator=g)
    attention_mask = torch.ones_like(input_ids)

    def micro_loss(rows: slice) -> torch.Tensor:
        logprobs, _, _ = completion_forward(model, input_ids[rows], attention_mask[rows], 4)
        return -(logprobs * torch.arange(1, 7)).sum()

    grads = {}
    for mode in ("per micro-batch", "one region", "first only"):
        model.zero_grad(set_to_none=True)
        if mode == "per micro-batch":
            for rows in (slice(0, 2), slice(2, 4)):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = micro_loss(rows)
                loss.backward()
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                for rows in (slice(0, 2), slice(2, 4))[: 1 if mode == "first only" else 2]:
                    loss = micro_loss(rows)
                    with torch.autocast("cpu", enabled=False):
                        loss.backward()
        grads[mode] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(grads["one region"], grads["per micro-batch"], atol=1e-6, rtol=1e-5)
    assert (grads["one region"] - grads["first only"]).abs().max() > 1e-3  # the second micro-batch counted
