"""Built-in corpora from the text that ships with Python: English docstrings and PEP 8-clean code lines.

Nothing is downloaded or committed: the text is read from the running Python's standard library
(``sysconfig.get_paths()["stdlib"]``), without importing any of it, so the corpus is the same on every
machine with the same Python version.

* :func:`stdlib_docstrings`: the module, class and function docstrings of the standard library's sources
  (parsed with :mod:`ast`, cleaned with :func:`inspect.cleandoc`), then the help topics of
  ``pydoc_data.topics`` (the language reference's text behind ``help("if")``). English prose for a
  tiny language model.
* :func:`stdlib_prose`: those docstrings, then the sources' comment blocks (consecutive whole-line comments
  joined into one paragraph): 1.37 times the text (2.82 M characters), for the encoders, which overfit
  the docstrings alone.
* :func:`stdlib_code_lines`: single-line statements of those sources that pycodestyle finds clean when
  checked alone. With :func:`inject_pep8_violation` they make the PEP 8 task of "pretraining with human
  feedback" (Korbak et al., ICML 2023): the paper scores Python code by
  ``-violations / characters`` (pycodestyle) and trains a model to write code with fewer violations.
  :func:`pep8_corpus` replaces a seeded share ``bad_share`` of the clean lines by a flagged variant, so
  that the clean corpus has zero violations by construction and the dirty share is known::

      P(injected) = bad_share * P(an edit applies)        (trailing whitespace always applies)

pycodestyle's default options are used (``max-line-length`` 79, its default ignore list, which includes
E226 "missing whitespace around arithmetic operator"), as by the ``pep8`` scorer of :mod:`rlxf.feedback`;
the scoring is duplicated here because the data layer does not import the feedback layer.

Left out: test suites (``test``/``tests``/``idle_test`` folders: generated and deliberately odd code),
installed packages (``site-packages``), multi-line statements, comments, and line-level PEP 8 checks that
need context (blank lines between definitions, indentation, line continuation).
"""

from __future__ import annotations

import ast
import io
import json
import os
import random
import re
import sysconfig
import tempfile
import tokenize
import warnings
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "inject_pep8_violation",
    "pep8_corpus",
    "pep8_violations",
    "stdlib_code_lines",
    "stdlib_comments",
    "stdlib_docstrings",
    "stdlib_prose",
    "stdlib_root",
    "stdlib_sources",
    "write_jsonl_corpus",
]

_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
# pycodestyle skips the checks of a line with a noqa/nopep8 comment: such a line is clean only by fiat.
_NOQA = re.compile(r"# no(?:qa|pep8)\b", re.IGNORECASE)
# Token types of string pieces (Python 3.12 splits f-strings into FSTRING_START/MIDDLE/END).
_STRING_TYPES = frozenset(
    getattr(tokenize, name)
    for name in ("STRING", "FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")
    if hasattr(tokenize, name)
)
_NON_CODE = frozenset({tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING})


# ---------------------------------------------------------------------------------------------- sources


def stdlib_root() -> Path:
    """The folder of the running Python's standard library (``sysconfig.get_paths()["stdlib"]``)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources() -> list[Path]:
    """The standard library's ``.py`` files, sorted, without tests, installed packages and caches."""
    root = stdlib_root()
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        # pruning here also keeps os.walk out of site-packages, which may be large
        dirs[:] = [name for name in dirs if name not in _EXCLUDED_DIRS]
        found.extend(Path(folder) / name for name in files if name.endswith(".py"))
    return sorted(found, key=lambda path: path.relative_to(root).parts)


# ---------------------------------------------------------------------------------------------- docstrings


def _docstrings_in_order(node: ast.AST) -> Iterator[str]:
    """Docstrings of ``node`` and the definitions inside it, in source order (depth first)."""
    if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        text = ast.get_docstring(node, clean=True)  # clean=True: inspect.cleandoc
        if text:
            yield text
    for child in ast.iter_child_nodes(node):
        yield from _docstrings_in_order(child)


def _parse(path: Path) -> ast.Module | None:
    try:
        source = path.read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old modules: SyntaxWarning
            return ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, OSError):
        return None  # a file this Python cannot parse (or read) is skipped


def stdlib_docstrings(min_chars: int = 80) -> Iterator[str]:
    """The standard library's docstrings of at least ``min_chars`` characters, then ``pydoc``'s help topics
    (in sorted key order, the same length bound), in a fixed order. Source files are parsed, never imported."""
    for path in stdlib_sources():
        tree = _parse(path)
        if tree is None:
            continue
        for text in _docstrings_in_order(tree):
            if len(text) >= min_chars:
                yield text
    from pydoc_data.topics import topics

    for key in sorted(topics):
        text = topics[key].strip()
        if len(text) >= min_chars:
            yield text


def stdlib_comments(min_chars: int = 80) -> Iterator[str]:
    """The standard library's comment blocks of at least ``min_chars`` characters, in a fixed order: runs of
    consecutive lines that hold only a comment, each without its ``#`` and joined by spaces. Trailing
    comments (after code), a file's first-line ``#!`` and encoding lines are left out."""
    for path in stdlib_sources():
        try:
            tokens = list(tokenize.tokenize(io.BytesIO(path.read_bytes()).readline))
        except (tokenize.TokenError, SyntaxError, UnicodeDecodeError, LookupError, OSError):
            continue
        block: list[str] = []
        last_row = -1
        for token in tokens:
            whole_line = token.type == tokenize.COMMENT and token.line.strip().startswith("#")
            if not whole_line or token.start[0] <= 2 and token.string.startswith(("#!", "# -*-")):
                continue
            if token.start[0] != last_row + 1 and block:
                text = " ".join(block).strip()
                if len(text) >= min_chars:
                    yield text
                block = []
            block.append(token.string.lstrip("#").strip())
            last_row = token.start[0]
        text = " ".join(block).strip()
        if len(text) >= min_chars:
            yield text


def stdlib_prose(min_chars: int = 80) -> Iterator[str]:
    """:func:`stdlib_docstrings`, then :func:`stdlib_comments`."""
    yield from stdlib_docstrings(min_chars)
    yield from stdlib_comments(min_chars)


# ---------------------------------------------------------------------------------------------- code lines


def _single_line_statements(path: Path) -> Iterator[str]:
    """The lines of a source file that hold a whole logical line (one statement, or a block header) that is
    not only a string (docstrings, string expressions) — stripped; a file that does not tokenise is skipped."""
    try:
        data = path.read_bytes()
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        # tokenize counts rows by b"\n" (readline), so split the text the same way
        lines = data.decode(encoding).split("\n")
        tokens = list(tokenize.tokenize(io.BytesIO(data).readline))
    except (tokenize.TokenError, SyntaxError, UnicodeDecodeError, LookupError, OSError):
        return
    start: int | None = None  # row of the logical line's first token
    only_strings = True
    for token in tokens:
        if token.type in _NON_CODE or token.type == tokenize.ENDMARKER:
            continue
        if token.type == tokenize.NEWLINE:
            if start is not None and start == token.start[0] and not only_strings:
                yield lines[start - 1].strip()
            start, only_strings = None, True
            continue
        if start is None:
            start = token.start[0]
        only_strings = only_strings and token.type in _STRING_TYPES


def stdlib_code_lines(min_chars: int = 20, max_chars: int = 79) -> Iterator[str]:
    """Lines of standard-library code that pycodestyle finds clean alone, each once, in a fixed order.

    A line qualifies when it is a whole statement on one line (not a comment, not a string on its own, not
    part of a multi-line statement), ``min_chars <= len <= max_chars`` once stripped of its indentation
    and trailing whitespace, has no ``# noqa``, and :func:`pep8_violations` gives 0. Exact repeats are
    dropped (the first is kept).
    """
    seen: set[str] = set()
    for path in stdlib_sources():
        for line in _single_line_statements(path):
            if not min_chars <= len(line) <= max_chars or line in seen or _NOQA.search(line):
                continue
            seen.add(line)  # before the check: a rejected line is not checked again
            if pep8_violations(line) == 0:
                yield line


# ---------------------------------------------------------------------------------------------- PEP 8


@lru_cache(maxsize=1)
def _style_options() -> Any:
    try:
        import pycodestyle
    except ImportError:
        raise ImportError("the PEP 8 corpus needs the pycodestyle package: pip install pycodestyle") from None
    # quiet: a BaseReport, which counts and prints nothing; no config file is read (the defaults)
    return pycodestyle.StyleGuide(quiet=True).options


def pep8_violations(line: str) -> int:
    """How many violations pycodestyle (default options) finds in ``line`` checked alone, as a one-line
    file. A line that does not tokenise alone (an unclosed bracket) counts as pycodestyle's E901/E902."""
    import pycodestyle

    options = _style_options()
    # a fresh report per check: the style guide's shared one would accumulate counts forever
    checker = pycodestyle.Checker(
        lines=[line + "\n"], options=options, report=pycodestyle.BaseReport(options)
    )
    return checker.check_all()


# Each edit returns the candidate variants of a line (one per place it applies), given the line's tokens.
_Tokens = list[tokenize.TokenInfo]
_SPACED_OPERATORS = frozenset(
    "= == != < > <= >= += -= *= /= //= %= **= >>= <<= &= |= ^= @= -> := % & | ^ << >> + - * / // ** @".split()
)


def _tokens(line: str) -> _Tokens:
    try:
        return [
            t
            for t in tokenize.generate_tokens(io.StringIO(line + "\n").readline)
            if t.type
            not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.INDENT, tokenize.DEDENT)
        ]
    except (tokenize.TokenError, SyntaxError):
        return []


def _edit_operator_spaces(line: str, tokens: _Tokens) -> list[str]:
    """E225 (and E227/E228): ``x = 1`` -> ``x=1``, ``a < b`` -> ``a<b``."""
    out = []
    for token in tokens:
        start, end = token.start[1], token.end[1]
        if (
            token.type == tokenize.OP
            and token.string in _SPACED_OPERATORS
            and line[start - 1 : start] == " "
            and line[end : end + 1] == " "
        ):
            out.append(line[: start - 1] + token.string + line[end + 1 :])
    return out


def _edit_space_before_call(line: str, tokens: _Tokens) -> list[str]:
    """E211: ``f(x)`` -> ``f (x)``."""
    return [
        line[: b.start[1]] + " " + line[b.start[1] :]
        for a, b in zip(tokens, tokens[1:])
        if b.string == "(" and a.type == tokenize.NAME and a.end == b.start and not _is_keyword(a.string)
    ]


def _edit_space_after_open(line: str, tokens: _Tokens) -> list[str]:
    """E201: ``f(x)`` -> ``f( x)`` (also after ``[`` and ``{``)."""
    return [
        line[: a.end[1]] + " " + line[a.end[1] :]
        for a, b in zip(tokens, tokens[1:])
        if a.string in ("(", "[", "{") and a.end == b.start and b.string not in (")", "]", "}")
    ]


def _edit_space_before_comma(line: str, tokens: _Tokens) -> list[str]:
    """E203: ``f(a, b)`` -> ``f(a , b)``."""
    return [
        line[: b.start[1]] + " " + line[b.start[1] :]
        for a, b in zip(tokens, tokens[1:])
        if b.string == "," and a.end == b.start
    ]


def _edit_no_space_after_comma(line: str, tokens: _Tokens) -> list[str]:
    """E231: ``f(a, b)`` -> ``f(a,b)``."""
    return [
        line[: a.end[1]] + line[a.end[1] + 1 :]
        for a, b in zip(tokens, tokens[1:])
        if a.string == "," and line[a.end[1] : a.end[1] + 1] == " " and b.start[1] == a.end[1] + 1
    ]


def _edit_trailing_whitespace(line: str, tokens: _Tokens) -> list[str]:
    """W291: ``x = 1`` -> ``x = 1 `` (applies to every line)."""
    return [line + " "]


def _edit_compare_to_none(line: str, tokens: _Tokens) -> list[str]:
    """E711: ``x is None`` -> ``x == None``, ``x is not None`` -> ``x != None``."""
    out = []
    for i, token in enumerate(tokens):
        if token.string != "is" or token.type != tokenize.NAME:
            continue
        rest = [t.string for t in tokens[i + 1 : i + 3]]
        if rest[:1] == ["None"]:
            out.append(line[: token.start[1]] + "==" + line[token.end[1] :])
        elif rest == ["not", "None"]:
            out.append(line[: token.start[1]] + "!=" + line[tokens[i + 1].end[1] :])
    return out


def _split_top_level(tokens: _Tokens, separator: str) -> list[_Tokens]:
    """``tokens`` split at ``separator`` tokens outside brackets."""
    parts: list[_Tokens] = [[]]
    depth = 0
    for token in tokens:
        if token.string in ("(", "[", "{"):
            depth += 1
        elif token.string in (")", "]", "}"):
            depth -= 1
        if depth == 0 and token.string == separator and token.type == tokenize.OP:
            parts.append([])
        else:
            parts[-1].append(token)
    return parts


def _edit_join_statements(line: str, tokens: _Tokens) -> list[str]:
    """E702: ``a, b = 1, 2`` -> ``a = 1; b = 2`` (when no value reads a target) and
    ``from m import a, b`` -> ``from m import a; from m import b``."""
    if tokens and tokens[0].string == "from":
        strings = [t.string for t in tokens]
        if "import" not in strings or "(" in strings:
            return []
        cut = strings.index("import")
        names = _split_top_level(tokens[cut + 1 :], ",")
        if len(names) < 2 or not all(names):
            return []
        head = line[: tokens[cut].end[1]]
        return ["; ".join(f"{head} {line[name[0].start[1] : name[-1].end[1]]}" for name in names)]
    sides = _split_top_level(tokens, "=")
    if len(sides) != 2 or not sides[0] or not sides[1]:
        return []
    targets, values = _split_top_level(sides[0], ","), _split_top_level(sides[1], ",")
    if len(targets) < 2 or len(targets) != len(values) or not all(targets) or not all(values):
        return []
    if not all(len(target) == 1 and target[0].type == tokenize.NAME for target in targets):
        return []
    names = {target[0].string for target in targets}
    if any(t.type == tokenize.NAME and t.string in names for value in values for t in value):
        return []  # a, b = b, a: sequential assignments would change the meaning
    text = [line[part[0].start[1] : part[-1].end[1]] for part in values]
    indent = line[: len(line) - len(line.lstrip())]
    return [indent + "; ".join(f"{target[0].string} = {value}" for target, value in zip(targets, text))]


def _is_keyword(name: str) -> bool:
    import keyword

    return keyword.iskeyword(name) or keyword.issoftkeyword(name)


_EDITS: tuple[Callable[[str, _Tokens], list[str]], ...] = (
    _edit_operator_spaces,
    _edit_space_before_call,
    _edit_space_after_open,
    _edit_space_before_comma,
    _edit_trailing_whitespace,
    _edit_compare_to_none,
    _edit_join_statements,
    _edit_no_space_after_comma,
)


def inject_pep8_violation(line: str, rng: random.Random) -> str | None:
    """``line`` with one edit that pycodestyle flags (E225, E211, E201, E203, W291, E711, E702 or E231),
    the edits and their places tried in ``rng``'s order until the result has more violations than ``line``
    (for a clean line: at least one); ``None`` when none does. Edits act on tokens, so the inside of a
    string literal is never touched."""
    tokens = _tokens(line)
    before = pep8_violations(line)
    edits = list(_EDITS)
    rng.shuffle(edits)
    for edit in edits:
        variants = edit(line, tokens)
        rng.shuffle(variants)
        for variant in variants:
            # an edit may not be flagged: "a-b" is E226, which pycodestyle ignores by default
            if pep8_violations(variant) > before:
                return variant
    return None


def pep8_corpus(
    bad_share: float = 0.3, seed: int = 0, max_lines: int | None = None
) -> Iterator[tuple[str, bool]]:
    """``(line, injected)`` for the clean :func:`stdlib_code_lines`: each replaced, with probability
    ``bad_share`` (a ``random.Random(seed)``), by :func:`inject_pep8_violation`'s variant when one applies.
    At most ``max_lines`` pairs."""
    if not 0.0 <= bad_share <= 1.0:
        raise ValueError(f"bad_share must be between 0 and 1, got {bad_share}")
    rng = random.Random(seed)
    for count, line in enumerate(stdlib_code_lines()):
        if max_lines is not None and count >= max_lines:
            return
        if rng.random() < bad_share:
            variant = inject_pep8_violation(line, rng)
            if variant is not None:
                yield variant, True
                continue
        yield line, False


def write_jsonl_corpus(texts: Iterable[str], path: Path) -> int:
    """Write ``{"text": ...}`` per line to ``path`` (atomically: a temporary file in the same folder, then
    renamed); returns the number of lines."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            for text in texts:
                out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                count += 1
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)
    return count
