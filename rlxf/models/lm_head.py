"""Log-probabilities of given tokens computed from the last hidden states and the output weight, a chunk
of tokens at a time: the full-vocabulary logits of a batch are never held, forward or backward.

For a token's final hidden state ``h`` (``[H]``), the output weight ``W`` (``[V, H]``), the sampling
temperature ``T`` and the target token ``y``::

    z = W h / T                                   logits at temperature T          [V]
    log p(y) = z_y - logsumexp(z)                 the log-prob a trainer needs
    H(p) = logsumexp(z) - sum_v p_v z_v           the entropy (a statistic: no gradient)
    d log p(y) / d z = onehot(y) - p              p = softmax(z) = exp(z - logsumexp(z))
    d / d h = W^T (onehot(y) - p) / T,   d / d W = (onehot(y) - p) h^T / T

The plain path (``model(...).logits`` then a float32 log-softmax) materialises ``[tokens, V]`` logits in
bf16 and float32, keeps them for the backward, and allocates another ``[tokens, V]`` for each gradient.
On a 49k-token vocabulary and a 135M model that elementwise traffic costs more than the output matmul
itself. Here each chunk's logits live only while the chunk is processed (a few MB, in cache); the
forward keeps ``h``, ``W``, ``y`` and one ``logsumexp`` per token; the backward recomputes each chunk's
logits, one more ``[chunk, H] x [H, V]`` product, which is cheap next to the traffic it saves.

The matmuls run in ``compute_dtype`` (bf16 under bf16 autocast, as the output head would) and every
softmax quantity in float32. Used through :func:`token_logprobs`; the model's trunk runs with the output
head bypassed (:func:`hidden_states_before_head`). Left out: a logit soft-cap (Gemma 2) or a biased
head, which callers detect and send down the plain path instead (:func:`fusable_head`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from accelerate.utils import extract_model_from_parallel

# Tokens per chunk: 1,024 x 49,152 float32 logits = 200 MB at most. On the 2-core CPU a micro-batch of
# 16 x 33 completion positions (one chunk) was fastest; 256 was slower (benchmarks/logprob_kernel.py).
DEFAULT_CHUNK = 1024


class _TokenLogprobs(torch.autograd.Function):
    """``log softmax(W h / T)[y]`` for ``N`` tokens, chunked; the entropy as a side output."""

    @staticmethod
    def forward(
        ctx, hidden, weight, targets, temperature, compute_dtype, chunk, with_entropy, keep_probs, argmax
    ):
        # hidden [N, H], weight [V, H], targets [N] (long)
        w = weight.to(compute_dtype)  # cast once per call (autocast would cast per use)
        h = hidden.to(compute_dtype)
        n = h.shape[0]
        logprobs = torch.empty(n, dtype=torch.float32, device=h.device)  # [N]
        lse = torch.empty(n, dtype=torch.float32, device=h.device)  # [N] logsumexp of z, kept for backward
        entropy = torch.empty(n, dtype=torch.float32, device=h.device) if with_entropy else None
        # keep_probs: p = softmax(z) kept in the compute dtype for the backward (one [N, V] bf16 tensor,
        # half the float32 logits' size) instead of recomputing the logits there
        probs = torch.empty(n, w.shape[0], dtype=compute_dtype, device=h.device) if keep_probs else None
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            z = (h[rows] @ w.T).float().div_(temperature)  # [c, V] float32
            lse[rows] = torch.logsumexp(z, dim=-1)
            logprobs[rows] = z.gather(-1, targets[rows].unsqueeze(-1)).squeeze(-1) - lse[rows]
            if argmax is not None:
                argmax[rows] = z.argmax(-1)  # the most likely token (token accuracy)
            if with_entropy or keep_probs:
                p = z.sub(lse[rows].unsqueeze(-1)).exp_()  # [c, V] softmax(z)
                if keep_probs:
                    probs[rows] = p
                if with_entropy:
                    entropy[rows] = lse[rows] - p.mul_(z).sum(-1)  # H = lse - sum_v p_v z_v
        ctx.save_for_backward(h, w, targets, lse, probs)
        ctx.temperature = temperature
        ctx.chunk = chunk
        ctx.hidden_dtype = hidden.dtype
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(*([entropy] if with_entropy else []))
        return (logprobs, entropy) if with_entropy else (logprobs, None)

    @staticmethod
    def backward(ctx, grad_logprobs, _grad_entropy):
        h, w, targets, lse, probs = ctx.saved_tensors
        temperature, chunk = ctx.temperature, ctx.chunk
        grad_hidden = (
            torch.empty(h.shape, dtype=ctx.hidden_dtype, device=h.device) if ctx.needs_input_grad[0] else None
        )
        grad_weight = (
            torch.zeros(w.shape, dtype=torch.float32, device=w.device) if ctx.needs_input_grad[1] else None
        )
        grad_logprobs = grad_logprobs.float()
        for start in range(0, h.shape[0], chunk):
            rows = slice(start, start + chunk)
            g = grad_logprobs[rows]  # [c]
            if probs is not None:
                p = probs[rows].float()  # [c, V]
            else:
                z = (h[rows] @ w.T).float().div_(temperature)  # [c, V]: recomputed
                p = z.sub_(lse[rows].unsqueeze(-1)).exp_()
            # d loss / d z = g * (onehot(y) - p) / T: -p g first, then + g at the target, then / T
            dz = p.mul_(-g.unsqueeze(-1))
            dz.scatter_add_(-1, targets[rows].unsqueeze(-1), g.unsqueeze(-1))
            dz = dz.div_(temperature).to(w.dtype)  # [c, V] in the compute dtype, as autograd's head would
            if grad_hidden is not None:
                grad_hidden[rows] = dz @ w
            if grad_weight is not None:
                grad_weight.add_(dz.T @ h[rows])
        if grad_weight is not None:
            grad_weight = grad_weight.to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None, None, None


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    *,
    with_entropy: bool = False,
    chunk: int = DEFAULT_CHUNK,
    keep_probs: bool = False,
    argmax_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(log p(targets) [...], entropy [...] or None)`` of ``softmax(hidden @ weight.T / temperature)``.

    ``hidden`` ``[..., H]`` are final hidden states (after the last norm), ``weight`` ``[V, H]`` the output
    head's, ``targets`` ``[...]`` token ids. Float32 results; gradients flow to ``hidden`` and ``weight``.
    Under autocast the matmuls run in the autocast dtype, as the output head's would. ``keep_probs``
    keeps the softmax for the backward (``[N, V]`` in the compute dtype) instead of recomputing it there.
    ``argmax_out`` (a long tensor shaped like ``targets``), when given, receives each position's most
    likely token.
    """
    shape = targets.shape
    device_type = hidden.device.type
    compute_dtype = (
        torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    )
    logprobs, entropy = _TokenLogprobs.apply(
        hidden.reshape(-1, hidden.shape[-1]),
        weight,
        targets.reshape(-1),
        float(temperature),
        compute_dtype,
        int(chunk),
        with_entropy,
        keep_probs and torch.is_grad_enabled(),
        None if argmax_out is None else argmax_out.view(-1),
    )
    return logprobs.view(shape), None if entropy is None else entropy.view(shape)


def fusable_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The output head of a transformers causal LM (under DDP, DeepSpeed or peft wrappers) when
    :func:`token_logprobs` computes exactly what it would: a plain bias-free ``Linear`` whose whole weight
    is here (not a DTensor shard), no logit soft-cap, and no hooks on it (ILQL's decoding steers the
    logits with a forward hook: those logits must come from the module). Otherwise ``None``: the caller
    takes the model's own logits."""
    model = extract_model_from_parallel(model)  # DDP's or DeepSpeed's wrapper off
    head = model.get_output_embeddings()  # peft's wrappers forward it to the transformers model
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return None  # no head, a LoRA-adapted or quantised head, or a bias
    if type(head.weight.data) is not torch.Tensor:
        return None  # a DTensor (FSDP2) or another wrapper: the whole weight is not here
    if head._forward_hooks or head._forward_pre_hooks:
        return None  # a hook expects the module's own logits
    if getattr(model.config, "final_logit_softcapping", None):
        return None
    return head


@contextlib.contextmanager
def hidden_states_before_head(head: torch.nn.Linear) -> Iterator[None]:
    """Within the block, the model's ``logits`` are its final hidden states ``[B, L, H]``: the output
    ``head`` (from :func:`fusable_head`) is an identity, so the caller applies it (:func:`token_logprobs`)."""
    head.forward = _identity  # an instance attribute shadows Linear.forward
    try:
        yield
    finally:
        del head.forward


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


__all__ = ["DEFAULT_CHUNK", "fusable_head", "hidden_states_before_head", "token_logprobs"]
