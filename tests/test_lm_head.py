"""The chunked output head (rlxf/models/lm_head.py): hand-computed values, and equality with the plain
path (full logits, float32 log-softmax) in value and gradient, in float32 and under bf16 autocast."""

from __future__ import annotations

import math

import pytest
import torch

from rlxf.models.lm_head import fusable_head, hidden_states_before_head, token_logprobs
from rlxf.rollout.logprobs import completion_forward


def test_token_logprobs_by_hand() -> None:
    # H = 1, V = 2: z = W h = [2, 0] for h = 1; log p(0) = 2 - log(e^2 + 1), log p(1) = -log(e^2 + 1)
    weight = torch.tensor([[2.0], [0.0]])
    hidden = torch.tensor([[1.0], [1.0]])
    logprobs, entropy = token_logprobs(hidden, weight, torch.tensor([0, 1]), with_entropy=True)
    lse = math.log(math.exp(2) + 1)
    assert logprobs.tolist() == pytest.approx([2 - lse, -lse], abs=1e-6)
    p0 = math.exp(2) / (math.exp(2) + 1)
    assert entropy.tolist() == pytest.approx(
        [-(p0 * math.log(p0) + (1 - p0) * math.log(1 - p0))] * 2, abs=1e-6
    )
    # temperature 2: z = [1, 0]
    logprobs, _ = token_logprobs(hidden, weight, torch.tensor([0, 1]), temperature=2.0)
    assert logprobs.tolist() == pytest.approx([1 - math.log(math.e + 1), -math.log(math.e + 1)], abs=1e-6)


def test_token_logprobs_gradient_by_hand() -> None:
    # d log p(y) / d h = W^T (onehot(y) - p) / T; with W = [[2], [0]], h = 1, y = 0: (1 - p0) * 2
    weight = torch.tensor([[2.0], [0.0]], requires_grad=True)
    hidden = torch.tensor([[1.0]], requires_grad=True)
    logprobs, _ = token_logprobs(hidden, weight, torch.tensor([0]))
    logprobs.sum().backward()
    p0 = math.exp(2) / (math.exp(2) + 1)
    assert hidden.grad.item() == pytest.approx((1 - p0) * 2, abs=1e-6)
    # d / d W = (onehot - p) h^T: [1 - p0, -(1 - p0)]
    assert weight.grad.flatten().tolist() == pytest.approx([1 - p0, -(1 - p0)], abs=1e-6)


@pytest.mark.parametrize("keep_probs", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_equal_log_softmax(chunk: int, temperature: float, keep_probs: bool) -> None:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 8, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (2, 5), generator=g)
    upstream = torch.randn(2, 5, generator=g, dtype=torch.float64)

    logp_all = torch.log_softmax(hidden @ weight.T / temperature, -1)
    expected = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    expected_entropy = -(logp_all.exp() * logp_all).sum(-1)
    grad_h, grad_w = torch.autograd.grad((expected * upstream).sum(), (hidden, weight))

    logprobs, entropy = token_logprobs(
        hidden, weight, targets, temperature, with_entropy=True, chunk=chunk, keep_probs=keep_probs
    )
    assert logprobs.dtype == torch.float32 and logprobs.shape == (2, 5)
    torch.testing.assert_close(logprobs, expected.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, expected_entropy.float(), atol=1e-5, rtol=1e-5)
    assert not entropy.requires_grad
    fused_h, fused_w = torch.autograd.grad((logprobs * upstream.float()).sum(), (hidden, weight))
    assert fused_h.dtype == torch.float64 and fused_w.dtype == torch.float64
    torch.testing.assert_close(fused_h, grad_h, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_w, grad_w, atol=1e-5, rtol=1e-5)


def _model_logprobs(model, input_ids, attention_mask, prompt_width, fused: bool):
    """The plain path (the model's logits), or the chunked head by hand."""
    if not fused:
        logprobs, _, _ = completion_forward(model, input_ids, attention_mask, prompt_width, fused_head=False)
        return logprobs
    head = fusable_head(model)
    assert head is not None
    with hidden_states_before_head(head):
        hidden = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            logits_to_keep=input_ids.shape[1] - prompt_width + 1,
            use_cache=False,
        ).logits
    assert hidden.shape[-1] == model.config.hidden_size
    logprobs, _ = token_logprobs(hidden[:, :-1], head.weight, input_ids[:, prompt_width:], chunk=7)
    return logprobs


@pytest.mark.parametrize("bf16", [False, True])
def test_fused_head_equals_plain_on_a_model(tiny_model_dir, bf16: bool) -> None:
    """Log-probs and every parameter's gradient (the tied embedding included) match the plain path."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, model.config.vocab_size, (3, 9), generator=g)
    attention_mask = torch.ones_like(input_ids)
    results = []
    for fused in (False, True):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logprobs = _model_logprobs(model, input_ids, attention_mask, 4, fused)
        logprobs.sum().backward()
        results.append((logprobs.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (plain, plain_grads), (fused, fused_grads) = results
    tol = 3e-2 if bf16 else 1e-5  # bf16: both round the head's matmul to bf16, in different orders
    torch.testing.assert_close(fused, plain, atol=tol, rtol=tol)
    for name, grad in plain_grads.items():
        scale = grad.abs().max().clamp(min=1e-6)
        assert ((fused_grads[name] - grad).abs().max() / scale).item() < (5e-2 if bf16 else 1e-4), name
    assert model.get_output_embeddings().forward.__func__ is torch.nn.Linear.forward  # the patch is undone


def test_fusable_head_refuses_what_it_cannot_recompute(tiny_model_dir) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert fusable_head(model) is model.get_output_embeddings()
    model.config.final_logit_softcapping = 30.0
    assert fusable_head(model) is None
    model.config.final_logit_softcapping = None
    handle = model.lm_head.register_forward_hook(lambda module, args, output: output)
    assert fusable_head(model) is None  # a hook (ILQL's decoding) needs the module's own logits
    handle.remove()
    assert fusable_head(model) is model.lm_head
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.config.vocab_size))
    assert fusable_head(model) is None


def test_completion_forward_takes_the_fused_head_and_equals_the_plain_one(tiny_model_dir) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(2)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 8), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :2] = 0  # a left-padded prompt
    plain, plain_entropy, plain_out = completion_forward(
        model, input_ids, attention_mask, 3, 0.8, with_entropy=True, fused_head=False
    )
    fused, fused_entropy, fused_out = completion_forward(
        model, input_ids, attention_mask, 3, 0.8, with_entropy=True
    )
    assert plain_out.logits.shape[-1] == model.config.vocab_size
    assert fused_out.logits.shape[-1] == model.config.hidden_size  # the head ran outside the model
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_entropy, plain_entropy, atol=1e-5, rtol=1e-5)


def test_sequence_logps_fused_equals_plain(tiny_model_dir) -> None:
    """DPO / KTO's sequence log-probs: the head on the scored positions alone equals the model's own
    logits (a hook on the head sends sequence_logps down the plain path), in value and gradient."""
    from transformers import AutoModelForCausalLM

    from rlxf.algos.preference import sequence_logps

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, model.config.vocab_size, (3, 10), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 8:] = 0  # right padding
    completion_mask = torch.zeros_like(input_ids)
    completion_mask[0, 4:] = 1
    completion_mask[1, 6:] = 1  # a longer prompt
    completion_mask[2, 3:8] = 1
    results = []
    for plain in (False, True):
        model.zero_grad(set_to_none=True)
        handle = model.lm_head.register_forward_hook(lambda m, a, out: out) if plain else None
        logps = sequence_logps(model, input_ids, attention_mask, completion_mask)
        (logps * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
        if handle is not None:
            handle.remove()
        results.append((logps.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (fused, fused_grad), (plain, plain_grad) = results
    assert fused.shape == (3,)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_grad, plain_grad, atol=1e-5, rtol=1e-4)


def test_cpu_attention_is_eager_for_short_rows_only(tiny_model_dir) -> None:
    from transformers import AutoModelForCausalLM

    from rlxf.models.attention import EAGER_ATTENTION_MAX_TOKENS, cpu_attention_for

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        sdpa = model(input_ids=ids).logits
        with cpu_attention_for(model, ids.shape[1]):
            assert model.config._attn_implementation == "eager"
            eager = model(input_ids=ids).logits
    assert model.config._attn_implementation == "sdpa"  # restored
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-5)  # the same attention, another kernel
    with cpu_attention_for(model, EAGER_ATTENTION_MAX_TOKENS + 1):
        assert model.config._attn_implementation == "sdpa"  # long rows keep SDPA
    eager_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    with cpu_attention_for(eager_model, 4):
        assert eager_model.config._attn_implementation == "eager"
    assert eager_model.config._attn_implementation == "eager"  # a model loaded eager is left alone
