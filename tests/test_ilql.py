"""ILQL and filtered BC: the text MDP and every loss against hand-computed values, the heads and their
Polyak update, advantage-steered decoding (beta 0 is the plain LM), and whole runs on the tiny model
(parameters move, exact resume, bad input, the command line, generate and eval with the heads)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

import rlxf.algos.offline as offline_module
from rlxf.algos.ilql import (
    ILQL_EVAL_METRICS,
    ILQL_METRICS,
    ILQLConfig,
    ILQLModel,
    awac_loss,
    awac_weights,
    bellman_target,
    collate_ilql,
    cql_loss,
    expectile_loss,
    ilql,
    q_loss,
    standardize,
    top_share,
    value_loss,
)
from rlxf.algos.text_mdp import (
    action_mask_of,
    build_mdp,
    episode_returns,
    next_action_index,
    returns_to_go,
    segment_ends,
)
from rlxf.cli import main
from rlxf.config import ConfigError, load_config
from rlxf.data import IGNORE_INDEX, DataError
from rlxf.models.ilql_heads import (
    HEADS_FILE,
    SETTINGS_FILE,
    ILQLHeads,
    MLPHead,
    TiedQHead,
    load_heads,
    polyak_update_,
    save_heads,
)
from rlxf.rollout.ilql_decoding import ILQLDecoding, ilql_decoding, steered_logits
from rlxf.train.metrics import read_metrics

PROMPTS = ["The movie was", "The restaurant served", "This book is", "Our trip to the coast"]
GOOD, BAD = " a delight.", " cold and rude."


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def rated_records(n: int, field: str = "rating") -> list[dict]:
    """Half good completions rated 1, half bad ones rated 0, over a few prompts."""
    return [
        {"prompt": PROMPTS[i % len(PROMPTS)], "completion": GOOD if i % 2 else BAD, field: float(i % 2)}
        for i in range(n)
    ]


def make_config(model_dir: Path, data: Path, out: Path, **extra) -> ILQLConfig:
    train = {
        "precision": "fp32",
        "micro_batch_size": 4,
        "global_batch_size": 8,
        "max_steps": 2,
        "learning_rate": 1e-3,
        "warmup_ratio": 0.0,
        **extra.pop("train", {}),
    }
    overrides = {
        "model": {"name_or_path": str(model_dir)},
        "data": str(data),
        "out": str(out),
        "eval_split": 0,
        "train": train,
        "polyak_alpha": 0.5,
        **extra,
    }
    return load_config(ILQLConfig, overrides=overrides)


# ---------------------------------------------------------------------------------------------- text MDP


def test_the_mdp_of_a_prompt_and_completion():
    """Prompt 5 6, completion 7 8, one padding column: the actions are 7 and 8 (positions 1 and 2), the
    reward and the end sit on the last one, and its next state is itself (nothing is bootstrapped)."""
    input_ids = torch.tensor([[5, 6, 7, 8, 0]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 7, 8, IGNORE_INDEX]])
    mdp = build_mdp(input_ids, labels, torch.tensor([0.5]))
    assert mdp.actions.tolist() == [[6, 7, 8, 0]]
    assert mdp.action_mask.tolist() == [[0, 1, 1, 0]]  # the prompt token 6 is never an action
    assert mdp.rewards.tolist() == [[0, 0, 0.5, 0]]
    assert mdp.dones.tolist() == [[0, 0, 1, 0]]
    assert mdp.next_state[0, 1].item() == 2 and mdp.next_state[0, 2].item() == 2
    assert mdp.num_actions == 2


def test_the_mdp_of_a_conversation_with_a_reward_per_turn():
    """Assistant tokens 1 2, a user turn 3 4, assistant tokens 5 6: two segments; across the user turn the
    next decision state is the second segment's first action; discounted returns by hand (gamma 0.5)."""
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, IGNORE_INDEX, IGNORE_INDEX, 5, 6]])
    input_ids = torch.tensor([[9, 1, 2, 3, 4, 5, 6]])
    mask = action_mask_of(labels)
    assert mask.tolist() == [[1, 1, 0, 0, 1, 1]]
    assert segment_ends(mask).tolist() == [[0, 1, 0, 0, 0, 1]]
    assert next_action_index(mask).tolist() == [[1, 4, 4, 4, 5, 5]]
    mdp = build_mdp(input_ids, labels, torch.tensor([0.0]), segment_rewards=[[0.5, 1.0]])
    assert mdp.rewards.tolist() == [[0, 0.5, 0, 0, 0, 1.0]]
    assert mdp.dones.tolist() == [[0, 0, 0, 0, 0, 1]]
    # G5 = 1; G4 = 0.5 * 1; G1 = 0.5 + 0.5 * 0.5; G0 = 0.5 * 0.75
    assert returns_to_go(mdp, 0.5).tolist() == [[0.375, 0.75, 0, 0, 0.5, 1.0]]
    assert episode_returns(mdp, 0.5).tolist() == [0.375]
    with pytest.raises(ValueError, match="2 segments but 1 rewards"):
        build_mdp(input_ids, labels, torch.tensor([0.0]), segment_rewards=[[1.0]])


def test_collate_pads_and_builds_the_mdp_per_row():
    features = [
        {"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, 3], "reward": 1.0},
        {"input_ids": [1, 4], "labels": [IGNORE_INDEX, 4], "reward": -1.0},
    ]
    batch = collate_ilql(features, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [1, 4, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["action_mask"].tolist() == [[1, 1], [1, 0]]
    assert batch["rewards"].tolist() == [[0, 1.0], [-1.0, 0]]
    assert batch["dones"].tolist() == [[0, 1], [1, 0]]


# ---------------------------------------------------------------------------------------------- losses


def test_expectile_loss_is_asymmetric():
    """tau 0.7: an under-estimate (u > 0) costs 0.7 u^2, an over-estimate 0.3 u^2."""
    diff = torch.tensor([2.0, -2.0, 0.5, 0.0])
    assert expectile_loss(diff, 0.7).tolist() == pytest.approx([2.8, 1.2, 0.175, 0.0])
    assert expectile_loss(diff, 0.5).tolist() == pytest.approx([2.0, 2.0, 0.125, 0.0])
    # V's loss reads u = Q̂ - V, and only V gets a gradient
    target_q, v = torch.tensor([1.0, 1.0], requires_grad=True), torch.tensor([0.0, 3.0], requires_grad=True)
    loss = value_loss(target_q, v, 0.7)
    assert loss.tolist() == pytest.approx([0.7, 1.2])
    loss.sum().backward()
    assert target_q.grad is None and v.grad.tolist() == pytest.approx([-1.4, 1.2])


def test_the_bellman_target_stops_at_the_end_of_the_episode():
    """y = r + gamma (1 - done) V(s'): a terminal action's target is its reward, whatever V(s') is."""
    rewards, next_v = torch.tensor([1.0, 0.0, 0.5]), torch.tensor([2.0, 3.0, 4.0], requires_grad=True)
    dones = torch.tensor([1.0, 0.0, 0.0])
    target = bellman_target(rewards, next_v, dones, 0.9)
    assert target.tolist() == pytest.approx([1.0, 2.7, 4.1])
    assert not target.requires_grad
    q = torch.tensor([0.0, 3.0, 4.1], requires_grad=True)
    assert q_loss(q, target).tolist() == pytest.approx([1.0, 0.09, 0.0], abs=1e-6)


def test_cql_and_awac_terms_by_hand():
    # logsumexp([0, 0]) - 0 = log 2; logsumexp([1, 2, 3]) - 3 = log(1 + e^-1 + e^-2)
    assert cql_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([0])).item() == pytest.approx(math.log(2))
    expected = math.log(1 + math.exp(-1) + math.exp(-2))
    assert cql_loss(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([2])).item() == pytest.approx(expected)
    # the policy term: -log softmax; weighted by min(exp(beta A), max)
    logits, actions = torch.tensor([[0.0, 0.0], [0.0, math.log(3)]]), torch.tensor([1, 1])
    assert awac_loss(logits, actions).tolist() == pytest.approx([math.log(2), math.log(4 / 3)])
    weights = awac_weights(torch.tensor([0.0, 1.0, 10.0]), 1.0, 20.0)
    assert weights.tolist() == pytest.approx([1.0, math.e, 20.0])
    assert awac_loss(logits, actions, weights[:2]).tolist() == pytest.approx(
        [math.log(2), math.e * math.log(4 / 3)]
    )


def test_standardize_and_the_top_share():
    mean, std = standardize([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == pytest.approx(math.sqrt(2 / 3))
    assert standardize([4.0, 4.0]) == (4.0, 1.0)  # constant rewards stay finite
    assert top_share([0.1, 0.9, 0.5, 0.9], 0.5) == ([1, 3], 0.9)
    assert top_share([0.1, 0.9, 0.5, 0.9], 0.6) == ([1, 2, 3], 0.5)  # ceil(0.6 * 4) = 3


# ---------------------------------------------------------------------------------------------- heads


def test_polyak_update_by_hand_and_on_the_heads():
    target, source = torch.tensor([0.0, 10.0]), torch.tensor([1.0, 0.0])
    polyak_update_([target], [source], 0.1)
    assert target.tolist() == pytest.approx([0.1, 9.0])

    torch.manual_seed(0)
    heads = ILQLHeads(hidden_size=4, vocab_size=6, num_q=2)
    assert torch.equal(heads.target_q[0].w2, heads.q[0].w2)  # targets start as copies
    assert not any(name.startswith("target_q") for name, _ in heads.named_parameters())  # buffers
    assert any(name.startswith("target_q") for name in heads.state_dict())  # in every checkpoint
    old_target = heads.target_q[1].w1.clone()
    with torch.no_grad():
        heads.q[1].w1.add_(1.0)
    heads.polyak_update(0.25)
    assert torch.allclose(heads.target_q[1].w1, old_target + 0.25)


def test_target_q_at_the_actions_equals_the_full_heads():
    torch.manual_seed(1)
    heads = ILQLHeads(hidden_size=4, vocab_size=7, num_q=2)
    with torch.no_grad():
        heads.target_q[1].w2.mul_(-1)  # two targets that differ
    hidden, actions = torch.randn(3, 5, 4), torch.randint(0, 7, (3, 5))
    full = torch.stack([head(hidden) for head in heads.target_q]).min(0).values  # [3, 5, 7]
    assert torch.allclose(heads.target_q_at(hidden, actions), full.gather(-1, actions[..., None])[..., 0])
    advantage = heads.advantage(hidden)
    assert torch.allclose(advantage, full - heads.value(hidden)[..., None])
    frozen = MLPHead(4, 3, trainable=False)
    assert list(frozen.parameters()) == [] and len(list(frozen.buffers())) == 4


def test_a_tied_q_head_by_hand():
    """Q(s, a) = e_a . u(h) + b_a with u(h) = W2 relu(W1 h + b1) + b2; it starts at 0 everywhere."""
    head = TiedQHead(hidden_size=2, vocab_size=3)
    embedding = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])  # [vocab 3, H 2]
    hidden = torch.tensor([[1.0, -2.0]])
    assert torch.equal(head(hidden, embedding), torch.zeros(1, 3))  # W2, b2 and the bias start at zero
    with torch.no_grad():
        head.w1.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]))  # [2H 4, H 2]
        head.b1.copy_(torch.tensor([0.0, 0.0, 0.5, 0.0]))
        head.w2.copy_(torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 2.0]]))  # [H 2, 2H 4]
        head.b2.copy_(torch.tensor([0.0, 1.0]))
        head.bias.copy_(torch.tensor([0.5, 0.0, -1.0]))
    # relu(W1 h + b1) = relu([1, -2, -0.5, 0]) = [1, 0, 0, 0]; u = W2 [1, 0, 0, 0] + b2 = [1, 1]
    # Q = E u + bias = [1 + 0.5, 1 + 0, 0 - 1] = [1.5, 1.0, -1.0]
    assert head(hidden, embedding).tolist() == [[1.5, 1.0, -1.0]]
    actions = torch.tensor([2])
    assert head.at(hidden, actions, embedding).tolist() == [-1.0]
    with pytest.raises(ValueError, match="output embeddings"):
        head(hidden)
    frozen = TiedQHead(2, 3, trainable=False)
    assert list(frozen.parameters()) == [] and len(list(frozen.buffers())) == 5


def test_tied_heads_targets_advantage_and_their_files(tmp_path):
    """The target of tied heads at the actions equals the full heads; the file keeps no embedding (it is
    the LM's) and loads back as tied heads with the same advantage."""
    torch.manual_seed(2)
    heads = ILQLHeads(hidden_size=4, vocab_size=7, num_q=2, q_head="tied")
    assert [type(h) for h in heads.q] == [TiedQHead, TiedQHead]
    with torch.no_grad():
        for i, head in enumerate(heads.q):
            for tensor in head.tensors():
                tensor.normal_(0.0, 1.0 + i)
    heads.polyak_update(1.0)
    embedding, hidden, actions = torch.randn(7, 4), torch.randn(3, 5, 4), torch.randint(0, 7, (3, 5))
    full = torch.stack([head(hidden, embedding) for head in heads.target_q]).min(0).values  # [3, 5, 7]
    at_actions = heads.target_q_at(hidden, actions, embedding)
    assert torch.allclose(at_actions, full.gather(-1, actions[..., None])[..., 0], atol=1e-5)
    advantage = heads.advantage(hidden, embedding)
    assert torch.allclose(advantage, full - heads.value(hidden)[..., None])
    save_heads(heads, tmp_path, {"beta": 1.0, "top_k": 0})
    assert json.loads((tmp_path / SETTINGS_FILE).read_text())["q_head"] == "tied"
    loaded = load_heads(tmp_path)
    assert loaded.q_head == "tied" and isinstance(loaded.target_q[0], TiedQHead)
    assert torch.allclose(loaded.advantage(hidden, embedding), advantage)
    # a settings file from before tied heads (no q_head) reads as MLP heads
    mlp = ILQLHeads(hidden_size=4, vocab_size=7, num_q=1)
    (tmp_path / "old").mkdir()
    save_heads(mlp, tmp_path / "old", {"beta": 1.0, "top_k": 0})
    settings = json.loads((tmp_path / "old" / SETTINGS_FILE).read_text())
    del settings["q_head"]
    (tmp_path / "old" / SETTINGS_FILE).write_text(json.dumps(settings))
    assert load_heads(tmp_path / "old").q_head == "mlp"


def test_the_policy_term_learns_from_the_top_share_only(tiny_model_dir, tmp_path):
    """policy_top_share 0.5: the records with the top half of the rewards carry policy weight 1, the others
    0, and their actions add nothing to the policy term; the heads' terms still cover every action."""
    from rlxf.algos.ilql import ilql_terms, read_rated_data
    from rlxf.models.load import ModelConfig, load_model

    records = [
        {"prompt": PROMPTS[i % 4], "completion": GOOD, "rating": float(r)} for i, r in enumerate([3, 1, 4, 2])
    ]
    data = write_jsonl(tmp_path / "ratings.jsonl", records)
    cfg = make_config(
        tiny_model_dir, data, tmp_path / "run", policy_top_share=0.5, train={"global_batch_size": 4}
    )
    rated = read_rated_data(cfg)
    assert [e["policy_weight"] for e in rated.train] == [
        1.0,
        0.0,
        1.0,
        0.0,
    ]  # ratings 3 and 4 are the top half
    batch = collate_ilql(rated.train, pad_id=0)
    assert batch["policy_weight"].tolist() == [1.0, 0.0, 1.0, 0.0]
    model, _ = load_model(ModelConfig(name_or_path=str(tiny_model_dir), dtype="float32"))
    torch.manual_seed(0)
    terms = ilql_terms(ILQLModel(model), batch, cfg)
    row = batch["action_mask"].bool().nonzero()[:, 0]  # [N]: the record of each action
    kept = (row == 0) | (row == 2)
    assert torch.equal(terms.awac_loss[~kept], torch.zeros(int((~kept).sum())))
    assert torch.allclose(terms.awac_loss[kept], terms.nll[kept])
    assert bool((terms.q_loss[~kept] > 0).all())  # the Q heads learn from every record
    plain = make_config(tiny_model_dir, data, tmp_path / "r2", train={"global_batch_size": 4})
    assert collate_ilql(read_rated_data(plain).train, pad_id=0)["policy_weight"].tolist() == [1.0] * 4


# ---------------------------------------------------------------------------------------------- decoding


def test_steered_logits_by_hand():
    logits, advantage = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([0.0, 5.0, 9.0])
    plain = torch.log_softmax(logits, -1)
    assert torch.allclose(steered_logits(logits, advantage, 0.0), plain)
    steered = steered_logits(logits, advantage, 1.0, top_k=2)  # token 2 is not in the LM's top 2
    assert steered[2].item() == float("-inf")
    assert steered[:2].tolist() == pytest.approx([plain[0].item(), plain[1].item() + 5.0])
    assert steered.argmax().item() == 1
    assert steered_logits(logits, advantage, 1.0, top_k=0).argmax().item() == 2  # every token


@pytest.mark.parametrize("detach", [False, True])
def test_detached_heads_leave_the_trunk_to_the_policy_term(tiny_model_dir, detach):
    """With detach_heads the Q, V and CQL losses train the heads only; without, the trunk too (trlX)."""
    from rlxf.algos.ilql import ilql_terms
    from rlxf.models.load import ModelConfig, load_model

    model, _ = load_model(ModelConfig(name_or_path=str(tiny_model_dir), dtype="float32"), trainable=True)
    torch.manual_seed(0)
    wrapped = ILQLModel(model, detach_heads=detach)
    features = [
        {"input_ids": [1, 2, 3, 4], "labels": [IGNORE_INDEX, IGNORE_INDEX, 3, 4], "reward": 1.0},
        {"input_ids": [1, 5, 6], "labels": [IGNORE_INDEX, 5, 6], "reward": -1.0},
    ]
    batch = collate_ilql(features, pad_id=0)
    terms = ilql_terms(wrapped, batch, load_config(ILQLConfig, overrides={"data": "x.jsonl", "out": "r"}))
    (terms.q_loss + terms.v_loss + terms.cql_loss).sum().backward()  # the heads' losses, no policy term
    trunk = [p.grad for p in model.parameters()]
    heads = [p.grad for p in wrapped.heads.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in heads)
    touched = any(g is not None and g.abs().sum() > 0 for g in trunk)
    assert touched is not detach


@pytest.mark.parametrize("q_head", ["mlp", "tied"])
def test_beta_zero_decodes_as_the_plain_lm_and_the_hook_sees_the_training_heads(
    tiny_model_dir, tmp_path, q_head
):
    """The heads attached with beta 0 and no top-k change no greedy token; the hook's advantage is the
    heads' advantage at the hidden state training reads (tied heads: with the LM's output embeddings)."""
    from rlxf.models.load import ModelConfig, load_model
    from rlxf.rollout.engine import SamplingConfig
    from rlxf.rollout.hf import HFEngine

    model, tokenizer = load_model(ModelConfig(name_or_path=str(tiny_model_dir), dtype="float32"))
    torch.manual_seed(0)
    wrapped = ILQLModel(model, q_head=q_head)
    with torch.no_grad():  # tied heads start at Q = 0: give them values
        for head in wrapped.heads.target_q:
            head.w2.normal_()
    folder = tmp_path / "heads"
    folder.mkdir()
    save_heads(wrapped.heads, folder, {"beta": 1.0, "top_k": 0})
    sampling = SamplingConfig(max_new_tokens=6, temperature=0.0)
    prompts = ["The movie was", "Our trip"]
    plain = HFEngine(model, tokenizer).generate(prompts, sampling)
    heads = ILQLDecoding(folder, 0.0, 0).attach(model)
    zero = HFEngine(model, tokenizer).generate(prompts, sampling)
    assert torch.equal(plain.completion_ids, zero.completion_ids)
    assert torch.allclose(plain.logprobs, zero.logprobs, atol=1e-5)
    heads.hook.remove()

    ids = tokenizer("The movie was", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        logits = model(input_ids=ids).logits
        steered_heads = ILQLDecoding(folder, 2.0, 0).attach(model)
        steered = model(input_ids=ids).logits
    embedding = model.get_output_embeddings().weight
    expected = torch.log_softmax(logits, -1) + 2.0 * wrapped.heads.advantage(hidden, embedding)
    assert torch.allclose(steered, expected, atol=1e-4)
    steered_heads.hook.remove()


def test_ilql_decoding_options(tiny_model_dir, tmp_path):
    assert ilql_decoding(tiny_model_dir, None, None) is None  # a plain LM folder
    assert ilql_decoding(tiny_model_dir, 0.0, 5) is None
    with pytest.raises(ValueError, match="holds no ILQL heads"):
        ilql_decoding(tiny_model_dir, 1.0, None)
    with pytest.raises(ValueError, match="ilql_beta must be >= 0"):
        ilql_decoding(tiny_model_dir, -1.0, None)
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not an rlxf ILQL settings file"):
        ilql_decoding(tmp_path, None, None)


# ---------------------------------------------------------------------------------------------- runs


def test_an_ilql_run_trains_saves_the_lm_and_its_heads_and_decodes(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "ratings.jsonl", rated_records(48))
    cfg = make_config(tiny_model_dir, data, tmp_path / "run", eval_split=0.25, decode_top_k=5)
    result = ilql(cfg)
    assert math.isfinite(result["loss"])
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    step = [r for r in records if r["step"] == 1][0]
    loop = {"step", "lr", "grad_norm", "tokens_per_s", "epoch"}
    assert set(step) - loop == set(ILQL_METRICS)
    assert {k.removeprefix("eval/") for k in records[-1] if k.startswith("eval/")} == set(ILQL_EVAL_METRICS)
    assert all(math.isfinite(v) for r in records for v in r.values())

    model_dir = tmp_path / "run" / "model"
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(model_dir)  # the LM alone loads as a plain HF folder
    settings = json.loads((model_dir / SETTINGS_FILE).read_text())
    assert settings["beta"] == 1.0 and settings["top_k"] == 5 and settings["num_q"] == 2
    assert settings["reward_mean"] == pytest.approx(0.5, abs=0.1) and settings["reward_field"] == "rating"
    saved = load_file(model_dir / HEADS_FILE)
    assert {k.split(".")[0] for k in saved} == {"target_q", "v"}  # what decoding needs, not the online Q
    # the trained LM differs from the start (a step changed the parameters)
    start = load_file(tiny_model_dir / "model.safetensors")
    trained = load_file(model_dir / "model.safetensors")
    assert any(not torch.equal(start[k], trained[k]) for k in start)

    from rlxf.rollout.generate import GenerateConfig, generate

    def greedy(beta: float | None) -> list[str]:
        cfg = load_config(
            GenerateConfig,
            overrides={
                "model": {"name_or_path": str(model_dir), "dtype": "float32"},
                "prompt": PROMPTS,
                "sampling": {"temperature": 0.0, "max_new_tokens": 5},
                "ilql_beta": beta,
            },
        )
        return [s.completion for s in generate(cfg)]

    plain = greedy(0.0)
    assert greedy(0.0) == plain and len(greedy(None)) == len(PROMPTS)  # ilql.json's beta by default


def test_lora_ilql_saves_a_merged_lm_with_its_heads(tiny_model_dir, tmp_path):
    """With LoRA the checkpoint keeps the trainable parameters and the buffers: the heads and their targets."""
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "ratings.jsonl", rated_records(16))
    lora = {"name_or_path": str(tiny_model_dir), "lora": {"r": 4}}
    result = ilql(make_config(tiny_model_dir, data, tmp_path / "lora", model=lora))
    assert math.isfinite(result["loss"])
    model_dir = tmp_path / "lora" / "model"
    AutoModelForCausalLM.from_pretrained(model_dir)  # merged: a plain LM
    assert (model_dir / HEADS_FILE).is_file() and not (model_dir / "adapter_config.json").exists()


@pytest.mark.parametrize(
    "options", [{}, {"q_head": "tied", "policy_top_share": 0.5, "detach_heads": True}], ids=["mlp", "tied"]
)
def test_resume_equals_an_uninterrupted_run(tiny_model_dir, tmp_path, options):
    """Two steps, a stop, two more: the same losses and the same heads (targets included) as four steps."""
    data = write_jsonl(tmp_path / "ratings.jsonl", rated_records(32))
    constant = {"lr_schedule": "constant", "max_steps": 4}
    ilql(make_config(tiny_model_dir, data, tmp_path / "whole", train=constant, **options))
    ilql(
        make_config(
            tiny_model_dir,
            data,
            tmp_path / "cut",
            train={**constant, "max_steps": 2, "keep_final_checkpoint": True},
            **options,
        )
    )
    ilql(make_config(tiny_model_dir, data, tmp_path / "cut", resume=True, train=constant, **options))
    losses = lambda run: [r["loss"] for r in read_metrics(run / "metrics.jsonl")]  # noqa: E731
    assert len(losses(tmp_path / "whole")) == 4
    assert losses(tmp_path / "cut") == pytest.approx(losses(tmp_path / "whole"), rel=1e-5)
    from safetensors.torch import load_file

    for name in (HEADS_FILE, "model.safetensors"):
        a, b = (load_file(tmp_path / run / "model" / name) for run in ("whole", "cut"))
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6, name


def test_filtered_bc_trains_the_lm_on_the_top_share(tiny_model_dir, tmp_path, caplog):
    data = write_jsonl(tmp_path / "ratings.jsonl", rated_records(32))
    cfg = make_config(tiny_model_dir, data, tmp_path / "bc", objective="filtered_bc", bc_top_share=0.5)
    with caplog.at_level(logging.INFO, logger="rlxf"):
        result = ilql(cfg)
    assert "filtered BC: 16 of 32 training records" in caplog.text
    assert math.isfinite(result["loss"])
    assert not (tmp_path / "bc" / "model" / SETTINGS_FILE).exists()  # a plain LM: no heads
    with pytest.raises(ConfigError, match="bc_top_share"):
        make_config(tiny_model_dir, data, tmp_path / "x", objective="filtered_bc", bc_top_share=0)


def test_score_output_with_a_reward_field_is_read(tiny_model_dir, tmp_path):
    """`rlxf reward score` writes prompt + completion + reward: read as is (reward_field auto)."""
    data = write_jsonl(tmp_path / "scored.jsonl", rated_records(16, field="reward"))
    result = ilql(make_config(tiny_model_dir, data, tmp_path / "run", train={"max_steps": 1}))
    assert json.loads((tmp_path / "run" / "model" / SETTINGS_FILE).read_text())["reward_field"] == "reward"
    assert math.isfinite(result["loss"])


def test_a_labelling_export_of_several_aspects_trains_on_the_one_chosen(tiny_model_dir, tmp_path, caplog):
    """`rlxf label export --format ratings` writes an aspect, an id and a label count beside each rating."""
    records = [
        {**r, "aspect": aspect, "id": f"item-{i}", "num_labels": 2}
        for i, r in enumerate(rated_records(16))
        for aspect in ("helpful", "polite")
    ]
    data = write_jsonl(tmp_path / "export.jsonl", records)
    with caplog.at_level(logging.INFO, logger="rlxf"):
        result = ilql(
            make_config(tiny_model_dir, data, tmp_path / "run", aspect="polite", train={"max_steps": 1})
        )
    assert "16 training and 0 held-out records" in caplog.text and math.isfinite(result["loss"])
    with pytest.raises(DataError, match="no record has aspect 'kind'"):
        ilql(make_config(tiny_model_dir, data, tmp_path / "other", aspect="kind"))


def test_a_scored_conversation_is_one_episode_with_its_reward_on_the_last_action(tiny_model_dir, tmp_path):
    """A `messages` conversation (rlxf reward score's output of an SFT file): both assistant turns are
    actions, the user turn between them is not, and the reward sits on the last action only."""
    from rlxf.algos.ilql import read_rated_data

    def conversation(i: int) -> dict:
        turns = [("user", "Hi"), ("assistant", GOOD), ("user", "And?"), ("assistant", BAD if i % 2 else GOOD)]
        return {"messages": [{"role": r, "content": c} for r, c in turns], "reward": float(i % 2)}

    data = write_jsonl(tmp_path / "scored.jsonl", [conversation(i) for i in range(8)])
    cfg = make_config(tiny_model_dir, data, tmp_path / "run", train={"max_steps": 1})
    rated = read_rated_data(cfg)
    batch = collate_ilql(rated.train[:2], pad_id=0)
    assert segment_ends(batch["action_mask"])[0].sum().item() == 2  # two assistant turns
    assert (batch["rewards"] != 0).sum(-1).tolist() == [1, 1] and batch["dones"].sum(-1).tolist() == [1, 1]
    assert torch.equal(
        batch["rewards"].nonzero(), batch["dones"].nonzero()
    )  # the reward is on the last action
    assert math.isfinite(ilql(cfg)["loss"])


@pytest.mark.parametrize(
    "records, extra, message",
    [
        (
            rated_records(15, field="reward") + [{"prompt": "p", "completion": " c", "reward": "high"}],
            {},
            "line 16, field 'reward': expected a finite number as the reward, got 'high'",
        ),
        (
            rated_records(16, field="reward")[:3] + [{"prompt": "p", "completion": " c"}] * 13,
            {},
            "line 4, field 'reward': no reward",
        ),
        (
            [{"prompt": "p", "chosen": " a", "rejected": " b"}] * 16,
            {},
            "holds preferences records; rlxf ilql needs",
        ),
        (
            [{**r, "aspect": "ab"[i % 2]} for i, r in enumerate(rated_records(16))],
            {},
            "ratings of 2 aspects (a, b): choose one with --aspect",
        ),
        (rated_records(4), {}, "make no full batch of train.global_batch_size=8"),
        (rated_records(16), {"reward_field": "score"}, "line 1, field 'score': no reward"),
    ],
)
def test_bad_input_stops_before_any_model_loads(
    tiny_model_dir, tmp_path, monkeypatch, records, extra, message
):
    data = write_jsonl(tmp_path / "bad.jsonl", [dict(r) for r in records])
    monkeypatch.setattr(offline_module, "load_trainable_model", lambda cfg: pytest.fail("a model loaded"))
    with pytest.raises(DataError) as error:
        ilql(make_config(tiny_model_dir, data, tmp_path / "out", **extra))
    assert message in str(error.value) and str(data) in str(error.value)
    assert not (tmp_path / "out").exists()


def test_config_checks():
    base = {"data": "d.jsonl", "out": "o"}
    for key, value in (
        ("tau", 1.0),
        ("gamma", 1.5),
        ("polyak_alpha", 0.0),
        ("objective", "awr"),
        ("q_head", "linear"),
        ("policy_top_share", 0.0),
    ):
        with pytest.raises(ConfigError):
            load_config(ILQLConfig, overrides={**base, key: value})


def test_the_command_line_trains_then_generates_and_evaluates_with_the_heads(
    tiny_model_dir, tmp_path, capsys
):
    data = write_jsonl(tmp_path / "ratings.jsonl", rated_records(16))
    out = tmp_path / "ilql"
    code = main(
        [
            "ilql",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(data),
            "--out",
            str(out),
            "--max-steps",
            "1",
            "--batch-size",
            "8",
            "--micro-batch-size",
            "4",
            "--precision",
            "fp32",
            "--decode-beta",
            "2",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert (out / "model" / HEADS_FILE).is_file() and (out / "summary.json").is_file()
    capsys.readouterr()
    code = main(
        ["generate", "--model", str(out / "model"), "--prompt", "The movie was", "--temperature", "0"]
        + ["--max-new-tokens", "4", "--ilql-beta", "1.5", "--ilql-top-k", "3"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "beta 1.5, top_k 3" in captured.err
    code = main(["generate", "--model", str(tiny_model_dir), "--prompt", "x", "--ilql-beta", "1"])
    assert code == 2 and "holds no ILQL heads" in capsys.readouterr().err

    reward = tmp_path / "reward_fn.py"
    reward.write_text("def score(prompts, completions):\n    return [float(len(c)) for c in completions]\n")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    code = main(
        ["eval", "--model", str(out), "--prompts", str(prompts), "--reward", f"fn:{reward}:score"]
        + ["--out", str(tmp_path / "eval"), "-n", "1", "--max-new-tokens", "4", "--precision", "fp32"]
        + ["--ilql-beta", "1"]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["ilql"] == {"beta": 1.0, "top_k": 20}
    assert summary["baseline"] == str(tiny_model_dir) and "perplexity_under_baseline" in summary

    # the example's report table reads eval folders
    import subprocess
    import sys

    table = Path(__file__).parents[1] / "examples" / "ilql_table.py"
    shown = subprocess.run(
        [sys.executable, str(table), str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert "| eval (beta 1) |" in shown.stdout and "perplexity under the start model" in shown.stdout
    page = (tmp_path / "report.html").read_text()
    assert "<td>eval (beta 1)</td>" in page and "data:image/png;base64," in page


def test_the_review_example_plans_every_stage(tmp_path):
    """examples/ilql-sentiment.yaml builds every stage's config (bad options would stop it before work)."""
    from rlxf.pipeline import PipelineConfig, plan

    example = Path(__file__).parents[1] / "examples" / "ilql-sentiment.yaml"
    cfg = load_config(PipelineConfig, example, overrides={"out": str(tmp_path / "run")})
    stages = {stage.spec.name: stage for stage in plan(cfg)}
    ilql_stage = load_config(ILQLConfig, overrides=stages["ilql"].options)
    assert (ilql_stage.q_head, ilql_stage.policy_top_share, ilql_stage.detach_heads) == ("tied", 0.1, True)
    assert [s for s in stages if s.startswith("eval_")] == [
        "eval_beta0",
        "eval_beta1",
        "eval_beta2",
        "eval_filtered_bc",
    ]
