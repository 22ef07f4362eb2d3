"""Statistics of generated text (rlxf/rollout/text_stats.py) against values counted by hand in the
comments: the share of words in a lexicon."""

from __future__ import annotations

import pytest

from rlxf.rollout.text_stats import lexicon_share


def test_lexicon_share_counts_words_by_hand():
    # words: great great film | the end -> 5 words, 2 in the lexicon ("Great," and "great" are one word)
    assert lexicon_share(["Great, great film.", "The end"], {"great"}) == pytest.approx(2 / 5)
    # pooled over texts, not a mean of per-text shares: 1 of 1 and 0 of 3 is 1/4, not 1/2
    assert lexicon_share(["WONDERFUL!", "a b c"], frozenset({"wonderful"})) == pytest.approx(1 / 4)
    assert lexicon_share(["good bad"], ["good", "bad"]) == 1.0
    assert lexicon_share(["good bad"], set()) == 0.0


def test_lexicon_share_without_words_is_zero():
    assert lexicon_share([], {"great"}) == 0.0
    assert lexicon_share(["", "  ...  ", "!!"], {"great"}) == 0.0  # punctuation alone is no word
