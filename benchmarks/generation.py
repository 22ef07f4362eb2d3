"""What returning per-token log-probs costs: rlxf's HFEngine vs plain ``model.generate``.

Both sample 16 sequences x 32 new tokens (no eos stop, so every run generates exactly 16 x 32 tokens)
from the same model at temperature 1, no top-k / top-p. The baseline is what a user writes:
``model.generate(do_sample=True)``, transformers' own multinomial sampling, no log-probs. The engine
draws tokens with its own sampler (inverse CDF, see rlxf/rollout/hf.py) and records the log-prob of every
token, plus masks, text and finish reasons. Prints tokens/s of each (median of several rounds,
interleaved so drift hits both) and the difference.

    python benchmarks/generation.py [--model smollm2-135m-instruct] [--dtype auto] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GenerationConfig

from rlxf.models import ModelConfig, load_model
from rlxf.rollout import HFEngine, SamplingConfig

PROMPTS = [
    "The movie was",
    "I stayed at this hotel for three nights and",
    "The pasta at this little restaurant",
    "This phone's battery",
    "Our guided tour of the old town",
    "The second half of the novel",
    "Customer service at the bank",
    "The concert last night",
    "My new running shoes",
    "The museum's modern art wing",
    "This coffee grinder",
    "The flight from Lisbon",
    "The sequel to the famous series",
    "Their vegan burger",
    "The hiking trail along the coast",
    "The plumber who came on Monday",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    model, tokenizer = load_model(ModelConfig(name_or_path=args.model, dtype=args.dtype))
    engine = HFEngine(model, tokenizer)
    # ignore_eos: every run generates exactly 16 x 32 tokens, so both sides do the same work.
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, batch_size=len(PROMPTS), ignore_eos=True)
    new_tokens = len(PROMPTS) * args.new_tokens

    # Same prompt tokens and padding for the baseline as for the engine.
    from rlxf.rollout.hf import _left_pad

    ids, mask = _left_pad([engine.encode_prompt(p) for p in PROMPTS], engine.pad_token_id)
    # The baseline is what a user writes: transformers' own sampling (multinomial), no log-probs.
    config = GenerationConfig(
        max_new_tokens=args.new_tokens,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        eos_token_id=None,
        pad_token_id=engine.pad_token_id,
    )
    plain_kwargs = dict(input_ids=ids, attention_mask=mask, generation_config=config)

    def run_plain() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**plain_kwargs)
        assert out.shape[1] - ids.shape[1] == args.new_tokens
        return time.perf_counter() - start

    def run_engine() -> float:
        start = time.perf_counter()
        batch = engine.generate(PROMPTS, sampling, seed=0)
        seconds = time.perf_counter() - start
        assert int(batch.completion_mask.sum()) == new_tokens and torch.isfinite(batch.logprobs).all()
        return seconds

    print(
        f"model {args.model}, dtype {model.dtype}, {torch.get_num_threads()} threads, batch {len(PROMPTS)} "
        f"x {args.new_tokens} new tokens, {args.rounds} rounds (after one warm-up each)"
    )
    torch.manual_seed(0)
    run_plain(), run_engine()  # warm-up
    plain, engine_times = [], []
    for _ in range(args.rounds):
        plain.append(run_plain())
        engine_times.append(run_engine())
    plain_tps = new_tokens / statistics.median(plain)
    engine_tps = new_tokens / statistics.median(engine_times)
    print(
        f"plain model.generate (no log-probs): {plain_tps:7.1f} tokens/s  (median {statistics.median(plain):.3f} s)"
    )
    print(
        f"rlxf HFEngine (with log-probs):      {engine_tps:7.1f} tokens/s  (median {statistics.median(engine_times):.3f} s)"
    )
    print(f"throughput cost of log-probs: {100 * (1 - engine_tps / plain_tps):.1f}%  (target: under 10%)")


if __name__ == "__main__":
    main()
