"""The generation engine: log-probs of sampled tokens, masks, finish reasons, seeding, sample layout."""

from __future__ import annotations

import pytest
import torch

from rlxf.models import ModelConfig, load_model
from rlxf.rollout import HFEngine, SamplingConfig

PROMPTS = ["The movie was", "Our trip to the coast", "Customer service"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> HFEngine:
    model, tokenizer = load_model(
        ModelConfig(name_or_path=str(tiny_model_dir), dtype="float32", device="cpu")
    )
    return HFEngine(model, tokenizer)


def reference_logprobs(engine: HFEngine, batch, temperature: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """Log-probs of the completion tokens from one full forward pass, with the sampling warpers by hand."""
    with torch.no_grad():
        logits = engine.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    prompt_width = batch.prompt_ids.shape[1]
    logits = logits[:, prompt_width - 1 : -1].float() / temperature  # position t predicts token t+1
    if top_k:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    logprobs = torch.log_softmax(logits, dim=-1).gather(2, batch.completion_ids[..., None]).squeeze(2)
    return logprobs * batch.completion_mask


def test_logprobs_match_a_full_forward_pass(engine):
    sampling = SamplingConfig(max_new_tokens=12, n=2, batch_size=4)
    batch = engine.generate(PROMPTS, sampling, seed=3)
    assert batch.logprobs.shape == batch.completion_ids.shape == (6, 12)
    assert torch.allclose(batch.logprobs, reference_logprobs(engine, batch), atol=1e-4)
    assert (batch.logprobs[batch.completion_mask.bool()] < 0).all()


def test_logprobs_are_under_the_sampling_distribution(engine):
    # With temperature and top-k, the recorded log-prob is that of the warped distribution, not the raw one.
    sampling = SamplingConfig(max_new_tokens=10, temperature=0.7, top_k=5, batch_size=8)
    batch = engine.generate(PROMPTS, sampling, seed=0)
    warped = reference_logprobs(engine, batch, temperature=0.7, top_k=5)
    raw = reference_logprobs(engine, batch)
    assert torch.allclose(batch.logprobs, warped, atol=1e-4)
    assert not torch.allclose(batch.logprobs, raw, atol=1e-2)


def test_same_seed_same_text_other_seed_other_text(engine):
    sampling = SamplingConfig(max_new_tokens=16, n=2)
    first = engine.generate(PROMPTS, sampling, seed=11)
    again = engine.generate(PROMPTS, sampling, seed=11)
    other = engine.generate(PROMPTS, sampling, seed=12)
    assert first.completions == again.completions
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert first.completions != other.completions


def test_seeding_does_not_disturb_the_callers_random_stream(engine):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    engine.generate(PROMPTS[:1], SamplingConfig(max_new_tokens=4), seed=99)
    assert torch.equal(torch.rand(3), expected)


def test_samples_are_grouped_by_prompt_and_padding_is_consistent(engine):
    sampling = SamplingConfig(max_new_tokens=8, n=3, batch_size=4)  # 9 rows in 3 uneven chunks
    batch = engine.generate(PROMPTS, sampling, seed=1)
    assert batch.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert batch.prompts == [p for p in PROMPTS for _ in range(3)]
    # Prompts are left padded: the last prompt column is always a real token.
    assert batch.prompt_mask[:, -1].all()
    for i in range(len(batch)):
        expected = engine.encode_prompt(batch.prompts[i])
        got = batch.prompt_ids[i][batch.prompt_mask[i].bool()].tolist()
        assert got == expected
        kept = int(batch.completion_mask[i].sum())
        assert batch.completion_mask[i, :kept].all() and not batch.completion_mask[i, kept:].any()
        assert (batch.completion_ids[i, kept:] == engine.pad_token_id).all()
        assert (batch.logprobs[i, kept:] == 0).all()


def test_a_row_samples_the_same_whatever_its_batch_or_shard(engine):
    # Each row draws from its own (seed, row) stream: the generation batch size, and generating a shard of
    # the rows on its own (as a data-parallel process does, with row_offset), change nothing.
    sampling = SamplingConfig(max_new_tokens=12, n=2, batch_size=6)
    whole = engine.generate(PROMPTS, sampling, seed=5)
    one_by_one = engine.generate(PROMPTS, SamplingConfig(max_new_tokens=12, n=2, batch_size=1), seed=5)
    assert one_by_one.completions == whole.completions
    shard = engine.generate(PROMPTS[1:], sampling, seed=5, row_offset=2)  # rows 2..5: prompts 1 and 2
    assert shard.completions == whole.completions[2:]
    kept = shard.completion_mask.bool()
    width = shard.completion_ids.shape[1]
    assert torch.equal(shard.completion_ids[kept], whole.completion_ids[2:, :width][kept])
    assert torch.allclose(shard.logprobs[kept], whole.logprobs[2:, :width][kept], atol=1e-5)
    # the same prompts at another offset are other rows, so they sample otherwise
    assert engine.generate(PROMPTS[1:], sampling, seed=5).completions != shard.completions


def test_greedy_is_deterministic_without_a_seed(engine):
    sampling = SamplingConfig(max_new_tokens=10, temperature=0.0)
    assert engine.generate(PROMPTS, sampling).completions == engine.generate(PROMPTS, sampling).completions


def test_eos_ends_a_completion_and_is_kept_in_the_mask(engine):
    greedy = SamplingConfig(max_new_tokens=10, temperature=0.0)
    free = engine.generate(PROMPTS[:1], greedy)
    tokens = free.completion_ids[0].tolist()
    position = 3
    stop_token = tokens[position]
    first = tokens.index(stop_token)  # greedy may produce it earlier
    saved = engine.eos_token_ids
    engine.eos_token_ids = [stop_token]  # declare that token the end-of-sequence token
    try:
        batch = engine.generate(PROMPTS[:1], greedy)
    finally:
        engine.eos_token_ids = saved
    assert batch.finish_reasons == ["eos"]
    assert int(batch.completion_mask[0].sum()) == first + 1
    assert batch.completion_ids[0, : first + 1].tolist() == tokens[: first + 1]
    assert free.finish_reasons == ["length"] and int(free.completion_mask[0].sum()) == 10


def test_min_new_tokens_masks_eos_until_then(engine):
    greedy = SamplingConfig(max_new_tokens=10, temperature=0.0)
    tokens = engine.generate(PROMPTS[:1], greedy).completion_ids[0].tolist()
    stop_token = tokens[2]
    first = tokens.index(stop_token)  # where greedy decoding would end with that token as eos
    saved = engine.eos_token_ids
    engine.eos_token_ids = [stop_token]  # declare that token the end-of-sequence token
    try:
        ended = engine.generate(PROMPTS[:1], greedy)
        held = engine.generate(
            PROMPTS[:1], SamplingConfig(max_new_tokens=10, temperature=0.0, min_new_tokens=6)
        )
        fixed = engine.generate(
            PROMPTS[:1], SamplingConfig(max_new_tokens=10, temperature=0.0, min_new_tokens=10)
        )
    finally:
        engine.eos_token_ids = saved
    assert ended.finish_reasons == ["eos"] and int(ended.completion_mask[0].sum()) == first + 1
    # Masked before token 6: the same tokens up to the first eos, then not that token there.
    held_ids = held.completion_ids[0].tolist()
    assert held_ids[:first] == tokens[:first] and held_ids[first] != stop_token
    assert stop_token not in held_ids[:6]
    length = int(held.completion_mask[0].sum())
    assert length >= 7 if held.finish_reasons == ["eos"] else length == 10
    # min = max: fixed length, never eos.
    assert fixed.finish_reasons == ["length"] and int(fixed.completion_mask[0].sum()) == 10
    assert stop_token not in fixed.completion_ids[0].tolist()
    # The recorded log-prob is the masked distribution's: log-softmax over the logits without eos.
    with torch.no_grad():
        logits = engine.model(input_ids=held.input_ids, attention_mask=held.attention_mask).logits
    width = held.prompt_ids.shape[1]
    step_logits = logits[0, width - 1 + first].float()  # [V]: predicts completion token `first`
    masked = step_logits.clone()
    masked[stop_token] = float("-inf")
    chosen = held_ids[first]
    assert held.logprobs[0, first].item() == pytest.approx(
        torch.log_softmax(masked, -1)[chosen].item(), abs=1e-4
    )
    assert held.logprobs[0, first].item() > torch.log_softmax(step_logits, -1)[chosen].item()


def test_min_new_tokens_is_checked():
    with pytest.raises(ValueError, match="min_new_tokens must be in"):
        SamplingConfig(max_new_tokens=8, min_new_tokens=9)
    with pytest.raises(ValueError, match="min_new_tokens must be in"):
        SamplingConfig(min_new_tokens=-1)


def test_stop_string_cuts_text_and_tokens(engine):
    sampling = SamplingConfig(max_new_tokens=16, temperature=1.0)
    free = engine.generate(PROMPTS[:1], sampling, seed=4)
    ids = free.completion_ids[0].tolist()
    tokenizer = engine.tokenizer
    # Take the text of one later token as the stop string; sampling is identical up to where it appears.
    pieces = [tokenizer.decode(ids[i : i + 1]).strip() for i in range(3, len(ids))]
    stop = next(p for p in pieces if p and "\ufffd" not in p)
    stopped = engine.generate(PROMPTS[:1], SamplingConfig(max_new_tokens=16, stop=[stop]), seed=4)
    assert stopped.finish_reasons == ["stop"]
    text = free.completions[0]
    assert stopped.completions[0] == text[: text.find(stop)]
    kept = int(stopped.completion_mask[0].sum())
    assert stop in tokenizer.decode(ids[:kept]) and stop not in tokenizer.decode(ids[: kept - 1])
    assert stopped.completion_ids[0, :kept].tolist() == ids[:kept]


def test_prompt_longer_than_context_is_refused(engine):
    long_prompt = "word " * 400  # the tiny model's context is 256 positions
    with pytest.raises(ValueError, match="exceeds the model's context of 256"):
        engine.generate([long_prompt], SamplingConfig(max_new_tokens=4))


def test_sampling_config_checks():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="n must be"):
        SamplingConfig(n=0)
    with pytest.raises(ValueError, match="stop strings"):
        SamplingConfig(stop=[""])


def test_training_mode_is_restored_after_generation(engine):
    engine.model.train()
    engine.generate(PROMPTS[:1], SamplingConfig(max_new_tokens=2), seed=0)
    assert engine.model.training
    engine.model.eval()


def test_inverse_cdf_sampling_follows_the_distribution():
    from rlxf.rollout.hf import inverse_cdf_sample

    probs = torch.tensor([0.5, 0.3, 0.0, 0.2])
    logprobs = torch.log(probs).expand(20000, 4)  # the 0.0 token (log 0 = -inf) must never be drawn
    torch.manual_seed(0)
    counts = torch.bincount(inverse_cdf_sample(logprobs), minlength=4).float() / 20000
    assert counts[2] == 0
    # Standard error of a frequency near 0.5 over 20000 draws is 0.0035: allow about 4 of them.
    assert torch.allclose(counts, probs, atol=0.015)
