"""The generation interface every backend implements, and what a rollout returns.

A backend (``transformers`` generate now, vLLM later) takes rendered prompt strings and sampling settings
and returns a :class:`RolloutBatch`: token ids, masks, text, finish reasons and the per-token log-probs of
the sampled tokens *under the sampling distribution* (after temperature / top-k / top-p), which is what
an RL trainer needs as its "old" log-probs when it samples with those settings.

Layout: with ``n`` samples per prompt, rows are grouped prompt by prompt
(``[p0 s0, p0 s1, ..., p1 s0, ...]``) and ``prompt_index`` maps each row to its prompt; group-relative
advantage estimators (GRPO, RLOO) rely on that order.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from rlxf.config import option

FinishReason = Literal["eos", "length", "stop"]
EngineKind = Literal["hf", "vllm"]
Placement = Literal["local", "ray"]


@dataclass
class RolloutConfig:
    """Which engine generates a trainer's rollouts, and where it runs (the ``rollout:`` section)."""

    engine: EngineKind = option(
        "hf", help="hf: transformers generate (CPU or GPU); vllm: a vLLM engine (CUDA; the vllm: section)"
    )
    placement: Placement = option(
        "local",
        help="local: the engine runs inside each training process; ray: rollout workers are Ray actors "
        "(the ray: section), the trainer another",
    )
    num_workers: int = option(
        2, help="placement=ray: rollout actors; each generates a contiguous share of a step's prompts"
    )

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"rollout.num_workers must be >= 1, got {self.num_workers}")


@dataclass
class SamplingConfig:
    """How completions are sampled."""

    max_new_tokens: int = option(64, help="most tokens generated per completion")
    temperature: float = option(1.0, help="softmax temperature; 0 means greedy decoding")
    top_p: float = option(1.0, help="nucleus sampling: keep the smallest set of tokens with this much mass")
    top_k: int = option(0, help="keep only the k most likely tokens; 0 disables")
    stop: list[str] = option(
        default_factory=list, help="stop strings: generation of a completion ends when it produces one"
    )
    n: int = option(1, help="completions sampled per prompt")
    ignore_eos: bool = option(False, help="keep generating past end-of-sequence tokens (fixed-length runs)")
    # Masks end-of-sequence before it, as transformers' min_new_tokens and vLLM's min_tokens do. For RL on a
    # learned reward whose training completions all ran to max_new_tokens: set both equal, and the policy
    # cannot reach the reward model's blind spot of short, early-ended answers (rlxf demo measured it).
    # The recorded log-probs are the masked distribution's (a sampling warper, like top-p); the trainers'
    # own log-probs are the model's.
    min_new_tokens: int = option(
        0, help="no end-of-sequence before this many tokens (0: none); = max_new_tokens: fixed length"
    )
    batch_size: int = option(16, help="sequences (prompts x samples) generated together in one forward batch")

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], got {self.min_new_tokens}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if any(s == "" for s in self.stop):
            raise ValueError("stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class RolloutBatch:
    """Completions for a batch of prompts; ``B`` = prompts x samples, ``P`` prompt and ``C`` completion width."""

    prompt_ids: torch.Tensor  # [B, P] long, LEFT padded
    prompt_mask: torch.Tensor  # [B, P] long, 1 on prompt tokens
    completion_ids: torch.Tensor  # [B, C] long, RIGHT padded
    completion_mask: torch.Tensor  # [B, C] long, 1 on generated tokens up to and including eos / stop token
    logprobs: torch.Tensor  # [B, C] float32, log pi_sampling(token | prefix); 0 where completion_mask is 0
    prompts: list[str]  # [B] the rendered prompt text of each row
    completions: list[str]  # [B] completion text (special tokens removed, cut before a stop string)
    finish_reasons: list[FinishReason]  # [B]
    prompt_index: torch.Tensor  # [B] long, index of the row's prompt in the input list
    # Environment episodes (rlxf.rollout.episodes) only: the completion holds the policy's actions and the
    # environment's observations in turn; completion_mask covers both (attention), action_mask only the
    # policy's tokens (the loss, KL and advantages), turn_rewards each turn's reward at its last action token.
    action_mask: torch.Tensor | None = None  # [B, C] long, 1 on tokens the policy sampled
    turn_rewards: torch.Tensor | None = None  # [B, C] float32, reward of a turn at its last action token
    episodes: list[dict] | None = None  # [B] per episode: turns, success, reward, truncated, transcript

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def input_ids(self) -> torch.Tensor:
        """Prompt and completion side by side, ``[B, P + C]``: what a trainer feeds back to the model."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """``[B, P + C]``: 1 on real prompt tokens and on kept completion tokens."""
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    @property
    def policy_mask(self) -> torch.Tensor:
        """``[B, C]``: the tokens the policy chose, which the loss, the KL and the advantages cover (the
        completion's real tokens, or only the actions of an environment episode)."""
        return self.completion_mask if self.action_mask is None else self.action_mask

    def to(self, device: torch.device | str) -> RolloutBatch:
        moved = {
            name: value.to(device) if isinstance(value, torch.Tensor) else value
            for name, value in self.__dict__.items()
        }
        return RolloutBatch(**moved)


def pad_to_width(tensor: torch.Tensor, width: int, value: float, left: bool) -> torch.Tensor:
    """``[B, T]`` -> ``[B, width]``, filled with ``value`` on the left (prompts) or right (completions)."""
    missing = width - tensor.shape[1]
    if missing == 0:
        return tensor
    pad = torch.full((tensor.shape[0], missing), value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([pad, tensor] if left else [tensor, pad], dim=1)


def concat_rollouts(batches: Sequence[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    """The rows of ``batches`` in order, as one batch: prompts left padded and completions right padded to
    the widest, ``prompt_index`` counted on across the batches (each batch's prompts follow the last's)."""
    prompt_width = max(b.prompt_ids.shape[1] for b in batches)
    completion_width = max(b.completion_ids.shape[1] for b in batches)

    def cat(name: str, width: int, value: float, left: bool) -> torch.Tensor:
        return torch.cat([pad_to_width(getattr(b, name), width, value, left) for b in batches])

    offsets, total = [], 0
    for b in batches:
        offsets.append(total)
        total += int(b.prompt_index.max()) + 1
    return RolloutBatch(
        prompt_ids=cat("prompt_ids", prompt_width, pad_token_id, True),
        prompt_mask=cat("prompt_mask", prompt_width, 0, True),
        completion_ids=cat("completion_ids", completion_width, pad_token_id, False),
        completion_mask=cat("completion_mask", completion_width, 0, False),
        logprobs=cat("logprobs", completion_width, 0.0, False),
        prompts=[p for b in batches for p in b.prompts],
        completions=[c for b in batches for c in b.completions],
        finish_reasons=[r for b in batches for r in b.finish_reasons],
        prompt_index=torch.cat([b.prompt_index + offset for b, offset in zip(batches, offsets)]),
    )


class GenerationEngine(abc.ABC):
    """A generation backend. Implementations: :class:`rlxf.rollout.hf.HFEngine` (transformers, sharing the
    training module), :class:`rlxf.rollout.vllm.VLLMEngine` and :class:`rlxf.rollout.ray_engine.RayEngine`
    (Ray actors running either)."""

    @abc.abstractmethod
    def generate(
        self,
        prompts: list[str],
        sampling: SamplingConfig,
        seed: int | None = None,
        progress: bool = False,
        row_offset: int = 0,
    ) -> RolloutBatch:
        """Sample ``sampling.n`` completions for each rendered prompt string.

        The same ``seed``, prompts and settings give the same completions. Each row (prompt x sample)
        draws from its own random stream, seeded by ``seed`` and its row number counted from
        ``row_offset``: a process that generates rows ``k..k+m`` of a larger batch (``row_offset=k``)
        samples what generating the whole batch would give those rows. ``progress`` shows progress over
        the batches (a bar on a terminal, log lines otherwise).
        """

    @abc.abstractmethod
    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from ``model``'s current weights (after a training step).

        In-process backends share the module and need nothing; vLLM and Ray engines copy the weights.
        """

    def close(self) -> None:  # noqa: B027 (optional: most engines hold nothing to release)
        """Release what the engine holds besides memory (Ray actors); nothing by default."""
