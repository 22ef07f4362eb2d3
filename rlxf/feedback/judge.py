"""``rlxf judge``: AI feedback (RLAIF): a judge model compares (or rates) responses from a written rubric.

Pairwise judging (the default), as in RLAIF (Lee et al. 2023) and AlpacaEval:

* The judge reads a *template* holding the rubric (a constitution: what makes a response better) and the
  pair, with placeholders ``{prompt}``, ``{response_a}`` and ``{response_b}``; rlxf appends the answer
  instruction (:data:`ANSWER_INSTRUCTION`, or :data:`REASONING_INSTRUCTION` with ``reasoning: true``).
* The verdict is read from the judge's next-token distribution, not from a sampled token: ``p_A`` and
  ``p_B`` are the summed probabilities of every token that decodes to the letter (``"A"``, ``" A"`` ...:
  :func:`letter_token_ids`), and ``P(A) = p_A / (p_A + p_B)``.
* Every pair is asked in both orders, (first, second) and (second, first). The probability that the first
  response is better is :func:`combine_orders`: ``(P(A | order 1) + 1 - P(A | order 2)) / 2``. A judge
  that adds a constant ``delta`` to ``P(A)`` whatever it reads (position bias) contributes ``+delta`` and
  ``-delta``, which cancel (Zheng et al. 2023, "swap positions"; Wang et al. 2023).
* *Confidence* is ``|p_first - 0.5| * 2`` in [0, 1]: 0 for a coin flip, 1 when both orders are certain and
  agree. Pairs below ``min_confidence`` (and exact ties, confidence 0) are not written as preferences; they
  go to ``dropped.jsonl`` in the candidates format, ready for people to label.
* *Position consistency* is the share of pairs whose argmax verdict names the same response in both
  orders; ``first_shown/order1`` and ``first_shown/order2`` are the shares of pairs where the judge
  preferred whatever was shown first (0.5 and 0.5 for an unbiased judge on random pairs).
* With ``reasoning: true`` the judge first writes a short rationale (greedy, through the generation
  engine), then ``"Verdict:"`` is appended and the letter read; rationales are saved in the output.
* Backends: a local model (any model reference: :class:`LocalPairJudge`) or an OpenAI-compatible server
  (:class:`OpenAIPairJudge`: ``POST {url}/chat/completions`` with ``logprobs``, ``top_logprobs: 20`` and
  ``max_tokens: 1``; when the server returns no log-probs the answer text is used, P(A) then 1, 0 or 0.5).

Pointwise judging (``mode: pointwise``) rates every response 1-9 with the pointwise judge of
:mod:`rlxf.feedback.rewards` (:class:`~rlxf.feedback.rewards.JudgeScorer`) and writes ratings.

Input (:func:`read_candidates`): candidates JSONL (``{"prompt", "responses": [...], "id"?}``, exactly two
responses per line for pairwise judging), or a preferences file (``prompt`` + ``chosen`` + ``rejected``),
whose pairs are judged as unlabelled pairs and whose labels give the judge's agreement. ``labels: FILE``
(human preferences) gives agreement for candidates input, matching pairs by prompt and response texts.

Output folder: ``preferences.jsonl`` (or ``ratings.jsonl``), each record with a ``judge`` field holding the
probabilities, the per-order verdicts, the confidence and rationales; ``dropped.jsonl``; ``summary.json``
(:func:`pairwise_summary`: position consistency, position bias, mean confidence, answer mass, agreement with
labels as accuracy with its binomial standard error); ``config.yaml``.

Left out: pointwise judging over HTTP, several judges voting, Cohen's kappa (with labels that are all
"first wins", as a preferences file gives, kappa is undefined; accuracy with its standard error is
reported instead), ``margin`` fields derived from confidence (``margin`` changes reward-model training,
so it is left to the user), and concurrent HTTP requests.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from rlxf.config import option, to_yaml
from rlxf.data import encode_prompt, render_chat
from rlxf.data.candidates import Candidates, Mode, as_text, attach_labels, read_candidates
from rlxf.feedback.rewards import (
    DEFAULT_JUDGE_TEMPLATE,
    JudgeScorer,
    check_judge_template,
    next_token_probs,
)
from rlxf.models.load import ModelConfig, load_model
from rlxf.rollout.engine import SamplingConfig
from rlxf.rollout.hf import HFEngine
from rlxf.train.atomic import write_jsonl_atomic, write_text_atomic
from rlxf.train.run import RunExistsError

DEFAULT_PAIRWISE_TEMPLATE = (
    "You are a careful, impartial judge. Compare two responses to the same prompt and decide which one "
    "is better.\n\n"
    "A better response:\n"
    "- does what the prompt asks and stays on topic;\n"
    "- is correct, and honest about what it does not know;\n"
    "- is clear, fluent and well organised, without needless repetition;\n"
    "- is helpful and harmless: it does not insult, mislead or encourage harm.\n"
    "Judge the content, not the length or the order in which the responses are shown.\n\n"
    "[Prompt]\n{prompt}\n\n"
    "[Response A]\n{response_a}\n\n"
    "[Response B]\n{response_b}"
)
"""The default rubric (a short constitution) and the pair; ``--template FILE`` replaces it."""

ANSWER_INSTRUCTION = "\n\nWhich response is better? Answer with a single letter: A or B."
"""Appended to the template when the verdict is read at once."""

REASONING_INSTRUCTION = (
    "\n\nFirst explain in two or three sentences which response is better and why. Then write "
    '"Verdict: A" or "Verdict: B".'
)
"""Appended to the template with ``reasoning: true``."""

VERDICT_CUE = "Verdict:"
"""Written after the rationale (and after the rubric for a judge without a chat template): the judge's
next token is then the letter."""

FOLLOW_UP = "Now give your verdict as a single letter: A or B."
"""The HTTP backend's second turn after a rationale (a chat API cannot continue the assistant's turn)."""

PAIR_FIELDS = ("{prompt}", "{response_a}", "{response_b}")


# ---------------------------------------------------------------------------------------------- input


# ---------------------------------------------------------------------------------------------- verdicts


def check_pair_template(template: str) -> None:
    """Raise ``ValueError`` unless ``template`` formats with exactly ``{prompt}``, ``{response_a}`` and
    ``{response_b}`` (each used)."""
    try:
        template.format(prompt="", response_a="", response_b="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            "the pairwise judge template must use only {prompt}, {response_a} and {response_b} (write {{ }} "
            f"for a literal brace): {exc!r}"
        ) from exc
    for name in PAIR_FIELDS:
        if name not in template:
            raise ValueError(f"the pairwise judge template has no {name} placeholder")


def letter_token_ids(tokenizer: Any, letter: str) -> list[int]:
    """Every token id that decodes to ``letter`` once surrounding whitespace is stripped (``"A"``, ``" A"``,
    ``"\\nA"`` ...), special tokens apart: a model may write the answer with or without a leading space."""
    special = set(tokenizer.all_special_ids)
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    ids = [i for i, text in enumerate(texts) if text.strip() == letter and i not in special]
    if not ids:
        raise ValueError(f"the judge's tokenizer has no token that spells {letter!r}")
    return ids


def combine_orders(p_a_order1: float, p_a_order2: float) -> float:
    """P(the first response is better) from both orders: order 1 shows it as A, order 2 as B.

    ``(P(A | 1) + 1 - P(A | 2)) / 2``: a constant bias towards either position cancels."""
    return 0.5 * (p_a_order1 + 1.0 - p_a_order2)


def confidence_of(p_first: float) -> float:
    """``|p_first - 0.5| * 2``: 0 for a coin flip, 1 for a certain verdict."""
    return abs(p_first - 0.5) * 2.0


@dataclass
class Verdict:
    """One reading of one order: ``p_a`` = P(A) / (P(A) + P(B)); ``mass`` = P(A) + P(B) before
    renormalising (how much the judge wanted to answer with a letter at all; ``None`` when read from
    text); ``rationale`` when the judge reasoned first."""

    p_a: float
    mass: float | None = None
    rationale: str | None = None


class PairJudge(Protocol):
    """A backend: ``verdicts(prompts, responses_a, responses_b)`` reads one :class:`Verdict` per pair, in
    the order given (response A shown first)."""

    name: str

    def verdicts(
        self, prompts: list[str], responses_a: list[str], responses_b: list[str]
    ) -> list[Verdict]: ...


def fill_template(template: str, reasoning: bool, prompt: str, response_a: str, response_b: str) -> str:
    """The judge's user turn: the template filled, then the answer (or reasoning) instruction."""
    body = template.format(prompt=prompt, response_a=response_a, response_b=response_b)
    return body + (REASONING_INSTRUCTION if reasoning else ANSWER_INSTRUCTION)


class LocalPairJudge:
    """A pairwise judge on a local causal LM: the rubric as one user turn through its chat template (plain
    text followed by :data:`VERDICT_CUE` without one); P(A) and P(B) from one forward pass."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        template: str = DEFAULT_PAIRWISE_TEMPLATE,
        *,
        reasoning: bool = False,
        reasoning_tokens: int = 160,
        batch_size: int = 8,
        name: str = "local",
    ) -> None:
        check_pair_template(template)
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.reasoning = reasoning
        self.reasoning_tokens = reasoning_tokens
        self.batch_size = batch_size
        self.name = name
        self.letter_ids = [letter_token_ids(tokenizer, "A"), letter_token_ids(tokenizer, "B")]

    def render(self, prompt: str, response_a: str, response_b: str) -> str:
        """The text the judge continues: with ``reasoning`` its rationale comes next, else the letter."""
        rubric = fill_template(self.template, self.reasoning, prompt, response_a, response_b)
        if getattr(self.tokenizer, "chat_template", None) is None:
            return rubric + ("\n" if self.reasoning else "\n" + VERDICT_CUE)
        return render_chat([{"role": "user", "content": rubric}], self.tokenizer, add_generation_prompt=True)

    def _check_lengths(self, texts: list[str]) -> None:
        """A judge input longer than the model's context would be read with positions it never saw."""
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context is None:
            return
        budget = context - 1 - (self.reasoning_tokens + 2 if self.reasoning else 0)
        for i, text in enumerate(texts):
            length = len(encode_prompt(self.tokenizer, text))
            if length > budget:
                raise ValueError(
                    f"judge input {i} (rubric + prompt + both responses) has {length} tokens; the judge's "
                    f"context of {context} leaves {budget} for it: shorten the template or the texts"
                )

    def verdicts(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> list[Verdict]:
        texts = [self.render(p, a, b) for p, a, b in zip(prompts, responses_a, responses_b)]
        self._check_lengths(texts)
        rationales: list[str | None] = [None] * len(texts)
        if self.reasoning and texts:
            engine = HFEngine(self.model, self.tokenizer)
            # Greedy and cut before the judge writes its own verdict: the letter is read, not sampled.
            sampling = SamplingConfig(
                max_new_tokens=self.reasoning_tokens,
                temperature=0.0,
                stop=["Verdict"],
                batch_size=self.batch_size,
            )
            rationales = [c.strip() for c in engine.generate(texts, sampling).completions]
            texts = [f"{text}{rationale}\n{VERDICT_CUE}" for text, rationale in zip(texts, rationales)]
        probs = next_token_probs(
            self.model, self.tokenizer, texts, self.letter_ids, self.batch_size
        )  # [N, 2]
        mass = probs.sum(dim=-1)
        # A judge that puts (numerically) no mass on either letter has no preference: 0.5, not NaN.
        p_a = torch.where(mass > 0, probs[:, 0] / mass.clamp(min=1e-30), torch.full_like(mass, 0.5))
        return [
            Verdict(p_a=float(p), mass=float(m), rationale=r)
            for p, m, r in zip(p_a.tolist(), mass.tolist(), rationales)
        ]


class OpenAIPairJudge:
    """A pairwise judge behind an OpenAI-compatible chat completions API (vLLM, llama.cpp server, TGI,
    OpenAI ...). One request per reading: ``max_tokens: 1``, ``temperature: 0``, ``logprobs: true``,
    ``top_logprobs: 20``; P(A) and P(B) sum the top log-probs' tokens that strip to the letters. Without
    log-probs (or with neither letter among them) the answer text decides: P(A) = 1 or 0, 0.5 when the
    text is neither letter. With ``reasoning`` a first request (``max_tokens: reasoning_tokens``) gets the
    rationale, sent back as the assistant's turn followed by :data:`FOLLOW_UP`."""

    def __init__(
        self,
        url: str,
        model: str,
        template: str = DEFAULT_PAIRWISE_TEMPLATE,
        *,
        reasoning: bool = False,
        reasoning_tokens: int = 160,
        timeout: float = 60.0,
        retries: int = 2,
        api_key: str | None = None,
    ) -> None:
        check_pair_template(template)
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.template = template
        self.reasoning = reasoning
        self.reasoning_tokens = reasoning_tokens
        self.timeout = timeout
        self.retries = retries
        self.api_key = api_key
        self.name = f"{model} at {url}"

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.endpoint, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read()
                break
            except urllib.error.HTTPError as exc:  # the server answered: asking again gets the same answer
                detail = exc.read()[:300].decode(errors="replace")
                raise RuntimeError(f"{self.endpoint}: HTTP {exc.code} {exc.reason}: {detail}") from exc
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if attempt == self.retries:
                    raise
                time.sleep(0.5 * 2**attempt)
        try:
            answer = json.loads(payload)
            choice = answer["choices"][0]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise RuntimeError(f"{self.endpoint}: not a chat completion: {payload[:300]!r}") from exc
        return choice

    def _read(self, choice: dict[str, Any]) -> Verdict:
        logprobs = (choice.get("logprobs") or {}).get("content") or []
        if logprobs:
            top = logprobs[0].get("top_logprobs") or [logprobs[0]]
            p = {"A": 0.0, "B": 0.0}
            for entry in top:
                letter = str(entry.get("token", "")).strip()
                if letter in p:
                    p[letter] += math.exp(float(entry["logprob"]))
            mass = p["A"] + p["B"]
            if mass > 0:
                return Verdict(p_a=p["A"] / mass, mass=mass)
        text = str((choice.get("message") or {}).get("content") or "").strip()
        return Verdict(p_a={"A": 1.0, "B": 0.0}.get(text[:1], 0.5))

    def verdicts(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> list[Verdict]:
        out = []
        for prompt, a, b in zip(prompts, responses_a, responses_b):
            messages = [
                {"role": "user", "content": fill_template(self.template, self.reasoning, prompt, a, b)}
            ]
            rationale = None
            if self.reasoning:
                first = self._post(
                    {
                        "model": self.model,
                        "messages": messages,
                        "max_tokens": self.reasoning_tokens,
                        "temperature": 0,
                    }
                )
                rationale = str((first.get("message") or {}).get("content") or "").split("Verdict")[0].strip()
                messages += [
                    {"role": "assistant", "content": rationale},
                    {"role": "user", "content": FOLLOW_UP},
                ]
            choice = self._post(
                {
                    "model": self.model,
                    "messages": messages,
                    "max_tokens": 1,
                    "temperature": 0,
                    "logprobs": True,
                    "top_logprobs": 20,
                }
            )
            verdict = self._read(choice)
            verdict.rationale = rationale
            out.append(verdict)
        return out


# ---------------------------------------------------------------------------------------------- pairs


@dataclass
class PairJudgement:
    """A pair judged in both orders. ``order1`` shows the first response as A, ``order2`` as B;
    ``p_first`` is :func:`combine_orders` of the two, ``confidence`` :func:`confidence_of` it."""

    order1: Verdict
    order2: Verdict
    p_first: float
    confidence: float

    @property
    def consistent(self) -> bool:
        """Both orders' argmax verdicts name the same response (an exact 0.5 in either names none)."""
        return (self.order1.p_a > 0.5 and self.order2.p_a < 0.5) or (
            self.order1.p_a < 0.5 and self.order2.p_a > 0.5
        )

    @property
    def winner(self) -> int | None:
        """0 (first), 1 (second) or ``None`` for an exact tie."""
        return None if self.p_first == 0.5 else (0 if self.p_first > 0.5 else 1)


def judge_pairs(
    judge: PairJudge, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]
) -> list[PairJudgement]:
    """Ask ``judge`` about every pair in both orders (one call, so a model batches all 2N readings)."""
    n = len(prompts)
    prompts, first, second = list(prompts), list(first), list(second)
    verdicts = judge.verdicts(prompts + prompts, first + second, second + first)
    out = []
    for v1, v2 in zip(verdicts[:n], verdicts[n:]):
        p_first = combine_orders(v1.p_a, v2.p_a)
        out.append(PairJudgement(order1=v1, order2=v2, p_first=p_first, confidence=confidence_of(p_first)))
    return out


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


OUTPUT_FILES = ("preferences.jsonl", "ratings.jsonl", "dropped.jsonl", "summary.json", "config.yaml")


def check_output_folder(out: str | Path, overwrite: bool) -> None:
    """Refuse (before any work) a folder that already holds feedback output, unless ``overwrite``."""
    present = [name for name in OUTPUT_FILES if (Path(out) / name).exists()]
    if present and not overwrite:
        raise RunExistsError(f"{out} already holds {', '.join(present)}; pass --overwrite to replace them")


def write_feedback(
    out: str | Path, files: dict[str, list[dict[str, Any]]], summary: dict[str, Any], cfg: Any
) -> None:
    """Write the output folder: each JSONL file (atomically), ``config.yaml``, then ``summary.json`` last
    (its presence marks a finished run). Files of an earlier run that this one does not write are removed."""
    out = Path(out)
    for name in OUTPUT_FILES:
        if name.endswith(".jsonl") and name not in files:
            (out / name).unlink(missing_ok=True)
    for name, rows in files.items():
        write_jsonl_atomic(out / name, rows)
    write_text_atomic(out / "config.yaml", to_yaml(cfg))
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")


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


def _api_key(cfg: JudgeConfig) -> str | None:
    return os.environ.get(cfg.api_key_env) or None


def judge(cfg: JudgeConfig) -> dict[str, Any]:
    """The library function behind ``rlxf judge``: read and check the input (and labels), judge, write the
    output folder, print the summary. Returns the summary."""
    start = time.perf_counter()
    template = cfg.template_text()
    candidates = read_candidates(cfg.data, cfg.mode)
    if cfg.limit is not None:
        candidates = candidates.select(cfg.limit)
    matched = attach_labels(candidates, cfg.labels) if cfg.labels else None
    check_output_folder(cfg.out, cfg.overwrite)

    prompts = [as_text(p) for p in candidates.prompts]
    labels = candidates.labels if any(y is not None for y in candidates.labels) else None
    if cfg.mode == "pairwise":
        backend: PairJudge
        if cfg.judge_url:
            backend = OpenAIPairJudge(
                cfg.judge_url,
                cfg.judge_model or "",
                template,
                reasoning=cfg.reasoning,
                reasoning_tokens=cfg.reasoning_tokens,
                timeout=cfg.timeout,
                retries=cfg.retries,
                api_key=_api_key(cfg),
            )
        else:
            model, tokenizer = load_model(cfg.model)
            backend = LocalPairJudge(
                model,
                tokenizer,
                template,
                reasoning=cfg.reasoning,
                reasoning_tokens=cfg.reasoning_tokens,
                batch_size=cfg.batch_size,
                name=cfg.model.name_or_path,
            )
        first = [as_text(r[0]) for r in candidates.responses]
        second = [as_text(r[1]) for r in candidates.responses]
        judgements = judge_pairs(backend, prompts, first, second)
        summary: dict[str, Any] = pairwise_summary(judgements, labels, cfg.min_confidence)
        preferences, dropped = pairwise_records(candidates, judgements, backend.name, cfg.min_confidence)
        files = {"preferences.jsonl": preferences, "dropped.jsonl": dropped}
    else:
        model, tokenizer = load_model(cfg.model)
        scorer = JudgeScorer(model, tokenizer, template=template, batch_size=cfg.batch_size)
        index = [(i, k) for i, responses in enumerate(candidates.responses) for k in range(len(responses))]
        ratings = scorer.rate(
            [prompts[i] for i, _ in index], [as_text(candidates.responses[i][k]) for i, k in index]
        )
        rows, by_pair = [], {}
        for (i, k), probs, expected, mass in zip(index, ratings.probs, ratings.expected, ratings.confidence):
            row = _base_record(candidates, i)
            row["completion"], row["rating"] = candidates.responses[i][k], float(expected)
            row["judge"] = {
                "name": cfg.model.name_or_path,
                "probs": [round(float(p), 6) for p in probs],
                "answer_mass": float(mass),
            }
            rows.append(row)
            by_pair.setdefault(i, []).append(float(expected))
        summary = {
            "ratings": float(len(rows)),
            "rating/mean": float(ratings.expected.mean()) if rows else math.nan,
            "answer_mass/mean": float(ratings.confidence.mean()) if rows else math.nan,
        }
        if labels is not None:  # the higher-rated response of a labelled pair should be the preferred one
            winners = [
                None if len(r) != 2 or r[0] == r[1] else (0 if r[0] > r[1] else 1)
                for r in (by_pair[i] for i in range(len(candidates)))
            ]
            summary.update(label_agreement(winners, labels))
        files = {"ratings.jsonl": rows}
    if matched is not None:
        summary["labels/matched"] = float(matched)
    summary["wall_time_s"] = time.perf_counter() - start
    summary_file = {
        "judge": cfg.judge_model if cfg.judge_url else cfg.model.name_or_path,
        "data": str(cfg.data),
        "mode": cfg.mode,
        "metrics": summary,
    }
    write_feedback(cfg.out, files, summary_file, cfg)
    width = max(len(name) for name in summary)
    for name, value in summary.items():
        print(f"{name:<{width}}  {value:.4g}")
    written = ", ".join(f"{len(rows)} in {name}" for name, rows in files.items())
    print(f"wrote {written} to {cfg.out}", file=sys.stderr)
    return summary
