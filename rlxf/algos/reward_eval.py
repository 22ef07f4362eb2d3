"""Using a reward model: its inputs, its head, scoring, held-out metrics, ``rlxf reward eval | score``.

Training (:mod:`rlxf.algos.reward_model`) and every later use of a reward model go through the pieces
here, so a model is scored exactly as it was trained:

* :func:`encode_reward_record`: the token ids the model reads, ``prompt + completion + EOS`` (see
  "Which token the head reads" in :mod:`rlxf.algos.reward_model`);
* :class:`RewardHead`: how the head's K outputs make one reward (weights, ensemble std, centring), read
  from and written to the model's ``config.json``;
* :func:`score_sequences`: batched scoring (inputs sorted by length, so little padding);
* :class:`RewardModel`: a saved reward model (or run folder) loaded for scoring records or texts;
* :func:`preference_metrics` and :func:`rating_metrics`: ``accuracy`` / ``ties`` / ``margin/mean`` and
  ``mse`` / ``spearman`` / ``pearson`` (ranks with averaged ties, :func:`average_ranks`);
* :func:`reward_eval` and :func:`reward_score`: the library functions behind ``rlxf reward eval`` and
  ``rlxf reward score``.

This module uses only the data and model layers (no training code), so the feedback layer's
``model:PATH`` reward source can use :class:`RewardModel` as it is.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rlxf.config import option
from rlxf.data import (
    IGNORE_INDEX,
    ChatTemplateMode,
    DataError,
    Truncation,
    completion_token_ids,
    eos_token_id,
    pad_token_id,
    prompt_token_ids,
    read_data,
    tokenize_dataset,
    tokenize_sft,
    validate_record,
)
from rlxf.data.collate import pad
from rlxf.models.load import Device, DType, load_tokenizer, resolve_device, resolve_dtype
from rlxf.models.registry import resolve_model
from rlxf.train.atomic import write_text_atomic

Objective = Literal["preferences", "ratings"]
DEFAULT_ASPECT = "default"  # the aspect of a rated record without an `aspect` field
TIE_TOLERANCE = 1e-6  # |r_c - r_r| below this is a tie: neither right nor wrong


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
    """The head's outputs ``[rows, K]`` (float32), read by transformers at each row's last non-pad token."""
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


# ---------------------------------------------------------------------------------------------- metrics


def preference_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """``accuracy`` (share of pairs with ``r_c - r_r >= TIE_TOLERANCE``), ``ties`` (share with
    ``|r_c - r_r| < TIE_TOLERANCE``, counted apart: a model that scores everything alike is not 50% right),
    ``margin/mean`` (mean ``r_c - r_r``), ``rewards/chosen`` and ``rewards/rejected`` (means)."""
    diff = (chosen - rejected).double()
    ties = diff.abs() < TIE_TOLERANCE
    return {
        "accuracy": ((diff > 0) & ~ties).double().mean().item(),
        "ties": ties.double().mean().item(),
        "margin/mean": diff.mean().item(),
        "rewards/chosen": chosen.double().mean().item(),
        "rewards/rejected": rejected.double().mean().item(),
    }


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``x`` (1-D); tied values share the mean of the ranks they span: [3, 1, 3] -> [2.5, 1, 2.5]."""
    values, order = torch.sort(x.double(), stable=True)
    _, group, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()  # rank of each group's last member
    mean_rank = last - (counts.double() - 1) / 2  # mean of first..last
    ranks = torch.empty_like(values)
    ranks[order] = mean_rank[group]
    return ranks


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation ``cov(x, y) / (std x std y)``; NaN when either is constant."""
    dx, dy = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = (dx.square().sum() * dy.square().sum()).sqrt()
    return (dx * dy).sum().item() / denominator.item() if denominator > 0 else math.nan


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation: Pearson on the average ranks (ties share their mean rank)."""
    return pearson(average_ranks(x), average_ranks(y))


def rating_metrics(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """``mse``, ``spearman`` and ``pearson`` of predictions against ratings."""
    return {
        "mse": (predicted.double() - target.double()).square().mean().item(),
        "spearman": spearman(predicted, target),
        "pearson": pearson(predicted, target),
    }


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
            folder, dtype=resolve_dtype(dtype, torch_device)
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
            record = validate_record({"prompt": prompt, "completion": completion}, "sft")
            sequences.append(self.encode(record)["input_ids"])
        return self.score_ids(sequences)


# ---------------------------------------------------------------------------------------------- commands


@dataclass
class RewardModelOptions:
    """Options shared by ``rlxf reward eval`` and ``rlxf reward score``."""

    model: str = option("", help="a trained reward model: its run folder or its model/ folder")
    data: str = option("", help="data file (JSONL, CSV, Parquet or a datasets folder)")
    batch_size: int = option(16, help="inputs scored per forward pass")
    max_length: int | None = option(None, help="longest input in tokens; unset: as the model was trained")
    chat_template: ChatTemplateMode | None = option(
        None, help="auto, always or never; unset: as the model was trained"
    )
    device: Device = option("auto", help="where the model runs; auto = cuda if available, else cpu")
    dtype: DType = option("auto", help="weights precision; auto = bfloat16 where native, else float32")

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("give the reward model: --model RUN_OR_MODEL_FOLDER")
        if not self.data:
            raise ValueError("give the data: --data FILE")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")

    def load(self) -> RewardModel:
        return RewardModel.load(
            self.model,
            device=self.device,
            dtype=self.dtype,
            max_length=self.max_length,
            chat_template=self.chat_template,
            batch_size=self.batch_size,
        )


@dataclass
class RewardEvalConfig(RewardModelOptions):
    """Options of ``rlxf reward eval``."""

    out: str | None = option(None, help="folder to write eval.json into (printed only when unset)")


def reward_eval(cfg: RewardEvalConfig) -> dict[str, float]:
    """Measure a reward model on held-out preferences or ratings; the function behind ``rlxf reward eval``.

    Preferences: ``accuracy`` (share of pairs with ``r_c > r_r``), ``ties`` (counted apart) and
    ``margin/mean``. Ratings: ``spearman`` and ``pearson`` between the model's score and the rating, and
    ``mse`` when the model was trained on ratings (its output for the record's aspect is compared; a
    preference model's scale is arbitrary, so no ``mse`` then). Returns the metrics (plus
    ``num_examples``); prints them, and writes ``eval.json`` into ``cfg.out`` when set.
    """
    ds = read_data(cfg.data)
    if ds.kind not in ("preferences", "ratings"):
        raise DataError(
            f"holds {ds.kind} records; reward eval needs preferences or ratings", path=ds.path, split=ds.split
        )
    rm = cfg.load()
    features = tokenize_dataset(ds, encode_reward_record, rm.tokenizer, **_encode_options(rm))
    metrics: dict[str, float]
    if ds.kind == "preferences":
        chosen = rm.score_ids([f["chosen_ids"] for f in features])
        rejected = rm.score_ids([f["rejected_ids"] for f in features])
        metrics = preference_metrics(chosen.reward, rejected.reward)
        if chosen.std is not None:
            metrics["rewards/ensemble_std"] = torch.cat([chosen.std, rejected.std]).mean().item()
    else:
        scores = rm.score_ids([f["input_ids"] for f in features])
        target = torch.tensor([f["rating"] for f in features])
        if rm.head.objective == "ratings":
            index = []
            for i, f in enumerate(features):
                aspect = f.get("aspect", DEFAULT_ASPECT)
                if aspect not in rm.head.labels:
                    raise ds.error(
                        i, f"aspect {aspect!r} is not one the model has: {rm.head.labels}", "aspect"
                    )
                index.append(rm.head.labels.index(aspect))
            predicted = scores.outputs.gather(1, torch.tensor(index)[:, None]).squeeze(1)
            metrics = rating_metrics(predicted, target)
        else:
            metrics = {"spearman": spearman(scores.reward, target), "pearson": pearson(scores.reward, target)}
    metrics["num_examples"] = float(len(features))

    width = max(len(name) for name in metrics)
    for name, value in metrics.items():
        print(f"{name:<{width}}  {value:.6g}")
    if cfg.out:
        report = {
            "model": str(model_folder(cfg.model)),
            "data": str(cfg.data),
            "kind": ds.kind,
            "metrics": metrics,
        }
        write_text_atomic(Path(cfg.out) / "eval.json", json.dumps(_finite(report), indent=2) + "\n")
    return metrics


@dataclass
class RewardScoreConfig(RewardModelOptions):
    """Options of ``rlxf reward score``."""

    out: str | None = option(None, help="JSONL file to write the scored records to (stdout when unset)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.out and Path(self.out).suffix != ".jsonl":
            raise ValueError(f"out must be a .jsonl file, got {self.out}")


def reward_score(cfg: RewardScoreConfig) -> list[dict[str, Any]]:
    """Score every completion of a file; the function behind ``rlxf reward score``.

    Records with ``prompt`` + ``completion`` (or ``messages``; SFT, ratings, unpaired files) get a
    ``reward`` field; preference records get ``reward_chosen`` and ``reward_rejected``. An ensemble adds
    ``reward_std`` (``reward_chosen_std`` ...). Returns the scored records, in file order, and writes them
    as JSONL to ``cfg.out`` (written whole, then renamed into place) or stdout.
    """
    ds = read_data(cfg.data)
    if ds.kind == "prompts":
        raise DataError("holds prompts only: there is no completion to score", path=ds.path, split=ds.split)
    rm = cfg.load()
    features = tokenize_dataset(ds, encode_reward_record, rm.tokenizer, **_encode_options(rm))
    records = [dict(record) for record in ds.records]
    fields = [("chosen_ids", "reward_chosen"), ("rejected_ids", "reward_rejected")]
    if ds.kind != "preferences":
        fields = [("input_ids", "reward")]
    for key, name in fields:
        scores = rm.score_ids([f[key] for f in features])
        for i, record in enumerate(records):
            record[name] = scores.reward[i].item()
            if scores.std is not None:
                record[f"{name}_std"] = scores.std[i].item()
    text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
    if cfg.out:
        write_text_atomic(Path(cfg.out), text)
        print(f"scored {len(records)} records into {cfg.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return records


def _encode_options(rm: RewardModel) -> dict[str, Any]:
    return {"max_length": rm.max_length, "chat_template": rm.chat_template, "truncation": rm.truncation}


def _finite(tree: Any) -> Any:
    """NaN and infinities as ``null`` (standard JSON), e.g. a correlation with constant scores."""
    if isinstance(tree, dict):
        return {k: _finite(v) for k, v in tree.items()}
    return None if isinstance(tree, float) and not math.isfinite(tree) else tree
