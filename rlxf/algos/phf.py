"""Pretraining with human feedback (PHF): the five objectives of Korbak et al. 2023, "Pretraining Language
Models with Human Preferences" (ICML 2023), as small pure functions.

A document ``x`` is cut into segments ``x^1 .. x^n`` (sentences, lines or the whole document:
:func:`split_segments`); a scorer gives each segment a **reward** ``R(x^i)``, higher is better (e.g. minus
the PEP8 violations per character; the paper's misalignment scores, lower is better, are rewards with the
sign flipped). Every token inherits the reward of the segment its first character lies in
(:func:`token_segment_ids`, :func:`broadcast_segment_scores`). ``t`` is a threshold on rewards, given or
taken as a quantile of the scores (:func:`resolve_threshold`). The objectives (the paper's section 2,
"Methods"), against the MLE baseline ``L_MLE(x) = -log pi_theta(x) = -sum_i log pi_theta(x^i | x^{<i})``:

* **Filtering**: MLE on the documents whose reward passes, ``L = 1[R(x) >= t] * L_MLE(x)``
  (:func:`filter_keep`). ``R(x)`` is a document's reward; the authors' code takes the mean of its
  segments' scores.
* **Conditional training** (Keskar et al. 2019's control codes, per segment): each segment is prefixed
  with ``c^i = <|good|>`` if ``R(x^i) >= t`` else ``<|bad|>`` and the LM is trained by MLE on the result,
  ``L = -log pi_theta(c^1, x^1, ..., c^n, x^n)`` (:func:`conditional_text`); it is sampled after a
  ``<|good|>``. A small share of segments (1% in the paper) gets no control token
  (:func:`control_drop_mask`) so that the LM can also be sampled unconditionally.

  Sampling may add classifier-free guidance (Sanchez et al. 2023, "Stay on Topic with Classifier-Free
  Guidance", eq. 7, with the other control token as the negative prompt; not in Korbak et al.)::

      log p_g(x_t | x_<t) = log pi(x_t | <|good|>, x_<t) + (g - 1) * [log pi(x_t | <|good|>, x_<t)
                                                                   - log pi(x_t | <|bad|>, x_<t)]

  renormalised over the vocabulary; ``g = 1`` is plain conditional sampling. Each term is a log-softmax,
  so the guidance moves mass towards the tokens that ``<|good|>`` makes likelier than ``<|bad|>`` does.
* **Unlikelihood** (Welleck et al. 2020, "Neural Text Generation with Unlikelihood Training"): likelihood
  on the tokens of good segments, unlikelihood on those of bad ones (:func:`unlikelihood_token_loss`)::

      L = -sum_{t: R_t >= t} log pi_theta(x_t | x_<t)  -  alpha * sum_{t: R_t < t} log(1 - pi_theta(x_t | x_<t))

* **Reward-weighted regression** (RWR; Peters & Schaal 2007, "Reinforcement Learning by Reward-Weighted
  Regression for Operational Space Control"): each token's NLL weighted by its segment's exponentiated
  reward (:func:`rwr_weights`, :func:`weighted_nll`)::

      L = -sum_t log pi_theta(x_t | x_<t) * min(exp(R_t / beta), W)

* **Advantage-weighted regression** (AWR; Peng et al. 2019, "Advantage-Weighted Regression: Simple and
  Scalable Off-Policy Reinforcement Learning"): the reward less a learned baseline ``V``, a value head
  (a linear layer on the LM's hidden state) that predicts the reward of the next token's segment
  (:func:`awr_weights`, :func:`value_loss`)::

      A_t = R_t - sg(V(x_<t))                                   (sg: no gradient through the weights)
      L   = -sum_t log pi_theta(x_t | x_<t) * min(exp(A_t / beta), W)  +  c * sum_t (V(x_<t) - R_t)^2

  The authors' code writes it as the convex combination ``alpha' * L_weighted + (1 - alpha') * L_value``
  of the two token means; that is ``alpha'`` times the form above with ``c = (1 - alpha') / alpha'``
  (:class:`PHFDefaults` converts). RWR is AWR with ``V = 0``.

``W`` (``max_weight``) caps a weight so that one high-reward token cannot dominate a batch; the weights
are not normalised otherwise (the paper's form; the authors' code has advantage normalisation off).

**Alignment with the logits.** The functions here are per target token: for a causal LM whose logits at
position ``t`` predict ``input_ids[t + 1]``, pass ``token_rewards[:, 1:]`` (the rewards of the predicted
tokens) together with ``values[:, :-1]`` (the value head read at the position that predicts them), as the
authors' code does.

**Normalisation.** :func:`weighted_nll` and :func:`value_loss` return sums over real tokens; the caller
divides both by the same count of real tokens (as :func:`rlxf.algos.policy_loss.aggregate_sum` does for
``"token-mean"``), which keeps the ratio ``c`` of the two terms.

Left out: the scorers (Detoxify, Scrubadub, pycodestyle: any rlxf reward function fits); spaCy's sentence
splitter (the authors'), replaced by a punctuation rule (:func:`split_segments`); the authors' soft
unlikelihood (no threshold: the likelihood and unlikelihood terms mixed by the score itself); AWR's
advantage normalisation, value clipping, fixed-value and Q-value variants, and the authors' value head
squashed to ``(-1, 0)`` by ``-sigmoid`` (rlxf's head is a plain linear layer); the finetuning-with-feedback
experiments and the red-teaming evaluation.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, get_args

import numpy as np
import torch

__all__ = [
    "PAPER_TASKS",
    "PHF_DEFAULTS",
    "UNLIKELIHOOD_LOGPROB_MARGIN",
    "PHFDefaults",
    "Segment",
    "awr_weights",
    "broadcast_segment_scores",
    "conditional_text",
    "control_drop_mask",
    "control_token_for",
    "filter_keep",
    "resolve_threshold",
    "rwr_weights",
    "split_segments",
    "token_segment_ids",
    "unlikelihood_token_loss",
    "value_loss",
    "weighted_nll",
]

Segment = Literal["sentence", "line", "document"]
"""The unit a scorer scores: a ``"sentence"`` (toxicity and PII in the paper), a ``"line"`` (PEP8) or the
whole ``"document"``."""


# ---------------------------------------------------------------------------------------------------------
# Defaults


@dataclass(frozen=True)
class PHFDefaults:
    """Hyperparameters of the PHF objectives. Thresholds are on **rewards** (higher is better): the
    paper's thresholds on misalignment scores with the sign flipped. A threshold of ``None`` means "take
    ``threshold_quantile`` of the scores" (:func:`resolve_threshold`).

    :data:`PHF_DEFAULTS` is rlxf's task-agnostic choice; :data:`PAPER_TASKS` holds the paper's values for
    its three tasks, read from the authors' released configs (github.com/tomekkorbak/
    pretraining-with-human-feedback, ``configs/{toxicity,pii,pep8}/*.yml``, which their README says
    reproduce the paper's experiments; the paper's appendix could not be checked against them here).
    """

    # Filtering: keep documents with reward >= this.
    filter_threshold: float | None = None
    # Conditional training: <|good|> for segments with reward >= this.
    conditional_threshold: float | None = None
    # Unlikelihood: tokens of segments with reward < this are "bad".
    unlikelihood_threshold: float | None = None
    # The quantile of the scores used when a threshold is None. rlxf's choice: the median, so that half
    # the data is on each side whatever the scale of the reward.
    threshold_quantile: float = 0.5
    # Share of segments left without a control token. The paper: 1% (the authors' toxicity and PII
    # configs: drop_token_fraction 0.01).
    control_drop_share: float = 0.01
    # Unlikelihood's alpha. Authors' configs: 1 for toxicity and PII, 0.01 for PEP8.
    unlikelihood_alpha: float = 1.0
    # RWR's beta. Authors' configs: 10 for all three tasks.
    rwr_beta: float = 10.0
    # AWR's beta. Authors' configs: 10 (toxicity), 0.1 (PII), 1 (PEP8); rlxf's default 1, also Peng et
    # al. 2019's temperature.
    awr_beta: float = 1.0
    # AWR's value-loss coefficient c in L_weighted + c * L_value. Authors' configs: alpha' = 0.5
    # (toxicity, PII) -> c = 1; alpha' = 0.05 (PEP8) -> c = 19 (c = (1 - alpha') / alpha').
    awr_value_coef: float = 1.0
    # The cap W on an RWR/AWR weight: the authors' code default (clip_weight_max=1000).
    max_weight: float = 1000.0
    # The control tokens: the paper's names (the authors' code spells them <|aligned|>, <|misaligned|>).
    good_token: str = "<|good|>"
    bad_token: str = "<|bad|>"

    @staticmethod
    def awr_value_coef_from_alpha(alpha: float) -> float:
        """``c = (1 - alpha') / alpha'``: the value-loss coefficient of ``L_weighted + c * L_value`` that
        has the same minimiser as the authors' ``alpha' * L_weighted + (1 - alpha') * L_value``."""
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha' must be in (0, 1]; got {alpha}")
        return (1.0 - alpha) / alpha


PHF_DEFAULTS = PHFDefaults()

# The paper's three tasks. Misalignment scores: toxicity probability (Detoxify) per sentence, PII per
# character (Scrubadub) per sentence, PEP8 violations per character (pycodestyle) per line; rewards are
# their negatives, so a misalignment threshold s becomes the reward threshold -s. Note: for PII and PEP8
# the configs' unlikelihood threshold is 0, which the authors' code reads as "no threshold" (``if
# self.score_threshold:``) and then runs its soft variant; 0.0 here is the threshold as written.
PAPER_TASKS: Mapping[str, PHFDefaults] = MappingProxyType(
    {
        "toxicity": PHFDefaults(
            filter_threshold=-7.8e-4,  # configs/toxicity/filtering.yml: filter_threshold 0.00078
            conditional_threshold=-5.6e-4,  # configs/toxicity/conditional.yml: threshold 0.00056
            unlikelihood_threshold=-7.8e-4,  # configs/toxicity/ul.yml: score_threshold 0.00078
            control_drop_share=0.01,  # drop_token_fraction 0.01
            unlikelihood_alpha=1.0,  # ul.yml: alpha 1
            rwr_beta=10.0,  # rwr.yml: beta 10
            awr_beta=10.0,  # awr.yml: beta 10
            awr_value_coef=1.0,  # awr.yml: alpha 0.5
        ),
        "pii": PHFDefaults(
            filter_threshold=-2.86e-4,  # configs/pii/filtering.yml: filter_threshold 0.000286
            conditional_threshold=0.0,  # conditional.yml: threshold 0 (good = no PII at all)
            unlikelihood_threshold=0.0,  # ul.yml: score_threshold 0.0
            control_drop_share=0.01,  # drop_token_fraction 0.01
            unlikelihood_alpha=1.0,  # ul.yml: alpha 1
            rwr_beta=10.0,  # rwr.yml: beta 10
            awr_beta=0.1,  # awr.yml: beta 0.1
            awr_value_coef=1.0,  # awr.yml: alpha 0.5
        ),
        "pep8": PHFDefaults(
            filter_threshold=-2.361e-3,  # configs/pep8/filtering.yml: filter_threshold 0.002361
            conditional_threshold=0.0,  # conditional.yml: threshold 0 (good = no violation)
            unlikelihood_threshold=0.0,  # ul.yml: score_threshold 0
            control_drop_share=0.1,  # conditional.yml: drop_token_fraction 0.1 (not the 1% of the text)
            unlikelihood_alpha=0.01,  # ul.yml: alpha 0.01
            rwr_beta=10.0,  # rwr.yml: beta 10
            awr_beta=1.0,  # awr.yml: beta 1
            awr_value_coef=19.0,  # awr.yml: alpha 0.05 -> (1 - 0.05) / 0.05
        ),
    }
)

# Unlikelihood's log(1 - p) needs log p < 0: a bad token the LM is certain of (log p rounds to 0 in float32
# once 1 - p < ~6e-8) would give log(0) = -inf. log p is held at most -1e-6 (1 - p >= ~1e-6): the loss of
# one token is then at most alpha * 13.8, and float32 still resolves log p at that size. rlxf's choice.
UNLIKELIHOOD_LOGPROB_MARGIN = 1e-6

# torch.quantile refuses inputs of more than 2**24 elements; numpy's "linear" method is the same estimator.
_TORCH_QUANTILE_LIMIT = 2**24


# ---------------------------------------------------------------------------------------------------------
# Segments and thresholds

# A sentence ends at a run of . ! ? (and any closing quotes or brackets) followed by whitespace and more
# text. The split falls right after the punctuation, so the whitespace opens the next sentence: byte-level
# tokenizers put the space in the next word's token (" Two"), whose first character then lies in the
# sentence it belongs to. Abbreviations ("Dr. Smith") split too: a rule, not a sentence model.
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s+\S)")


def split_segments(text: str, segment: Segment) -> list[tuple[int, int]]:
    """Character spans ``[(start, end), ...]`` that cut ``text`` into segments without gaps or overlaps:
    ``"".join(text[s:e] for s, e in spans) == text``. An empty text has no segment (``[]``).

    * ``"sentence"``: a cut right after ``.``, ``!`` or ``?`` (a run of them, with any closing quotes or
      brackets) that whitespace and more text follow; the whitespace starts the next sentence.
    * ``"line"``: a cut after every ``"\\n"`` (``"\\r\\n"`` stays whole; an empty line is a segment).
    * ``"document"``: one span, the whole text.
    """
    if segment not in get_args(Segment):
        raise ValueError(f"unknown segment {segment!r}; expected one of {', '.join(get_args(Segment))}")
    if not text:
        return []
    if segment == "document":
        return [(0, len(text))]
    if segment == "line":
        ends = [match.end() for match in re.finditer("\n", text)]
    else:
        ends = [match.end() for match in _SENTENCE_END.finditer(text)]
    if not ends or ends[-1] != len(text):
        ends.append(len(text))  # the last segment, without a terminator
    starts = [0, *ends[:-1]]
    return list(zip(starts, ends))


def _check_spans(spans: Sequence[tuple[int, int]], length: int | None = None) -> None:
    """Spans must tile ``[0, length)``: the first starts at 0, each starts where the previous ended, none
    is empty (the form :func:`split_segments` returns)."""
    expected_start = 0
    for index, (start, end) in enumerate(spans):
        if start != expected_start or end <= start:
            raise ValueError(
                f"spans must cover the text in order without gaps or empty spans; span {index} is "
                f"({start}, {end}), expected it to start at {expected_start} and be non-empty"
            )
        expected_start = end
    if length is not None and expected_start != length:
        raise ValueError(f"spans cover {expected_start} characters of a text of {length}")


def token_segment_ids(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """For each token, the index of the span its first character lies in.

    ``offsets`` is a fast tokenizer's ``offset_mapping`` for one text (``[(start, end)]`` per token, in
    characters); ``spans`` are that text's segments (:func:`split_segments`). A token with an empty
    offset (``start == end``: special tokens such as BOS/EOS) goes to the previous token's segment, or to
    0 before any real token. A token that crosses a segment boundary (``".\\n"`` merged into one token)
    belongs to the segment where it starts.
    """
    _check_spans(spans)
    starts = [start for start, _ in spans]
    text_end = spans[-1][1] if spans else 0
    segment_ids = []
    previous = 0
    for index, (start, end) in enumerate(offsets):
        start, end = int(start), int(end)
        if end <= start:
            segment_ids.append(previous)  # special token: no characters of its own
            continue
        if not 0 <= start < text_end:
            raise ValueError(
                f"token {index} has offsets ({start}, {end}) outside the spans, which cover characters "
                f"0 to {text_end}: offsets and spans must come from the same text"
            )
        previous = bisect.bisect_right(starts, start) - 1  # the last span starting at or before `start`
        segment_ids.append(previous)
    return segment_ids


def broadcast_segment_scores(
    segment_ids: Sequence[int] | torch.Tensor, scores: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """Each token's score: ``scores[segment_ids[t]]``. ``segment_ids`` ``[T]`` (or ``[B, T]``) from
    :func:`token_segment_ids`, ``scores`` ``[n_segments]``; returns a float tensor shaped like
    ``segment_ids``."""
    scores_tensor = torch.as_tensor(scores)
    if not scores_tensor.is_floating_point():
        scores_tensor = scores_tensor.to(torch.get_default_dtype())
    ids = torch.as_tensor(segment_ids, dtype=torch.long, device=scores_tensor.device)
    return scores_tensor[ids]


def resolve_threshold(scores: torch.Tensor, threshold: float | None, quantile: float | None) -> float:
    """The threshold on rewards: ``threshold`` as given, or the ``quantile`` of ``scores`` (any shape)
    with linear interpolation between order statistics (``torch.quantile``'s default, numpy's
    ``"linear"``). Exactly one of the two must be given.

    With ``quantile=q`` about a share ``1 - q`` of the scores is at or above the threshold: ``0.9`` keeps
    the best 10% (filtering) or marks them ``<|good|>`` (conditional training).
    """
    if (threshold is None) == (quantile is None):
        raise ValueError(f"give exactly one of threshold and quantile; got {threshold=}, {quantile=}")
    if threshold is not None:
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number; got {threshold}")
        return float(threshold)
    assert quantile is not None
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1]; got {quantile}")
    values = scores.detach().flatten().to(torch.float64)  # [N]
    if values.numel() == 0:
        raise ValueError("cannot take a quantile of no scores")
    if not bool(torch.isfinite(values).all()):
        bad = int((~torch.isfinite(values)).sum())
        raise ValueError(f"{bad} of {values.numel()} scores are NaN or infinite; the scorer failed on them")
    if values.numel() > _TORCH_QUANTILE_LIMIT:
        return float(np.quantile(values.cpu().numpy(), quantile, method="linear"))
    return float(torch.quantile(values, quantile, interpolation="linear").item())


# ---------------------------------------------------------------------------------------------------------
# Filtering and conditional training


def filter_keep(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Filtering: which documents to train on, ``scores >= threshold`` (``[n_docs]`` in, a bool tensor of
    the same shape out). A NaN score is dropped (the comparison is False)."""
    return scores >= threshold


def control_token_for(score: float, threshold: float) -> Literal["good", "bad"]:
    """``"good"`` if ``score >= threshold`` else ``"bad"`` (a NaN score is ``"bad"``)."""
    return "good" if score >= threshold else "bad"


def conditional_text(
    text: str,
    spans: Sequence[tuple[int, int]],
    scores: Sequence[float] | torch.Tensor,
    threshold: float,
    good_token: str,
    bad_token: str,
    drop_mask: Sequence[bool],
) -> str:
    """Conditional training's input: every segment of ``text`` prefixed with ``good_token`` when its score
    is ``>= threshold``, else ``bad_token``; a segment whose ``drop_mask`` entry is True gets no token (the
    paper leaves 1% of segments unconditioned, so that sampling without a control token stays in the
    training distribution). ``spans`` tile the text (:func:`split_segments`); ``scores`` and
    ``drop_mask`` have one entry per span.

    The control tokens should be added to the tokenizer as special tokens, so that each is one token.
    """
    _check_spans(spans, len(text))
    score_list = scores.tolist() if isinstance(scores, torch.Tensor) else list(scores)
    if len(score_list) != len(spans) or len(drop_mask) != len(spans):
        raise ValueError(
            f"one score and one drop flag per segment: {len(spans)} spans, {len(score_list)} scores, "
            f"{len(drop_mask)} drop flags"
        )
    parts = []
    for (start, end), score, drop in zip(spans, score_list, drop_mask):
        if not drop:
            parts.append(good_token if control_token_for(score, threshold) == "good" else bad_token)
        parts.append(text[start:end])
    return "".join(parts)


def control_drop_mask(n: int, share: float, generator: torch.Generator) -> list[bool]:
    """Which of ``n`` segments get no control token: each independently with probability ``share``, drawn
    from ``generator`` (a CPU generator; seed it for a reproducible corpus)."""
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1]; got {share}")
    draws = torch.rand(n, generator=generator, dtype=torch.float64)  # [n], uniform in [0, 1)
    return (draws < share).tolist()


# ---------------------------------------------------------------------------------------------------------
# Unlikelihood

_LOG_HALF = -math.log(2.0)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate over the whole range (Maechler 2012, "Accurately
    Computing log(1 - exp(-|a|))"): near 0, ``1 - exp(x)`` cancels catastrophically and ``-expm1(x)`` does
    not; far below, ``log1p(-exp(x))`` keeps the precision ``log`` of a number near 1 would lose. Both
    branches are finite on ``[-inf, -margin]``, so the one ``where`` drops passes no NaN to the gradient."""
    return torch.where(x > _LOG_HALF, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def unlikelihood_token_loss(target_logprobs: torch.Tensor, bad: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-token loss of unlikelihood training (Welleck et al. 2020, token level)::

        L_t = -log p_t                    on good tokens
        L_t = -alpha * log(1 - p_t)       on bad tokens (bad[t] True)

    ``target_logprobs`` ``[B, T]``: ``log p_t = log pi_theta(x_t | x_<t)`` of the target tokens (with
    gradient); ``bad`` ``[B, T]`` bool. Returns ``[B, T]`` in float32 (float64 for float64 input), with no
    masking: reduce it with the completion mask (e.g. :func:`weighted_nll` with weights 1).

    On bad tokens ``log p`` is held at most ``-UNLIKELIHOOD_LOGPROB_MARGIN`` in the value only: the
    gradient passes as if unclamped. A plain clamp would give zero gradient to exactly the bad tokens the
    LM is surest of; with this one, ``dL/dlog p = alpha * p / (1 - p)`` (about ``alpha * 1e6`` at the
    clamp) times ``dlog p / dlogit = 1 - p`` (about ``1e-6`` there) stays of order ``alpha`` in logit
    space, as the exact gradient ``alpha * p`` does. A bad token with ``p = 0`` costs 0 and no NaN.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0; got {alpha}")
    logp = target_logprobs
    if logp.dtype not in (torch.float32, torch.float64):
        logp = logp.float()  # bf16/fp16 cannot resolve log p near 0 (bf16 spacing below 0 is ~4e-3)
    bad = bad.to(torch.bool)
    margin = UNLIKELIHOOD_LOGPROB_MARGIN
    # Value: min(log p, -margin); gradient: 1 everywhere (straight through). The subtraction is inside the
    # branch `where` keeps only where log p > -margin, so log p = -inf never meets -inf - -inf = NaN there.
    logp_held = torch.where(logp > -margin, logp - logp.detach() - margin, logp)  # [B, T]
    unlikelihood = -alpha * _log1mexp(logp_held)  # [B, T]: -alpha * log(1 - p)
    likelihood = -logp  # [B, T]: -log p
    return torch.where(bad, unlikelihood, likelihood)


# ---------------------------------------------------------------------------------------------------------
# RWR and AWR


def _check_weighting(beta: float, max_weight: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0; got {beta}")
    if not max_weight > 0:
        raise ValueError(f"max_weight must be > 0; got {max_weight}")


def _capped_exp(exponent: torch.Tensor, max_weight: float) -> torch.Tensor:
    # min(exp(z), W) = exp(min(z, log W)): the same value, without exp overflowing to inf on large z.
    return torch.exp(exponent.clamp(max=math.log(max_weight)))


def rwr_weights(rewards: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """RWR's token weights ``min(exp(R_t / beta), max_weight)``, any shape (``[B, T]`` token rewards).
    Constants of the loss: no gradient flows through them."""
    _check_weighting(beta, max_weight)
    return _capped_exp(rewards.detach() / beta, max_weight)


def awr_weights(rewards: torch.Tensor, values: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """AWR's token weights ``min(exp((R_t - V_t) / beta), max_weight)``, ``rewards`` and ``values`` of the
    same shape (``[B, T]``). ``V`` is detached: the value head learns from :func:`value_loss` only, never
    from raising the weights of the NLL (which would pull ``V`` down to make every advantage large)."""
    _check_weighting(beta, max_weight)
    advantages = rewards.detach() - values.detach()  # [B, T]: A_t = R_t - sg(V_t)
    return _capped_exp(advantages / beta, max_weight)


def weighted_nll(nll: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum_t m_t * w_t * nll_t`` over the real tokens of ``mask``, a scalar. ``nll``, ``weights`` and
    ``mask`` are ``[B, T]`` (``nll_t = -log p_t`` with gradient; ``mask`` bool or float). A sum: the caller
    divides by the number of real tokens of the (whole) batch. Padded positions may hold anything, NaN
    included."""
    mask_weights = mask.to(nll.dtype)
    terms = nll * weights.to(nll.dtype) * mask_weights  # [B, T]
    return torch.where(mask_weights != 0, terms, 0).sum()  # select, so NaN padding adds nothing


def value_loss(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """AWR's value loss, ``sum_t m_t * (V_t - R_t)^2`` over the real tokens, a scalar: the squared error
    of the value head's prediction of each target token's (segment) reward. ``values`` ``[B, T]`` (with
    gradient), ``rewards`` ``[B, T]`` (a target, detached), ``mask`` ``[B, T]``. A sum, divided by the
    caller by the same token count as :func:`weighted_nll` (the mean squared error of the authors' code)."""
    mask_weights = mask.to(values.dtype)
    squared_error = (values - rewards.detach().to(values.dtype)) ** 2  # [B, T]
    return torch.where(mask_weights != 0, squared_error * mask_weights, 0).sum()
