"""Build the sentiment example's offline data from the default model's own samples, labelled by VADER.

The worked example (``rlxf demo``) teaches SmolLM2-135M-Instruct to continue the opening of a review
positively, with VADER's compound score as the reward. The on-line methods (PPO, GRPO, ...) need only the
openings and the scorer; the off-line ones need data: preference pairs for a reward model and DPO, ratings
for a regression reward model, good/bad labels for KTO, demonstrations for SFT. This script makes all of
them the way one would collect human feedback, but with VADER as the labeller: the default model
continues each opening of ``rlxf/assets/review_openings.jsonl`` ``--n`` times under each hidden framing
of ``--steer`` (raw text, no chat template; see :data:`STEER_CONTEXTS`), VADER scores each continuation
(the completion only, see :mod:`rlxf.feedback.sentiment`), and

===================================== ==========================================================================
file                                  records
===================================== ==========================================================================
``prefs_train.jsonl``                 ``prompt, chosen, rejected``: ``--train-pairs`` pairs of two samples of one
``prefs_test.jsonl``                  prompt whose scores differ by at least ``--min-gap`` (chosen = higher),
                                      chosen >= ``--min-chosen``, rejected <= ``--max-rejected``;
                                      ``--test-pairs`` for the test file; ``margin`` (the gap) only with
                                      ``--margin``
``ratings_train.jsonl`` / ``_test``   ``prompt, completion, rating``: every kept sample, rating = compound
``unpaired_train.jsonl`` / ``_test``  ``prompt, completion, label``: every kept sample with
                                      ``|compound| > 0.05``, label = compound > 0.05 (near-neutral dropped)
``sft_train.jsonl``                   ``prompt, completion``: the most positive sample of each train prompt,
                                      when it is positive (compound > 0.05)
``summary.json``                      the settings, counts, class balance and gaps printed at the end
===================================== ==========================================================================

``*_train`` files come from the openings marked ``train`` and ``*_test`` files from the ``test`` ones, so
held-out pairs have prompts no training file has. A sample is *kept* when its text is not empty or
blank. Pairs are chosen round-robin over prompts (each prompt's largest-gap pair first, then its second,
...; in the last, partial round the largest gaps win; ties broken by a seeded shuffle), so they spread
over many prompts and prefer clear preferences; a sample may appear in several pairs, but no pair
(prompt, chosen, rejected) appears twice. If a split has too few eligible pairs, ``--n`` more samples
per prompt are drawn (new seed) until it has enough or ``--max-n`` samples per prompt are reached; then the
script stops with an error that gives the counts. The same ``--seed`` gives the same files.

Run from the repository root (about seven minutes on two CPU cores)::

    .venv/bin/python examples/sentiment/build_dataset.py --out runs/sentiment-data
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlxf.train.atomic import write_jsonl_atomic, write_text_atomic

REPO = Path(__file__).resolve().parents[2]
OPENINGS = REPO / "rlxf" / "assets" / "review_openings.jsonl"
NEUTRAL = 0.05
"""VADER's usual threshold: compound > 0.05 is positive, < -0.05 negative, in between neutral."""

Pair = tuple[int, int, int, float]
"""``(prompt index, chosen sample index, rejected sample index, score gap)``."""


# --------------------------------------------------------------------------------------------------------
# Pure functions (imported by tests/test_sentiment.py)


def load_openings(path: str | Path = OPENINGS) -> dict[str, list[str]]:
    """The openings of each split, ``{"train": [...], "test": [...]}``, in file order."""
    splits: dict[str, list[str]] = {"train": [], "test": []}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            split = record.get("split")
            if split not in splits:
                raise ValueError(f"{path}:{line_no}: split must be 'train' or 'test', got {split!r}")
            splits[split].append(record["prompt"])
    return splits


def is_kept(text: str) -> bool:
    """Whether a sampled completion is usable (not empty or whitespace only)."""
    return bool(text.strip())


def eligible_pairs(
    texts: Sequence[str],
    scores: Sequence[float],
    min_gap: float,
    min_chosen: float | None = None,
    max_rejected: float | None = None,
) -> list[tuple[int, int, float]]:
    """Pairs ``(chosen, rejected, gap)`` of one prompt's samples with ``gap = score[chosen] - score[rejected]
    >= min_gap``, largest gap first (ties in index order). ``min_chosen`` / ``max_rejected``, when set, also
    require ``score[chosen] >= min_chosen`` and ``score[rejected] <= max_rejected`` ("clear" pairs: one
    side clearly positive, the other clearly negative, rather than e.g. mildly positive vs neutral).

    Samples that are blank are skipped, so are pairs whose two texts are equal, and a pair of texts already
    listed (the same two texts drawn twice) is listed once.
    """
    if len(texts) != len(scores):
        raise ValueError(f"{len(texts)} texts but {len(scores)} scores")
    pairs: list[tuple[int, int, float]] = []
    seen: set[tuple[str, str]] = set()
    for i in range(len(texts)):
        for j in range(len(texts)):
            gap = scores[i] - scores[j]
            if i == j or gap < min_gap or not is_kept(texts[i]) or not is_kept(texts[j]):
                continue
            if (min_chosen is not None and scores[i] < min_chosen) or (
                max_rejected is not None and scores[j] > max_rejected
            ):
                continue
            if texts[i] == texts[j] or (texts[i], texts[j]) in seen:
                continue
            seen.add((texts[i], texts[j]))
            pairs.append((i, j, gap))
    pairs.sort(key=lambda p: -p[2])
    return pairs


def select_pairs(
    groups: Sequence[tuple[Sequence[str], Sequence[float]]],
    target: int,
    min_gap: float,
    seed: int,
    min_chosen: float | None = None,
    max_rejected: float | None = None,
) -> list[Pair]:
    """Choose up to ``target`` distinct preference pairs from the samples of many prompts.

    ``groups[k]`` holds prompt ``k``'s sample texts and their scores. Round ``r`` offers each prompt's
    ``r``-th largest-gap eligible pair (:func:`eligible_pairs`); whole rounds are taken while they fit,
    and from the round that does not fit the largest gaps are taken. Prompts are shuffled with ``seed``
    first, so equal gaps are broken the same way for the same seed. Returns ``(prompt, chosen, rejected,
    gap)`` tuples in a seeded random order (fewer than ``target`` when there are not enough pairs).
    """
    if target < 0:
        raise ValueError(f"target must be >= 0, got {target}")
    rng = random.Random(seed)
    per_prompt = [
        eligible_pairs(texts, scores, min_gap, min_chosen, max_rejected) for texts, scores in groups
    ]
    order = list(range(len(groups)))
    rng.shuffle(order)
    chosen: list[Pair] = []
    depth = 0
    while len(chosen) < target:
        offered = [(k, *per_prompt[k][depth]) for k in order if depth < len(per_prompt[k])]
        if not offered:
            break
        room = target - len(chosen)
        if len(offered) > room:
            offered = sorted(offered, key=lambda p: -p[3])[:room]  # stable: seeded order among ties
        chosen.extend(offered)
        depth += 1
    rng.shuffle(chosen)
    return chosen


def preference_records(
    prompts: Sequence[str], samples: Sequence[Sequence[str]], pairs: Sequence[Pair], margin: bool = False
) -> list[dict[str, Any]]:
    """``{prompt, chosen, rejected}`` records (plus ``margin`` = the gap when asked) for chosen pairs."""
    records = []
    for k, i, j, gap in pairs:
        record: dict[str, Any] = {"prompt": prompts[k], "chosen": samples[k][i], "rejected": samples[k][j]}
        if margin:
            record["margin"] = round(gap, 4)
        records.append(record)
    return records


def rating_records(
    prompts: Sequence[str], samples: Sequence[Sequence[str]], scores: Sequence[Sequence[float]]
) -> list[dict[str, Any]]:
    """``{prompt, completion, rating}`` for every kept sample, rating = its VADER compound score."""
    return [
        {"prompt": prompts[k], "completion": text, "rating": score}
        for k in range(len(prompts))
        for text, score in zip(samples[k], scores[k])
        if is_kept(text)
    ]


def unpaired_records(
    prompts: Sequence[str], samples: Sequence[Sequence[str]], scores: Sequence[Sequence[float]]
) -> list[dict[str, Any]]:
    """``{prompt, completion, label}`` for every kept sample that is not near-neutral; label = positive."""
    return [
        {"prompt": prompts[k], "completion": text, "label": score > NEUTRAL}
        for k in range(len(prompts))
        for text, score in zip(samples[k], scores[k])
        if is_kept(text) and abs(score) > NEUTRAL
    ]


def sft_records(
    prompts: Sequence[str], samples: Sequence[Sequence[str]], scores: Sequence[Sequence[float]]
) -> list[dict[str, Any]]:
    """``{prompt, completion}`` with each prompt's most positive kept sample, when that one is positive."""
    records = []
    for k in range(len(prompts)):
        kept = [(score, i) for i, (text, score) in enumerate(zip(samples[k], scores[k])) if is_kept(text)]
        if not kept:
            continue
        score, i = max(kept, key=lambda s: (s[0], -s[1]))  # highest score, first sample among ties
        if score > NEUTRAL:
            records.append({"prompt": prompts[k], "completion": samples[k][i]})
    return records


# --------------------------------------------------------------------------------------------------------
# Sampling and the command line


STEER_CONTEXTS: dict[str, list[str]] = {
    "none": [""],
    "contrast": [
        "A glowing five-star review, full of praise:\n\n",
        "A scathing one-star review, full of complaints:\n\n",
    ],
}
"""Hidden contexts the samples are drawn under (``--steer``). ``contrast`` draws half of each prompt's samples
after a positive and half after a negative framing (contrastive prompting, as in RLCD: Yang et al. 2023,
"RLCD: Reinforcement Learning from Contrastive Distillation for Language Model Alignment"), so both
polarities are common; the records pair each sample with the bare opening, and VADER alone decides which
sample of a pair is chosen. Without it SmolLM2 rarely writes a clearly negative continuation."""


def steered_prompts(prompts: Sequence[str], contexts: Sequence[str]) -> list[str]:
    """Every prompt under every context, context-major: ``[c0 + p0, c0 + p1, ..., c1 + p0, ...]``."""
    return [context + prompt for context in contexts for prompt in prompts]


def sample(
    engine: Any, prompts: list[str], contexts: Sequence[str], args: argparse.Namespace, seed: int
) -> list[list[str]]:
    """``args.n`` continuations of each prompt under each context (raw text), grouped by (bare) prompt."""
    from rlxf.rollout import SamplingConfig

    sampling = SamplingConfig(
        n=args.n, max_new_tokens=args.max_new_tokens, temperature=args.temperature, batch_size=args.batch_size
    )
    batch = engine.generate(steered_prompts(prompts, contexts), sampling, seed=seed, progress=True)
    grouped: list[list[str]] = [[] for _ in prompts]
    for text, k in zip(batch.completions, batch.prompt_index.tolist()):
        grouped[k % len(prompts)].append(text)
    return grouped


def optional_float(text: str) -> float | None:
    """A float, or ``None`` for the word ``none`` (a command-line option that can be switched off)."""
    return None if text.lower() == "none" else float(text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/sentiment-data", help="output folder (default: %(default)s)")
    parser.add_argument("--openings", default=str(OPENINGS), help="openings file (default: the example's)")
    parser.add_argument("--model", default=None, help="model reference (default: smollm2-135m-instruct)")
    parser.add_argument(
        "--n",
        type=int,
        default=4,
        help="samples per prompt per context per round (default: %(default)s)",
    )
    parser.add_argument(
        "--max-n", type=int, default=16, help="most samples per prompt when topping up (default: %(default)s)"
    )
    parser.add_argument(
        "--steer",
        choices=sorted(STEER_CONTEXTS),
        default="contrast",
        help="hidden contexts to sample under: contrast = a positive and a negative framing, none = the bare "
        "opening (default: %(default)s)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=32, help="tokens per sample (default: %(default)s)"
    )
    parser.add_argument(
        "--temperature", type=float, default=0.7, help="sampling temperature (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="sequences per generate batch (default: 32)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--min-gap",
        type=float,
        default=0.3,
        help="least score gap of a preference pair (default: %(default)s)",
    )
    parser.add_argument("--train-pairs", type=int, default=400, help="pairs in prefs_train (default: 400)")
    parser.add_argument("--test-pairs", type=int, default=100, help="pairs in prefs_test (default: 100)")
    parser.add_argument(
        "--min-chosen",
        type=optional_float,
        default=0.3,
        help="a pair's chosen score must be at least this; 'none': off (default: %(default)s)",
    )
    parser.add_argument(
        "--max-rejected",
        type=optional_float,
        default=-0.3,
        help="a pair's rejected score must be at most this; 'none': off (default: %(default)s)",
    )
    parser.add_argument("--margin", action="store_true", help="write the score gap as each pair's 'margin'")
    args = parser.parse_args(argv)
    contexts = len(STEER_CONTEXTS[args.steer])
    if args.n < 1 or args.max_n < args.n * contexts:
        parser.error(
            f"need 1 <= --n and --n x {contexts} context(s) <= --max-n, got --n {args.n} --max-n {args.max_n}"
        )
    if args.min_gap < 0:
        parser.error(f"--min-gap must be >= 0, got {args.min_gap}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    from rlxf.data import read_data
    from rlxf.feedback import sentiment_scores
    from rlxf.models import ModelConfig, load_model
    from rlxf.rollout import HFEngine

    openings = load_openings(args.openings)
    contexts = STEER_CONTEXTS[args.steer]
    targets = {"train": args.train_pairs, "test": args.test_pairs}
    config = ModelConfig() if args.model is None else ModelConfig(name_or_path=args.model)
    model, tokenizer = load_model(config)
    engine = HFEngine(model, tokenizer)
    print(
        f"loaded {config.name_or_path} ({model.dtype}, {model.device}) in {time.perf_counter() - start:.1f} s"
    )

    samples: dict[str, list[list[str]]] = {split: [[] for _ in openings[split]] for split in openings}
    scores: dict[str, list[list[float]]] = {split: [[] for _ in openings[split]] for split in openings}
    pairs: dict[str, list[Pair]] = {}
    todo = [split for split in openings if openings[split]]
    rounds = 0
    while todo:
        # One generate call per round over the prompts of every split that still needs pairs.
        prompts = [p for split in todo for p in openings[split]]
        t0 = time.perf_counter()
        drawn = sample(engine, prompts, contexts, args, seed=args.seed * 1000 + rounds)
        print(
            f"round {rounds + 1}: {len(prompts)} prompts x {len(contexts)} context(s) x {args.n} samples in "
            f"{time.perf_counter() - t0:.0f} s"
        )
        offset = 0
        for split in todo:
            for k in range(len(openings[split])):
                texts = drawn[offset + k]
                samples[split][k].extend(texts)
                scores[split][k].extend(sentiment_scores(texts))
            offset += len(openings[split])
        rounds += 1
        still = []
        for split in todo:
            groups = list(zip(samples[split], scores[split]))
            pairs[split] = select_pairs(
                groups, targets[split], args.min_gap, args.seed, args.min_chosen, args.max_rejected
            )
            have = len(pairs[split])
            if have < targets[split]:
                per_prompt = len(samples[split][0])
                if per_prompt + args.n * len(contexts) > args.max_n:
                    print(
                        f"error: the {split} split has {have} pairs with a score gap >= {args.min_gap} from "
                        f"{per_prompt} samples of each of {len(openings[split])} prompts; --{split}-pairs asks "
                        f"for {targets[split]}. Lower --min-gap or the target, or raise --max-n.",
                        file=sys.stderr,
                    )
                    return 1
                print(
                    f"  {split}: {have} of {targets[split]} pairs; drawing {args.n * len(contexts)} more "
                    "samples per prompt"
                )
                still.append(split)
        todo = still

    out = Path(args.out)
    files: dict[str, list[dict[str, Any]]] = {}
    for split in ("train", "test"):
        p, s, c = openings[split], samples[split], scores[split]
        files[f"prefs_{split}.jsonl"] = preference_records(p, s, pairs[split], margin=args.margin)
        files[f"ratings_{split}.jsonl"] = rating_records(p, s, c)
        files[f"unpaired_{split}.jsonl"] = unpaired_records(p, s, c)
    files["sft_train.jsonl"] = sft_records(openings["train"], samples["train"], scores["train"])
    # Every file must pass the library's checks before any of them lands in the output folder.
    kinds = {"prefs": "preferences", "ratings": "ratings", "unpaired": "unpaired", "sft": "sft"}
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as staging:
        for name, records in files.items():
            write_jsonl_atomic(Path(staging) / name, records)
            read_data(Path(staging) / name, kind=kinds[name.split("_")[0]])
        for name in files:
            os.replace(Path(staging) / name, out / name)

    summary: dict[str, Any] = {"settings": vars(args), "splits": {}}
    print(f"\nwrote {out}/ (checked with rlxf.data.read_data)")
    for split in ("train", "test"):
        flat = [
            x for row, texts in zip(scores[split], samples[split]) for x, t in zip(row, texts) if is_kept(t)
        ]
        drawn_total = sum(len(row) for row in samples[split])
        gaps = [gap for *_, gap in pairs[split]]
        unpaired = files[f"unpaired_{split}.jsonl"]
        positive = sum(r["label"] for r in unpaired)
        info = {
            "prompts": len(openings[split]),
            "samples_per_prompt": len(samples[split][0]) if samples[split] else 0,
            "samples": drawn_total,
            "blank_samples_dropped": drawn_total - len(flat),
            "mean_score": round(sum(flat) / max(len(flat), 1), 4),
            "positive": sum(x > NEUTRAL for x in flat),
            "neutral": sum(abs(x) <= NEUTRAL for x in flat),
            "negative": sum(x < -NEUTRAL for x in flat),
            "pairs": len(gaps),
            "prompts_with_pairs": len({k for k, *_ in pairs[split]}),
            "mean_gap": round(sum(gaps) / max(len(gaps), 1), 4),
            "min_gap": round(min(gaps), 4) if gaps else None,
            "unpaired_positive": positive,
            "unpaired_negative": len(unpaired) - positive,
        }
        summary["splits"][split] = info
        print(
            f"{split}: {info['prompts']} prompts x {info['samples_per_prompt']} samples = {info['samples']} "
            f"({info['blank_samples_dropped']} blank dropped); VADER positive/neutral/negative "
            f"{info['positive']}/{info['neutral']}/{info['negative']}, mean {info['mean_score']:+.3f}"
        )
        print(
            f"  prefs_{split}: {info['pairs']} pairs over {info['prompts_with_pairs']} prompts, gap mean "
            f"{info['mean_gap']:.3f} min {info['min_gap']}"
        )
        print(f"  ratings_{split}: {len(files[f'ratings_{split}.jsonl'])} records")
        print(
            f"  unpaired_{split}: {len(unpaired)} records ({positive} positive / {len(unpaired) - positive} "
            f"negative, {info['neutral']} near-neutral dropped)"
        )
    print(
        f"  sft_train: {len(files['sft_train.jsonl'])} records (the most positive sample of each of the "
        f"{len(openings['train'])} train prompts, where it is positive)"
    )
    seconds = time.perf_counter() - start
    summary["sampling_rounds"] = rounds
    summary["files"] = {name: len(records) for name, records in files.items()}
    summary["seconds"] = round(seconds, 1)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"done in {seconds:.0f} s ({rounds} sampling round{'s' if rounds > 1 else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
