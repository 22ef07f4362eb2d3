"""A language model as a judge: rubrics, answer-token probabilities, 1-9 ratings and both-orders verdicts.

Everything rlxf does with an LM judge lives here; the users are thin: the ``judge:MODEL`` reward source
(:class:`~rlxf.feedback.rewards.JudgeReward`), ``rlxf judge`` (:mod:`rlxf.feedback.judge`) and the win
rate of ``rlxf eval`` (:mod:`rlxf.eval.evaluate`).

**Reading the answer, not sampling it.** The judge reads a rubric filled with the texts to judge, given as
one user turn through its chat template (plain text followed by a cue such as ``"Rating:"`` when it has
none). One forward pass gives its next-token distribution, and :func:`next_token_probs` sums the
probabilities of every token that spells each possible answer (``"7"`` and ``" 7"``; ``"A"``, ``" A"`` ...).
The answer is then a probability, deterministic and smooth, where a sampled token would be noisy and an
argmax would tie.

**Pointwise** (:class:`PointwiseJudge`): the rubric (:data:`DEFAULT_JUDGE_TEMPLATE`, placeholders
``{prompt}`` and ``{completion}``) asks for a digit 1-9; the rating is the expected digit under the judge's
distribution renormalised over the nine digits (as G-Eval, Liu et al. 2023, weights ratings by their
probabilities). The mass the judge put on the digits before renormalising is kept as ``confidence``.

**Pairwise** (:class:`LocalPairJudge`, :class:`OpenAIPairJudge`; RLAIF, Lee et al. 2023; AlpacaEval):

* the rubric (:data:`DEFAULT_PAIRWISE_TEMPLATE`, placeholders ``{prompt}``, ``{response_a}`` and
  ``{response_b}``) is followed by :data:`ANSWER_INSTRUCTION`, or by :data:`REASONING_INSTRUCTION` when the
  judge first writes a short rationale (greedy; then :data:`VERDICT_CUE` is appended and the letter read);
* ``P(A) = p_A / (p_A + p_B)``, with ``p_A`` the summed probability of the tokens that spell ``A``
  (:func:`letter_token_ids`);
* :func:`judge_pairs` asks about every pair in both orders; P(the first response is better) is
  :func:`combine_orders`: ``(P(A | order 1) + 1 - P(A | order 2)) / 2``, so a judge that adds a constant
  ``delta`` to P(A) whatever it reads (position bias) contributes ``+delta`` and ``-delta``, which cancel
  (Zheng et al. 2023, "swap positions"; Wang et al. 2023);
* confidence is ``|p_first - 0.5| * 2`` (:func:`confidence_of`): 0 for a coin flip, 1 when both orders are
  certain and agree.

The OpenAI-compatible backend posts to ``{url}/chat/completions`` through :func:`~rlxf.feedback.http.post_json`
with ``max_tokens: 1``, ``logprobs`` and ``top_logprobs: 20``; without log-probs in the answer it falls back
to the answer text (P(A) then 1, 0 or 0.5).

Left out: pointwise judging over HTTP, several judges voting, and concurrent HTTP requests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from rlxf.data import encode_prompt, render_chat
from rlxf.data.collate import pad
from rlxf.feedback.http import post_json
from rlxf.models.load import ModelConfig, load_model
from rlxf.rollout.engine import SamplingConfig
from rlxf.rollout.hf import HFEngine

# ---------------------------------------------------------------------------------------------- rubrics

DEFAULT_JUDGE_TEMPLATE = (
    "Rate the response below to the prompt for quality and helpfulness: is it relevant, correct, clear "
    "and fluent? Use a scale from 1 (very poor) to 9 (excellent).\n\n"
    "Prompt:\n{prompt}\n\n"
    "Response:\n{completion}\n\n"
    "Reply with a single digit from 1 to 9."
)
"""The pointwise judge's default rubric; ``{prompt}`` and ``{completion}`` are filled in."""

RATING_CUE = "\nRating:"
"""Appended to a pointwise rubric for a judge without a chat template, so its next token is the rating."""

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
"""The default pairwise rubric (a short constitution) and the pair; ``--template FILE`` replaces it."""

ANSWER_INSTRUCTION = "\n\nWhich response is better? Answer with a single letter: A or B."
"""Appended to a pairwise rubric when the verdict is read at once."""

REASONING_INSTRUCTION = (
    "\n\nFirst explain in two or three sentences which response is better and why. Then write "
    '"Verdict: A" or "Verdict: B".'
)
"""Appended to a pairwise rubric when the judge reasons first."""

VERDICT_CUE = "Verdict:"
"""Written after the rationale (and after the rubric for a judge without a chat template): the judge's
next token is then the letter."""

FOLLOW_UP = "Now give your verdict as a single letter: A or B."
"""The HTTP backend's second turn after a rationale (a chat API cannot continue the assistant's turn)."""


def _check_placeholders(template: str, names: Sequence[str], kind: str) -> None:
    """Raise ``ValueError`` unless ``template`` formats with exactly the placeholders ``names``, each used."""
    try:
        template.format(**dict.fromkeys(names, ""))
    except (KeyError, IndexError, ValueError) as exc:
        fields = [f"{{{name}}}" for name in names]
        allowed = ", ".join(fields[:-1]) + " and " + fields[-1]
        raise ValueError(
            f"the {kind} template must use only {allowed} (write {{{{ }}}} for a literal brace): {exc!r}"
        ) from exc
    for name in names:
        if f"{{{name}}}" not in template:
            raise ValueError(f"the {kind} template has no {{{name}}} placeholder")


def check_judge_template(template: str) -> None:
    """Raise ``ValueError`` unless a pointwise rubric uses exactly ``{prompt}`` and ``{completion}``."""
    _check_placeholders(template, ("prompt", "completion"), "judge")


def check_pair_template(template: str) -> None:
    """Raise ``ValueError`` unless a pairwise rubric uses exactly ``{prompt}``, ``{response_a}`` and
    ``{response_b}``."""
    _check_placeholders(template, ("prompt", "response_a", "response_b"), "pairwise judge")


def judge_input(tokenizer: Any, rubric: str, cue: str) -> str:
    """The text a local judge continues: ``rubric`` as one user turn through the chat template with the
    assistant's turn opened, or, for a tokenizer without one, ``rubric + cue``."""
    if getattr(tokenizer, "chat_template", None) is None:
        return rubric + cue
    return render_chat([{"role": "user", "content": rubric}], tokenizer, add_generation_prompt=True)


def load_judge_model(model: ModelConfig | str) -> tuple[Any, Any]:
    """A judge model and its tokenizer from a model reference (registry name, HF folder, ``.gguf``) or a
    full :class:`~rlxf.models.load.ModelConfig`; loaded for inference."""
    return load_model(ModelConfig(name_or_path=model) if isinstance(model, str) else model)


# ---------------------------------------------------------------------------------------------- answer tokens


def digit_token_ids(tokenizer: Any) -> list[list[int]]:
    """For each digit 1..9, the ids of the single tokens that spell it (``"7"``, and ``" 7"`` where the
    vocabulary has it: a model continuing ``"Rating:"`` writes the space with the digit)."""
    ids: list[list[int]] = []
    for digit in "123456789":
        found: list[int] = []
        for text in (digit, " " + digit):
            encoded = tokenizer.encode(text, add_special_tokens=False)
            if len(encoded) == 1 and encoded[0] not in found:
                found.append(encoded[0])
        if not found:
            raise ValueError(f"the judge's tokenizer has no single token for the digit {digit}")
        ids.append(found)
    flat = [i for group in ids for i in group]
    if len(set(flat)) != len(flat):
        raise ValueError("the judge's tokenizer spells two digits with the same token")
    return ids


def letter_token_ids(tokenizer: Any, letter: str) -> list[int]:
    """Every token id that decodes to ``letter`` once surrounding whitespace is stripped (``"A"``, ``" A"``,
    ``"\\nA"`` ...), special tokens apart: a model may write the answer with or without a leading space."""
    special = set(tokenizer.all_special_ids)
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    ids = [i for i, text in enumerate(texts) if text.strip() == letter and i not in special]
    if not ids:
        raise ValueError(f"the judge's tokenizer has no token that spells {letter!r}")
    return ids


@torch.no_grad()
def next_token_probs(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    token_groups: Sequence[Sequence[int]],
    batch_size: int = 16,
) -> torch.Tensor:
    """``[N, K]``: for each text, the probability that the model's next token is one of ``token_groups[k]``
    (the summed probabilities of that group's ids), read from one forward pass per batch of texts.

    Texts are encoded as prompts (:func:`~rlxf.data.encode_prompt`) and left-padded.
    """
    device = next(model.parameters()).device
    rows = [encode_prompt(tokenizer, text) for text in texts]
    out = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        # Left padding puts every row's last token in the last column, where the next token is read.
        input_ids = pad(batch, int(tokenizer.pad_token_id), "left").to(device)  # [b, T]
        lengths = torch.tensor([len(r) for r in batch], device=device)
        width = input_ids.shape[1]
        mask = torch.arange(width, device=device)[None, :] >= (width - lengths)[:, None]  # [b, T]
        # Positions count from each row's first real token, so a padded row is read as if unpadded.
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        logits = model(
            input_ids=input_ids, attention_mask=mask.long(), position_ids=positions, use_cache=False
        ).logits[:, -1, :]  # [b, V]
        probs = logits.float().softmax(dim=-1)
        out.append(torch.stack([probs[:, list(ids)].sum(dim=-1) for ids in token_groups], dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, len(token_groups))


# ---------------------------------------------------------------------------------------------- pointwise


@dataclass
class JudgeRatings:
    """A judge's ratings of N completions: ``probs`` ``[N, 9]`` (P(rating = 1..9), renormalised over the
    digits), ``expected`` ``[N]`` (sum_d d * P(d), in [1, 9]) and ``confidence`` ``[N]`` (the probability
    mass the judge put on the digits before renormalising: low means it wanted to say something else)."""

    probs: torch.Tensor
    expected: torch.Tensor
    confidence: torch.Tensor


class PointwiseJudge:
    """A language model that rates each completion 1-9 from a rubric (module docstring, "Pointwise")."""

    def __init__(
        self, model: Any, tokenizer: Any, template: str = DEFAULT_JUDGE_TEMPLATE, batch_size: int = 16
    ) -> None:
        check_judge_template(template)
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.batch_size = batch_size
        self.digit_ids = digit_token_ids(tokenizer)

    @classmethod
    def load(
        cls, model: ModelConfig | str, *, template: str = DEFAULT_JUDGE_TEMPLATE, batch_size: int = 16
    ) -> PointwiseJudge:
        """The judge from a model reference or a :class:`~rlxf.models.load.ModelConfig`."""
        judge_model, tokenizer = load_judge_model(model)
        return cls(judge_model, tokenizer, template=template, batch_size=batch_size)

    def render(self, prompt: str, completion: str) -> str:
        """The text the judge reads for one completion; its next token is the rating."""
        rubric = self.template.format(prompt=prompt, completion=completion)
        return judge_input(self.tokenizer, rubric, RATING_CUE)

    def rate(self, prompts: Sequence[str], completions: Sequence[str]) -> JudgeRatings:
        """The judge's ratings of ``completions[i]`` as answers to ``prompts[i]``."""
        texts = [self.render(p, c) for p, c in zip(prompts, completions)]
        per_digit = next_token_probs(
            self.model, self.tokenizer, texts, self.digit_ids, self.batch_size
        )  # [N, 9]
        confidence = per_digit.sum(dim=-1)  # [N]
        renormalised = per_digit / confidence[:, None]  # [N, 9]
        expected = renormalised @ torch.arange(1, 10, dtype=renormalised.dtype)  # [N]
        return JudgeRatings(probs=renormalised, expected=expected, confidence=confidence)


# ---------------------------------------------------------------------------------------------- pairwise


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
    """A pairwise backend: ``verdicts(prompts, responses_a, responses_b)`` reads one :class:`Verdict` per
    pair, in the order given (response A shown first)."""

    name: str

    def verdicts(
        self, prompts: list[str], responses_a: list[str], responses_b: list[str]
    ) -> list[Verdict]: ...


def fill_pair_template(template: str, reasoning: bool, prompt: str, response_a: str, response_b: str) -> str:
    """The judge's user turn: the pairwise rubric filled, then the answer (or reasoning) instruction."""
    body = template.format(prompt=prompt, response_a=response_a, response_b=response_b)
    return body + (REASONING_INSTRUCTION if reasoning else ANSWER_INSTRUCTION)


class LocalPairJudge:
    """A pairwise judge on a local causal LM: P(A) and P(B) from one forward pass per reading (after a
    greedy rationale when ``reasoning``)."""

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

    @classmethod
    def load(
        cls, model: ModelConfig | str, template: str = DEFAULT_PAIRWISE_TEMPLATE, **options: Any
    ) -> LocalPairJudge:
        """The judge from a model reference or a :class:`~rlxf.models.load.ModelConfig`; ``options`` as for
        the constructor (its ``name`` defaults to the model reference)."""
        judge_model, tokenizer = load_judge_model(model)
        options.setdefault("name", model if isinstance(model, str) else model.name_or_path)
        return cls(judge_model, tokenizer, template, **options)

    def render(self, prompt: str, response_a: str, response_b: str) -> str:
        """The text the judge continues: with ``reasoning`` its rationale comes next, else the letter."""
        rubric = fill_pair_template(self.template, self.reasoning, prompt, response_a, response_b)
        return judge_input(self.tokenizer, rubric, "\n" if self.reasoning else "\n" + VERDICT_CUE)

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
        mass = probs.sum(dim=-1)  # [N]
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
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.name = f"{model} at {url}"

    def _complete(self, messages: list[dict[str, str]], **settings: Any) -> dict[str, Any]:
        """The first choice of one chat completion."""
        body = {"model": self.model, "messages": messages, "temperature": 0, **settings}
        answer = post_json(
            self.endpoint, body, timeout=self.timeout, retries=self.retries, headers=self.headers
        )
        try:
            return answer["choices"][0]
        except (KeyError, IndexError, TypeError) as exc:
            raise RuntimeError(f"{self.endpoint}: not a chat completion: {str(answer)[:300]}") from exc

    @staticmethod
    def _read(choice: dict[str, Any]) -> Verdict:
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
            rubric = fill_pair_template(self.template, self.reasoning, prompt, a, b)
            messages = [{"role": "user", "content": rubric}]
            rationale = None
            if self.reasoning:
                first = self._complete(messages, max_tokens=self.reasoning_tokens)
                rationale = str((first.get("message") or {}).get("content") or "").split("Verdict")[0].strip()
                messages += [
                    {"role": "assistant", "content": rationale},
                    {"role": "user", "content": FOLLOW_UP},
                ]
            verdict = self._read(self._complete(messages, max_tokens=1, logprobs=True, top_logprobs=20))
            verdict.rationale = rationale
            out.append(verdict)
        return out


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


__all__ = [
    "ANSWER_INSTRUCTION",
    "DEFAULT_JUDGE_TEMPLATE",
    "DEFAULT_PAIRWISE_TEMPLATE",
    "JudgeRatings",
    "LocalPairJudge",
    "OpenAIPairJudge",
    "PairJudge",
    "PairJudgement",
    "PointwiseJudge",
    "Verdict",
    "check_judge_template",
    "check_pair_template",
    "combine_orders",
    "judge_pairs",
    "letter_token_ids",
    "next_token_probs",
]
