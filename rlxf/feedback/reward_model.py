"""Reward-model inference: its inputs, its head and scoring; what every user of a trained reward model calls.

Training (:mod:`rlxf.algos.reward_model`), ``rlxf reward eval | score`` (:mod:`rlxf.algos.reward_eval`)
and the ``model:PATH`` reward source of online RL (:mod:`rlxf.feedback.rewards`) all go through the pieces
here, so a model is scored exactly as it was trained:

* :func:`encode_reward_record`: the token ids the model reads, ``prompt + completion + EOS`` (see
  "Which token the head reads" in :mod:`rlxf.algos.reward_model`);
* :class:`RewardHead`: how the head's K outputs make one reward (weights, ensemble std, centring), read
  from and written to the model's ``config.json``;
* :func:`collate_rewards` and :func:`reward_outputs`: a right-padded batch and the head's outputs on it;
* :func:`score_sequences`: batched scoring (inputs sorted by length, so little padding);
* :class:`RewardModel`: a saved reward model (or run folder) loaded for scoring records or texts, giving
  :class:`RewardScores`.

It lives in the feedback layer because a reward model is a reward source; it uses only the data and model
layers (no training code, no optimiser). Losses, training and held-out metrics are not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rlxf.data import (
    IGNORE_INDEX,
    ChatTemplateMode,
    DataError,
    Truncation,
    completion_token_ids,
    eos_token_id,
    pad_token_id,
    prompt_token_ids,
    tokenize_sft,
    validate_record,
)
from rlxf.data.collate import pad
from rlxf.models.attention import cpu_attention_for
from rlxf.models.load import Device, DType, load_tokenizer, resolve_device, resolve_dtype
from rlxf.models.registry import resolve_model

Objective = Literal["preferences", "ratings"]


# ---------------------------------------------------------------------------------------------- the head


@dataclass
class RewardHead:
    """How the K outputs of the score head make one reward; stored in the saved model's ``config.json``."""

    objective: Objective
    labels: list[str]  # one name per output: "reward", "reward_0".., or aspect names (id2label)
    weights: list[float]  # reward = sum_k weights[k] * outputs[k] - reward_mean
    ensemble_size: int = 1  # > 1: the outputs are ensemble members, their std is the uncertainty
    reward_mean: float = 0.0

    @classmethod
    def for_preferences(cls, ensemble_size: int = 1) -> RewardHead:
        labels = ["reward"] if ensemble_size == 1 else [f"reward_{k}" for k in range(ensemble_size)]
        return cls("preferences", labels, [1.0 / ensemble_size] * ensemble_size, ensemble_size)

    def combine(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``outputs [N, K]`` -> ``(reward [N], std [N] or None)``: the weighted sum (minus the stored mean)
        and, for an ensemble, the std across its members (unbiased, K - 1 in the denominator)."""
        weights = torch.tensor(self.weights, dtype=outputs.dtype, device=outputs.device)
        reward = outputs @ weights - self.reward_mean
        return reward, outputs.std(dim=-1) if self.ensemble_size > 1 else None

    def save_to(self, config: Any) -> None:
        config.id2label = dict(enumerate(self.labels))
        config.label2id = {label: i for i, label in enumerate(self.labels)}
        config.rlxf_objective = self.objective
        config.rlxf_reward_weights = list(self.weights)
        config.rlxf_ensemble_size = self.ensemble_size
        config.rlxf_reward_mean = self.reward_mean

    @classmethod
    def from_config(cls, config: Any) -> RewardHead:
        """The head of a saved model; a model rlxf did not train must have one output (its reward)."""
        labels = [config.id2label[i] for i in range(config.num_labels)]
        weights = getattr(config, "rlxf_reward_weights", None)
        if weights is None:
            if config.num_labels != 1:
                raise ValueError(
                    f"the model has {config.num_labels} outputs and no rlxf_reward_weights in its config: "
                    "rlxf cannot tell how they make one reward"
                )
            weights = [1.0]
        return cls(
            objective=getattr(config, "rlxf_objective", "preferences"),
            labels=labels,
            weights=[float(w) for w in weights],
            ensemble_size=int(getattr(config, "rlxf_ensemble_size", 1)),
            reward_mean=float(getattr(config, "rlxf_reward_mean", 0.0) or 0.0),
        )


# ---------------------------------------------------------------------------------------------- inputs


def end_token_ids(tokenizer: Any) -> set[int]:
    """EOS and pad ids: stripped from the end of a completion before the one closing EOS is appended."""
    return {eos_token_id(tokenizer), pad_token_id(tokenizer)}


def reward_pad_token_id(tokenizer: Any) -> int:
    """The pad id of a reward model: never the EOS, since the head must read the closing EOS.

    transformers reads the score at the rightmost token that is not the pad token, so pad == EOS (as in
    SmolLM2) would make it skip the EOS. Take the tokenizer's pad when it differs from EOS, else its unk,
    bos or another special token (a pad token inside an input is harmless: only a trailing one is skipped).
    """
    eos = eos_token_id(tokenizer)
    candidates = [
        tokenizer.pad_token_id,
        tokenizer.unk_token_id,
        tokenizer.bos_token_id,
        *tokenizer.all_special_ids,
    ]
    for candidate in candidates:
        if candidate is not None and int(candidate) != eos:
            return int(candidate)
    raise ValueError("the tokenizer has no special token besides EOS to pad reward-model inputs with")


def _strip_end(ids: list[int], end: set[int], field: str) -> list[int]:
    n = len(ids)
    while n and ids[n - 1] in end:
        n -= 1
    if n == 0:
        raise DataError(
            "nothing is left once the end-of-sequence / pad tokens at its end are removed", field=field
        )
    return ids[:n]


def _fit(ids: list[int], max_length: int, truncation: Truncation, field: str, eos: int) -> list[int]:
    """Cut ``ids`` to ``max_length - 1`` tokens by ``truncation``, then append the closing EOS."""
    return [*_cut(ids, max_length - 1, truncation, field), eos]


def _cut(ids: list[int], max_length: int, truncation: Truncation, field: str) -> list[int]:
    if len(ids) <= max_length:
        return ids
    if truncation == "error":
        raise DataError(
            f"prompt + {field} have {len(ids)} tokens, more than max_length={max_length}", field=field
        )
    return ids[len(ids) - max_length :] if truncation == "keep_end" else ids[:max_length]


def encode_reward_record(
    record: dict[str, Any],
    tokenizer: Any,
    max_length: int,
    chat_template: ChatTemplateMode = "auto",
    truncation: Truncation = "keep_end",
) -> dict[str, Any]:
    """The token ids a reward model reads for one validated record: prompt + completion + one EOS.

    A preference record gives ``chosen_ids`` and ``rejected_ids`` (plus ``margin``); a rated or SFT record
    ``input_ids`` (plus ``rating`` and ``aspect`` when present). Inputs longer than ``max_length`` are cut
    by ``truncation``; a pair left with identical inputs is an error.
    """
    end = end_token_ids(tokenizer)
    eos = eos_token_id(tokenizer)
    out: dict[str, Any] = {}
    if record.get("chosen") is not None:
        prompt = prompt_token_ids(record, tokenizer, chat_template)
        for key in ("chosen", "rejected"):
            completion = _strip_end(completion_token_ids(record, key, tokenizer, chat_template), end, key)
            out[f"{key}_ids"] = _fit(prompt + completion, max_length, truncation, key, eos)
        if out["chosen_ids"] == out["rejected_ids"]:
            raise DataError(
                "chosen and rejected become the same tokens (after dropping a trailing end-of-sequence token "
                "and truncating to max_length): the pair carries no preference",
                field="rejected",
            )
    elif record.get("messages") is not None:  # an SFT conversation: read at the end of its last answer
        features = tokenize_sft(record, tokenizer, chat_template=chat_template)
        last = max(i for i, label in enumerate(features["labels"]) if label != IGNORE_INDEX)
        ids = _strip_end(features["input_ids"][: last + 1], end, "messages")  # drop the template's tail
        out["input_ids"] = _fit(ids, max_length, truncation, "messages", eos)
    else:
        prompt = prompt_token_ids(record, tokenizer, chat_template)
        completion = _strip_end(
            completion_token_ids(record, "completion", tokenizer, chat_template), end, "completion"
        )
        out["input_ids"] = _fit(prompt + completion, max_length, truncation, "completion", eos)
    for key in ("margin", "rating", "aspect"):
        if record.get(key) is not None:
            out[key] = record[key]
    return out


def collate_rewards(features: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch. Pairs become ``2*batch`` rows, chosen first then rejected (one forward pass
    scores both); single inputs ``batch`` rows. Adds ``margin``/``rating``/``aspect_index`` ``[batch]`` and
    ``head_weights`` ``[batch, heads]`` when the features carry them."""
    if "chosen_ids" in features[0]:
        sequences = [f["chosen_ids"] for f in features] + [f["rejected_ids"] for f in features]
    else:
        sequences = [f["input_ids"] for f in features]
    input_ids = pad(sequences, pad_token_id, "right")  # [rows, seq]
    lengths = torch.tensor([len(s) for s in sequences])
    mask = torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]  # [rows, seq]
    batch = {"input_ids": input_ids, "attention_mask": mask.long()}
    if any("margin" in f for f in features):
        batch["margin"] = torch.tensor([float(f.get("margin", 0.0)) for f in features])
    for key, dtype in (
        ("rating", torch.float32),
        ("aspect_index", torch.long),
        ("head_weights", torch.float32),
    ):
        if key in features[0]:
            batch[key] = torch.tensor([f[key] for f in features], dtype=dtype)
    return batch


def reward_outputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The head's outputs ``[rows, K]`` (float32), read by transformers at each row's last non-pad token.
    Short rows on the CPU attend eagerly (:mod:`rlxf.models.attention`)."""
    with cpu_attention_for(model, batch["input_ids"].shape[1]):
        return model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits.float()


@torch.no_grad()
def score_sequences(
    model: torch.nn.Module, sequences: Sequence[list[int]], pad_token_id: int, batch_size: int
) -> torch.Tensor:
    """Outputs ``[N, K]`` (float32, CPU) for token-id sequences, batched by length (little padding)."""
    device = next(model.parameters()).device
    out = torch.empty(len(sequences), model.config.num_labels)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = collate_rewards([{"input_ids": sequences[i]} for i in rows], pad_token_id)
        out[rows] = reward_outputs(model, {k: v.to(device) for k, v in batch.items()}).cpu()
    return out


# ---------------------------------------------------------------------------------------------- scorer


@dataclass
class RewardScores:
    """Scores of N inputs: ``reward`` ``[N]`` (centred when the model was), ``std`` ``[N]`` across an
    ensemble's heads (else ``None``), and the head's raw ``outputs`` ``[N, K]``."""

    reward: torch.Tensor
    std: torch.Tensor | None
    outputs: torch.Tensor


def model_folder(path: str | Path) -> Path:
    """A reward model folder from a model folder or a run folder (its ``model/``)."""
    path = Path(path)
    if (path / "model" / "config.json").is_file():
        return path / "model"
    return resolve_model(str(path))


class RewardModel:
    """A reward model loaded for scoring: the HF model, its tokenizer, its head and its input rules."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        head: RewardHead,
        *,
        max_length: int,
        chat_template: ChatTemplateMode = "auto",
        truncation: Truncation = "keep_end",
        batch_size: int = 16,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.head = head
        self.max_length = max_length
        self.chat_template: ChatTemplateMode = chat_template
        self.truncation: Truncation = truncation
        self.batch_size = batch_size

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: Device = "auto",
        dtype: DType = "auto",
        max_length: int | None = None,
        chat_template: ChatTemplateMode | None = None,
        batch_size: int = 16,
    ) -> RewardModel:
        """Load a saved reward model (a model folder or a run folder). ``max_length`` and
        ``chat_template`` default to the values it was trained with (else 1024 and ``auto``)."""
        from transformers import AutoModelForSequenceClassification

        folder = model_folder(path)
        torch_device = resolve_device(device)
        tokenizer = load_tokenizer(folder)
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, dtype=resolve_dtype(dtype, torch_device), local_files_only=True
        )
        if model.config.pad_token_id is None:
            model.config.pad_token_id = pad_token_id(tokenizer)
        model.to(torch_device).eval().requires_grad_(False)
        config = model.config
        return cls(
            model,
            tokenizer,
            RewardHead.from_config(config),
            max_length=max_length or getattr(config, "rlxf_max_length", None) or 1024,
            chat_template=chat_template or getattr(config, "rlxf_chat_template", None) or "auto",
            truncation=getattr(config, "rlxf_truncation", None) or "keep_end",
            batch_size=batch_size,
        )

    def encode(self, record: dict[str, Any]) -> dict[str, Any]:
        """:func:`encode_reward_record` with this model's input rules."""
        return encode_reward_record(
            record, self.tokenizer, self.max_length, self.chat_template, self.truncation
        )

    def score_ids(self, sequences: Sequence[list[int]]) -> RewardScores:
        """Scores of token-id sequences (as :meth:`encode` makes them)."""
        outputs = score_sequences(self.model, sequences, int(self.model.config.pad_token_id), self.batch_size)
        reward, std = self.head.combine(outputs)
        return RewardScores(reward=reward, std=std, outputs=outputs)

    def score(self, prompts: Sequence[Any], completions: Sequence[Any]) -> RewardScores:
        """Scores of completions (strings or message lists) for their prompts (strings or message lists)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        sequences = []
        for prompt, completion in zip(prompts, completions):
            if isinstance(completion, str) and not completion.strip():
                # A policy may stop at once (EOS first) or write only spaces: a real output to score, not a
                # malformed record. The model reads the prompt and the closing EOS.
                record = validate_record({"prompt": prompt}, "prompts")
                ids = prompt_token_ids(record, self.tokenizer, self.chat_template)
                eos = eos_token_id(self.tokenizer)
                sequences.append(_fit(ids, self.max_length, self.truncation, "completion", eos))
                continue
            record = validate_record({"prompt": prompt, "completion": completion}, "sft")
            sequences.append(self.encode(record)["input_ids"])
        return self.score_ids(sequences)
