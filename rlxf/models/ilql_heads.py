"""ILQL's value heads on a causal LM's final hidden state, and the files that keep them beside the LM.

Implicit Language Q-Learning (Snell et al. 2023; :mod:`rlxf.algos.ilql` trains it) puts three kinds of
head on the hidden state ``h_t`` the LM's output layer reads (after the final norm):

* ``Q_i(s_t, .)`` for ``i = 1..num_q`` (two by default, as in the paper and trlX): one value per token of
  the vocabulary, the value of taking that token next;
* ``Q̂_i(s_t, .)``: the *target* copies, Polyak averages of the ``Q_i`` (:func:`polyak_update_`); they are
  buffers, not parameters, so no optimizer touches them and a checkpoint holds them (exact resume);
* ``V(s_t)``: one value per state.

The V head is trlX's ``make_head``: a two-layer MLP ``W2 relu(W1 h + b1) + b2`` with a hidden width of
twice the LM's (:class:`MLPHead`), initialised as ``torch.nn.Linear`` is. A Q head is one of two kinds
(``q_head``):

* ``mlp`` (trlX's, the default): the same MLP with one output per token, ``[H] -> [2H] -> [vocab]``: its last
  layer alone has ``2 H x vocab`` weights (57M for SmolLM2's 49,152 tokens), each token's row learnt from the
  actions where that token was taken;
* ``tied`` (:class:`TiedQHead`): ``Q(s, a) = e_a . u(h) + b_a``, where ``u`` is an MLP ``[H] -> [2H] -> [H]``
  and ``e_a`` is token ``a``'s row of the LM's output layer ``E`` (``[vocab, H]``, read, never copied into
  the heads). The value of a token then generalises to the tokens the LM embeds near it ("great" teaches
  "wonderful"), which is what a few thousand rated texts need; the head has ``4 H^2 + 3 H + vocab``
  parameters (1.4M for SmolLM2), and its last layer starts at zero, so every Q starts at 0. Its ``forward`` takes ``E``.

**Files.** An ILQL model folder is a plain Hugging Face LM folder (``AutoModelForCausalLM`` loads it and
ignores the rest) with two more files in it:

* ``ilql_heads.safetensors``: the target Q heads and the V head, what decoding needs
  (``target_q.{i}.w1`` ... ``v.b2``); the online Q heads are a training-time thing and are not kept; tied Q
  heads are read with the output layer of the LM saved beside them;
* ``ilql.json``: the heads' shapes and kind (``q_head``; a file without one is ``mlp``), the decoding
  defaults (``beta``, ``top_k``) and the training run's reward standardisation (``reward_mean``,
  ``reward_std``), for the record.

:func:`save_heads` writes both, :func:`read_settings` and :func:`load_heads` read them back; decoding with
them is :mod:`rlxf.rollout.ilql_decoding`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F

HEADS_FILE = "ilql_heads.safetensors"
SETTINGS_FILE = "ilql.json"
FORMAT = "rlxf-ilql/1"
HEAD_WIDTH = 2  # hidden width of a head's MLP, in multiples of the LM's hidden size (trlX's make_head)
QHeadKind = Literal["mlp", "tied"]
"""A Q head: ``mlp``, one output row per token (trlX); ``tied``, the LM's output embeddings (:class:`TiedQHead`)."""


def polyak_update_(targets: list[torch.Tensor], sources: list[torch.Tensor], alpha: float) -> None:
    """``target <- (1 - alpha) target + alpha source`` for each pair, in place (Polyak averaging; the soft
    target update of Lillicrap et al. 2016, which ILQL takes from IQL: Kostrikov et al. 2022)."""
    if len(targets) != len(sources):
        raise ValueError(f"{len(targets)} target tensors for {len(sources)} sources")
    with torch.no_grad():
        for target, source in zip(targets, sources):
            target.mul_(1.0 - alpha).add_(source.detach().to(target.dtype), alpha=alpha)


def register_tensors(module: torch.nn.Module, tensors: dict[str, torch.Tensor], trainable: bool) -> None:
    """Copies of ``tensors`` on ``module`` under their names: parameters, or buffers (a target head's, moved
    only by :func:`polyak_update_` but kept in the ``state_dict``) when not ``trainable``."""
    for name, tensor in tensors.items():
        if trainable:
            module.register_parameter(name, torch.nn.Parameter(tensor.detach().clone()))
        else:
            module.register_buffer(name, tensor.detach().clone())


class MLPHead(torch.nn.Module):
    """``x -> W2 relu(W1 x + b1) + b2``: ``[..., hidden_size] -> [..., out_size]``.

    ``trainable=False`` registers the four tensors as buffers: a target head, moved only by
    :func:`polyak_update_`, saved in the module's ``state_dict`` (so in every checkpoint) but never given
    to an optimizer. The input is cast to the head's dtype (a bf16 hidden state into fp32 heads).
    """

    def __init__(self, hidden_size: int, out_size: int, *, trainable: bool = True) -> None:
        super().__init__()
        width = HEAD_WIDTH * hidden_size
        first, second = torch.nn.Linear(hidden_size, width), torch.nn.Linear(width, out_size)
        tensors = {"w1": first.weight, "b1": first.bias, "w2": second.weight, "b2": second.bias}
        register_tensors(self, tensors, trainable)

    def tensors(self) -> list[torch.Tensor]:
        return [self.w1, self.b1, self.w2, self.b2]

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.linear(x.to(self.w1.dtype), self.w1, self.b1))  # [..., width]

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """``[..., hidden] -> [..., out]``; ``embedding`` is not read (the signature of :class:`TiedQHead`)."""
        return F.linear(self.hidden(x), self.w2, self.b2)  # [..., out]

    def at(self, x: torch.Tensor, index: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """``forward(x)[..., index]`` for one output per row without the full ``[..., out]`` tensor:
        ``x`` ``[..., hidden]``, ``index`` ``[...]`` -> ``[...]`` (a target Q at the data's actions)."""
        rows = F.embedding(index, self.w2)  # [..., width]: the rows of W2 that are needed
        return (self.hidden(x) * rows).sum(-1) + self.b2[index]


class TiedQHead(torch.nn.Module):
    """``Q(s, .) = E u(h) + b``: ``u(h) = W2 relu(W1 h + b1) + b2`` maps the hidden state ``[..., H]`` to a
    vector of the same width, whose dot product with each token's output embedding (the rows of the LM's
    output layer ``E``, ``[vocab, H]``, passed to every call) plus a per-token bias ``b`` is that token's Q
    value (module docstring). ``W2``, ``b2`` and ``b`` start at zero: Q is 0 everywhere before training.

    ``trainable=False`` makes every tensor a buffer, as :class:`MLPHead`'s.
    """

    def __init__(self, hidden_size: int, vocab_size: int, *, trainable: bool = True) -> None:
        super().__init__()
        width = HEAD_WIDTH * hidden_size
        first = torch.nn.Linear(hidden_size, width)
        tensors = {
            "w1": first.weight,
            "b1": first.bias,
            "w2": torch.zeros(hidden_size, width),
            "b2": torch.zeros(hidden_size),
            "bias": torch.zeros(vocab_size),
        }
        register_tensors(self, tensors, trainable)

    def tensors(self) -> list[torch.Tensor]:
        return [self.w1, self.b1, self.w2, self.b2, self.bias]

    def direction(self, x: torch.Tensor) -> torch.Tensor:
        """``u(h)``: ``[..., H] -> [..., H]``, in the output embeddings' space."""
        hidden = F.relu(F.linear(x.to(self.w1.dtype), self.w1, self.b1))  # [..., 2H]
        return F.linear(hidden, self.w2, self.b2)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """``[..., H] -> [..., vocab]``, with ``embedding`` the LM's output layer weight ``[vocab, H]``."""
        weight = _required(embedding)
        return F.linear(self.direction(x), weight.to(self.w1.dtype), self.bias)

    def at(self, x: torch.Tensor, index: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """``forward(x, embedding)[..., index]`` without the ``[..., vocab]`` tensor: ``[..., H]``, ``[...]`` ->
        ``[...]``."""
        rows = F.embedding(index, _required(embedding)).to(self.w1.dtype)  # [..., H]: the actions' embeddings
        return (self.direction(x) * rows).sum(-1) + self.bias[index]


def _required(embedding: torch.Tensor | None) -> torch.Tensor:
    if embedding is None:
        raise ValueError("tied Q heads read the LM's output embeddings: pass its output layer's weight")
    return embedding


def q_head_class(kind: QHeadKind) -> type[MLPHead] | type[TiedQHead]:
    """The module of one Q head of kind ``kind``."""
    if kind not in get_args(QHeadKind):
        raise ValueError(f"q_head must be one of {get_args(QHeadKind)}, got {kind!r}")
    return MLPHead if kind == "mlp" else TiedQHead


class HeadValues(NamedTuple):
    """The heads at some hidden states ``[..., H]``."""

    q: list[torch.Tensor]  # num_q x [..., vocab]: Q_i(s, .)
    v: torch.Tensor  # [...]: V(s)


class ILQLHeads(torch.nn.Module):
    """``num_q`` Q heads of kind ``q_head``, their Polyak-averaged targets and a V head (module docstring).

    Every method that gives Q values takes ``embedding``, the LM's output layer weight ``[vocab, H]``: tied Q
    heads read it, MLP ones do not (``None`` is then fine). ``trainable=False`` builds the decoding form: no
    online Q heads, and every tensor a buffer (what :func:`load_heads` returns).
    """

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        num_q: int = 2,
        *,
        trainable: bool = True,
        q_head: QHeadKind = "mlp",
    ) -> None:
        super().__init__()
        if num_q < 1:
            raise ValueError(f"num_q must be >= 1, got {num_q}")
        head = q_head_class(q_head)
        self.hidden_size, self.vocab_size, self.num_q, self.q_head = hidden_size, vocab_size, num_q, q_head
        self.q = torch.nn.ModuleList(
            [head(hidden_size, vocab_size) for _ in range(num_q)] if trainable else []
        )
        self.target_q = torch.nn.ModuleList(
            [head(hidden_size, vocab_size, trainable=False) for _ in range(num_q)]
        )
        for target, online in zip(self.target_q, self.q):  # the targets start as copies
            polyak_update_(target.tensors(), online.tensors(), 1.0)
        self.v = MLPHead(hidden_size, 1, trainable=trainable)

    def forward(self, hidden: torch.Tensor, embedding: torch.Tensor | None = None) -> HeadValues:
        """The online Q heads over the vocabulary and V, at ``hidden`` ``[..., H]`` (training)."""
        return HeadValues([head(hidden, embedding) for head in self.q], self.value(hidden))

    def value(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.v(hidden).squeeze(-1)  # [...]

    def target_q_at(
        self, hidden: torch.Tensor, actions: torch.Tensor, embedding: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``min_i Q̂_i(s, a)`` at the given actions: ``[..., H]``, ``[...]`` -> ``[...]``."""
        values = torch.stack([head.at(hidden, actions, embedding) for head in self.target_q])  # [num_q, ...]
        return values.min(dim=0).values

    def advantage(self, hidden: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """``min_i Q̂_i(s, .) - V(s)`` over the vocabulary, ``[..., H] -> [..., vocab]`` (decoding)."""
        target = torch.stack([head(hidden, embedding) for head in self.target_q]).min(dim=0).values
        return target - self.value(hidden).unsqueeze(-1)  # [..., vocab]

    def polyak_update(self, alpha: float) -> None:
        """Move every target head ``alpha`` of the way to its online head."""
        for target, online in zip(self.target_q, self.q):
            polyak_update_(target.tensors(), online.tensors(), alpha)

    def decoding_state(self) -> dict[str, torch.Tensor]:
        """What :data:`HEADS_FILE` keeps: the target Q heads and V (contiguous fp32 copies)."""
        return {
            name: tensor.detach().float().contiguous().clone()
            for name, tensor in self.state_dict().items()
            if name.startswith(("target_q.", "v."))
        }


def save_heads(heads: ILQLHeads, folder: str | Path, settings: dict[str, Any]) -> None:
    """Write :data:`HEADS_FILE` and :data:`SETTINGS_FILE` (the heads' shapes plus ``settings``) into
    ``folder`` (an HF LM folder being written)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    save_file(heads.decoding_state(), str(folder / HEADS_FILE))
    record = {
        "format": FORMAT,
        "hidden_size": heads.hidden_size,
        "vocab_size": heads.vocab_size,
        "num_q": heads.num_q,
        "q_head": heads.q_head,
        **settings,
    }
    (folder / SETTINGS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def has_heads(folder: str | Path) -> bool:
    """Whether ``folder`` is an ILQL model folder (holds :data:`SETTINGS_FILE`)."""
    return (Path(folder) / SETTINGS_FILE).is_file()


def read_settings(folder: str | Path) -> dict[str, Any]:
    """The checked :data:`SETTINGS_FILE` of an ILQL model folder; a ``ValueError`` naming the file when it
    is not one rlxf wrote, or its heads file is missing."""
    path = Path(folder) / SETTINGS_FILE
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the ILQL settings ({exc})") from exc
    if not isinstance(settings, dict) or settings.get("format") != FORMAT:
        raise ValueError(f"{path}: not an rlxf ILQL settings file (format {FORMAT!r} expected)")
    for key in ("hidden_size", "vocab_size", "num_q"):
        if not isinstance(settings.get(key), int) or settings[key] < 1:
            raise ValueError(f"{path}: {key} must be a positive integer, got {settings.get(key)!r}")
    for key, low in (("beta", 0.0), ("top_k", 0)):
        value = settings.get(key)
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value < low
        ):
            raise ValueError(f"{path}: {key} must be a number >= {low}, got {value!r}")
    settings.setdefault("q_head", "mlp")  # files written before tied heads existed
    if settings["q_head"] not in get_args(QHeadKind):
        raise ValueError(f"{path}: q_head must be one of {get_args(QHeadKind)}, got {settings['q_head']!r}")
    if not (Path(folder) / HEADS_FILE).is_file():
        raise ValueError(f"{path.parent}: {SETTINGS_FILE} is there but {HEADS_FILE} is missing")
    return settings


def load_heads(folder: str | Path, device: torch.device | str = "cpu") -> ILQLHeads:
    """The decoding heads (target Q heads and V, as buffers) of an ILQL model folder, on ``device``."""
    from safetensors.torch import load_file

    settings = read_settings(folder)
    heads = ILQLHeads(
        settings["hidden_size"],
        settings["vocab_size"],
        settings["num_q"],
        trainable=False,
        q_head=settings["q_head"],
    )
    state = load_file(str(Path(folder) / HEADS_FILE))
    missing, unexpected = heads.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{Path(folder) / HEADS_FILE}: does not fit ilql.json (missing {missing}, unexpected {unexpected})"
        )
    return heads.to(device).eval()


__all__ = [
    "HEADS_FILE",
    "SETTINGS_FILE",
    "HeadValues",
    "ILQLHeads",
    "MLPHead",
    "QHeadKind",
    "TiedQHead",
    "has_heads",
    "load_heads",
    "polyak_update_",
    "q_head_class",
    "read_settings",
    "save_heads",
]
