"""The built-in ``pep8`` scorer: minus the PEP 8 violations of a text per character, a number <= 0.

The PEP 8 task of *pretraining with human feedback* (Korbak et al., "Pretraining Language Models with
Human Preferences", ICML 2023) scores Python code by how many style violations ``pycodestyle``
finds in it, normalised by its length so that long and short files compare. Here the reward is::

    r(text) = - violations(text) / max(len(text), 1)

``violations`` is what ``pycodestyle`` counts (errors ``E...`` and warnings ``W...``) with its default
options: maximum line length 79 and the default ignore list (E121, E123, E126, E226, E24, E704, W503,
W504), whatever the user's own configuration (``~/.config/pycodestyle``) says, so the
same text gets the same reward everywhere. The text is checked as a file of its lines, each ended by
``"\\n"`` (``\\r\\n`` and ``\\r`` count as line ends, as when Python reads a source file): a completion cut
off mid-line is not penalised for a missing final newline (W292), which says where sampling stopped, not
how the code is written. A ``# noqa`` comment silences what pycodestyle lets it silence (line length,
comparisons to None or True, bare ``except`` and a few more; not, e.g., E225), a door a policy under RL
may find. Nothing is printed.

pycodestyle checks style, not syntax, and reads the text with the running Python's ``tokenize``: a text
that does not tokenize (an unclosed bracket or triple-quoted string) gets one E901 on top of what
was found before it, while prose often scores 0 (Python 3.11's tokenizer reads ``it's`` as error tokens
without complaint; another version's may not). The reward is meant for Python code, as in the paper.

A clean text scores 0; ``x=1`` (E225: missing whitespace around an operator) scores ``-1/3``. Korbak et
al. use the unnegated rate as their misalignment score; a reward is higher when better, so it is negated.

Needs the ``pycodestyle`` package (``pip install 'rlxf[phf]'``); it is imported on first use and a missing
package is an ``ImportError`` naming that command. Deterministic; a few thousand short texts a second on
one CPU core.

Left out: pycodestyle's options (line length, selected or ignored codes) as settings, weighting of codes
(a missing blank line counts as much as a syntax error), and linters beyond style (pyflakes, pylint).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["PIP_COMMAND", "Pep8Scorer", "pep8_scores", "pep8_violations"]

PIP_COMMAND = "pip install 'rlxf[phf]'"
"""How to install the package this scorer needs (named in the error when it is missing)."""

_checker: tuple[Any, Any] | None = None  # (the pycodestyle module, the default options), made on first use
_lock = threading.Lock()


def _get_checker() -> tuple[Any, Any]:
    """``(pycodestyle, options)``: the module and its default options, shared by every caller."""
    global _checker
    if _checker is None:
        with _lock:
            if _checker is None:
                try:
                    import pycodestyle
                except ImportError as exc:
                    raise ImportError(
                        "the 'pep8' scorer needs the pycodestyle package; install it with: " + PIP_COMMAND
                    ) from exc
                # StyleGuide() reads ~/.config/pycodestyle when it exists; the parser's defaults, passed
                # explicitly, override whatever it read, so the reward does not depend on the machine.
                defaults, _ = pycodestyle.get_parser().parse_args([])
                _checker = (pycodestyle, pycodestyle.StyleGuide(vars(defaults), quiet=True).options)
    return _checker


def _source_lines(text: str) -> list[str]:
    """The lines of ``text`` as a source file's, each ending in ``"\\n"`` (universal newlines)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":  # the text ends with a line end (or is empty): no further, empty line
        lines.pop()
    return [line + "\n" for line in lines]


def pep8_violations(text: str) -> int:
    """The number of PEP 8 violations ``pycodestyle`` (default options) finds in ``text`` read as a file.

    Raises ``TypeError`` for a non-string and ``ImportError`` (naming the pip command) when pycodestyle is
    missing.
    """
    if not isinstance(text, str):
        raise TypeError(f"pep8_violations takes a string, got {type(text).__name__}")
    pycodestyle, options = _get_checker()
    lines = _source_lines(text)
    if not lines:
        return 0
    # A report of its own per text: the style guide's shared one would add up its counters across calls
    # (and threads). BaseReport counts and never prints.
    report = pycodestyle.BaseReport(options)
    return int(pycodestyle.Checker(lines=lines, options=options, report=report).check_all())


def pep8_scores(texts: Sequence[str]) -> list[float]:
    """The ``pep8`` reward of each text: ``-pep8_violations(text) / max(len(text), 1)``, in ``(-inf, 0]``.

    ``texts`` is a sequence of strings (not one string); raises ``TypeError`` naming a non-string item.
    """
    if isinstance(texts, str):
        raise TypeError("pep8_scores takes a list of strings, not one string")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is a {type(text).__name__}, expected a string")
    _get_checker()  # a missing package fails before any text is read
    return [-pep8_violations(text) / max(len(text), 1) for text in texts]


class Pep8Scorer:
    """A reward source: the ``pep8`` reward of each *completion*, ``-violations / characters``, <= 0.

    Called as ``scorer(prompts, completions)`` like every reward source. The prompt is not scored: it is
    given, not written by the model, so its violations are no merit or fault of the completion; checked
    together, they would move the reward of every completion of a prompt alike and, divided by the
    longer text, dilute the completion's own rate. The price: a completion read without its prompt has
    no context, so one that continues a prompt inside an indented block (after ``def f(x):``) starts with
    E113 "unexpected indentation", one violation shared by every completion of that prompt. To score a
    whole document, as the pretraining tasks do, pass it as the completion (with an empty prompt) or call
    :func:`pep8_scores`.
    """

    name = "pep8"

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        """Score ``completions[i]`` (a continuation of ``prompts[i]``); the lists must be the same length."""
        if len(prompts) != len(completions):
            raise ValueError(
                f"got {len(prompts)} prompts and {len(completions)} completions; expected one completion "
                "per prompt"
            )
        return pep8_scores(completions)

    def __repr__(self) -> str:
        return "Pep8Scorer()"
