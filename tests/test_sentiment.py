"""The built-in sentiment scorer (VADER), the review openings and the sentiment example's pair builder."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from rlxf.data import read_data
from rlxf.feedback import SentimentScorer, sentiment_scores
from rlxf.feedback import sentiment as sentiment_module
from rlxf.feedback.sentiment import sentiment_lexicon
from rlxf.rollout.text_stats import lexicon_share

pytest.importorskip("vaderSentiment")

ROOT = Path(__file__).resolve().parents[1]
OPENINGS = ROOT / "rlxf" / "assets" / "review_openings.jsonl"
BUILDER = ROOT / "examples" / "sentiment" / "build_dataset.py"
TOPICS = {"film", "book", "restaurant", "product", "trip", "service", "game", "music", "app", "course"}


@pytest.fixture(scope="module")
def builder():
    spec = importlib.util.spec_from_file_location("sentiment_build_dataset", BUILDER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


# --- the scorer -----------------------------------------------------------------------------------------


def test_vader_scores_clear_sentiment():
    positive, negative, neutral = sentiment_scores(
        ["This was wonderful, I loved it!", "Awful, I hated every minute.", "The bus leaves at nine."]
    )
    assert positive > 0.5
    assert negative < -0.5
    assert neutral == 0.0
    assert sentiment_scores([]) == []
    assert sentiment_scores([""]) == [0.0]


def test_scores_are_plain_floats_in_range():
    scores = sentiment_scores(["GREAT!!! best day ever :)", "worst. thing. ever. I hate it!!!"])
    assert all(type(s) is float and -1.0 <= s <= 1.0 for s in scores)


def test_bad_input_is_a_type_error():
    with pytest.raises(TypeError, match="list of strings"):
        sentiment_scores("one string")
    with pytest.raises(TypeError, match="text 1"):
        sentiment_scores(["fine", 3])


def test_scorer_scores_completions_not_prompts():
    scorer = SentimentScorer()
    prompts = ["I loved it, a wonderful, happy day, and", "Awful, I hated every minute, and"]
    completions = [" the bus leaves at nine.", " the bus leaves at nine."]
    assert scorer(prompts, completions) == [0.0, 0.0]
    assert scorer(["The bus", "The bus"], [" was wonderful.", " was awful."]) == sentiment_scores(
        [" was wonderful.", " was awful."]
    )
    with pytest.raises(ValueError, match="one completion per prompt"):
        scorer(["a", "b"], ["c"])


def test_sentiment_lexicon_holds_vaders_strong_words():
    lexicon = sentiment_lexicon()
    # vader_lexicon.txt: great 3.1, bad -2.5, loved 2.9, good 1.9, okay 0.9; "the" is not rated
    assert {"great", "bad", "loved", "good"} <= lexicon
    assert "okay" not in lexicon and "the" not in lexicon
    assert "okay" in sentiment_lexicon(0.5)
    strong = sentiment_lexicon(3.0)
    assert "great" in strong and "good" not in strong and strong < lexicon
    # one word as text_stats.words reads text: no multi-word entries, no emoticons edged with punctuation
    assert "can't stand" not in lexicon and "fed up" not in lexicon
    assert ":)" not in lexicon and ":-d" not in sentiment_lexicon(0.0)
    assert all(w == w.lower() and " " not in w and any(c.isalpha() for c in w) for w in lexicon)
    assert 5000 < len(lexicon) < 7000  # about 5,600 of the file's 7,520 entries
    assert sentiment_lexicon() is lexicon  # cached
    with pytest.raises(ValueError, match="min_abs_valence"):
        sentiment_lexicon(-1.0)


def test_lexicon_share_of_praise():
    # this film was great and i loved it: 8 words, 2 in the lexicon (great, loved)
    assert lexicon_share(["This film was great, and I loved it."], sentiment_lexicon()) == pytest.approx(
        2 / 8
    )
    # stuffing: great great wonderful amazing film -> 4 of 5
    assert lexicon_share(["great great wonderful amazing film"], sentiment_lexicon()) == pytest.approx(4 / 5)


def test_missing_package_leaves_the_lexicon_unloaded_with_the_pip_command(monkeypatch):
    sentiment_lexicon.cache_clear()
    monkeypatch.setitem(sys.modules, "vaderSentiment", None)
    try:
        with pytest.raises(ImportError, match="pip install vadersentiment"):
            sentiment_lexicon()
    finally:
        sentiment_lexicon.cache_clear()


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(sentiment_module, "_analyzer", None)
    monkeypatch.setitem(sys.modules, "vaderSentiment", None)
    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    with pytest.raises(ImportError, match="pip install vadersentiment"):
        sentiment_scores(["hello"])


# --- the openings ---------------------------------------------------------------------------------------


def _openings() -> list[dict]:
    return [json.loads(line) for line in OPENINGS.read_text(encoding="utf-8").splitlines()]


def test_openings_file_shape():
    rows = _openings()
    assert len(rows) == 340
    for row in rows:
        assert set(row) == {"prompt", "split", "topic"}
        assert row["split"] in ("train", "test")
        assert row["topic"] in TOPICS
        assert row["prompt"] == row["prompt"].strip()
        assert 3 <= len(row["prompt"].split()) <= 12
    prompts = [row["prompt"] for row in rows]
    assert len(set(prompts)) == 340
    assert len({p.lower() for p in prompts}) == 340
    splits = Counter(row["split"] for row in rows)
    assert splits == {"train": 280, "test": 60}
    test_topics = Counter(row["topic"] for row in rows if row["split"] == "test")
    assert set(test_topics) == TOPICS  # the held-out prompts cover every topic


def test_openings_are_neutral_to_vader():
    prompts = [row["prompt"] for row in _openings()]
    assert all(score == 0.0 for score in sentiment_scores(prompts))


def test_openings_read_as_prompts():
    dataset = read_data(OPENINGS, kind="prompts")
    assert len(dataset.records) == 340
    assert dataset.records[0]["split"] in ("train", "test")


def test_builder_loads_openings_by_split(builder):
    splits = builder.load_openings(OPENINGS)
    assert (len(splits["train"]), len(splits["test"])) == (280, 60)
    assert not set(splits["train"]) & set(splits["test"])


# --- the pair builder -----------------------------------------------------------------------------------


def test_eligible_pairs_by_gap(builder):
    texts = ["a", "b", "c", "d"]
    scores = [0.9, 0.0, -0.5, 0.1]
    pairs = builder.eligible_pairs(texts, scores, min_gap=0.3)
    assert [(i, j) for i, j, _ in pairs] == [(0, 2), (0, 1), (0, 3), (3, 2), (1, 2)]
    assert [round(g, 6) for *_, g in pairs] == [1.4, 0.9, 0.8, 0.6, 0.5]
    assert all(scores[i] > scores[j] for i, j, _ in pairs)  # chosen is the higher-scored sample


def test_eligible_pairs_skip_blank_and_equal_texts(builder):
    texts = [" good", "   ", " good", " bad", " bad"]
    scores = [0.8, -0.9, 0.8, -0.5, -0.5]
    pairs = builder.eligible_pairs(texts, scores, min_gap=0.3)
    assert [(texts[i], texts[j]) for i, j, _ in pairs] == [(" good", " bad")]


def test_select_pairs_spreads_over_prompts_and_prefers_gaps(builder):
    groups = [
        (["a", "b", "c", "d"], [1.0, 0.5, 0.0, -1.0]),  # gaps 2.0 (a>d), 1.5 (b>d), 1.0 (a>c, c>d), 0.5 x2
        (["e", "f"], [0.4, 0.0]),
        (["g", "h"], [0.1, 0.0]),  # no pair reaches the gap
    ]
    one_round = builder.select_pairs(groups, target=2, min_gap=0.3, seed=0)
    # The first round gives each prompt its largest-gap pair, so both prompts with pairs appear.
    assert sorted((k, i, j) for k, i, j, _ in one_round) == [(0, 0, 3), (1, 0, 1)]

    more = builder.select_pairs(groups, target=4, min_gap=0.3, seed=0)
    assert len(more) == 4
    assert len({(k, i, j) for k, i, j, _ in more}) == 4  # distinct
    assert all(gap >= 0.3 for *_, gap in more)
    # Round 2 offers prompt 0's second pair only (b over d, 1.5), round 3 its third (a over c, 1.0).
    assert sorted(round(g, 6) for k, *_, g in more if k == 0) == [1.0, 1.5, 2.0]

    everything = builder.select_pairs(groups, target=100, min_gap=0.3, seed=0)
    assert len(everything) == 6 + 1  # prompt 0: all six pairs (gaps >= 0.5); prompt 1: one; prompt 2: none


def test_select_pairs_is_deterministic_for_a_seed(builder):
    import random

    rng = random.Random(1)
    groups = [([f"t{k}-{i}" for i in range(4)], [rng.uniform(-1, 1) for _ in range(4)]) for k in range(50)]
    first = builder.select_pairs(groups, target=60, min_gap=0.3, seed=7)
    assert first == builder.select_pairs(groups, target=60, min_gap=0.3, seed=7)
    assert len(first) == 60
    assert builder.select_pairs(groups, target=0, min_gap=0.3, seed=7) == []


def test_records_and_files(builder, tmp_path):
    prompts = ["The soup", "The bus"]
    samples = [[" was lovely.", " was cold and bland.", "  "], [" left.", " was wonderful!"]]
    scores = [[0.6, -0.4, 0.0], [0.0, 0.6]]
    pairs = builder.select_pairs(list(zip(samples, scores)), target=10, min_gap=0.3, seed=0)
    files = {
        "prefs.jsonl": (builder.preference_records(prompts, samples, pairs), "preferences"),
        "prefs_margin.jsonl": (
            builder.preference_records(prompts, samples, pairs, margin=True),
            "preferences",
        ),
        "ratings.jsonl": (builder.rating_records(prompts, samples, scores), "ratings"),
        "unpaired.jsonl": (builder.unpaired_records(prompts, samples, scores), "unpaired"),
        "sft.jsonl": (builder.sft_records(prompts, samples, scores), "sft"),
    }
    prefs, _ = files["prefs.jsonl"]
    assert {(r["chosen"], r["rejected"]) for r in prefs} == {
        (" was lovely.", " was cold and bland."),
        (" was wonderful!", " left."),
    }
    assert all("margin" not in r for r in prefs)
    assert all(r["margin"] > 0 for r in files["prefs_margin.jsonl"][0])
    assert len(files["ratings.jsonl"][0]) == 4  # the blank sample is dropped
    assert [r["label"] for r in files["unpaired.jsonl"][0]] == [True, False, True]  # neutral " left." dropped
    assert files["sft.jsonl"][0] == [
        {"prompt": "The soup", "completion": " was lovely."},
        {"prompt": "The bus", "completion": " was wonderful!"},
    ]
    for name, (records, kind) in files.items():
        builder.write_jsonl_atomic(tmp_path / name, records)
        assert len(read_data(tmp_path / name, kind=kind).records) == len(records)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_steered_prompts_and_grouping_back_to_the_bare_opening(builder):
    contexts = builder.STEER_CONTEXTS["contrast"]
    assert len(contexts) == 2 and "five-star" in contexts[0] and "one-star" in contexts[1]
    prompts = ["The soup", "The bus"]
    steered = builder.steered_prompts(prompts, contexts)
    assert steered == [
        contexts[0] + "The soup",
        contexts[0] + "The bus",
        contexts[1] + "The soup",
        contexts[1] + "The bus",
    ]
    assert builder.steered_prompts(prompts, builder.STEER_CONTEXTS["none"]) == prompts

    class FakeEngine:  # returns "<row>" for each of n samples of each (steered) prompt
        def generate(self, rows, sampling, seed, progress):
            import torch

            completions = [f"{r}#{s}" for r in rows for s in range(sampling.n)]
            index = torch.arange(len(rows)).repeat_interleave(sampling.n)
            return type("Batch", (), {"completions": completions, "prompt_index": index})()

    args = builder.parse_args(["--n", "2"])
    grouped = builder.sample(FakeEngine(), prompts, contexts, args, seed=0)
    # Each bare opening gets its n samples under every framing; the records never show the framing.
    assert grouped[0] == [
        f"{contexts[0]}The soup#0",
        f"{contexts[0]}The soup#1",
        f"{contexts[1]}The soup#0",
        f"{contexts[1]}The soup#1",
    ]
    assert all("The bus" in text for text in grouped[1])


def test_builder_defaults_keep_clear_pairs(builder):
    args = builder.parse_args([])
    assert (args.steer, args.min_chosen, args.max_rejected, args.temperature) == ("contrast", 0.3, -0.3, 0.7)
    off = builder.parse_args(["--min-chosen", "none", "--max-rejected", "none", "--steer", "none"])
    assert (off.min_chosen, off.max_rejected, off.steer) == (None, None, "none")
    with pytest.raises(SystemExit):
        builder.parse_args(["--n", "9", "--max-n", "16"])  # 9 x 2 framings > 16
