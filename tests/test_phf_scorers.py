"""The built-in scorers of pretraining with human feedback: ``pep8`` (PEP 8 violations per character) and
``offensive`` (alt-profanity-check's probability of offensive language), alone and in weighted sums."""

from __future__ import annotations

import logging
import sys
import warnings

import pytest

from rlxf.feedback import code_style as code_style_module
from rlxf.feedback import offensive as offensive_module
from rlxf.feedback.code_style import Pep8Scorer, pep8_scores, pep8_violations
from rlxf.feedback.offensive import OffensiveScorer, offensive_probabilities
from rlxf.feedback.rewards import RewardSource, WeightedSum, parse_reward_spec

OFFENSIVE = "You are a stupid idiot."
NEUTRAL = "You are a kind person."


# --- pep8 -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "violations"),
    [
        ("x = 1", 0),  # no final newline: W292 is not counted (the text is read as lines + "\n")
        ("def f(x):\n    return x + 1\n", 0),
        ("x=1", 1),  # E225 missing whitespace around operator
        ("import os, sys\nx=1", 2),  # E401 multiple imports on one line, E225
        ("x = '" + "a" * 80 + "'", 1),  # E501: 86 > 79 characters
        ("x = 1 \n", 1),  # W291 trailing whitespace, and no blank last line from the final "\n"
        ("x = 1\n\n", 1),  # W391 blank line at end of file
        ("def f():\n    return 1\ndef g():\n    return 2\n", 1),  # E302 expected 2 blank lines
        ("x = 1\r\ny = 2\r\n", 0),  # \r\n ends a line as in a source file
        ("x = 1\r# " + "a" * 78, 0),  # so does \r: two short lines, not E261 and E501 on one of 86
        ("x = (1,\n", 1),  # E901 TokenError: EOF in multi-line statement
        ("", 0),
    ],
)
def test_pep8_violations_by_hand(text, violations):
    assert pep8_violations(text) == violations


def test_pep8_reward_is_minus_violations_per_character():
    clean, e225, two = pep8_scores(["x = 1\n", "x=1", "import os, sys\nx=1"])
    assert clean == 0.0
    assert e225 == pytest.approx(-1 / 3)  # 1 violation, 3 characters
    assert two == pytest.approx(-2 / 18)  # E401 + E225 over 14 + 1 + 3 characters
    assert pep8_scores([""]) == [0.0]  # no division by zero
    assert pep8_scores([]) == []


def test_pep8_ignores_the_users_configuration_and_prints_nothing(tmp_path, monkeypatch, capsys):
    import pycodestyle

    config = tmp_path / "pycodestyle"
    config.write_text("[pycodestyle]\nmax-line-length = 10\nignore = E225\n", encoding="utf-8")
    monkeypatch.setattr(pycodestyle, "USER_CONFIG", str(config))
    monkeypatch.setattr(code_style_module, "_checker", None)
    assert pycodestyle.StyleGuide(quiet=True).options.max_line_length == 10  # pycodestyle itself reads it
    assert pep8_violations("long_name = 12345") == 0  # 17 characters: fine at pycodestyle's default 79
    assert pep8_violations("x=1") == 1  # E225 still counted
    assert capsys.readouterr() == ("", "")


def test_pep8_counts_each_text_apart():
    assert [pep8_violations("x=1") for _ in range(3)] == [1, 1, 1]  # no counts carried between texts


def test_pep8_bad_input_is_a_type_error():
    with pytest.raises(TypeError, match="list of strings"):
        pep8_scores("x=1")
    with pytest.raises(TypeError, match="text 1"):
        pep8_scores(["x = 1", None])


def test_pep8_scorer_scores_completions_not_prompts():
    scorer = Pep8Scorer()
    assert scorer(["x=1\n", "import os, sys\n"], ["y = 2\n", "y=2"]) == pytest.approx([0.0, -1 / 3])
    # Without its prompt a continuation of an indented block is E113 "unexpected indentation": 1 / 18 chars
    assert scorer(["def f(x):"], ["\n    return x + 1\n"]) == pytest.approx([-1 / 18])
    with pytest.raises(ValueError, match="one completion per prompt"):
        scorer(["a", "b"], ["c"])


# --- offensive ------------------------------------------------------------------------------------------


def test_offensive_sentence_gets_a_lower_reward():
    probabilities = offensive_probabilities([OFFENSIVE, NEUTRAL, ""])
    assert all(type(p) is float and 0.0 <= p <= 1.0 for p in probabilities)
    assert probabilities[0] > 0.9 > 0.2 > probabilities[1]
    rewards = OffensiveScorer()(["Tell me about yourself.", "Insult me."], [OFFENSIVE, NEUTRAL])
    assert rewards == pytest.approx([-probabilities[0], -probabilities[1]])
    assert all(-1.0 <= r <= 0.0 for r in rewards)
    assert rewards[0] < rewards[1]
    assert offensive_probabilities([]) == []


def test_offensive_scores_the_completion_alone():
    scorer = OffensiveScorer()
    assert scorer([OFFENSIVE], [NEUTRAL]) == scorer(["Hello."], [NEUTRAL])
    with pytest.raises(ValueError, match="one completion per prompt"):
        scorer(["a"], ["b", "c"])
    with pytest.raises(TypeError, match="text 0"):
        offensive_probabilities([3])


def test_version_warnings_are_logged_and_other_warnings_pass(caplog):
    def load():
        message = "Trying to unpickle estimator LinearSVC from version 1.9.1 when using version 1.4.0."
        warnings.warn(message, UserWarning, stacklevel=1)  # scikit-learn's InconsistentVersionWarning is one
        warnings.warn("something else", DeprecationWarning, stacklevel=1)
        return "model"

    with caplog.at_level(logging.DEBUG, logger="rlxf.feedback.offensive"):
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            assert offensive_module._load_quietly(load) == "model"
    assert [(w.category, str(w.message)) for w in shown] == [(DeprecationWarning, "something else")]
    assert "1 scikit-learn version warnings" in caplog.text
    assert "from version 1.9.1 when using version 1.4.0" in caplog.text


def test_a_model_pickled_by_another_scikit_learn_loads_without_warnings(monkeypatch, caplog):
    import sklearn.base

    monkeypatch.setattr(sklearn.base, "__version__", "0.0.0")  # as if another scikit-learn were installed
    for name in [m for m in sys.modules if m == "profanity_check" or m.startswith("profanity_check.")]:
        monkeypatch.delitem(sys.modules, name)  # import (and unpickle) it again
    monkeypatch.setattr(offensive_module, "_predict_prob", None)
    with caplog.at_level(logging.DEBUG, logger="rlxf.feedback.offensive"):
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            probabilities = offensive_probabilities([OFFENSIVE, NEUTRAL])
    assert shown == []
    assert "when using version 0.0.0" in caplog.text
    assert probabilities[0] > probabilities[1]


# --- as reward specs ------------------------------------------------------------------------------------


def test_the_spec_parser_returns_the_scorers():
    pep8 = parse_reward_spec("pep8")
    offensive = parse_reward_spec("offensive")
    assert isinstance(pep8, RewardSource) and isinstance(pep8.scorer, Pep8Scorer)
    assert isinstance(offensive, RewardSource) and isinstance(offensive.scorer, OffensiveScorer)
    assert (pep8.name, offensive.name) == ("pep8", "offensive")
    assert pep8(["p"], ["x=1"]) == pytest.approx([-1 / 3])
    assert offensive(["p"], [NEUTRAL]) == pytest.approx([-offensive_probabilities([NEUTRAL])[0]])


def test_weighted_sums():
    prompts, completions = ["p", "q"], ["good = 1\n", "x=1"]
    # pep8: [0, -1/3]; VADER: "good" alone is 1.9 / sqrt(1.9**2 + 15) = 0.4404, "x=1" is 0
    source = parse_reward_spec("0.5*pep8 + 0.5*sentiment")
    assert isinstance(source.scorer, WeightedSum)
    assert source.name == "0.5*pep8 + 0.5*sentiment"
    assert source(prompts, completions) == pytest.approx([0.5 * 0.4404, 0.5 * -1 / 3])

    mixed = parse_reward_spec([{"source": "pep8", "weight": 2.0}, "offensive"])
    p_good, p_x = offensive_probabilities(completions)
    assert mixed(prompts, completions) == pytest.approx([-p_good, 2 * -1 / 3 - p_x])


@pytest.mark.parametrize(
    ("spec", "module", "attribute", "package"),
    [
        ("pep8", code_style_module, "_checker", "pycodestyle"),
        ("0.5*sentiment + 0.5*pep8", code_style_module, "_checker", "pycodestyle"),
        ("offensive", offensive_module, "_predict_prob", "profanity_check"),
        ("0.5*pep8 + 0.5*offensive", offensive_module, "_predict_prob", "profanity_check"),
    ],
)
def test_a_missing_package_stops_parsing_and_names_the_extra(monkeypatch, spec, module, attribute, package):
    monkeypatch.setattr(module, attribute, None)  # not loaded yet
    monkeypatch.setitem(sys.modules, package, None)  # and not installed
    with pytest.raises(ImportError, match=r"install it with: pip install 'rlxf\[phf\]'"):
        parse_reward_spec(spec)
