"""``rlxf judge``: AI feedback (RLAIF) on candidates or pairs, written as preferences or ratings.

The judging itself (rubrics, answer-token probabilities, both-orders verdicts, the local and the
OpenAI-compatible backends) is :mod:`rlxf.feedback.lm_judge`; this module is the command around it:

* **input** (:func:`~rlxf.data.candidates.read_candidates`): candidates JSONL (``{"prompt", "responses":
  [...], "id"?}``, exactly two responses per line for pairwise judging), or a preferences file (``prompt``
  + ``chosen`` + ``rejected``), whose pairs are judged as unlabelled pairs and whose labels give the
  judge's agreement. ``labels: FILE`` (human preferences) gives agreement for candidates input, matching
  pairs by prompt and response texts.
* **pairwise** (the default): every pair is judged in both orders. Pairs below ``min_confidence`` (and
  exact ties, confidence 0) are not written as preferences; they go to ``dropped.jsonl`` in the candidates
  format, ready for people to label. *Position consistency* is the share of pairs whose argmax verdict
  names the same response in both orders; ``first_shown/order1`` and ``first_shown/order2`` are the shares
  of pairs where the judge preferred whatever was shown first (0.5 and 0.5 for an unbiased judge on random
  pairs). With ``reasoning: true`` the rationales are saved in the output.
* **pointwise** (``mode: pointwise``): every response is rated 1-9 (the expected digit) and written as
  ratings.

Output folder: ``preferences.jsonl`` (or ``ratings.jsonl``), each record with a ``judge`` field holding the
probabilities, the per-order verdicts, the confidence and rationales; ``dropped.jsonl``; ``summary.json``
(:func:`pairwise_summary`: position consistency, position bias, mean confidence, answer mass, agreement with
labels as accuracy with its binomial standard error); ``config.yaml``. The figures are logged and returned
(:class:`~rlxf.train.outdir.CommandResult`).

Left out: Cohen's kappa (with labels that are all "first wins", as a preferences file gives, kappa is
undefined; accuracy with its standard error is reported instead), and ``margin`` fields derived from
confidence (``margin`` changes reward-model training, so it is left to the user).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlxf.config import option
from rlxf.data.candidates import Candidates, Mode, as_text, attach_labels, read_candidates
from rlxf.feedback.lm_judge import (
    DEFAULT_JUDGE_TEMPLATE,
    DEFAULT_PAIRWISE_TEMPLATE,
    LocalPairJudge,
    OpenAIPairJudge,
    PairJudge,
    PairJudgement,
    PointwiseJudge,
    Verdict,
    check_judge_template,
    check_pair_template,
    judge_pairs,
)
from rlxf.models.load import ModelConfig
from rlxf.train.outdir import CommandResult, claim_output_folder, numeric, write_output_folder

logger = logging.getLogger(__name__)

OUTPUT_FILES = ("preferences.jsonl", "ratings.jsonl", "dropped.jsonl", "summary.json", "config.yaml")
"""What ``rlxf judge`` and ``rlxf simulate`` write: an earlier run's are refused or replaced as a whole."""


# ---------------------------------------------------------------------------------------------- figures


def label_agreement(winners: Sequence[int | None], labels: Sequence[int | None]) -> dict[str, float]:
    """Agreement of predicted winners with labels, over the labelled pairs: ``agreement`` (share right; a
    tie is not right), its binomial standard error ``agreement/stderr`` = sqrt(a (1 - a) / n),
    ``agreement/ties`` and ``agreement/n``. Empty when no pair is labelled."""
    pairs = [(w, y) for w, y in zip(winners, labels) if y is not None]
    if not pairs:
        return {}
    n = len(pairs)
    accuracy = sum(w == y for w, y in pairs) / n
    return {
        "agreement": accuracy,
        "agreement/stderr": math.sqrt(accuracy * (1 - accuracy) / n),
        "agreement/ties": sum(w is None for w, _ in pairs) / n,
        "agreement/n": float(n),
    }


def pairwise_summary(
    judgements: Sequence[PairJudgement],
    labels: Sequence[int | None] | None = None,
    min_confidence: float = 0.0,
) -> dict[str, float]:
    """The figures ``summary.json`` reports (module docstring); ``agreement*`` only with labels."""
    n = len(judgements)
    if n == 0:
        return {"pairs": 0.0}
    kept = [j for j in judgements if keep(j, min_confidence)]
    masses = [v.mass for j in judgements for v in (j.order1, j.order2) if v.mass is not None]
    summary = {
        "pairs": float(n),
        "kept": float(len(kept)),
        "dropped": float(n - len(kept)),
        "position_consistency": sum(j.consistent for j in judgements) / n,
        "first_shown/order1": sum(j.order1.p_a > 0.5 for j in judgements) / n,
        "first_shown/order2": sum(j.order2.p_a > 0.5 for j in judgements) / n,
        "p_first_shown/mean": sum(j.order1.p_a + j.order2.p_a for j in judgements) / (2 * n),
        "confidence/mean": sum(j.confidence for j in judgements) / n,
    }
    if masses:
        summary["answer_mass/mean"] = sum(masses) / len(masses)
    if labels is not None:
        summary.update(label_agreement([j.winner for j in judgements], labels))
        kept_labels = [y for j, y in zip(judgements, labels) if keep(j, min_confidence)]
        on_kept = label_agreement([j.winner for j in kept], kept_labels)
        if on_kept:
            summary["agreement/kept"] = on_kept["agreement"]
    return summary


def keep(judgement: PairJudgement, min_confidence: float) -> bool:
    """Written as a preference: not a tie, and at least ``min_confidence`` sure."""
    return judgement.winner is not None and judgement.confidence >= min_confidence


# ---------------------------------------------------------------------------------------------- command


@dataclass
class JudgeConfig:
    """Options of ``rlxf judge``."""

    data: str = option("", help="candidates JSONL ({prompt, responses: [a, b], id?}) or a preferences file")
    out: str = option(
        "", help="output folder: preferences.jsonl (or ratings.jsonl), dropped.jsonl, summary.json"
    )
    overwrite: bool = option(False, help="replace the judge output already in --out")
    mode: Mode = option(
        "pairwise", help="pairwise: compare the two responses (both orders); pointwise: rate each 1-9"
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    judge_url: str | None = option(
        None, help="an OpenAI-compatible API (http://host:port/v1) to judge with instead of a local model"
    )
    judge_model: str | None = option(None, help="the model name sent to --judge-url")
    api_key_env: str = option(
        "OPENAI_API_KEY", help="environment variable holding the --judge-url API key (sent when set)"
    )
    template: str | None = option(
        None,
        help="file holding the rubric and placeholders: pairwise {prompt} {response_a} {response_b}; "
        "pointwise {prompt} {completion}; unset: the built-in rubric",
    )
    reasoning: bool = option(False, help="the judge writes a short rationale before its verdict (saved)")
    reasoning_tokens: int = option(160, help="most tokens of a rationale")
    min_confidence: float = option(
        0.0, help="pairs with confidence |p - 0.5| * 2 below this (and exact ties) go to dropped.jsonl"
    )
    labels: str | None = option(None, help="preferences file of (human) labels to measure agreement against")
    limit: int | None = option(None, help="judge only the first N records")
    batch_size: int = option(8, help="judge inputs per forward pass")
    timeout: float = option(60.0, help="--judge-url: seconds to wait for an answer")
    retries: int = option(2, help="--judge-url: attempts after the first when the connection fails")

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("give the input: --data FILE (candidates or preferences)")
        if not self.out:
            raise ValueError("give the output folder: --out DIR")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.reasoning_tokens < 1:
            raise ValueError(f"reasoning_tokens must be >= 1, got {self.reasoning_tokens}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.timeout <= 0 or self.retries < 0:
            raise ValueError("timeout must be > 0 and retries >= 0")
        if bool(self.judge_url) != bool(self.judge_model):
            raise ValueError("--judge-url and --judge-model go together (the server's model name)")
        if self.judge_url and self.mode == "pointwise":
            raise ValueError("pointwise judging runs on a local model; --judge-url judges pairs only")
        if self.mode == "pointwise" and self.reasoning:
            raise ValueError("reasoning is for pairwise judging")
        if self.template is not None:
            path = Path(self.template)
            if not path.is_file():
                raise ValueError(f"template: no such file {path}")
            try:
                self.template_text()
            except ValueError as exc:
                raise ValueError(f"template {path}: {exc}") from exc

    def template_text(self) -> str:
        """The rubric: the template file's text, or the built-in default of the mode (checked)."""
        if self.template is None:
            return DEFAULT_PAIRWISE_TEMPLATE if self.mode == "pairwise" else DEFAULT_JUDGE_TEMPLATE
        text = Path(self.template).read_text(encoding="utf-8").rstrip("\n")
        if self.mode == "pairwise":
            check_pair_template(text)
        else:
            check_judge_template(text)
        return text


# ---------------------------------------------------------------------------------------------- records


def _base_record(candidates: Candidates, i: int) -> dict[str, Any]:
    record: dict[str, Any] = {"prompt": candidates.prompts[i]}
    if candidates.ids[i] is not None:
        record["id"] = candidates.ids[i]
    return record


def _order_detail(verdict: Verdict, shown_first: str) -> dict[str, Any]:
    detail: dict[str, Any] = {"shown_first": shown_first, "p_first_shown": verdict.p_a}
    if verdict.mass is not None:
        detail["answer_mass"] = verdict.mass
    if verdict.rationale is not None:
        detail["rationale"] = verdict.rationale
    return detail


def pairwise_records(
    candidates: Candidates, judgements: Sequence[PairJudgement], judge_name: str, min_confidence: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(preferences, dropped)``: kept pairs as preference records with a ``judge`` field; the others in
    the candidates format (``prompt``, ``responses``, the judge's detail in ``meta.judge``), for people to
    label (``rlxf label project create --data dropped.jsonl``)."""
    preferences, dropped = [], []
    for i, j in enumerate(judgements):
        responses = candidates.responses[i]
        winner = 0 if j.winner is None else j.winner
        names = ("chosen", "rejected") if winner == 0 else ("rejected", "chosen")
        detail = {
            "name": judge_name,
            "p_chosen": max(j.p_first, 1 - j.p_first),
            "confidence": j.confidence,
            "consistent": j.consistent,
            "orders": [_order_detail(j.order1, names[0]), _order_detail(j.order2, names[1])],
        }
        record = _base_record(candidates, i)
        if keep(j, min_confidence):
            record["chosen"], record["rejected"] = responses[winner], responses[1 - winner]
            record["judge"] = detail
            preferences.append(record)
        else:
            detail.pop("p_chosen")
            detail["p_first"] = j.p_first
            for order in detail["orders"]:
                order["shown_first"] = "responses[0]" if order["shown_first"] == names[0] else "responses[1]"
            record["responses"] = responses
            record["meta"] = {"judge": detail}  # under meta: a labelling project takes the file as it is
            dropped.append(record)
    return preferences, dropped


def _pair_backend(cfg: JudgeConfig, template: str) -> PairJudge:
    """The OpenAI-compatible server of ``judge_url``, or the local model of ``model``."""
    options = {"reasoning": cfg.reasoning, "reasoning_tokens": cfg.reasoning_tokens}
    if cfg.judge_url:
        return OpenAIPairJudge(
            cfg.judge_url,
            cfg.judge_model or "",
            template,
            timeout=cfg.timeout,
            retries=cfg.retries,
            api_key=os.environ.get(cfg.api_key_env) or None,
            **options,
        )
    return LocalPairJudge.load(cfg.model, template, batch_size=cfg.batch_size, **options)


def _judge_pairwise(
    cfg: JudgeConfig, candidates: Candidates, template: str, labels: list[int | None] | None
) -> tuple[dict[str, float], dict[str, list[dict[str, Any]]]]:
    """``(figures, files)`` of pairwise judging: every pair in both orders."""
    backend = _pair_backend(cfg, template)
    prompts = [as_text(p) for p in candidates.prompts]
    first = [as_text(r[0]) for r in candidates.responses]
    second = [as_text(r[1]) for r in candidates.responses]
    judgements = judge_pairs(backend, prompts, first, second)
    figures = pairwise_summary(judgements, labels, cfg.min_confidence)
    preferences, dropped = pairwise_records(candidates, judgements, backend.name, cfg.min_confidence)
    return figures, {"preferences.jsonl": preferences, "dropped.jsonl": dropped}


def _judge_pointwise(
    cfg: JudgeConfig, candidates: Candidates, template: str, labels: list[int | None] | None
) -> tuple[dict[str, float], dict[str, list[dict[str, Any]]]]:
    """``(figures, files)`` of pointwise judging: every response rated 1-9."""
    rater = PointwiseJudge.load(cfg.model, template=template, batch_size=cfg.batch_size)
    index = [(i, k) for i, responses in enumerate(candidates.responses) for k in range(len(responses))]
    ratings = rater.rate(
        [as_text(candidates.prompts[i]) for i, _ in index],
        [as_text(candidates.responses[i][k]) for i, k in index],
    )
    rows, by_record = [], {}
    for (i, k), probs, expected, mass in zip(index, ratings.probs, ratings.expected, ratings.confidence):
        row = _base_record(candidates, i)
        row["completion"], row["rating"] = candidates.responses[i][k], float(expected)
        row["judge"] = {
            "name": cfg.model.name_or_path,
            "probs": [round(float(p), 6) for p in probs],
            "answer_mass": float(mass),
        }
        rows.append(row)
        by_record.setdefault(i, []).append(float(expected))
    figures = {
        "ratings": float(len(rows)),
        "rating/mean": float(ratings.expected.mean()) if rows else math.nan,
        "answer_mass/mean": float(ratings.confidence.mean()) if rows else math.nan,
    }
    if labels is not None:  # the higher-rated response of a labelled pair should be the preferred one
        winners = [
            None if len(r) != 2 or r[0] == r[1] else (0 if r[0] > r[1] else 1)
            for r in (by_record[i] for i in range(len(candidates)))
        ]
        figures.update(label_agreement(winners, labels))
    return figures, {"ratings.jsonl": rows}


def log_figures(figures: dict[str, float], files: dict[str, list[dict[str, Any]]], out: str | Path) -> None:
    """The figures a feedback command reports, one a line, then what it wrote where (``logger.info``)."""
    width = max(len(name) for name in figures)
    lines = [f"{name:<{width}}  {value:.4g}" for name, value in figures.items()]
    written = ", ".join(f"{len(rows)} in {name}" for name, rows in files.items())
    logger.info("%s\nwrote %s to %s", "\n".join(lines), written, out)


def judge(cfg: JudgeConfig) -> CommandResult:
    """Run ``rlxf judge`` (module docstring): check the input (and labels) and the output folder, judge,
    write the folder and log the figures. Returns them with the folder."""
    start = time.perf_counter()
    template = cfg.template_text()
    candidates = read_candidates(cfg.data, cfg.mode)
    if cfg.limit is not None:
        candidates = candidates.select(cfg.limit)
    matched = attach_labels(candidates, cfg.labels) if cfg.labels else None
    out = claim_output_folder(cfg.out, OUTPUT_FILES, overwrite=cfg.overwrite, command="rlxf judge")

    labels = candidates.labels if any(y is not None for y in candidates.labels) else None
    run = _judge_pairwise if cfg.mode == "pairwise" else _judge_pointwise
    figures, files = run(cfg, candidates, template, labels)
    if matched is not None:
        figures["labels/matched"] = float(matched)
    figures["wall_time_s"] = time.perf_counter() - start
    summary = {
        "judge": cfg.judge_model if cfg.judge_url else cfg.model.name_or_path,
        "data": str(cfg.data),
        "mode": cfg.mode,
        "metrics": figures,
    }
    write_output_folder(out, cfg, summary, files)
    log_figures(figures, files, out)
    return CommandResult(out=out, summary=summary, metrics=numeric(figures))


__all__ = ["JudgeConfig", "OUTPUT_FILES", "judge", "label_agreement", "pairwise_records", "pairwise_summary"]
