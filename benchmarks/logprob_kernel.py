"""Where a training micro-batch's time goes, and what the chunked output head (``rlxf/models/lm_head.py``)
buys: the log-probs of completion tokens with their backward, plain vs fused.

One micro-batch as ``rlxf rl`` trains it in ``benchmarks/rl_step.py`` (16 rows: a prompt of ``--prompt``
tokens, a completion of ``--completion`` tokens; random token ids from the model's vocabulary), the
default model (``smollm2-135m-instruct``), weights in float32 under ``--precision`` autocast. Timed, each
the median of ``--repeats`` runs after one warm-up:

* ``trunk``: forward + backward of the transformer without the output head (the loss is a sum of the
  last hidden states at the completion positions): what no head-side kernel can remove;
* ``plain``: ``completion_forward`` (the model's logits at the completion positions, a float32 gather
  minus logsumexp), the entropy from the logits, and the backward of the log-probs' sum;
* ``fused``: the trunk with the head bypassed, then ``token_logprobs`` (chunked; entropy included),
  ``recompute`` (the backward recomputes each chunk's logits) and ``keep`` (the forward keeps the
  softmax in the compute dtype for the backward), for each ``--chunks`` size;
* each path's head part alone (its time minus ``trunk``);
* the FLOP floor of the micro-batch: 6 N per trained token (N = parameters, the head counted once)
  at ``--gflops`` (the measured bf16 matmul rate of this CPU), and each path's ratio to it.

Also checked: the fused log-probs, entropy and gradients equal the plain path's (max abs differences
printed).

    .venv/bin/python benchmarks/logprob_kernel.py
    .venv/bin/python benchmarks/logprob_kernel.py --precision fp32 --chunks 128 256 1024
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=8)
    parser.add_argument("--completion", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunks", type=int, nargs="+", default=[256])
    parser.add_argument("--gflops", type=float, default=830.0, help="matmul rate for the floor (GFLOP/s)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from rlxf.models.attention import cpu_attention_for
    from rlxf.models.lm_head import fusable_head, hidden_states_before_head, token_logprobs
    from rlxf.models.registry import resolve_model
    from rlxf.rollout.logprobs import completion_forward, position_ids_of

    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=torch.float32)
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    head = fusable_head(model)
    assert head is not None, "the model's head is not a plain Linear"
    g = torch.Generator().manual_seed(0)
    width = args.prompt + args.completion
    input_ids = torch.randint(0, model.config.vocab_size, (args.rows, width), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[: args.rows // 2, : args.prompt // 2] = 0  # left padding on half the rows
    positions = position_ids_of(attention_mask)
    targets = input_ids[:, args.prompt :]  # [B, C]
    amp = (
        torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()
    )

    def hidden_states() -> torch.Tensor:
        """The trunk's last hidden states at the completion positions, the head bypassed, attention as
        the trainers run it (cpu_attention_for)."""
        with hidden_states_before_head(head), cpu_attention_for(model, width):
            return model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=positions,
                logits_to_keep=args.completion + 1,
                use_cache=False,
            ).logits

    def trunk() -> None:
        with amp:
            hidden = hidden_states()
        hidden[:, :-1].float().sum().backward()

    def plain() -> tuple[torch.Tensor, torch.Tensor]:
        with amp:
            logprobs, entropy, _ = completion_forward(
                model, input_ids, attention_mask, args.prompt, with_entropy=True, fused_head=False
            )
        logprobs.sum().backward()
        return logprobs.detach(), entropy

    def fused(chunk: int, keep: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        with amp:
            logprobs, entropy = token_logprobs(
                hidden_states()[:, :-1], head.weight, targets, with_entropy=True, chunk=chunk, keep_probs=keep
            )
        logprobs.sum().backward()
        return logprobs.detach(), entropy

    def timed(fn) -> float:
        times = []
        for i in range(args.repeats + 1):
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            fn()
            if i:
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    # correctness first: the same log-probs, entropy and gradients
    model.zero_grad(set_to_none=True)
    lp_plain, ent_plain = plain()
    grads_plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    lp_fused, ent_fused = fused(args.chunks[0], keep=True)
    grad_diff = max(
        (p.grad - grads_plain[n]).abs().max().item() / max(grads_plain[n].abs().max().item(), 1e-12)
        for n, p in model.named_parameters()
        if p.grad is not None
    )
    print(
        f"model {args.model}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"precision {args.precision}, threads {torch.get_num_threads()}, "
        f"micro-batch {args.rows} x ({args.prompt} + {args.completion}) tokens"
    )
    print(
        f"fused vs plain: log-probs max |diff| {(lp_fused - lp_plain).abs().max().item():.2e}, "
        f"entropy {(ent_fused - ent_plain).abs().max().item():.2e}, "
        f"gradients max |diff| / max |grad| (worst tensor) {grad_diff:.2e}"
    )

    n_params = sum(p.numel() for p in model.parameters())  # tied head counted once
    tokens = int(attention_mask.sum())
    floor = 6 * n_params * tokens / (args.gflops * 1e9)
    t_trunk = timed(trunk)
    t_plain = timed(plain)
    print(f"FLOP floor (6 N x {tokens} tokens at {args.gflops:.0f} GFLOP/s): {floor:.3f} s")
    print(f"{'path':<16}{'s':>8}{'head s':>9}{'x floor':>9}")
    print(f"{'trunk':<16}{t_trunk:8.3f}{'':>9}{t_trunk / floor:9.2f}")
    print(f"{'plain':<16}{t_plain:8.3f}{t_plain - t_trunk:9.3f}{t_plain / floor:9.2f}")
    for keep in (False, True):
        for chunk in args.chunks:
            t = timed(lambda chunk=chunk, keep=keep: fused(chunk, keep))
            name = f"{'keep' if keep else 'recompute'} {chunk}"
            print(f"{name:<16}{t:8.3f}{t - t_trunk:9.3f}{t / floor:9.2f}")


if __name__ == "__main__":
    main()
