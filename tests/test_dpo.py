"""DPO, conservative DPO, IPO and KTO: losses against hand-computed numbers, step 0 against the reference,
learning on a synthetic task, LoRA references, saving, config and input checks."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from rlxf.algos.dpo import (
    DPOConfig,
    collate_pairs,
    dpo,
    dpo_compute_loss,
    dpo_loss,
    dpo_pairs,
    ipo_loss,
    tokenize_pairs,
)
from rlxf.algos.kto import KTOConfig, check_weights, kto, kto_kl_estimate, kto_loss, tokenize_examples
from rlxf.algos.preference import score_completions, sequence_logps
from rlxf.config import ConfigError, load_config
from rlxf.data import DataError, pad_token_id, read_data
from rlxf.models.load import LoraSettings, ModelConfig, load_model
from rlxf.train.metrics import read_metrics


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------- losses

# Two pairs: (policy chosen, policy rejected, ref chosen, ref rejected) and the log-ratio difference h.
#   pair 1: h = (-10 - -11) - (-12 - -11) = 1 - (-1) = 2
#   pair 2: h = (-5 - -5) - (-4 - -5) = 0 - 1 = -1
PAIRS = (t(-10.0, -5.0), t(-12.0, -4.0), t(-11.0, -5.0), t(-11.0, -5.0))


def test_dpo_loss_by_hand():
    # beta = 0.1: -log sigmoid(0.2) = log(1 + e^-0.2) = 0.598139, -log sigmoid(-0.1) = log(1 + e^0.1) = 0.744397
    expected = [math.log(1 + math.exp(-0.2)), math.log(1 + math.exp(0.1))]
    assert dpo_loss(*PAIRS, beta=0.1).tolist() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx([0.598139, 0.744397], abs=1e-6)


def test_conservative_dpo_loss_by_hand():
    # eps = 0.1: -(0.9) log sigmoid(beta h) - 0.1 log sigmoid(-beta h)
    expected = [
        0.9 * math.log(1 + math.exp(-0.2)) + 0.1 * math.log(1 + math.exp(0.2)),  # 0.618139
        0.9 * math.log(1 + math.exp(0.1)) + 0.1 * math.log(1 + math.exp(-0.1)),  # 0.734397
    ]
    assert dpo_loss(*PAIRS, beta=0.1, label_smoothing=0.1).tolist() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx([0.618139, 0.734397], abs=1e-6)
    # eps = 0 is plain DPO
    assert torch.equal(dpo_loss(*PAIRS, beta=0.1, label_smoothing=0.0), dpo_loss(*PAIRS, beta=0.1))


def test_ipo_loss_by_hand():
    # beta = 0.1: target 1 / (2 beta) = 5; (2 - 5)^2 = 9, (-1 - 5)^2 = 36
    assert ipo_loss(*PAIRS, beta=0.1).tolist() == pytest.approx([9.0, 36.0], abs=1e-12)
    # beta = 0.5: target 1; (2 - 1)^2 = 1, (-1 - 1)^2 = 4
    assert ipo_loss(*PAIRS, beta=0.5).tolist() == pytest.approx([1.0, 4.0], abs=1e-12)


def test_kto_kl_estimate_is_clamped_and_detached():
    policy = t(-5.0, -7.0).requires_grad_()
    # log-ratios 1 and -2: mean -0.5, clamped to 0
    assert kto_kl_estimate(policy, t(-6.0, -5.0)).item() == 0.0
    # log-ratios 1 and 0.5: mean 0.75
    kl = kto_kl_estimate(policy, t(-6.0, -7.5))
    assert kl.item() == pytest.approx(0.75, abs=1e-12)
    assert not kl.requires_grad


def test_kto_loss_by_hand():
    # r = policy - ref = [1, -1]; first desirable, second undesirable; z_ref = 0.5, beta = 0.1
    policy, ref, desirable = t(-10.0, -10.0), t(-11.0, -9.0), torch.tensor([True, False])
    # desirable: 1 * (1 - sigmoid(0.1 * (1 - 0.5))); undesirable: 1.5 * (1 - sigmoid(0.1 * (0.5 - -1)))
    expected = [1 - sigmoid(0.05), 1.5 * (1 - sigmoid(0.15))]  # 0.487503, 0.693855
    got = kto_loss(policy, ref, desirable, 0.5, beta=0.1, desirable_weight=1.0, undesirable_weight=1.5)
    assert got.tolist() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx([0.487503, 0.693855], abs=1e-6)
    # with the KL estimate at 0 and policy == reference every loss is lambda * (1 - sigmoid(0)) = lambda / 2
    same = kto_loss(ref, ref, desirable, kto_kl_estimate(ref, ref), beta=0.1, undesirable_weight=1.5)
    assert same.tolist() == pytest.approx([0.5, 0.75], abs=1e-12)


def test_losses_give_gradients_to_the_policy_only():
    pi_c, pi_r = t(-10.0, -5.0).requires_grad_(), t(-12.0, -4.0).requires_grad_()
    dpo_loss(pi_c, pi_r, PAIRS[2], PAIRS[3], beta=0.1).sum().backward()
    # d/dh -log sigmoid(beta h) = -beta * sigmoid(-beta h); chosen gets it, rejected its negative
    grad = [-0.1 * sigmoid(-0.2), -0.1 * sigmoid(0.1)]
    assert pi_c.grad.tolist() == pytest.approx(grad, abs=1e-12)
    assert pi_r.grad.tolist() == pytest.approx([-g for g in grad], abs=1e-12)


# ---------------------------------------------------------------------------------------------- log-probs


def test_sequence_logps_matches_a_full_log_softmax(tiny_model_dir):
    model, _ = load_model(ModelConfig(name_or_path=str(tiny_model_dir), dtype="float32"))
    torch.manual_seed(0)
    input_ids = torch.randint(3, 200, (3, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0  # right padding
    completion_mask = torch.zeros_like(input_ids)
    completion_mask[0, 4:] = 1  # prompt of 4 tokens
    completion_mask[1, 6:9] = 1  # prompt of 6, completion of 3, then padding
    completion_mask[2, 7:] = 1
    with torch.no_grad():
        got = sequence_logps(model, input_ids, attention_mask, completion_mask)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    token_logps = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, input_ids[:, 1:, None])[..., 0]
    expected = (token_logps * completion_mask[:, 1:]).sum(-1)
    assert got.shape == (3,) and got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------- step 0

RECORDS = [
    {"prompt": "The movie was", "chosen": " a delight. yes", "rejected": " a delight. no"},
    {"prompt": "Our trip to the coast", "chosen": " was sunny and calm", "rejected": " was cold"},
    {"prompt": "Customer service", "chosen": " fixed it", "rejected": " was rude; I will not return."},
]


def step0_batch(tiny_model_dir, tmp_path, **model_options):
    """Policy, tokenised pairs with precomputed reference log-probs, and their batch (one chunk: the batch
    has the padded width the reference was computed at, so fp32 numbers agree exactly)."""
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    cfg = DPOConfig(data=str(path), out=str(tmp_path / "out"), beta=0.1)
    model_cfg = ModelConfig(name_or_path=str(tiny_model_dir), dtype="float32", **model_options)
    model, tokenizer = load_model(model_cfg, trainable=True)
    examples = tokenize_pairs(read_data(path), tokenizer, cfg)
    seqs = [(f["prompt_ids"], f[k]) for k in ("chosen_ids", "rejected_ids") for f in examples]
    logps = score_completions(
        model, seqs, pad_id=pad_token_id(tokenizer), batch_size=len(seqs), precision="fp32"
    )
    for i, f in enumerate(examples):
        f["ref_chosen_logps"], f["ref_rejected_logps"] = logps[i], logps[len(examples) + i]
    return model, cfg, collate_pairs(examples, pad_token_id(tokenizer))


def test_at_step_0_margins_are_zero_and_the_loss_is_log_2(tiny_model_dir, tmp_path):
    model, cfg, batch = step0_batch(tiny_model_dir, tmp_path)
    assert batch["ref_logps"].shape == (6,)  # chosen rows, then rejected rows
    model.train()
    out = dpo_compute_loss(model, batch, cfg)
    assert out.metrics["rewards/margins"] == 0.0
    assert out.metrics["rewards/chosen"] == 0.0 and out.metrics["rewards/rejected"] == 0.0
    assert out.metrics["rewards/accuracies"] == 0.0  # no pair has a positive margin yet
    assert out.loss.item() == pytest.approx(3 * math.log(2), abs=1e-6)  # summed over the 3 pairs
    assert out.metrics["logps/chosen"] == pytest.approx(batch["ref_logps"][:3].mean().item(), abs=1e-6)
    out.loss.backward()  # the gradient reaches the policy
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    # IPO at step 0: h = 0, so the loss is (0 - 1/(2 beta))^2 = 25 per pair; log-probs are token means
    ipo = DPOConfig(data=cfg.data, out=cfg.out, loss_type="ipo", beta=0.1)
    with torch.no_grad():
        pairs = dpo_pairs(model, batch, ipo)
        summed = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    assert pairs.losses.tolist() == pytest.approx([25.0] * 3, abs=1e-5)
    means = summed / batch["completion_mask"].sum(-1)
    assert torch.allclose(pairs.chosen_logps, means[:3]) and torch.allclose(pairs.rejected_logps, means[3:])


def test_lora_adapter_disabled_reference_matches_precompute_at_step_0(tiny_model_dir, tmp_path):
    model, cfg, batch = step0_batch(tiny_model_dir, tmp_path, lora=LoraSettings(r=4))
    model.train()
    precomputed = dpo_pairs(model, batch, cfg)
    per_step = {k: v for k, v in batch.items() if k != "ref_logps"}  # reference from the adapter-off policy
    disabled = dpo_pairs(model, per_step, cfg)
    assert torch.equal(disabled.chosen_rewards, torch.zeros(3))  # LoRA's B starts at 0: policy == base
    assert torch.equal(disabled.rejected_rewards, torch.zeros(3))
    assert torch.allclose(disabled.losses, precomputed.losses, atol=1e-7)
    assert torch.allclose(precomputed.chosen_rewards, torch.zeros(3), atol=1e-7)

    # The reference stays the base model once the adapters move.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    moved = dpo_pairs(model, per_step, cfg)
    assert not torch.allclose(moved.chosen_rewards, torch.zeros(3))
    assert torch.allclose(moved.losses, dpo_pairs(model, batch, cfg).losses, atol=1e-6)


# ---------------------------------------------------------------------------------------------- training

WORDS = "the movie was a delight from start to finish and cast wonderful restaurant served cold soup".split()


def marker_pairs(n: int, seed: int = 0) -> list[dict]:
    """Chosen and rejected share a body; chosen ends with ' yes', rejected with ' no'."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(4))
        body = " ".join(rng.choice(WORDS) for _ in range(3))
        rows.append({"prompt": prompt, "chosen": body + " yes", "rejected": body + " no"})
    return rows


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run_options(tiny_model_dir, data, out, steps, **extra):
    train = {
        "learning_rate": 1e-3,
        "lr_schedule": "constant",
        "warmup_ratio": 0.0,
        "max_steps": steps,
        "global_batch_size": 8,
        "micro_batch_size": 4,
        "precision": "fp32",
        **extra.pop("train", {}),
    }
    return {
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": data,
        "out": str(out),
        "train": train,
        **extra,
    }


@pytest.fixture(scope="module")
def dpo_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dpo-run")
    data = write_jsonl(tmp / "prefs.jsonl", marker_pairs(64))
    cfg = load_config(DPOConfig, None, run_options(tiny_model_dir, data, tmp / "out", 12, eval_split=0.25))
    return dpo(cfg), tmp / "out"


def test_dpo_learns_the_marker(dpo_run):
    final, out = dpo_run
    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 13))
    for name in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
    ):
        assert name in train[0]
    margins = [r["rewards/margins"] for r in train]
    assert abs(margins[0]) < 1e-5  # policy == reference at the first step (to float rounding)
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert margins[-1] > margins[6] > margins[2] > 0.01  # rising over training
    assert train[-1]["loss"] < train[0]["loss"]
    assert final["eval/accuracy"] == 1.0  # every held-out pair: beta * h > 0
    assert final["eval/rewards/margins"] > 0 and final["eval/loss"] < math.log(2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["eval/accuracy"] == 1.0
    assert (out / "config.yaml").is_file() and (out / "model" / "config.json").is_file()
    # held out: 16 pairs; at step 0 policy == reference (to float rounding): margins 0, the loss log 2
    held_out = summary["held_out"]
    assert held_out["n"] == 16 and held_out["unit"] == "pairs" and held_out["warnings"] == []
    assert held_out["start"]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert held_out["start"]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert held_out["end"]["accuracy"] == 1.0
    assert records[0]["step"] == 0 and records[0]["eval/loss"] == held_out["start"]["loss"]


def test_ipo_trains(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", marker_pairs(16))
    options = run_options(tiny_model_dir, data, tmp_path / "out", 4, loss_type="ipo", beta=0.5)
    final = dpo(load_config(DPOConfig, None, options))
    train = [r for r in read_metrics(tmp_path / "out" / "metrics.jsonl") if "loss" in r]
    assert train[0]["loss"] == pytest.approx(1.0, abs=1e-4)  # (0 - 1/(2 * 0.5))^2 at step 0
    assert final["loss"] < train[0]["loss"]


def test_lora_run_with_adapter_disabled_reference_saves_a_plain_model(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", marker_pairs(16))
    options = run_options(
        tiny_model_dir,
        data,
        tmp_path / "out",
        4,
        reference="adapter_disabled",
        model={"name_or_path": str(tiny_model_dir), "lora": {"r": 4}},
        train={"learning_rate": 1e-2},
    )
    final = dpo(load_config(DPOConfig, None, options))
    train = [r for r in read_metrics(tmp_path / "out" / "metrics.jsonl") if "loss" in r]
    assert train[0]["rewards/margins"] == 0.0  # adapters start at zero: policy == reference exactly
    assert final["rewards/margins"] > 0

    model_dir = tmp_path / "out" / "model"
    assert not list(model_dir.glob("adapter_*"))  # merged, not saved apart
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(model_dir)!r})\n"
        f"tok = AutoTokenizer.from_pretrained({str(model_dir)!r})\n"
        "assert not any('lora' in n for n, _ in m.named_parameters())\n"
        "ids = tok('the movie was', return_tensors='pt').input_ids\n"
        "assert torch.isfinite(m(input_ids=ids).logits).all()\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_kto_trains_on_unpaired_data(tiny_model_dir, tmp_path):
    rows = []
    for pair in marker_pairs(24, seed=1):
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        rows.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
    data = write_jsonl(tmp_path / "unpaired.jsonl", rows)
    options = run_options(
        tiny_model_dir, data, tmp_path / "out", 10, eval_split=0.25, train={"precision": "bf16-mixed"}
    )
    final = kto(load_config(KTOConfig, None, options))
    train = [r for r in read_metrics(tmp_path / "out" / "metrics.jsonl") if "loss" in r]
    assert train[0]["loss"] == pytest.approx(0.5, abs=1e-3)  # 1 - sigmoid(0) with policy == reference
    for name in ("kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        assert name in train[0]
    assert all(r["kl"] >= 0 for r in train)
    assert train[-1]["loss"] < train[0]["loss"] - 0.01  # the loss falls
    assert final["eval/rewards/chosen"] > final["eval/rewards/rejected"]
    assert final["eval/loss"] < 0.5 and final["eval/kl"] >= 0
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()


def test_kto_mismatched_completions_rotate_and_fit(tiny_tokenizer, tmp_path):
    rows = [
        {"prompt": f"prompt {i} " * (i + 1), "completion": f"{word} is the answer", "label": i % 2 == 0}
        for i, word in enumerate(["delight", "soup", "movie", "trip", "cast"])
    ]
    path = write_jsonl(tmp_path / "unpaired.jsonl", rows)
    cfg = KTOConfig(data=path, out=str(tmp_path / "out"), max_length=24, max_prompt_length=16)
    examples = tokenize_examples(read_data(path), tiny_tokenizer, cfg, seed=0)
    completions = [tuple(f["completion_ids"]) for f in examples]
    sources = []
    for i, f in enumerate(examples):
        assert len(f["prompt_ids"]) <= 16 and len(f["prompt_ids"]) + len(f["completion_ids"]) <= 24
        assert len(f["prompt_ids"]) + len(f["kl_completion_ids"]) <= 24  # cut to fit the prompt
        source = next(
            j
            for j, c in enumerate(completions)
            if c[: len(f["kl_completion_ids"])] == tuple(f["kl_completion_ids"])
        )
        assert source != i  # y' answers another prompt
        sources.append(source)
    assert sorted(sources) == list(range(5))  # each completion is used once as a y'
    assert [f["label"] for f in examples] == [True, False, True, False, True]


def test_kto_weight_note(caplog):
    unbalanced = [{"label": True}] * 3 + [{"label": False}] * 9
    check_weights(unbalanced, KTOConfig(data="x", out="o"))  # 1 * 3 / (1 * 9) = 0.33: outside [1, 4/3]
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "desirable_weight in [3.00, 4.00]" in caplog.text
    caplog.clear()
    check_weights(unbalanced, KTOConfig(data="x", out="o", desirable_weight=3.5))  # 3.5 * 3 / 9 = 1.17
    assert caplog.records == []


def test_kto_imports_nothing_from_dpo():
    """What KTO shares with DPO lives in rlxf.algos.preference, not in dpo.py."""
    import ast
    import inspect

    import rlxf.algos.kto as kto_module

    tree = ast.parse(inspect.getsource(kto_module))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    assert "rlxf.algos.preference" in imported and "rlxf.algos.dpo" not in imported


# ---------------------------------------------------------------------------------------------- checks


@pytest.mark.parametrize(
    ("cls", "overrides", "message"),
    [
        (DPOConfig, ["loss_type=ipo", "label_smoothing=0.1"], "label_smoothing"),
        (DPOConfig, ["reference=adapter_disabled"], "LoRA"),
        (DPOConfig, ["label_smoothing=0.5"], "label_smoothing"),
        (DPOConfig, ["beta=0"], "beta"),
        (DPOConfig, ["loss_type=hinge"], "loss_type"),
        (DPOConfig, ["max_length=64", "max_prompt_length=64"], "max_prompt_length"),
        (KTOConfig, ["reference=adapter_disabled"], "LoRA"),
        (KTOConfig, ["undesirable_weight=0"], "undesirable_weight"),
    ],
)
def test_config_errors(cls, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(cls, None, ["data=x.jsonl", "out=o", *overrides])


def test_valid_configs_load():
    cfg = load_config(
        DPOConfig, None, ["data=x.jsonl", "out=o", "reference=adapter_disabled", "model.lora.r=8"]
    )
    assert cfg.reference == "adapter_disabled" and cfg.loss_type == "sigmoid" and cfg.beta == 0.1
    assert load_config(DPOConfig, None, ["data=x", "out=o", "label_smoothing=0.2"]).label_smoothing == 0.2
    assert load_config(KTOConfig, None, ["data=x", "out=o"]).desirable_weight == 1.0


def test_bad_input_writes_nothing(tiny_model_dir, tmp_path):
    rows = marker_pairs(16)
    rows[1]["rejected"] = rows[1]["chosen"]  # line 2: identical completions
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"line 2, field 'rejected'.*identical"):
        dpo(load_config(DPOConfig, None, run_options(tiny_model_dir, data, out, 2)))
    assert not out.exists()

    bad = write_jsonl(tmp_path / "unpaired.jsonl", [{"prompt": "a", "completion": "b", "label": "yes"}] * 8)
    with pytest.raises(DataError, match=r"line 1, field 'label'"):
        kto(load_config(KTOConfig, None, run_options(tiny_model_dir, bad, out, 2)))
    assert not out.exists()

    few = write_jsonl(tmp_path / "few.jsonl", marker_pairs(4))  # no full batch of 8
    with pytest.raises(DataError, match="4 training records make no full batch of train.global_batch_size=8"):
        dpo(load_config(DPOConfig, None, run_options(tiny_model_dir, few, out, 2)))
    assert not out.exists()


def test_sigmoid_of_zero_margin_is_log_2():
    # the number the step-0 checks rely on
    assert F.logsigmoid(torch.zeros(1)).neg().item() == pytest.approx(math.log(2), abs=1e-7)
