"""The math of pretraining with human feedback (rlxf.algos.phf): segments, thresholds, filtering, control
tokens, unlikelihood, RWR and AWR against numbers worked out by hand in the comments."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from rlxf.algos import phf
from rlxf.algos.phf import (
    PAPER_TASKS,
    PHF_DEFAULTS,
    UNLIKELIHOOD_LOGPROB_MARGIN,
    PHFDefaults,
    awr_weights,
    broadcast_segment_scores,
    conditional_text,
    control_drop_mask,
    control_token_for,
    filter_keep,
    resolve_threshold,
    rwr_weights,
    split_segments,
    token_segment_ids,
    unlikelihood_token_loss,
    value_loss,
    weighted_nll,
)


def t(*rows: object) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def close(actual: torch.Tensor, expected: torch.Tensor | list | float, atol: float = 1e-9) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def pieces(text: str, spans: list[tuple[int, int]]) -> list[str]:
    return [text[start:end] for start, end in spans]


# ---------------------------------------------------------------------------------------------------------
# segments


def test_split_segments_by_hand():
    text = "Hi there. How are you?  Fine!\nOK"
    # "Hi there." is characters 0-8; " How are you?" 9-21; "  Fine!" 22-28; "\nOK" 29-31. The whitespace
    # after a sentence end opens the next sentence.
    assert split_segments(text, "sentence") == [(0, 9), (9, 22), (22, 29), (29, 32)]
    assert pieces(text, split_segments(text, "sentence")) == ["Hi there.", " How are you?", "  Fine!", "\nOK"]
    # Lines end after their "\n": "Hi there. How are you?  Fine!\n" is 30 characters.
    assert split_segments(text, "line") == [(0, 30), (30, 32)]
    assert split_segments(text, "document") == [(0, 32)]


def test_split_segments_edge_cases():
    # A period inside a number or before a closing quote with no space is no sentence end; the quote
    # goes with its sentence; trailing whitespace makes no segment of its own.
    text = 'He said "Stop." Then 3.14 is pi. '
    assert pieces(text, split_segments(text, "sentence")) == ['He said "Stop."', " Then 3.14 is pi. "]
    # "?!" and "..." are one end; a text without an end is one sentence.
    assert pieces("Really?! Yes... ok", split_segments("Really?! Yes... ok", "sentence")) == [
        "Really?!",
        " Yes...",
        " ok",
    ]
    assert split_segments("no end here", "sentence") == [(0, 11)]
    # Lines: "\r\n" stays whole, an empty line is a segment, a last line without "\n" too.
    text = "a\r\n\nb"
    assert pieces(text, split_segments(text, "line")) == ["a\r\n", "\n", "b"]
    assert split_segments("a\n", "line") == [(0, 2)]
    for segment in ("sentence", "line", "document"):
        assert split_segments("", segment) == []
    with pytest.raises(ValueError, match="unknown segment 'paragraph'"):
        split_segments("x", "paragraph")  # type: ignore[arg-type]


@pytest.mark.parametrize("segment", ["sentence", "line", "document"])
@pytest.mark.parametrize(
    "text",
    [
        "One. Two! Three? Four",
        "def f(x):\n    return x  \n\n\nclass A:  pass\n",
        "  leading space. And\ttabs.\n\nNew paragraph!  ",
        "...",
        "\n",
        "Ünïcödé — sentences. Ça va? Oui.",
    ],
)
def test_spans_reassemble_the_text(text, segment):
    spans = split_segments(text, segment)
    assert "".join(pieces(text, spans)) == text
    assert all(end > start for start, end in spans)  # no empty segment
    assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))  # no gap, no overlap


def test_token_segment_ids_of_hand_made_offsets():
    spans = [(0, 4), (4, 9)]  # "One." and " Two!" of "One. Two!"
    offsets = [
        (0, 0),  # BOS: empty, no token before it -> 0
        (0, 3),  # "One"
        (3, 4),  # "."
        (4, 8),  # " Two": its first character, the space, is in span 1
        (8, 9),  # "!"
        (9, 9),  # EOS: empty -> the previous token's span, 1
    ]
    assert token_segment_ids(offsets, spans) == [0, 0, 0, 1, 1, 1]
    # A token across the boundary (". T", 3-6) belongs to the span of its first character.
    assert token_segment_ids([(0, 3), (3, 6), (6, 9)], spans) == [0, 0, 1]
    # Three spans, a special token in the middle.
    assert token_segment_ids([(0, 2), (2, 2), (2, 5), (5, 6)], [(0, 2), (2, 5), (5, 6)]) == [0, 0, 1, 2]
    # An empty text: only special tokens, all in segment 0; lists or tensors of offsets alike.
    assert token_segment_ids([(0, 0), (0, 0)], []) == [0, 0]
    assert token_segment_ids(torch.tensor([[0, 3], [4, 8]]), spans) == [0, 1]


def test_token_segment_ids_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="token 1 has offsets \\(9, 12\\) outside the spans"):
        token_segment_ids([(0, 3), (9, 12)], [(0, 4), (4, 9)])
    with pytest.raises(ValueError, match="span 1 is \\(5, 9\\)"):
        token_segment_ids([(0, 3)], [(0, 4), (5, 9)])  # a gap


def test_segment_ids_from_a_real_tokenizer(tiny_tokenizer):
    # The byte-level BPE of the tests puts a word's leading space in its token: " Two" starts in the second
    # sentence, so every token of a sentence gets that sentence's reward.
    text = "One apple. Two pears!\nok"
    spans = split_segments(text, "sentence")
    assert pieces(text, spans) == ["One apple.", " Two pears!", "\nok"]
    encoded = tiny_tokenizer(text, return_offsets_mapping=True)
    ids = token_segment_ids(encoded["offset_mapping"], spans)
    for (start, _end), segment in zip(encoded["offset_mapping"], ids):
        span_start, span_end = spans[segment]
        assert span_start <= start < span_end
    assert ids == sorted(ids) and set(ids) == {0, 1, 2}
    rewards = broadcast_segment_scores(ids, [0.5, -1.0, 0.0])
    assert rewards.tolist() == [[0.5, -1.0, 0.0][i] for i in ids]


def test_broadcast_segment_scores():
    scores = torch.tensor([0.5, -1.0, 2.0])
    close(broadcast_segment_scores([0, 0, 2, 1], scores), [0.5, 0.5, 2.0, -1.0])
    batch = broadcast_segment_scores(torch.tensor([[0, 1], [2, 2]]), [1, 2, 3])  # int scores -> float
    assert batch.dtype == torch.get_default_dtype()
    close(batch, [[1.0, 2.0], [3.0, 3.0]])


# ---------------------------------------------------------------------------------------------------------
# thresholds, filtering


def test_quantile_threshold_on_five_numbers():
    scores = torch.tensor([3.0, 1.0, 4.0, 1.0, 5.0])  # sorted: 1, 1, 3, 4, 5 at positions 0..4
    # Linear interpolation at position q * (n - 1) = 4q:
    assert resolve_threshold(scores, None, 0.5) == pytest.approx(3.0)  # position 2
    assert resolve_threshold(scores, None, 0.9) == pytest.approx(4.6)  # 3.6: 4 + 0.6 * (5 - 4)
    assert resolve_threshold(scores, None, 0.3) == pytest.approx(1.4)  # 1.2: 1 + 0.2 * (3 - 1)
    assert resolve_threshold(scores, None, 0.0) == pytest.approx(1.0)
    assert resolve_threshold(scores, None, 1.0) == pytest.approx(5.0)
    assert resolve_threshold(scores, -0.25, None) == -0.25  # given: returned as is
    # with q = 0.9 the best fifth (about 1 - q) passes
    assert filter_keep(scores, resolve_threshold(scores, None, 0.9)).tolist() == [False] * 4 + [True]


def test_quantile_threshold_beyond_torch_limit_uses_numpy(monkeypatch):
    monkeypatch.setattr(phf, "_TORCH_QUANTILE_LIMIT", 2)  # 5 scores are "too many" for torch now
    assert resolve_threshold(torch.tensor([3.0, 1.0, 4.0, 1.0, 5.0]), None, 0.9) == pytest.approx(4.6)


def test_resolve_threshold_rejects_bad_arguments():
    scores = torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="exactly one of threshold and quantile"):
        resolve_threshold(scores, 0.1, 0.5)
    with pytest.raises(ValueError, match="exactly one of threshold and quantile"):
        resolve_threshold(scores, None, None)
    with pytest.raises(ValueError, match="quantile must be in \\[0, 1\\]"):
        resolve_threshold(scores, None, 1.5)
    with pytest.raises(ValueError, match="no scores"):
        resolve_threshold(torch.tensor([]), None, 0.5)
    with pytest.raises(ValueError, match="1 of 3 scores are NaN or infinite"):
        resolve_threshold(torch.tensor([1.0, float("nan"), 2.0]), None, 0.5)
    with pytest.raises(ValueError, match="finite"):
        resolve_threshold(scores, float("inf"), None)


def test_filter_keeps_scores_at_or_above_threshold():
    scores = torch.tensor([-0.5, 0.0, 0.2, -0.1, float("nan")])
    # -0.5 < -0.1: dropped; 0.0, 0.2 above; -0.1 equal: kept; NaN: dropped
    assert filter_keep(scores, -0.1).tolist() == [False, True, True, True, False]


# ---------------------------------------------------------------------------------------------------------
# conditional training


def test_control_token_for():
    assert control_token_for(0.3, 0.0) == "good"
    assert control_token_for(0.0, 0.0) == "good"  # at the threshold: good
    assert control_token_for(-0.0, 0.0) == "good"  # a reward of -0.0 (no violation, negated) too
    assert control_token_for(-1e-9, 0.0) == "bad"
    assert control_token_for(float("nan"), 0.0) == "bad"


def test_conditional_text_on_two_sentences():
    text = "Kind words. Rude words."
    spans = split_segments(text, "sentence")
    assert pieces(text, spans) == ["Kind words.", " Rude words."]
    scores = [0.8, -0.3]  # threshold 0: the first is good, the second bad
    kwargs = dict(threshold=0.0, good_token="<|good|>", bad_token="<|bad|>")
    assert (
        conditional_text(text, spans, scores, drop_mask=[False, False], **kwargs)
        == "<|good|>Kind words.<|bad|> Rude words."
    )
    # The second segment dropped: no token before it.
    assert (
        conditional_text(text, spans, torch.tensor(scores), drop_mask=[False, True], **kwargs)
        == "<|good|>Kind words. Rude words."
    )
    assert (
        conditional_text(text, spans, scores, drop_mask=[True, False], **kwargs)
        == "Kind words.<|bad|> Rude words."
    )
    with pytest.raises(ValueError, match="2 spans, 1 scores, 2 drop flags"):
        conditional_text(text, spans, [0.8], drop_mask=[False, False], **kwargs)
    with pytest.raises(ValueError, match="cover 11 characters of a text of 23"):
        conditional_text(text, spans[:1], [0.8], drop_mask=[False], **kwargs)


def test_control_tokens_are_single_tokens_of_the_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # its own copy: the session's stays unchanged
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|good|>", "<|bad|>"]})
    text = conditional_text(
        "Kind words. Rude words.",
        [(0, 11), (11, 23)],
        [1.0, -1.0],
        0.0,
        "<|good|>",
        "<|bad|>",
        [False, False],
    )
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    assert tokens.count("<|good|>") == 1 and tokens.count("<|bad|>") == 1
    assert tokens[0] == "<|good|>"


def test_control_drop_mask():
    assert control_drop_mask(5, 0.0, torch.Generator().manual_seed(0)) == [False] * 5
    assert control_drop_mask(5, 1.0, torch.Generator().manual_seed(0)) == [True] * 5  # rand < 1 always
    assert control_drop_mask(0, 0.5, torch.Generator().manual_seed(0)) == []
    first = control_drop_mask(2000, 0.1, torch.Generator().manual_seed(7))
    assert first == control_drop_mask(2000, 0.1, torch.Generator().manual_seed(7))  # reproducible
    assert first != control_drop_mask(2000, 0.1, torch.Generator().manual_seed(8))
    # 2000 Bernoulli(0.1) draws: mean 200, standard deviation sqrt(2000 * 0.1 * 0.9) ~ 13.4
    assert 140 < sum(first) < 260
    with pytest.raises(ValueError, match="share must be in \\[0, 1\\]"):
        control_drop_mask(3, 1.5, torch.Generator())


# ---------------------------------------------------------------------------------------------------------
# unlikelihood


def test_unlikelihood_loss_by_hand():
    alpha = 0.5
    probs = t([0.5, 0.25, 0.9])
    logprobs = probs.log().requires_grad_()
    bad = torch.tensor([[False, False, True]])
    loss = unlikelihood_token_loss(logprobs, bad, alpha)
    # good: -log 0.5 = 0.693147, -log 0.25 = 1.386294; bad: -0.5 * log(1 - 0.9) = -0.5 * log 0.1 = 1.151293
    close(loss, [[-math.log(0.5), -math.log(0.25), -alpha * math.log(0.1)]], atol=1e-12)
    close(loss, [[0.693147, 1.386294, 1.151293]], atol=1e-6)
    loss.sum().backward()
    # d(-log p)/d log p = -1 on good tokens: descent raises them. On the bad token
    # d(-alpha log(1 - e^x))/dx = alpha * p / (1 - p) = 0.5 * 0.9 / 0.1 = 4.5 > 0: descent lowers it.
    close(logprobs.grad, [[-1.0, -1.0, 4.5]], atol=1e-9)


def test_unlikelihood_gradient_step_pushes_the_bad_token_down():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]], requires_grad=True)  # [1, 2, V=3]
    targets = torch.tensor([[0, 1]])
    bad = torch.tensor([[True, False]])  # token 0 (p ~ 0.84) is bad, token 1 good

    def target_probs(current: torch.Tensor) -> torch.Tensor:
        return current.softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [1, 2]

    before = target_probs(logits).detach()
    logprobs = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [1, 2]
    unlikelihood_token_loss(logprobs, bad, alpha=1.0).sum().backward()
    with torch.no_grad():
        after = target_probs(logits - 0.1 * logits.grad)
    assert after[0, 0] < before[0, 0]  # the bad token's probability goes down
    assert after[0, 1] > before[0, 1]  # the good token's goes up
    # In logit space d(-log(1 - p_y))/dz_j = p_y (delta_jy - p_j) / (1 - p_y): p_y for the target and
    # -p_y p_j / (1 - p_y) for the others (summing to -p_y, as p_j sum to 1 - p_y): bounded by 1.
    probs = logits.detach()[0, 0].softmax(-1)
    p = probs[0].item()
    close(logits.grad[0, 0], [p, -p * probs[1].item() / (1 - p), -p * probs[2].item() / (1 - p)], atol=1e-6)


def test_unlikelihood_is_finite_for_certain_and_impossible_bad_tokens():
    margin = UNLIKELIHOOD_LOGPROB_MARGIN
    logprobs = torch.tensor([0.0, -1e-9, float("-inf")], requires_grad=True)  # p = 1, ~1, 0: all bad
    loss = unlikelihood_token_loss(logprobs, torch.tensor([True, True, True]), alpha=2.0)
    # p = 1 and p = 1 - 1e-9 are held at log p = -1e-6: -2 * log(1 - e^-1e-6) = -2 * log(~1e-6) = 27.63
    cap = -2.0 * math.log(-math.expm1(-margin))
    close(loss, [cap, cap, 0.0], atol=1e-4)
    assert cap == pytest.approx(27.631, abs=1e-3)
    loss.sum().backward()
    assert torch.isfinite(logprobs.grad).all()
    # Held in value only: the gradient still pushes down, alpha * p / (1 - p) at the hold ~ 2e6.
    assert logprobs.grad[0] > 1e6 and logprobs.grad[1] > 1e6
    assert logprobs.grad[2] == 0.0  # p = 0: nothing to push, and no NaN


def test_unlikelihood_is_accurate_near_one_in_float32():
    # 1 - p = 1e-5: log(1 - p) must come from expm1; 1 - exp(x) in float32 loses ~3 of its digits here.
    logprobs = torch.tensor([-1e-5, -0.3, -20.0], dtype=torch.float32)
    loss = unlikelihood_token_loss(logprobs, torch.tensor([True, True, True]), alpha=1.0)
    expected = [-math.log(-math.expm1(x)) for x in (-1e-5, -0.3, -20.0)]  # 11.51293, 1.35297, 2.06e-9
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=1e-12)


def test_unlikelihood_upcasts_half_precision():
    logprobs = torch.tensor([-0.1, -2.0], dtype=torch.bfloat16)
    loss = unlikelihood_token_loss(logprobs, torch.tensor([True, False]), alpha=1.0)
    assert loss.dtype == torch.float32
    x = logprobs.float()  # the bf16 values, exactly
    close(loss, [-math.log(-math.expm1(x[0].item())), -x[1].item()], atol=1e-6)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        unlikelihood_token_loss(logprobs, torch.tensor([True, False]), alpha=-1.0)


# ---------------------------------------------------------------------------------------------------------
# RWR and AWR


def test_rwr_weights_with_clamping():
    rewards = t([-1.0, 0.0, 1.0, 1000.0])
    weights = rwr_weights(rewards, beta=0.5, max_weight=5.0)
    # exp(-2) = 0.135335, exp(0) = 1, exp(2) = 7.389 -> capped at 5, exp(2000) = inf -> 5 (no inf)
    close(weights, [[math.exp(-2.0), 1.0, 5.0, 5.0]], atol=1e-12)
    close(weights, [[0.135335, 1.0, 5.0, 5.0]], atol=1e-6)
    assert not weights.requires_grad
    with pytest.raises(ValueError, match="beta must be > 0"):
        rwr_weights(rewards, beta=0.0, max_weight=5.0)
    with pytest.raises(ValueError, match="max_weight must be > 0"):
        rwr_weights(rewards, beta=1.0, max_weight=0.0)


def test_awr_weights_with_clamping_and_no_gradient_to_values():
    rewards = t([1.0, 1.0, 0.0])
    values = t([0.5, -1.0, 0.0]).requires_grad_()
    weights = awr_weights(rewards, values, beta=1.0, max_weight=5.0)
    # A = 0.5, 2, 0: exp(0.5) = 1.648721, exp(2) = 7.389 -> 5, exp(0) = 1
    close(weights, [[math.exp(0.5), 5.0, 1.0]], atol=1e-12)
    assert not weights.requires_grad  # V is detached: the weights are constants of the loss
    # So in the whole AWR loss the value head's gradient is that of the value loss alone:
    nll = t([2.0, 1.0, 3.0]).requires_grad_()
    mask = torch.tensor([[1, 1, 1]])
    total = weighted_nll(nll, weights, mask) + 1.0 * value_loss(values, rewards, mask)
    total.backward()
    close(values.grad, [[2 * (0.5 - 1.0), 2 * (-1.0 - 1.0), 0.0]])  # d(V - R)^2/dV = 2 (V - R)
    close(nll.grad, weights)  # d(sum w * nll)/d nll = w


def test_rwr_is_awr_with_zero_values():
    rewards = t([-0.3, 0.2, 4.0])
    close(awr_weights(rewards, torch.zeros_like(rewards), 0.1, 100.0), rwr_weights(rewards, 0.1, 100.0))


def test_value_loss_sums_squared_errors_over_real_tokens():
    values = t([0.5, -1.0, float("nan")], [0.0, 2.0, 3.0])
    rewards = t([1.0, 1.0, 0.0], [0.0, -1.0, 5.0])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    # (0.5 - 1)^2 + (-1 - 1)^2 + (0 - 0)^2 + (3 - 5)^2 = 0.25 + 4 + 0 + 4 = 8.25; the NaN is padding
    close(value_loss(values, rewards, mask), 8.25)
    close(value_loss(values, rewards, mask.float()), 8.25)


def test_weighted_nll_with_a_mask():
    nll = t([1.0, 2.0, 3.0], [4.0, 5.0, float("nan")])
    weights = t([0.5, 1.0, 2.0], [1.0, 10.0, 7.0])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # 0.5 * 1 + 1 * 2 + 2 * 3 + 1 * 4 = 12.5; the masked 5 (weight 10) and NaN add nothing
    close(weighted_nll(nll, weights, mask), 12.5)
    close(weighted_nll(nll, weights, mask.bool()), 12.5)
    # Weights of 1 give the plain masked NLL sum: 1 + 2 + 3 + 4 = 10
    close(weighted_nll(nll, torch.ones_like(nll), mask), 10.0)


# ---------------------------------------------------------------------------------------------------------
# defaults


def test_defaults_are_frozen_and_consistent():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PHF_DEFAULTS.rwr_beta = 1.0  # type: ignore[misc]
    assert PHFDefaults.awr_value_coef_from_alpha(0.5) == pytest.approx(1.0)
    assert PHFDefaults.awr_value_coef_from_alpha(0.05) == pytest.approx(19.0)
    for name, task in PAPER_TASKS.items():
        # rewards are negated misalignment scores: no threshold of the paper lies above 0
        for threshold in (task.filter_threshold, task.conditional_threshold, task.unlikelihood_threshold):
            assert threshold is not None and threshold <= 0.0, name
    assert PAPER_TASKS["pep8"].awr_value_coef == pytest.approx(PHFDefaults.awr_value_coef_from_alpha(0.05))
    assert PAPER_TASKS["toxicity"].conditional_threshold == -5.6e-4
    with pytest.raises(TypeError):
        PAPER_TASKS["new"] = PHFDefaults()  # type: ignore[index]
