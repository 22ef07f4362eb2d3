"""Batching tokenised features into padded ``torch`` tensors (the ``collate_fn`` of a ``DataLoader``).

* :func:`collate_sft` pads on the **right** (training: positions line up with the start of the text);
  labels are -100 at padding.
* :func:`collate_preferences` stacks each pair as two right-padded rows, all chosen rows first, then all
  rejected ones, so one forward pass scores both (DPO, reward models).
* :func:`collate_prompts` pads on the **left** (generation: every prompt ends at the last column, where
  new tokens are appended).

Pass the tokenizer's pad id (:func:`rlxf.data.tokenize.pad_token_id`), e.g.
``functools.partial(collate_sft, pad_token_id=pad_token_id(tokenizer))``. Padding is always masked by
``attention_mask``, so its id never matters to the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from rlxf.data.tokenize import IGNORE_INDEX


def pad(
    sequences: Sequence[Sequence[int]],
    value: int,
    side: Literal["left", "right"] = "right",
    pad_to_multiple_of: int | None = None,
) -> torch.Tensor:
    """A ``[batch, max_len]`` long tensor of ``sequences`` padded with ``value`` on ``side``.

    ``pad_to_multiple_of`` rounds ``max_len`` up (tensor-core friendly shapes).
    """
    if not sequences:
        raise ValueError("cannot pad an empty batch")
    width = max(len(s) for s in sequences)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    out = torch.full((len(sequences), width), value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq) == 0:
            continue
        values = torch.as_tensor(list(seq), dtype=torch.long)
        if side == "right":
            out[row, : len(seq)] = values
        else:
            out[row, width - len(seq) :] = values
    return out


def _attention_mask(
    sequences: Sequence[Sequence[int]], side: Literal["left", "right"], width: int
) -> torch.Tensor:
    """``[batch, width]`` attention mask: 1 over each sequence, 0 over its padding."""
    out = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if side == "right":
            out[row, : len(seq)] = 1
        else:
            out[row, width - len(seq) :] = 1
    return out


def _scalars(features: Sequence[dict[str, Any]], batch: dict[str, torch.Tensor]) -> None:
    """Add ``margin`` / ``rating`` (float32 ``[batch]``) and ``label`` (bool ``[batch]``) when present."""
    if any("margin" in f for f in features):  # optional per record: no margin means 0
        batch["margin"] = torch.tensor([float(f.get("margin", 0.0)) for f in features], dtype=torch.float32)
    for key, dtype in (("rating", torch.float32), ("label", torch.bool)):
        have = [key in f for f in features]
        if any(have):
            if not all(have):
                raise ValueError(f"some features of the batch have {key!r} and some do not")
            batch[key] = torch.tensor([f[key] for f in features], dtype=dtype)


def collate_sft(
    features: Sequence[dict[str, Any]], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded batch of :func:`~rlxf.data.tokenize.tokenize_sft` features.

    Returns ``input_ids`` ``[batch, seq]`` (``pad_token_id`` at padding), ``attention_mask`` ``[batch, seq]``,
    ``labels`` ``[batch, seq]`` (-100 at prompt and padding), ``completion_mask`` ``[batch, seq]``, and
    ``rating`` / ``label`` ``[batch]`` when the features carry them.
    """
    ids = [f["input_ids"] for f in features]
    input_ids = pad(ids, pad_token_id, "right", pad_to_multiple_of)
    width = input_ids.shape[1]
    batch = {
        "input_ids": input_ids,  # [batch, seq]
        "attention_mask": _attention_mask(ids, "right", width),  # [batch, seq]
        "labels": pad(
            [f["labels"] for f in features], IGNORE_INDEX, "right", pad_to_multiple_of
        ),  # [batch, seq]
        "completion_mask": pad([f["completion_mask"] for f in features], 0, "right", pad_to_multiple_of),
    }
    _scalars(features, batch)
    return batch


def collate_preferences(
    features: Sequence[dict[str, Any]], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Batch of :func:`~rlxf.data.tokenize.tokenize_preference` features, chosen and rejected stacked.

    Row ``i`` is ``prompt_i + chosen_i`` and row ``batch + i`` is ``prompt_i + rejected_i``, each padded on
    the right. Returns ``input_ids`` ``[2*batch, seq]``, ``attention_mask`` ``[2*batch, seq]``, ``labels``
    ``[2*batch, seq]`` (the completion's ids, -100 at prompt and padding), ``completion_mask``
    ``[2*batch, seq]``, ``prompt_lengths`` ``[batch]`` and, if any pair has one, ``margin`` ``[batch]``
    (0 where a pair has none). Split with ``x[:batch]`` (chosen) and ``x[batch:]`` (rejected).
    """
    sequences: list[list[int]] = []
    labels: list[list[int]] = []
    for key in ("chosen_ids", "rejected_ids"):
        for f in features:
            prompt, completion = list(f["prompt_ids"]), list(f[key])
            sequences.append(prompt + completion)
            labels.append([IGNORE_INDEX] * len(prompt) + completion)
    input_ids = pad(sequences, pad_token_id, "right", pad_to_multiple_of)
    width = input_ids.shape[1]
    label_ids = pad(labels, IGNORE_INDEX, "right", pad_to_multiple_of)
    batch = {
        "input_ids": input_ids,  # [2*batch, seq]
        "attention_mask": _attention_mask(sequences, "right", width),  # [2*batch, seq]
        "labels": label_ids,  # [2*batch, seq]
        "completion_mask": (label_ids != IGNORE_INDEX).long(),  # [2*batch, seq]
        "prompt_lengths": torch.tensor([len(f["prompt_ids"]) for f in features], dtype=torch.long),  # [batch]
    }
    _scalars(features, batch)
    return batch


def collate_prompts(
    features: Sequence[dict[str, Any]], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Left-padded batch of prompts for generation (features with ``input_ids`` or ``prompt_ids``).

    Returns ``input_ids`` ``[batch, prompt_len]`` (``pad_token_id`` on the left) and ``attention_mask``
    ``[batch, prompt_len]`` (0 over the padding).
    """
    ids = [f["input_ids"] if "input_ids" in f else f["prompt_ids"] for f in features]
    input_ids = pad(ids, pad_token_id, "left", pad_to_multiple_of)
    return {
        "input_ids": input_ids,  # [batch, prompt_len]
        "attention_mask": _attention_mask(ids, "left", input_ids.shape[1]),  # [batch, prompt_len]
    }
