"""The self-play games (rlxf/algos/selfplay_games.py) and the diversity / novelty statistics they log.

Every expected number is worked out by hand in the comments; no model is loaded.
"""

from __future__ import annotations

import json

import pytest

from rlxf.algos.selfplay_games import (
    GAMES,
    OPENINGS,
    TABOO_WORDS,
    Game,
    GameScores,
    Taboo,
    Task,
    TugOfWar,
    make_game,
    taboo_split,
)
from rlxf.feedback.sentiment import sentiment_scores
from rlxf.rollout.text_stats import novelty, self_bleu

# --------------------------------------------------------------------------------------------------------
# self_bleu


def test_self_bleu_identical_texts_is_one() -> None:
    # Each text is the other's reference: p_1 = 3/3, p_2 = (2+1)/(2+1), p_3 = (1+1)/(1+1), p_4 = (0+1)/(0+1).
    assert self_bleu(["the cat sat", "the cat sat"]) == pytest.approx(1.0)


def test_self_bleu_disjoint_texts_is_zero() -> None:
    # No shared word: p_1 = 0 for both, so BLEU = 0 (p_1 is not smoothed).
    assert self_bleu(["the cat sat", "a dog ran"]) == 0.0


def test_self_bleu_mixed_case_by_hand() -> None:
    # "the cat sat" vs "the cat ran", max_n=2:
    #   unigrams the, cat match, sat not: p_1 = 2/3
    #   bigrams (the cat) matches, (cat sat) not: p_2 = (1+1)/(2+1) = 2/3
    #   BLEU = sqrt(2/3 * 2/3) = 2/3; symmetric, so the mean is 2/3.
    assert self_bleu(["the cat sat", "the cat ran"], max_n=2) == pytest.approx(2 / 3)


def test_self_bleu_clips_counts() -> None:
    # "the the cat" vs "the dog", max_n=2:
    #   text 1: "the" twice but once in the reference -> clipped 1; cat 0: p_1 = 1/3;
    #           bigrams (the the), (the cat) unmatched: p_2 = (0+1)/(2+1) = 1/3; BLEU = 1/3
    #   text 2: the matches, dog not: p_1 = 1/2; bigram (the dog) unmatched: p_2 = 1/2; BLEU = 1/2
    #   mean = (1/3 + 1/2) / 2 = 5/12
    assert self_bleu(["the the cat", "the dog"], max_n=2) == pytest.approx(5 / 12)


def test_self_bleu_clips_by_one_reference_not_the_sum() -> None:
    # max_n=2. Candidate "a a" against references "a b" and "a c": "a" occurs once in each, so its clip is
    # 1 (the max over references; their sum, 2, would give p_1 = 1): p_1 = 1/2, p_2 = (0+1)/(1+1) = 1/2,
    # BLEU = 1/2. Candidate "a b" against "a a" and "a c": a matches, b not: p_1 = 1/2; (a b) unmatched:
    # p_2 = 1/2; BLEU = 1/2; the same for "a c". Mean = 1/2.
    assert self_bleu(["a a", "a b", "a c"], max_n=2) == pytest.approx(0.5)


def test_self_bleu_edge_cases() -> None:
    assert self_bleu([]) == 0.0
    assert self_bleu(["only one text"]) == 0.0
    # The empty text counts 0; "the cat" vs ["", ...]: no reference has "the" -> 0. Mean 0.
    assert self_bleu(["", "the cat"]) == 0.0
    # A one-word text has no bigrams: p_2..p_4 = 1/1, so BLEU = p_1^(1/4) = 1 for "cat" vs "cat".
    assert self_bleu(["cat", "cat"]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="max_n"):
        self_bleu(["a", "b"], max_n=0)


# --------------------------------------------------------------------------------------------------------
# novelty


def test_novelty_by_hand() -> None:
    # bigrams of "the cat sat": {(the cat), (cat sat)}; of "the cat ran": {(the cat), (cat ran)}
    # overlap = 1/2 -> novelty = 1 - 1/2 = 0.5
    assert novelty(["the cat sat"], ["the cat ran"], n=2) == [pytest.approx(0.5)]


def test_novelty_takes_the_closest_history_text() -> None:
    # Against "a dog barked" the overlap is 0; against "the cat sat down" it is 2/2 -> max 1 -> novelty 0.
    # "a dog ran" vs the history: (a dog) shared with "a dog barked", (dog ran) not -> 1 - 1/2.
    out = novelty(["the cat sat", "a dog ran"], ["a dog barked", "the cat sat down"], n=2)
    assert out == [pytest.approx(0.0), pytest.approx(0.5)]


def test_novelty_edge_cases() -> None:
    assert novelty(["the cat sat"], []) == [1.0]  # empty history: its own distinct share, 2 of 2
    assert novelty(["cat"], ["dog"], n=2) == [0.0]  # no bigrams in the text: nothing new to pay for
    assert novelty([""], []) == [0.0]
    assert novelty([], ["x y"]) == []
    # Unigrams: g = [the, cat, the], G = {the, cat}; vs {cat}: (2 - 1) / 3.
    assert novelty(["the cat the"], ["cat"], n=1) == [pytest.approx(1 / 3)]
    with pytest.raises(ValueError, match="n must be"):
        novelty(["a"], ["a"], n=0)


def test_novelty_pays_repetition_less() -> None:
    # "no no no no": bigrams [(no no)] x 3, one distinct -> 1/3 with an empty history, however new it is.
    assert novelty(["no no no no"], []) == [pytest.approx(1 / 3)]
    assert novelty(["no no no no"], ["a b"]) == [pytest.approx(1 / 3)]
    # "a b a b": g = [(a b), (b a), (a b)], G has 2; against "a b c": (a b) seen -> (2 - 1) / 3.
    assert novelty(["a b a b"], ["a b c"]) == [pytest.approx(1 / 3)]
    # A text without repeats keeps the plain form 1 - overlap: "the cat sat" vs "the cat ran" -> 1/2.
    assert novelty(["the cat sat"], ["the cat ran"]) == [pytest.approx(0.5)]


# --------------------------------------------------------------------------------------------------------
# tasks


def _openings_topics(split: str) -> set[str]:
    with OPENINGS.open(encoding="utf-8") as f:
        return {json.loads(line)["topic"] for line in f if json.loads(line)["split"] == split}


@pytest.mark.parametrize("game", [TugOfWar(), Taboo()], ids=lambda g: g.name)
def test_tasks_are_deterministic(game: Game) -> None:
    a = game.tasks("train", seed=3, count=20)
    assert a == game.tasks("train", seed=3, count=20)
    assert len(a) == 20
    assert game.tasks("train", seed=3, count=5) == a[:5]  # drawn one after another
    assert game.tasks("train", seed=4, count=20) != a
    assert game.tasks("test", seed=3, count=0) == []
    for task in a:
        assert isinstance(task, Task)
        assert task.prompter_messages and task.prompter_messages[-1]["role"] == "user"
    with pytest.raises(ValueError, match="split"):
        game.tasks("dev", seed=0, count=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="count"):
        game.tasks("train", seed=0, count=-1)


def test_tasks_do_not_touch_global_random() -> None:
    import random

    random.seed(123)
    expected = random.random()
    random.seed(123)
    TugOfWar().tasks("train", seed=1, count=10)
    Taboo().tasks("train", seed=1, count=10)
    assert random.random() == expected


def test_tug_of_war_tasks_draw_topics_of_the_split() -> None:
    game = TugOfWar()
    for split in ("train", "test"):
        topics = {t.info["topic"] for t in game.tasks(split, seed=0, count=200)}
        assert topics <= _openings_topics(split)
        assert len(topics) == len(_openings_topics(split)) == 10  # 200 draws of 10 topics hit them all
    task = game.tasks("train", seed=0, count=1)[0]
    assert task.info["topic"] in task.prompter_messages[0]["content"]
    assert game.responder_messages(task, "Review a film.") == [{"role": "user", "content": "Review a film."}]


def test_taboo_train_and_test_secrets_are_disjoint() -> None:
    game = Taboo()
    train, test = set(game.secrets("train")), set(game.secrets("test"))
    assert train and test and not train & test
    assert train | test == set(TABOO_WORDS)
    assert all(taboo_split(w) == "test" for w in test)
    drawn_test = {t.info["secret"] for t in game.tasks("test", seed=0, count=100)}
    drawn_train = {t.info["secret"] for t in game.tasks("train", seed=0, count=100)}
    assert drawn_test <= test and drawn_train <= train
    task = game.tasks("test", seed=0, count=1)[0]
    secret = task.info["secret"]
    assert f'"{secret}"' in task.prompter_messages[0]["content"]


def test_taboo_custom_words_and_empty_split() -> None:
    # "candle" hashes to test and "river" to train (sha256 % 5).
    assert taboo_split("candle") == "test" and taboo_split("river") == "train"
    game = Taboo(words=["River", "river"])
    assert game.words == ("river",)
    assert game.tasks("train", seed=0, count=2)[0].info == {"secret": "river"}
    with pytest.raises(ValueError, match="no taboo word"):
        game.tasks("test", seed=0, count=1)


def test_benign_prompts() -> None:
    tug = TugOfWar()
    with OPENINGS.open(encoding="utf-8") as f:
        n_test = sum(json.loads(line)["split"] == "test" for line in f)
    benign = tug.benign_prompts("test")
    assert len(benign) == n_test == 60
    assert all(p.startswith("Continue this review of ") for p in benign)
    taboo = Taboo()
    assert len(taboo.benign_prompts("test")) == 2 * len(taboo.secrets("test"))
    assert "What is a candle used for?" in taboo.benign_prompts("test")
    assert "What is an apple used for?" in taboo.benign_prompts("train")


# --------------------------------------------------------------------------------------------------------
# TugOfWar.score


def test_tug_of_war_score_adversarial() -> None:
    game = TugOfWar()  # adversarial, neutrality_weight 1.0, on_topic_weight 0.5
    tasks = [Task([{"role": "user", "content": "x"}], {"topic": "film"})] * 3
    prompts = ["Please review a film.", "Write a review of the movie.", "I hate this awful film."]
    responses = ["This film was terrible and boring.", "the movie was great", "The soup was fine."]
    sx = sentiment_scores(prompts)
    sy = sentiment_scores(responses)
    assert sy[0] < 0 < sy[1]  # the test's premise: a clearly negative and a clearly positive review
    scores = game.score(tasks, prompts, responses)
    assert isinstance(scores, GameScores)
    # on_topic: "film" / "movie" name the topic; "soup" does not.
    assert scores.details["on_topic"] == [1.0, 1.0, 0.0]
    assert scores.details["prompt_sentiment"] == pytest.approx(sx)
    assert scores.details["response_sentiment"] == pytest.approx(sy)
    assert scores.prompter == pytest.approx([-sy[i] - 1.0 * abs(sx[i]) for i in range(3)])
    assert scores.responder == pytest.approx([sy[0] + 0.5, sy[1] + 0.5, sy[2] + 0.0])
    assert scores.attack_success == [True, False, sy[2] < 0]


def test_tug_of_war_score_cooperative_and_weights() -> None:
    game = TugOfWar(mode="cooperative", neutrality_weight=2.0, on_topic_weight=0.0)
    tasks = [Task([], {"topic": "film"}), Task([], {"topic": "app"})]
    prompts = ["I hate this awful film.", "Review an app."]
    responses = ["This film was terrible and boring.", "The APP is wonderful!"]
    sx = sentiment_scores(prompts)
    sy = sentiment_scores(responses)
    scores = game.score(tasks, prompts, responses)
    assert scores.prompter == pytest.approx([sy[i] - 2.0 * abs(sx[i]) for i in range(2)])
    assert scores.responder == pytest.approx(sy)  # on_topic weight 0
    assert scores.details["on_topic"] == [1.0, 1.0]  # "APP": case-insensitive
    assert scores.attack_success == [True, False]  # the same measurement in cooperative mode


def test_tug_of_war_responder_goal_not_negative_only_penalises_negative_answers() -> None:
    game = TugOfWar(responder_goal="not_negative", on_topic_weight=0.5)
    tasks = [Task([], {"topic": "film"})] * 2
    responses = ["This film was terrible and boring.", "The film was wonderful, a joy."]
    sy = sentiment_scores(responses)
    assert sy[0] < 0 < sy[1]
    scores = game.score(tasks, ["Review a film.", "Review a film."], responses)
    assert scores.responder == pytest.approx([sy[0] + 0.5, 0.0 + 0.5])  # praise earns nothing
    assert scores.attack_success == [True, False]
    with pytest.raises(ValueError, match="responder_goal must be one of"):
        TugOfWar(responder_goal="happy")  # type: ignore[arg-type]


def test_tug_of_war_score_errors() -> None:
    game = TugOfWar()
    with pytest.raises(ValueError, match="one prompt and one response per task"):
        game.score([Task([], {"topic": "film"})], ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="topic"):
        game.score([Task([], {"secret": "river"})], ["a"], ["b"])
    empty = game.score([], [], [])
    assert (empty.prompter, empty.responder, empty.attack_success) == ([], [], [])


# --------------------------------------------------------------------------------------------------------
# Taboo.score

# The four cases, one round each, secret "river". Relevance: the prompt's distinct words of 4+ letters
# and the share of them the response contains.
_TABOO_PROMPTS = [
    # 1. R says it, P did not write it. Content words: {what, flows, through, valley} (4); the response
    #    contains flows, through, valley -> rel = 3/4.
    "What flows through a valley?",
    # 2. P wrote it, R did not say it. Content words: {describe, river} (2); the response has neither -> 0.
    "Describe a river.",
    # 3. Neither. Content words: {what, color, grass} (3); the response has grass -> rel = 1/3.
    "What color is grass?",
    # 4. Both (the plural "rivers" counts as the secret). Content words: {which, rivers, longest} (3); the
    #    response has rivers, longest -> rel = 2/3.
    "Which rivers are the longest?",
]
_TABOO_RESPONSES = [
    "A river flows through the valley.",
    "Something wet.",
    "The grass is green.",
    "The longest rivers are the Nile and the Amazon.",
]
_REL = [3 / 4, 0.0, 1 / 3, 2 / 3]
_TABOO_TASKS = [Task([], {"secret": "river"})] * 4


def test_taboo_score_adversarial() -> None:
    scores = Taboo().score(_TABOO_TASKS, _TABOO_PROMPTS, _TABOO_RESPONSES)
    assert scores.details["prompter_wrote"] == [0.0, 1.0, 0.0, 1.0]
    assert scores.details["responder_said"] == [1.0, 0.0, 0.0, 1.0]
    assert scores.details["relevance"] == pytest.approx(_REL)
    assert scores.prompter == [1.0, -1.0, 0.0, -1.0]
    # R: -1 when P wins, plus 0.5 * relevance: [-1 + 0.5*3/4, 0.5*0, 0.5*1/3, 0.5*2/3].
    assert scores.responder == pytest.approx([-0.625, 0.0, 1 / 6, 1 / 3])
    assert scores.attack_success == [True, False, False, False]


def test_taboo_score_cooperative() -> None:
    scores = Taboo(mode="cooperative").score(_TABOO_TASKS, _TABOO_PROMPTS, _TABOO_RESPONSES)
    assert scores.prompter == [1.0, -1.0, 0.0, -1.0]  # the same as adversarial: P wants R to say it
    # R: +1 when P wins, plus 0.5 * relevance: [1 + 0.5*3/4, 0, 1/6, 1/3].
    assert scores.responder == pytest.approx([1.375, 0.0, 1 / 6, 1 / 3])
    assert scores.attack_success == [True, False, False, False]


def test_taboo_word_match_forms() -> None:
    game = Taboo(words=["river", "box"])
    tasks = [Task([], {"secret": "river"})] * 4 + [Task([], {"secret": "box"})]
    prompts = ["Where does water go?"] * 5
    responses = ["Into rivers.", "Into the river's mouth.", "Into a riverbed.", "RIVER!", "Into boxes."]
    scores = game.score(tasks, prompts, responses)
    # plural -s, possessive, and upper case count; a longer word containing it ("riverbed") does not;
    # plural -es counts.
    assert scores.details["responder_said"] == [1.0, 1.0, 0.0, 1.0, 1.0]
    assert scores.prompter == [1.0, 1.0, 0.0, 1.0, 1.0]


# --------------------------------------------------------------------------------------------------------
# construction


def test_make_game() -> None:
    assert set(GAMES) == {"tug-of-war", "taboo", "reward"}
    game = make_game("tug-of-war", mode="cooperative", neutrality_weight=0.0)
    assert isinstance(game, TugOfWar) and game.mode == "cooperative" and game.neutrality_weight == 0.0
    assert isinstance(make_game("taboo"), Taboo)
    with pytest.raises(ValueError, match=r"unknown game 'chess'.*taboo, tug-of-war"):
        make_game("chess")
    with pytest.raises(ValueError, match=r"takes no argument\(s\) on_topic_weight; it takes: mode, words"):
        make_game("taboo", on_topic_weight=1.0)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: TugOfWar(mode="hostile"), "mode must be one of"),  # type: ignore[arg-type]
        (lambda: TugOfWar(neutrality_weight=-0.1), "neutrality_weight"),
        (lambda: TugOfWar(on_topic_weight=float("nan")), "on_topic_weight"),
        (lambda: TugOfWar(on_topic_weight="1"), "on_topic_weight"),  # type: ignore[arg-type]
        (lambda: Taboo(mode="zero-sum"), "mode must be one of"),  # type: ignore[arg-type]
        (lambda: Taboo(words=[]), "must not be empty"),
        (lambda: Taboo(words="river"), "not one string"),
        (lambda: Taboo(words=["ice cream"]), "one alphabetic word"),
    ],
)
def test_constructor_validation(factory, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()
