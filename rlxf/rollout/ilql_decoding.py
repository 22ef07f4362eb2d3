"""Decoding with ILQL's learned advantage: ``pi(a|s) ∝ pi_LM(a|s) exp(beta (min_i Q̂_i(s,a) - V(s)))``.

Snell et al. 2023 ("Offline RL for Natural Language Generation with Implicit Language Q Learning", section
4.3) sample from the LM's distribution re-weighted by the exponentiated advantage of the heads
:mod:`rlxf.models.ilql_heads` holds::

    log pi(a|s) = log pi_LM(a|s) + beta * (min_i Q̂_i(s, a) - V(s))      on the LM's top-k tokens
                = -inf                                                   elsewhere (top_k > 0)

(:func:`steered_logits`, before normalisation). ``beta = 0`` is the LM itself (behaviour cloning of the
data); a larger ``beta`` follows the heads more. ``top_k`` keeps the ``k`` tokens the *LM* ranks first
and lets the advantage re-rank only those, so a token the data never showed, whose Q value nothing
pinned down, cannot win on an extrapolated value (trlX instead takes the top-k of the sum; ``top_k: 0``
keeps every token). ``beta = 0`` decodes with the LM alone: no heads, no ILQL top-k (``sampling.top_k`` is
the LM's own). ``V(s)`` is the same for every token of a state, so it changes no probability; it is there
so that the added term is the advantage the heads were trained to estimate.

**How.** The heads read the hidden state the LM's output layer reads, so the re-weighting is a forward
hook on that layer (``model.get_output_embeddings()``): its input is the hidden state, its output the
logits, which the hook replaces by :func:`steered_logits`. Everything that calls the model then sees the
ILQL policy, with nothing else changed: ``generate`` with its KV cache (the hook sees the last position
only), :class:`~rlxf.rollout.hf.HFEngine`'s per-token log-probs (of the distribution actually sampled),
and ``rlxf eval``'s KL and log-probs. With ``beta = 0`` no hook is attached at all.

The library function behind ``rlxf generate --ilql-beta`` and ``rlxf eval --ilql-beta`` is
:func:`ilql_decoding` (settings checked before any model loads) then :meth:`ILQLDecoding.attach`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlxf.models.ilql_heads import ILQLHeads, has_heads, load_heads, read_settings

logger = logging.getLogger(__name__)


def steered_logits(
    logits: torch.Tensor, advantage: torch.Tensor, beta: float, top_k: int = 0
) -> torch.Tensor:
    """``log_softmax(logits) + beta * advantage`` on the LM's ``top_k`` tokens, ``-inf`` elsewhere.

    ``logits`` and ``advantage`` ``[..., vocab]``; float32 out. ``top_k`` 0 (or >= vocab) keeps every token.
    The result is unnormalised: a sampler's softmax normalises it (and a temperature divides it, as it
    divides plain logits).
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [..., vocab]
    steered = logprobs + beta * advantage.float()
    if 0 < top_k < logits.shape[-1]:
        keep = torch.zeros_like(steered, dtype=torch.bool)
        keep.scatter_(-1, logprobs.topk(top_k, dim=-1).indices, True)
        steered = steered.masked_fill(~keep, float("-inf"))
    return steered


@dataclass
class ILQLDecoding:
    """The decoding settings of an ILQL model folder: its heads' folder, ``beta`` and ``top_k``."""

    folder: Path
    beta: float
    top_k: int

    def attach(self, model: Any) -> ILQLHeads:
        """Load the heads onto ``model``'s device and re-weight its output layer (module docstring); the
        heads, whose ``hook`` attribute removes the re-weighting (``heads.hook.remove()``)."""
        device = next(model.parameters()).device
        heads = load_heads(self.folder, device)
        output = model.get_output_embeddings()
        hidden_size = getattr(output, "in_features", None)
        vocab_size = getattr(output, "out_features", None)
        if (hidden_size, vocab_size) != (heads.hidden_size, heads.vocab_size):
            raise ValueError(
                f"{self.folder}: the ILQL heads are for hidden size {heads.hidden_size} and vocabulary "
                f"{heads.vocab_size}, the model's output layer has {hidden_size} and {vocab_size}"
            )
        beta, top_k = self.beta, self.top_k
        # [vocab, H]: tied Q heads read the output embeddings; one fp32 copy, not a cast per decoded token
        embedding = output.weight.detach().float() if heads.q_head == "tied" else None

        def steer(module: torch.nn.Module, args: tuple[Any, ...], logits: torch.Tensor) -> torch.Tensor:
            hidden = args[0]  # [B, T, H]: what the output layer reads
            return steered_logits(logits, heads.advantage(hidden, embedding), beta, top_k)

        heads.hook = output.register_forward_hook(steer)
        logger.info(f"decoding with the ILQL heads of {self.folder}: beta {beta:g}, top_k {top_k}")
        return heads


def ilql_decoding(model_dir: str | Path, beta: float | None, top_k: int | None) -> ILQLDecoding | None:
    """The ILQL decoding of the model folder ``model_dir`` with these options, or ``None`` for plain LM
    decoding; checked before any model loads.

    An ILQL model folder (:func:`~rlxf.models.ilql_heads.has_heads`) decodes with ``beta`` and ``top_k``,
    unset ones taking the folder's defaults (``ilql.json``: what training's ``decode_beta`` and
    ``decode_top_k`` were); ``beta = 0`` is the LM alone (``None``). Any other folder is a plain LM: asking
    it for ``beta > 0`` is a ``ValueError``.
    """
    if beta is not None and beta < 0:
        raise ValueError(f"ilql_beta must be >= 0, got {beta}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"ilql_top_k must be >= 0, got {top_k}")
    folder = Path(model_dir)
    if not has_heads(folder):
        if beta:
            raise ValueError(
                f"ilql_beta={beta} but {folder} holds no ILQL heads (ilql.json): give the model/ folder of "
                "an `rlxf ilql` run, or drop ilql_beta"
            )
        return None
    settings = read_settings(folder)
    chosen = ILQLDecoding(
        folder,
        float(settings["beta"] if beta is None else beta),
        int(settings["top_k"] if top_k is None else top_k),
    )
    if chosen.beta == 0:
        logger.info(f"{folder}: ILQL heads left out (ilql_beta 0): the LM alone")
        return None
    return chosen


def decoding_summary(model_dir: str | Path, decoding: ILQLDecoding | None) -> dict[str, Any] | None:
    """How a model folder decodes, for a summary: ``None`` for a plain LM, else its ILQL ``beta`` and
    ``top_k`` (``beta`` 0: the LM of an ILQL run alone)."""
    if decoding is not None:
        return {"beta": decoding.beta, "top_k": decoding.top_k}
    return {"beta": 0.0, "top_k": 0} if has_heads(model_dir) else None


__all__ = ["ILQLDecoding", "decoding_summary", "ilql_decoding", "steered_logits"]
