"""``rlxf simulate``: simulated annotators, so the feedback loop runs without people (as in AlpacaFarm).

AlpacaFarm (Dubois et al. 2023) showed that simulated annotators reproduce what human feedback does to
RLHF methods only when they are *noisy* and *biased* like people; an oracle that always agrees with itself
over-rewards over-optimisation. A simulated annotator here is:

* an **oracle**: any reward specification (:func:`~rlxf.feedback.rewards.parse_reward_spec`: ``sentiment``,
  ``model:PATH``, ``fn:...``, ``judge:MODEL``, a URL, a weighted sum) scoring both responses of a pair;
* **position bias** ``b``: each pair is shown in a random order; with probability ``b`` the annotator picks
  whatever is shown first, without reading;
* **label noise** ``p`` (flip noise): otherwise it picks the response the oracle scores higher, and with
  probability ``p`` the other one. An oracle tie is a fair coin. (Flip noise, as AlpacaFarm's simulated
  annotators use, rather than Bradley-Terry sampling: its rate is one number that means the same thing
  whatever the oracle's scale.)

So, for pairs the oracle does not tie, the share of picks of the first-shown response is ``0.5 + b/2``
(the order is random, so the oracle's choice is shown first half the time) and the share that agrees with
the oracle is ``(1 - b)(1 - p) + b/2``.

A **pool** of ``annotators``: each pair is labelled by one annotator drawn at random; annotator ``k`` has
its own random stream (seeded from ``(seed, k)``) and may have its own ``noise[k]`` and
``position_bias[k]`` (a single value applies to all). Everything is deterministic for a seed.

Ratings (``mode: pointwise``): each response's rating is the oracle's reward plus Gaussian noise of
standard deviation ``rating_noise``.

Library: :func:`simulate_preferences`, :func:`simulate_ratings` (records in, records out, for a pipeline);
:func:`simulate` is ``rlxf simulate`` (input as for ``rlxf judge``: candidates or preferences; output
folder with ``preferences.jsonl`` or ``ratings.jsonl``, ``summary.json`` and ``config.yaml``; the figures
are logged and returned as a :class:`~rlxf.train.outdir.CommandResult`).

Left out: annotator-specific oracles (AlpacaFarm's pool also varies the judge prompt), ties as a label,
and ratings on a discrete scale.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from rlxf.config import option
from rlxf.data.candidates import Candidates, as_text, attach_labels, read_candidates
from rlxf.feedback.judge import OUTPUT_FILES, label_agreement, log_figures
from rlxf.feedback.rewards import RewardOptions, RewardSource, parse_reward_spec
from rlxf.train.outdir import CommandResult, claim_output_folder, numeric, write_output_folder


def _per_annotator(value: float | Sequence[float], annotators: int, name: str) -> list[float]:
    values = [float(value)] if isinstance(value, int | float) else [float(v) for v in value]
    if len(values) == 1:
        values = values * annotators
    if len(values) != annotators:
        raise ValueError(f"{name}: give one value or one per annotator ({annotators}), got {len(values)}")
    for v in values:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    return values


def _pairs(records: Sequence[Mapping[str, Any]]) -> list[tuple[Any, Any, Any, dict[str, Any]]]:
    """``(prompt, first, second, extra fields)`` of candidates records (2 responses) or preference records."""
    out = []
    for i, record in enumerate(records):
        extra = {k: v for k, v in record.items() if k not in ("prompt", "responses", "chosen", "rejected")}
        if record.get("responses") is not None:
            if len(record["responses"]) != 2:
                raise ValueError(f"record {i}: expected 2 responses, got {len(record['responses'])}")
            first, second = record["responses"]
        else:
            first, second = record["chosen"], record["rejected"]
        out.append((record["prompt"], first, second, extra))
    return out


def _source(reward: str | Sequence[Any] | RewardSource, options: RewardOptions | None) -> RewardSource:
    return reward if isinstance(reward, RewardSource) else parse_reward_spec(reward, options)


def simulate_preferences(
    records: Sequence[Mapping[str, Any]],
    reward: str | Sequence[Any] | RewardSource,
    *,
    noise: float | Sequence[float] = 0.0,
    position_bias: float | Sequence[float] = 0.0,
    annotators: int = 1,
    seed: int = 0,
    options: RewardOptions | None = None,
) -> list[dict[str, Any]]:
    """Label pairs with simulated annotators (module docstring); one preference record per input record.

    ``records`` hold ``prompt`` + ``responses`` (two) or ``prompt`` + ``chosen`` + ``rejected`` (treated as
    an unlabelled pair); other fields (``id`` ...) are kept. ``reward`` is a reward specification or an
    already built :class:`RewardSource`. Each output record has ``prompt``, ``chosen``, ``rejected`` and a
    ``simulated`` field: ``annotator``, the oracle's ``rewards`` of chosen and rejected, ``shown_first``
    (``"chosen"`` or ``"rejected"``), ``position_pick`` (picked for its position), ``flipped`` (the noise
    flipped the oracle's choice) and ``oracle_agrees``.
    """
    if annotators < 1:
        raise ValueError(f"annotators must be >= 1, got {annotators}")
    noises = _per_annotator(noise, annotators, "noise")
    biases = _per_annotator(position_bias, annotators, "position_bias")
    pairs = _pairs(records)
    source = _source(reward, options)
    prompts = [as_text(p) for p, *_ in pairs]
    rewards = source(
        prompts + prompts, [as_text(a) for _, a, _, _ in pairs] + [as_text(b) for _, _, b, _ in pairs]
    )
    n = len(pairs)
    assign = np.random.default_rng([seed, annotators])  # who labels which pair
    streams = [np.random.default_rng([seed, k]) for k in range(annotators)]
    out = []
    for i, (prompt, first, second, extra) in enumerate(pairs):
        r = (rewards[i], rewards[n + i])
        k = int(assign.integers(annotators))
        rng = streams[k]
        # Four draws per pair, always, so one pair's outcome does not shift the next pair's randomness.
        order_u, bias_u, noise_u, tie_u = rng.random(4)
        shown_first = 0 if order_u < 0.5 else 1  # index of the response shown first
        oracle = (0 if tie_u < 0.5 else 1) if r[0] == r[1] else (0 if r[0] > r[1] else 1)
        position_pick = bool(bias_u < biases[k])
        flipped = False
        if position_pick:
            pick = shown_first
        else:
            flipped = bool(noise_u < noises[k])
            pick = 1 - oracle if flipped else oracle
        record = {"prompt": prompt, "chosen": (first, second)[pick], "rejected": (first, second)[1 - pick]}
        record.update(extra)
        record["simulated"] = {
            "annotator": k,
            "rewards": {"chosen": r[pick], "rejected": r[1 - pick]},
            "shown_first": "chosen" if shown_first == pick else "rejected",
            "position_pick": position_pick,
            "flipped": flipped,
            "oracle_agrees": pick == oracle,
        }
        out.append(record)
    return out


def simulate_ratings(
    records: Sequence[Mapping[str, Any]],
    reward: str | Sequence[Any] | RewardSource,
    *,
    rating_noise: float = 0.0,
    seed: int = 0,
    options: RewardOptions | None = None,
) -> list[dict[str, Any]]:
    """One ratings record (``prompt``, ``completion``, ``rating``) per response of each record
    (``responses``, or ``chosen`` and ``rejected``): rating = oracle reward + N(0, rating_noise^2); the
    ``simulated`` field keeps the oracle's ``reward``."""
    if rating_noise < 0:
        raise ValueError(f"rating_noise must be >= 0, got {rating_noise}")
    rows: list[tuple[Any, Any, dict[str, Any]]] = []
    for record in records:
        extra = {k: v for k, v in record.items() if k not in ("prompt", "responses", "chosen", "rejected")}
        responses = (
            record["responses"]
            if record.get("responses") is not None
            else [record["chosen"], record["rejected"]]
        )
        rows.extend((record["prompt"], response, extra) for response in responses)
    source = _source(reward, options)
    rewards = source([as_text(p) for p, _, _ in rows], [as_text(c) for _, c, _ in rows])
    noise = (
        np.random.default_rng(seed).normal(0.0, rating_noise, size=len(rows))
        if rating_noise
        else np.zeros(len(rows))
    )
    out = []
    for (prompt, completion, extra), reward_value, eps in zip(rows, rewards, noise):
        record = {"prompt": prompt, "completion": completion, "rating": float(reward_value + eps)}
        record.update(extra)
        record["simulated"] = {"reward": reward_value}
        out.append(record)
    return out


def simulation_summary(labelled: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``pairs``, ``oracle_agreement`` (over pairs the oracle does not tie), ``first_shown`` (share of picks
    of the first-shown response, same pairs), ``flipped`` and ``position_picks`` (shares of all pairs)."""
    n = len(labelled)
    if n == 0:
        return {"pairs": 0.0}
    sims = [r["simulated"] for r in labelled]
    decided = [s for s in sims if s["rewards"]["chosen"] != s["rewards"]["rejected"]]
    summary = {
        "pairs": float(n),
        "flipped": sum(s["flipped"] for s in sims) / n,
        "position_picks": sum(s["position_pick"] for s in sims) / n,
        "oracle_ties": (n - len(decided)) / n,
    }
    if decided:
        summary["oracle_agreement"] = sum(s["oracle_agrees"] for s in decided) / len(decided)
        summary["first_shown"] = sum(s["shown_first"] == "chosen" for s in decided) / len(decided)
    return summary


# ---------------------------------------------------------------------------------------------- command


@dataclass
class SimulateConfig:
    """Options of ``rlxf simulate``."""

    data: str = option("", help="candidates JSONL ({prompt, responses: [a, b], id?}) or a preferences file")
    reward: Any = option(
        "", help="the oracle: a reward spec (sentiment, model:PATH, fn:FILE:FUNC, judge:MODEL, URL, a sum)"
    )
    reward_options: RewardOptions = field(default_factory=RewardOptions)
    out: str = option(
        "", help="output folder: preferences.jsonl (or ratings.jsonl), summary.json, config.yaml"
    )
    overwrite: bool = option(False, help="replace the output already in --out")
    mode: Literal["pairwise", "pointwise"] = option(
        "pairwise", help="pairwise: preferences; pointwise: noisy ratings"
    )
    noise: list[float] = option(
        default_factory=lambda: [0.0],
        help="probability of flipping the oracle's choice (one value, or one per annotator)",
    )
    position_bias: list[float] = option(
        default_factory=lambda: [0.0],
        help="probability of picking the first-shown response without reading (one value, or one per annotator)",
    )
    annotators: int = option(1, help="annotators in the pool; each pair is labelled by one drawn at random")
    rating_noise: float = option(
        0.0, help="pointwise: std of the Gaussian noise added to the oracle's reward"
    )
    labels: str | None = option(None, help="preferences file to measure agreement against (candidates input)")
    limit: int | None = option(None, help="label only the first N records")
    seed: int = option(0, help="random seed; the same seed gives the same labels")

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("give the input: --data FILE (candidates or preferences)")
        if not self.out:
            raise ValueError("give the output folder: --out DIR")
        if self.reward in ("", None, []):
            raise ValueError("give the oracle: --reward SPEC (e.g. sentiment, model:runs/rm)")
        if self.annotators < 1:
            raise ValueError(f"annotators must be >= 1, got {self.annotators}")
        _per_annotator(self.noise, self.annotators, "noise")
        _per_annotator(self.position_bias, self.annotators, "position_bias")
        if self.rating_noise < 0:
            raise ValueError(f"rating_noise must be >= 0, got {self.rating_noise}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")


def _records(candidates: Candidates) -> list[dict[str, Any]]:
    out = []
    for i in range(len(candidates)):
        record: dict[str, Any] = {"prompt": candidates.prompts[i], "responses": candidates.responses[i]}
        if candidates.ids[i] is not None:
            record["id"] = candidates.ids[i]
        out.append(record)
    return out


def simulate(cfg: SimulateConfig) -> CommandResult:
    """Run ``rlxf simulate``: check the input and the output folder, build the oracle, label, write the
    folder and log the figures. Returns them with the folder."""
    start = time.perf_counter()
    candidates = read_candidates(cfg.data, cfg.mode)
    if cfg.limit is not None:
        candidates = candidates.select(cfg.limit)
    matched = attach_labels(candidates, cfg.labels) if cfg.labels else None
    source = parse_reward_spec(cfg.reward, cfg.reward_options)  # a bad oracle stops here, before any change
    out = claim_output_folder(cfg.out, OUTPUT_FILES, overwrite=cfg.overwrite, command="rlxf simulate")
    records = _records(candidates)
    figures: dict[str, Any]
    if cfg.mode == "pairwise":
        labelled = simulate_preferences(
            records,
            source,
            noise=cfg.noise,
            position_bias=cfg.position_bias,
            annotators=cfg.annotators,
            seed=cfg.seed,
        )
        figures = simulation_summary(labelled)
        if any(y is not None for y in candidates.labels):
            winners = [0 if r["chosen"] == c[0] else 1 for r, c in zip(labelled, candidates.responses)]
            figures.update(label_agreement(winners, candidates.labels))
        files = {"preferences.jsonl": labelled}
    else:
        rated = simulate_ratings(records, source, rating_noise=cfg.rating_noise, seed=cfg.seed)
        ratings = [r["rating"] for r in rated]
        figures = {
            "ratings": float(len(rated)),
            "rating/mean": sum(ratings) / len(ratings) if ratings else math.nan,
        }
        files = {"ratings.jsonl": rated}
    if matched is not None:
        figures["labels/matched"] = float(matched)
    figures["wall_time_s"] = time.perf_counter() - start
    summary = {"oracle": source.name, "data": str(cfg.data), "mode": cfg.mode, "metrics": figures}
    write_output_folder(out, cfg, summary, files)
    log_figures(figures, files, out)
    return CommandResult(out=out, summary=summary, metrics=numeric(figures))
