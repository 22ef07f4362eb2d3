"""How positive can a policy get without drifting from the start model? The start model's own frontier.

``rlxf eval`` flags a policy whose sentiment-word share, perplexity under the start model or distinct-2
moves past its bound (docs/eval.md). Some of that movement comes with *any* shift towards positive text:
positive reviews use more sentiment words than the average review. This script measures how much, on the
start model's own samples, so a bound can be read against what is possible at all:

1. the start model continues each held-out opening ``--samples`` times (the demo's settings: 24 tokens,
   every completion runs to the limit, temperature 1);
2. every completion is scored with VADER (the gold), optionally with a learned reward (``--proxy``), and
   with its log-likelihood under the start model;
3. printed, each against a random subset of the same size:

   * **conditioned on VADER > t**: every sample above the threshold; what the KL-regularised optimum of an
     indicator reward ``1[VADER > t]`` is (the start model conditioned on success; Korbak et al. 2022);
   * **best m of n by VADER** (and by the proxy): a soft best-of-n, what a policy that optimises the
     score itself approaches (KL of best-of-n: ``log n - (n - 1) / n``; Stiennon et al. 2020);
   * **best m of n by VADER minus lambda x sentiment-word share**: the same, preferring samples that say
     it with fewer sentiment words: how far below the bound a natural positive policy can stay.

Columns: mean VADER, share with VADER > 0.05, and the ratios that ``rlxf eval`` flags (sentiment-word share,
perplexity under the start model, distinct-2) to the random subset's.

Run (about 3 minutes on 2 CPU cores; alone: other processes slow it several-fold)::

    .venv/bin/python benchmarks/naturalness_frontier.py
    .venv/bin/python benchmarks/naturalness_frontier.py --proxy runs/demo/reward_model --out frontier.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from rlxf.data.dataset import read_prompts
from rlxf.feedback.rewards import parse_reward_spec
from rlxf.feedback.sentiment import sentiment_lexicon
from rlxf.models.load import ModelConfig, load_model, resolve_device
from rlxf.models.precision import autocast, resolve_precision
from rlxf.rollout.engine import SamplingConfig
from rlxf.rollout.hf import HFEngine
from rlxf.rollout.logprobs import batch_logprobs
from rlxf.rollout.text_stats import distinct_n, lexicon_share

OPENINGS = Path(__file__).resolve().parents[1] / "rlxf" / "assets" / "review_openings.jsonl"


def subset_stats(
    rows: Sequence[int],
    texts: list[str],
    gold: list[float],
    nll: list[float],
    ntok: list[float],
    lexicon: set,
) -> dict[str, float]:
    """Mean gold, positive share, sentiment-word share, perplexity (all tokens of the subset) and distinct-2."""
    chosen = [texts[i] for i in rows]
    return {
        "gold": sum(gold[i] for i in rows) / len(rows),
        "positive": sum(gold[i] > 0.05 for i in rows) / len(rows),
        "lexicon": lexicon_share(chosen, lexicon),
        "perplexity": math.exp(sum(nll[i] for i in rows) / sum(ntok[i] for i in rows)),
        "distinct_2": distinct_n(chosen, 2),
    }


def ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            out[i] = (start + end) / 2 + 1
        start = end + 1
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's of the ranks (0 when either side is constant)."""
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--proxy", default=None, help="a reward model's run folder: also select by it")
    parser.add_argument("--samples", type=int, default=16, help="completions per opening (n)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=None, help="also write the figures here (JSON)")
    args = parser.parse_args()

    started = time.monotonic()
    prompts = [r["prompt"] for r in read_prompts(OPENINGS, "test").records]
    model, tokenizer = load_model(ModelConfig(name_or_path=args.model, dtype="float32"))
    device = resolve_device("auto")
    precision = resolve_precision("auto", device)
    sampling = SamplingConfig(
        n=args.samples,
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        batch_size=64,
    )
    with torch.no_grad(), autocast(precision, device):
        batch = HFEngine(model, tokenizer).generate(prompts, sampling, seed=args.seed)
        logprobs = batch_logprobs(model, batch, args.temperature, 16, autocast(precision, device))  # [B, C]
    mask = batch.completion_mask.float()  # [B, C]
    nll = (-(logprobs * mask).sum(-1)).tolist()  # [B] per completion, summed over its tokens
    ntok = mask.sum(-1).tolist()  # [B]
    texts = list(batch.completions)
    gold = parse_reward_spec("sentiment")(list(batch.prompts), texts)
    scores = {"VADER": gold}
    if args.proxy:
        scores["proxy"] = parse_reward_spec(f"model:{args.proxy}")(list(batch.prompts), texts)
    lexicon = sentiment_lexicon()
    k, num_prompts = args.samples, len(prompts)

    def stats(rows: Sequence[int]) -> dict[str, float]:
        return subset_stats(rows, texts, gold, nll, ntok, lexicon)

    rng = random.Random(args.seed)

    def random_rows(per_prompt: int) -> list[int]:
        return [p * k + j for p in range(num_prompts) for j in rng.sample(range(k), per_prompt)]

    def against_random(name: str, rows: list[int], per_prompt: int | None) -> dict[str, float]:
        """The subset's figures with ratios to a random subset of the same size (mean of 5 draws)."""
        if per_prompt is None:  # a threshold: as many random rows as it kept, from all
            draws = [stats(rng.sample(range(len(texts)), len(rows))) for _ in range(5)]
        else:
            draws = [stats(random_rows(per_prompt)) for _ in range(5)]
        base = {key: sum(d[key] for d in draws) / len(draws) for key in draws[0]}
        got = stats(rows)
        row = {
            "subset": name,
            "size": len(rows),
            "gold": got["gold"],
            "positive": got["positive"],
            "lexicon_ratio": got["lexicon"] / base["lexicon"],
            "perplexity_ratio": got["perplexity"] / base["perplexity"],
            "distinct_2_ratio": got["distinct_2"] / base["distinct_2"],
        }
        print(
            f"{name:<44} {len(rows):>5} {row['gold']:>+7.3f} {row['positive']:>6.2f} "
            f"{row['lexicon_ratio']:>7.2f}x {row['perplexity_ratio']:>6.2f}x {row['distinct_2_ratio']:>6.2f}x"
        )
        return row

    everything = stats(range(len(texts)))
    print(
        f"{args.model}: {num_prompts} held-out openings x {k}, {args.max_new_tokens} tokens, temperature "
        f"{args.temperature}: VADER {everything['gold']:+.3f}, positive {everything['positive']:.2f}, "
        f"sentiment words {everything['lexicon']:.3f}, perplexity {everything['perplexity']:.1f}, "
        f"distinct-2 {everything['distinct_2']:.3f}"
    )
    proxy_spearman = None
    if args.proxy:  # how well the reward model ranks the samples of one opening, as VADER does
        proxy = scores["proxy"]
        within = [spearman(proxy[p * k : (p + 1) * k], gold[p * k : (p + 1) * k]) for p in range(num_prompts)]
        print(
            f"the proxy ranks each opening's samples with Spearman {sum(within) / len(within):.3f} to VADER"
        )
    print(f"{'subset':<44} {'size':>5} {'VADER':>7} {'pos':>6} {'words':>8} {'ppl':>7} {'d2':>7}")
    rows = []
    for threshold in (0.05, 0.3, 0.4, 0.5, 0.6):
        kept = [i for i in range(len(texts)) if gold[i] > threshold]
        rows.append(against_random(f"conditioned on VADER > {threshold}", kept, None))
    shares = [lexicon_share([t], lexicon) for t in texts]
    for per_prompt in (8, 4, 2, 1):
        for name, score in scores.items():
            ranked = [
                p * k + j
                for p in range(num_prompts)
                for j in sorted(range(k), key=lambda j: -score[p * k + j])[:per_prompt]
            ]
            rows.append(against_random(f"best {per_prompt} of {k} by {name}", ranked, per_prompt))
        for lam in (2.0, 4.0):
            ranked = [
                p * k + j
                for p in range(num_prompts)
                for j in sorted(range(k), key=lambda j: -(gold[p * k + j] - lam * shares[p * k + j]))[
                    :per_prompt
                ]
            ]
            rows.append(
                against_random(f"best {per_prompt} of {k} by VADER - {lam:g} x words", ranked, per_prompt)
            )
    print(f"done in {time.monotonic() - started:.0f} s")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {"args": vars(args), "all": everything, "proxy_spearman": proxy_spearman, "subsets": rows},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
