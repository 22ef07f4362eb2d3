"""Data: reading prompt, SFT, preference, rating and unpaired data, checking it, tokenising and batching it.

* :func:`read_data` reads a ``.jsonl``/``.json``/``.csv``/``.parquet`` file or a ``datasets`` folder into a
  validated :class:`Dataset` of one :data:`Kind`; any problem is a :class:`DataError` naming the file,
  the line (or row) and the field (modules :mod:`~rlxf.data.readers`, :mod:`~rlxf.data.formats`,
  :mod:`~rlxf.data.dataset`).
* :func:`split_data` holds out a seeded part; :func:`check_prompt_lengths` checks prompts against a
  token budget before any work.
* :func:`tokenize_sft`, :func:`tokenize_preference`, :func:`tokenize_prompt` turn records into token ids
  with loss masks and truncation (:mod:`~rlxf.data.tokenize`); :func:`collate_sft`,
  :func:`collate_preferences`, :func:`collate_prompts` pad them into tensors (:mod:`~rlxf.data.collate`,
  imported on first use because it needs ``torch``).
* :func:`render_prompt` turns a prompt record into the text the model continues (:mod:`~rlxf.data.chat`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rlxf.data.chat import ChatTemplateMode, render_chat, render_prompt
from rlxf.data.dataset import Dataset, read_data, read_prompts
from rlxf.data.errors import DataError
from rlxf.data.formats import KIND_FIELDS, KINDS, Kind, detect_kind, validate_record
from rlxf.data.split import split_data
from rlxf.data.tokenize import (
    IGNORE_INDEX,
    Truncation,
    check_prompt_lengths,
    completion_token_ids,
    encode_prompt,
    eos_token_id,
    pad_token_id,
    prompt_token_ids,
    tokenize_dataset,
    tokenize_preference,
    tokenize_prompt,
    tokenize_sft,
)

if TYPE_CHECKING:
    from rlxf.data.collate import collate_preferences, collate_prompts, collate_sft, pad

_COLLATE = ("collate_sft", "collate_preferences", "collate_prompts", "pad")


def __getattr__(name: str) -> Any:
    """Import the collators (and ``torch`` with them) only when first asked for."""
    if name in _COLLATE:
        from rlxf.data import collate

        return getattr(collate, name)
    raise AttributeError(f"module 'rlxf.data' has no attribute {name!r}")


__all__ = [
    "IGNORE_INDEX",
    "KINDS",
    "KIND_FIELDS",
    "ChatTemplateMode",
    "DataError",
    "Dataset",
    "Kind",
    "Truncation",
    "check_prompt_lengths",
    "collate_preferences",
    "collate_prompts",
    "collate_sft",
    "completion_token_ids",
    "detect_kind",
    "encode_prompt",
    "eos_token_id",
    "pad",
    "pad_token_id",
    "prompt_token_ids",
    "read_data",
    "read_prompts",
    "render_chat",
    "render_prompt",
    "split_data",
    "tokenize_dataset",
    "tokenize_preference",
    "tokenize_prompt",
    "tokenize_sft",
    "validate_record",
]
