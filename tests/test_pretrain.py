"""``rlxf pretrain`` (rlxf/algos/pretrain.py) on a small corpus written by the test.

* each objective from scratch (clm on GPT-2 and Llama, mlm with and without NSP on BERT, span on T5) trains:
  finite losses, changed weights, the held-out figures it documents; ``model/`` reloads with the matching
  ``AutoModelFor...`` and its tokenizer and gives the trained model's logits;
* the losses by hand: clm on a 1 x 3 block, masked positions only for mlm / span;
* continued pre-training of a causal LM with LoRA, whose result ``rlxf sft`` takes;
* a resumed run equals an uninterrupted one; the tokenised corpus is cached and reused;
* a corpus record without its text field stops the run (file, line, field) before the run folder exists.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rlxf.algos.pretrain import PretrainConfig, clm_loss, masked_loss, pretrain
from rlxf.config import ConfigError, load_config
from rlxf.data import DataError
from rlxf.train.metrics import read_metrics

SENTENCES = [
    "The cat sat on the mat. It was warm there.",
    "A dog ran in the park. The park was green and wide.",
    "Rain fell on the roof all night. In the morning the sun came out.",
    "She wrote a letter to her friend. He answered the next day.",
    "The train left at noon. It reached the coast by evening.",
    "Bread is made from flour and water. Salt gives it taste.",
    "The river runs to the sea. Fish swim in it.",
    "We planted trees in spring. By summer they had leaves.",
]


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RLXF_HOME", str(tmp_path / "home"))  # the token cache of this test alone
    path = tmp_path / "corpus.jsonl"
    documents = [f"{SENTENCES[i % 8]} {SENTENCES[(i * 3 + 1) % 8]} Number {i}." for i in range(160)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    return path


def config(corpus: Path, out: Path, **overrides) -> PretrainConfig:
    base = {
        "data": str(corpus),
        "out": str(out),
        "arch": "gpt2",
        "vocab_size": 300,
        "block_size": 32,
        "eval_split": 0.1,
        "max_eval_blocks": 8,
        "train": {
            "max_steps": 4,
            "global_batch_size": 8,
            "micro_batch_size": 4,
            "learning_rate": 2e-3,
            "precision": "fp32",
            "eval_every": 2,
        },
    }
    for key, value in overrides.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return load_config(PretrainConfig, overrides=base)


def test_clm_loss_by_hand():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    ids = torch.tensor(
        [[0, 0, 1]]
    )  # position 0 predicts x_1 = 0 (p 0.5), position 1 predicts x_2 = 1 (p 0.8)
    loss, hits = clm_loss(logits, ids)
    assert loss.item() == pytest.approx(-math.log(0.5) - math.log(0.8), rel=1e-6)
    assert hits.tolist() == [[True, True]]


def test_masked_loss_counts_only_labelled_positions():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]]))
    labels = torch.tensor([[-100, 1, 1]])
    loss, mask, hits = masked_loss(logits, labels)
    assert loss.item() == pytest.approx(-math.log(0.1) - math.log(0.8), rel=1e-6)
    assert mask.tolist() == [[False, True, True]] and hits.tolist() == [[False, False, True]]


def reloads_identically(folder: Path, auto_name: str, inputs: dict[str, torch.Tensor]) -> None:
    import transformers

    auto = getattr(transformers, auto_name)
    first = auto.from_pretrained(folder).eval()
    second = auto.from_pretrained(folder).eval()
    with torch.no_grad():
        assert torch.equal(first(**inputs).logits, second(**inputs).logits)
    transformers.AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_clm_from_scratch_learns_and_saves_a_causal_lm(corpus, tmp_path, arch):
    result = pretrain(config(corpus, tmp_path / "run", arch=arch))
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 4 and all(math.isfinite(r["loss"]) for r in steps)
    assert all(r["tokens_per_s"] > 0 for r in steps)
    first, last = records[0], records[-1]
    assert first["step"] == 0 and {"eval/perplexity", "eval/unigram_perplexity"} <= first.keys()
    assert last["eval/loss"] < first["eval/loss"]  # it learned
    assert last["eval/perplexity_ratio"] == pytest.approx(
        last["eval/perplexity"] / last["eval/unigram_perplexity"], rel=1e-6
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    ids = tokenizer("The cat sat", return_tensors="pt").input_ids
    reloads_identically(result.model_dir, "AutoModelForCausalLM", {"input_ids": ids})
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4


def test_mlm_with_nsp_and_span_from_scratch(corpus, tmp_path):
    mlm = pretrain(config(corpus, tmp_path / "mlm", arch="bert", objective="mlm", nsp=True))
    record = read_metrics(tmp_path / "mlm" / "metrics.jsonl")[-1]
    assert {
        "eval/masked_accuracy",
        "eval/baseline_accuracy",
        "eval/nsp_accuracy",
        "eval/loss",
    } <= record.keys()
    assert "nsp_loss" in record and math.isfinite(record["loss"])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(mlm.model_dir)
    pair = tokenizer("The cat sat.", "It was warm.", return_tensors="pt")
    assert pair.token_type_ids.max() == 1
    reloads_identically(mlm.model_dir, "AutoModelForMaskedLM", dict(pair))

    span = pretrain(config(corpus, tmp_path / "span", arch="t5", objective="span"))
    record = read_metrics(tmp_path / "span" / "metrics.jsonl")[-1]
    assert {"eval/span_accuracy", "eval/baseline_accuracy", "eval/encoder_gain", "eval/loss"} <= record.keys()
    tokenizer = AutoTokenizer.from_pretrained(span.model_dir)
    ids = tokenizer("The cat <extra_id_0> the mat.", return_tensors="pt").input_ids
    reloads_identically(
        span.model_dir, "AutoModelForSeq2SeqLM", {"input_ids": ids, "decoder_input_ids": ids[:, :3]}
    )


def test_encoder_gain_is_zero_for_a_decoder_that_cannot_read_the_encoder(corpus, tmp_path):
    """eval/encoder_gain (span): the held-out loss with another block's encoder input minus with its own.
    A T5 whose cross-attention outputs are zeroed predicts the same either way: 0; the same model with its
    cross-attention gets a different loss from another input."""
    from rlxf.algos.pretrain import _family, build_model, span_objective
    from rlxf.algos.pretrain_corpus import prepare_corpus

    cfg = config(corpus, tmp_path / "span", arch="t5", objective="span")
    files = prepare_corpus(cfg, _family(cfg), None, None)
    objective = span_objective(cfg, files)
    torch.manual_seed(0)
    model = build_model(cfg, files.tokenizer).eval()
    examples = [objective.eval_examples[i] for i in range(4)]

    def gain() -> float:
        with torch.no_grad():
            return objective.summarize(objective.score(model, examples))["encoder_gain"]

    assert abs(gain()) > 1e-4
    with torch.no_grad():
        for block in model.decoder.block:
            block.layer[1].EncDecAttention.o.weight.zero_()
    assert gain() == pytest.approx(0.0, abs=1e-6)
    # one block alone has no other input to read: left out, not counted as 0 against its own
    assert objective.summarize(objective.score(model, examples[:1]))["encoder_gain"] == 0.0


def test_mlm_without_nsp(corpus, tmp_path):
    pretrain(config(corpus, tmp_path / "mlm", arch="bert", objective="mlm"))
    record = read_metrics(tmp_path / "mlm" / "metrics.jsonl")[-1]
    assert "eval/nsp_accuracy" not in record and record["eval/masked_accuracy"] >= 0
    # the [MASK]-only figures: a subset of the chosen positions (80 % of them), so never more hits in all
    assert 0 <= record["eval/mask_token_accuracy"] <= 1
    assert 0 <= record["eval/mask_token_baseline_accuracy"] <= 1


def test_copies_of_a_block_get_their_own_masks(tmp_path):
    """masks_per_block: example i is block i % n with index i, so each copy's span mask differs."""
    from rlxf.algos.pretrain_corpus import IndexedBlocks
    from rlxf.data.denoising import SpanCorruptionCollator

    class Blocks(list):  # stands for a TokenBlocks: blocks by position
        pass

    blocks = Blocks(torch.arange(160).view(4, 40))  # 4 blocks of 40 tokens
    copies = IndexedBlocks(blocks, copies=3)  # type: ignore[arg-type]
    assert len(copies) == 12
    assert [e["index"] for e in copies[3:6]] == [3, 4, 5]
    assert torch.equal(copies[5]["ids"], blocks[1]) and torch.equal(copies[9]["ids"], blocks[1])
    with pytest.raises(IndexError):
        copies[12]
    with pytest.raises(ValueError, match="copies"):
        IndexedBlocks(blocks, copies=0)  # type: ignore[arg-type]
    limited = IndexedBlocks(blocks, limit=2, copies=2)  # type: ignore[arg-type]
    assert [int(e["ids"][0]) for e in limited[0:4]] == [0, 40, 0, 40]

    collate = SpanCorruptionCollator(sentinel_ids=[200, 201, 202, 203], eos_id=199, pad_id=198, seed=0)
    labels = [collate([copies[i]])["labels"][0].tolist() for i in (1, 5, 9)]  # block 1, three copies
    assert len({tuple(row) for row in labels}) > 1  # not the same corruption every time
    assert collate([copies[1]])["labels"][0].tolist() == labels[0]  # and reproducible


def test_masks_per_block_multiplies_the_span_examples(corpus, tmp_path):
    pretrain(config(corpus, tmp_path / "one", arch="t5", objective="span", train={"max_steps": 1}))
    pretrain(
        config(
            corpus, tmp_path / "ten", arch="t5", objective="span", masks_per_block=10, train={"max_steps": 1}
        )
    )
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    ten = json.loads((tmp_path / "ten" / "summary.json").read_text())
    assert ten["metrics"]["epoch"] == pytest.approx(one["metrics"]["epoch"] / 10, rel=0.01)  # steps floor
    with pytest.raises(ConfigError, match="masks_per_block"):
        config(corpus, tmp_path / "x", arch="t5", objective="span", masks_per_block=0)


def test_resume_equals_an_uninterrupted_run_and_the_corpus_is_cached(corpus, tmp_path, caplog):
    # a constant learning rate: the 2-step run's schedule is then the first half of the 4-step run's
    constant = {"lr_schedule": "constant", "warmup_ratio": 0.0}
    whole = pretrain(config(corpus, tmp_path / "whole", train=constant))
    first = config(
        corpus, tmp_path / "cut", train={**constant, "max_steps": 2, "keep_final_checkpoint": True}
    )
    pretrain(first)
    caplog.set_level("INFO", logger="rlxf")
    resumed = pretrain(config(corpus, tmp_path / "cut", resume=True, train=constant))
    assert "reusing the tokenised corpus" in caplog.text
    from safetensors.torch import load_file

    a = load_file(whole.model_dir / "model.safetensors")
    b = load_file(resumed.model_dir / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    losses = lambda run: [r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]  # noqa: E731
    assert losses(tmp_path / "cut") == pytest.approx(losses(tmp_path / "whole"), rel=1e-5)


def test_continued_pretraining_with_lora_feeds_sft(corpus, tmp_path, tiny_model_dir):
    cfg = config(
        corpus, tmp_path / "cpt", arch=None, model={"name_or_path": str(tiny_model_dir), "lora": {"r": 4}}
    )
    result = pretrain(cfg)
    from rlxf.algos.sft import SFTConfig, sft

    data = tmp_path / "sft.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": s[:12], "completion": s[12:]}) + "\n" for s in SENTENCES * 2)
    )
    tuned = sft(
        load_config(
            SFTConfig,
            overrides={
                "model": {"name_or_path": str(result.model_dir)},
                "data": str(data),
                "out": str(tmp_path / "sft"),
                "eval_split": 0,
                "train": {"max_steps": 1, "global_batch_size": 4, "micro_batch_size": 4, "precision": "fp32"},
            },
        )
    )
    assert math.isfinite(tuned["loss"])


def test_a_document_without_text_stops_before_the_run_folder(corpus, tmp_path):
    with corpus.open("a") as f:
        f.write(json.dumps({"body": "no text field"}) + "\n")
    with pytest.raises(DataError) as error:
        pretrain(config(corpus, tmp_path / "run"))
    assert "corpus.jsonl" in str(error.value) and "161" in str(error.value) and "text" in str(error.value)
    assert not (tmp_path / "run").exists()


def test_settings_are_checked_when_the_config_is_built(corpus, tmp_path):
    with pytest.raises(ConfigError, match="bert"):
        config(corpus, tmp_path / "x", arch="gpt2", objective="mlm")
    with pytest.raises(ConfigError, match="nsp goes with objective=mlm"):
        config(corpus, tmp_path / "x", nsp=True)
    with pytest.raises(ConfigError, match="continued pre-training"):
        config(corpus, tmp_path / "x", arch=None, objective="span")


# ---------------------------------------------------------------------------------------------- preferences


@pytest.fixture
def code_corpus(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """Python lines from the standard library, 30% with a PEP8 violation injected; held out: clean lines."""
    from rlxf.data.stdlib_corpus import pep8_corpus, stdlib_code_lines

    monkeypatch.setenv("RLXF_HOME", str(tmp_path / "home"))
    train = tmp_path / "code.jsonl"
    train.write_text(
        "".join(json.dumps({"text": line}) + "\n" for line, _ in pep8_corpus(0.3, max_lines=600))
    )
    clean = tmp_path / "clean.jsonl"
    lines = [line for _, line in zip(range(700), stdlib_code_lines())][600:]
    clean.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    return train, clean


def phf_config(code_corpus, out: Path, preference: str, **overrides) -> PretrainConfig:
    train, clean = code_corpus
    return config(
        train,
        out,
        eval_data=str(clean),
        preference=preference,
        score="pep8",
        segment="document",
        misalignment_samples=8,
        sample_max_new_tokens=8,
        **overrides,
    )


@pytest.mark.parametrize("preference", ["none", "filter", "conditional", "unlikelihood", "rwr", "awr"])
def test_each_preference_objective_trains_and_reports_misalignment(code_corpus, tmp_path, preference):
    guidance = {"guidance_scale": 2.0} if preference == "conditional" else {}
    result = pretrain(phf_config(code_corpus, tmp_path / preference, preference, **guidance))
    records = read_metrics(tmp_path / preference / "metrics.jsonl")
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 4 and all(math.isfinite(r["loss"]) for r in steps)
    summary = json.loads((tmp_path / preference / "summary.json").read_text())
    final = summary["metrics"]
    assert -1 <= -final["eval/misalignment"] <= 0  # minus the mean pep8 reward of the samples
    assert math.isfinite(final["eval/loss"])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(result.model_dir)  # awr: the LM alone, no value head
    tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)
    samples = [
        json.loads(line) for line in (tmp_path / preference / "samples.jsonl").read_text().splitlines()
    ]
    # conditional: after <|good|> guided, after <|bad|> guided, after <|good|> unguided
    assert len(samples) == 8 * (3 if preference == "conditional" else 1)  # misalignment_samples each
    scale = guidance.get("guidance_scale", 1.0)
    good = [s["score"] for s in samples if s["prefix"] != "<|bad|>" and s["guidance_scale"] == scale]
    assert final["eval/misalignment"] == pytest.approx(-sum(good) / len(good))  # what was measured, kept
    if preference == "conditional":
        assert {"<|good|>", "<|bad|>"} <= set(tokenizer.all_special_tokens)
        assert "eval/misalignment_bad_token" in final
        plain = [s["score"] for s in samples if s["prefix"] == "<|good|>" and s["guidance_scale"] == 1.0]
        assert len(plain) == 8 and final["eval/misalignment_unguided"] == pytest.approx(-sum(plain) / 8)
    if preference in ("unlikelihood",):
        assert 0 < steps[-1]["bad_token_share"] < 1
    if preference in ("rwr", "awr"):
        assert steps[-1]["weight_mean"] > 0
    if preference == "awr":
        assert "value_loss" in steps[-1]


def test_guided_sampling_is_the_equation_of_rlxf_algos_phf():
    """Classifier-free guidance as generation applies it, by hand on the first step of a tiny random LM:
    log p_g = log p(.|good) + (g - 1) (log p(.|good) - log p(.|bad)), then the control tokens banned."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=12, n_embd=16, n_layer=1, n_head=2, n_positions=16)).eval()
    start, good, bad, g = 0, 10, 11, 2.5
    with torch.no_grad():
        cond = torch.log_softmax(lm(torch.tensor([[start, good]])).logits[0, -1], -1)  # [vocab]
        uncond = torch.log_softmax(lm(torch.tensor([[start, bad]])).logits[0, -1], -1)
        out = lm.generate(
            input_ids=torch.tensor([[start, good]]),
            attention_mask=torch.ones(1, 2, dtype=torch.long),
            guidance_scale=g,
            negative_prompt_ids=torch.tensor([[start, bad]]),
            negative_prompt_attention_mask=torch.ones(1, 2, dtype=torch.long),
            bad_words_ids=[[good], [bad]],
            do_sample=False,
            max_new_tokens=1,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    expected = cond + (g - 1) * (cond - uncond)
    expected[[good, bad]] = -math.inf
    torch.testing.assert_close(out.scores[0][0], expected)


def test_filter_drops_documents_below_the_threshold(code_corpus, tmp_path, caplog):
    caplog.set_level("INFO", logger="rlxf")
    pretrain(phf_config(code_corpus, tmp_path / "f", "filter", threshold=0.0))
    # a clean line scores 0 (no violation), an injected one below: the injected 30% go
    assert "filter: " in caplog.text
    kept = int(caplog.text.split("filter: ")[1].split(" of ")[0])
    assert 0.6 * 600 < kept < 0.8 * 600


def test_preference_settings_are_checked(corpus, tmp_path):
    with pytest.raises(ConfigError, match="needs the feedback"):
        config(corpus, tmp_path / "x", preference="rwr")
    with pytest.raises(ConfigError, match="objective=clm"):
        config(corpus, tmp_path / "x", arch="bert", objective="mlm", preference="filter", score="pep8")
    assert config(corpus, tmp_path / "x", preference="awr", score="pep8").beta == 1.0
    assert config(corpus, tmp_path / "x", preference="rwr", score="pep8").beta == 10.0
    with pytest.raises(ConfigError, match="needs preference=conditional"):
        config(corpus, tmp_path / "x", preference="filter", score="pep8", guidance_scale=2.0)
    with pytest.raises(ConfigError, match="guidance_scale must be >= 0"):
        config(corpus, tmp_path / "x", preference="conditional", score="pep8", guidance_scale=-1.0)


def test_eval_compares_two_pretrained_models_on_reward_and_held_out_loss(code_corpus, tmp_path):
    """`rlxf eval --held-out-data`: each model's loss on a held-out corpus (the same figure as the pre-training
    run's own eval/loss on the same blocks) and its mean reward, drawn on the paper's two axes in the report."""
    from rlxf.eval.evaluate import EvalConfig, evaluate

    train, clean = code_corpus
    runs = {}
    for preference in ("none", "filter"):  # block_size 128: the blocks rlxf eval scores
        cfg = phf_config(code_corpus, tmp_path / preference, preference, block_size=128, max_eval_blocks=3)
        runs[preference] = pretrain(cfg).model_dir
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["import ", "x = ", "def f("]))
    overrides = {
        "model": {"name_or_path": str(runs["filter"])},
        "baseline": str(runs["none"]),
        "prompts": str(prompts),
        "reward": "pep8",
        "held_out_data": str(clean),
        "held_out_tokens": 3 * 128,
        "sampling": {"n": 2, "max_new_tokens": 8},
        "precision": "fp32",
        "out": str(tmp_path / "eval"),
    }
    summary = evaluate(load_config(EvalConfig, overrides=overrides)).summary
    held_out = summary["held_out"]
    for name, preference in (("policy", "filter"), ("baseline", "none")):
        run_loss = json.loads((tmp_path / preference / "summary.json").read_text())["metrics"]["eval/loss"]
        assert held_out[name]["loss"] == pytest.approx(run_loss, rel=1e-5)
        assert held_out[name]["tokens"] == 3 * 127
    assert held_out["policy"]["loss"] != held_out["baseline"]["loss"]
    report = (tmp_path / "eval" / "report.html").read_text()
    assert "Reward against held-out loss on" in report and "held-out loss (nats / token)" in report
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    bad_overrides = {**overrides, "held_out_data": str(bad), "out": str(tmp_path / "e2")}
    with pytest.raises(DataError, match="bad.jsonl"):  # stops before any model loads or file is written
        evaluate(load_config(EvalConfig, overrides=bad_overrides))
    assert not (tmp_path / "e2").exists()
