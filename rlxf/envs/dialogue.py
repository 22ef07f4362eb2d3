"""Dialogue: a conversation with a simulated user who has a goal (e.g. "wants to know how to water a
cactus"), scored turn by turn by rules.

Each topic (``TOPICS``, 22 written below) has a goal and three user messages: the first message and two
follow-up questions, each with 3 keywords that a helpful answer to it should mention. ``reset`` draws a
topic and returns its first message; each ``step`` scores the assistant's reply to the current question and
the user answers with the topic's next question, until ``max_turns`` replies (1 to 3). The conversation
then ends naturally, so the last turn is ``terminated`` (never ``truncated``). A topic's split is decided by a
hash of its name (:func:`rlxf.envs.base.split_of`), so train and test topics are disjoint.

Reward of a turn: the share of the current question's keywords the reply mentions (case-insensitive, at the
start of a word, so "soak" counts in "soaking" but "oil" does not count in "boil"; spaces and hyphens inside
a keyword match either), minus 0.5 when the reply is empty or longer than 120 words.
``info["success"]`` (at the end): the mean keyword coverage over the turns is at least 0.5. Each question has
its own keywords (a follow-up asks something else than the first message), rather than one keyword list per
goal.

``user``: an optional callable ``(messages) -> str`` that writes the user's replies instead of the scripted
follow-ups (e.g. a language model playing the user). ``messages`` is a system message describing the user
(its goal and the scripted next question, whose keywords still score the next turn), then the conversation
so far with the roles as the assistant sees them (``user``: the simulated user, ``assistant``: the model).
The first message stays scripted, so a seed still fixes the task. The reward rule does not change.

Left out: judging correctness or tone (a keyword is counted even in a wrong or rude sentence), users who
change their goal or end the conversation early, and more than three turns per topic.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from rlxf.envs.base import (
    Observation,
    Split,
    TextEnv,
    check_int,
    check_options,
    check_split,
    draw_in_split,
    seeded_rng,
    split_of,
)

MAX_WORDS = 120
LENGTH_PENALTY = 0.5
SUCCESS_COVERAGE = 0.5


@dataclass(frozen=True)
class Topic:
    """A simulated user's goal and its three messages, each with the keywords a helpful reply mentions."""

    name: str
    goal: str
    turns: tuple[tuple[str, tuple[str, ...]], ...]  # (user message, keywords), first message first


def _topic(name: str, goal: str, *turns: tuple[str, tuple[str, ...]]) -> Topic:
    return Topic(name=name, goal=goal, turns=tuple(turns))


TOPICS: tuple[Topic, ...] = (
    _topic(
        "vegetarian-dinner",
        "wants a vegetarian dinner recipe",
        ("Can you suggest a vegetarian dinner I can cook tonight?", ("vegetable", "protein", "cook")),
        ("What can I use instead of meat for protein?", ("tofu", "bean", "lentil")),
        ("How can I make it ahead for the week?", ("fridge", "container", "reheat")),
    ),
    _topic(
        "water-cactus",
        "wants to know how to water a cactus",
        ("How should I water my cactus?", ("soak", "dry", "drain")),
        ("How often should I water it in winter?", ("winter", "month", "less")),
        ("How can I tell if I am overwatering it?", ("soft", "rot", "yellow")),
    ),
    _topic(
        "fall-asleep",
        "wants to fall asleep more easily",
        ("I have trouble falling asleep. What can I do?", ("schedule", "screen", "caffeine")),
        ("Is it bad to use my phone in bed?", ("light", "screen", "bed")),
        ("What should I do if I wake up at night and cannot sleep?", ("relax", "breath", "clock")),
    ),
    _topic(
        "learn-python",
        "wants to start learning Python",
        ("I want to learn Python programming. Where should I start?", ("install", "tutorial", "practice")),
        ("What small project could I build first?", ("project", "script", "game")),
        ("How do I fix an error I do not understand?", ("traceback", "search", "print")),
    ),
    _topic(
        "job-interview",
        "wants to prepare for a job interview",
        ("I have a job interview next week. How should I prepare?", ("research", "company", "practice")),
        ("How should I answer 'tell me about yourself'?", ("experience", "brief", "role")),
        ("What questions should I ask the interviewer?", ("team", "growth", "expectation")),
    ),
    _topic(
        "monthly-budget",
        "wants to make a monthly budget",
        ("How do I make a monthly budget?", ("income", "expense", "track")),
        ("How much should I save each month?", ("percent", "emergency", "save")),
        ("What apps or tools can help me with it?", ("spreadsheet", "app", "bank")),
    ),
    _topic(
        "first-5k",
        "wants to train for a first 5k run",
        ("I want to run my first 5k. How do I train for it?", ("walk", "gradual", "week")),
        ("How do I avoid getting injured?", ("warm", "rest", "shoe")),
        ("What should I eat before the race?", ("carb", "water", "hour")),
    ),
    _topic(
        "bake-bread",
        "wants to bake bread at home",
        ("How do I bake a simple loaf of bread?", ("flour", "yeast", "knead")),
        ("Why did my bread not rise?", ("yeast", "warm", "proof")),
        ("How should I store the bread?", ("bag", "freez", "stale")),
    ),
    _topic(
        "slow-laptop",
        "wants to speed up a slow laptop",
        ("My laptop has become slow. How can I speed it up?", ("startup", "restart", "update")),
        ("Should I add more memory?", ("ram", "memory", "upgrade")),
        ("How do I check for malware?", ("antivirus", "scan", "malware")),
    ),
    _topic(
        "coffee-stain",
        "wants to remove a coffee stain from a shirt",
        ("How do I get a coffee stain out of a white shirt?", ("cold water", "blot", "detergent")),
        ("What if the stain has already dried?", ("soak", "vinegar", "stain remover")),
        ("Can I use bleach on it?", ("fabric", "label", "bleach")),
    ),
    _topic(
        "spanish-words",
        "wants to learn Spanish vocabulary faster",
        ("How can I learn Spanish words faster?", ("flashcard", "daily", "spaced")),
        ("How do I practice speaking without a partner?", ("aloud", "record", "podcast")),
        ("How long until I can hold a conversation?", ("month", "hour", "consistent")),
    ),
    _topic(
        "balcony-tomatoes",
        "wants to grow tomatoes on a balcony",
        ("Can I grow tomatoes on my balcony?", ("pot", "sun", "water")),
        ("Which kind of tomato is best for a small space?", ("cherry", "dwarf", "determinate")),
        ("How do I keep the plant upright?", ("stake", "cage", "tie")),
    ),
    _topic(
        "extension-email",
        "wants to write a polite email asking for a deadline extension",
        ("How do I ask my professor for a deadline extension by email?", ("polite", "reason", "date")),
        ("What should the subject line say?", ("extension", "request", "course")),
        ("What if they say no?", ("thank", "plan", "priorit")),
    ),
    _topic(
        "puppy-biting",
        "wants to stop a puppy from biting",
        ("My puppy keeps biting my hands. How do I stop it?", ("toy", "redirect", "consistent")),
        ("Should I punish the puppy when it bites?", ("reward", "positive", "calm")),
        ("How long does this phase last?", ("month", "teeth", "grow")),
    ),
    _topic(
        "start-meditating",
        "wants to start meditating",
        ("How do I start meditating as a beginner?", ("breath", "minute", "quiet")),
        ("My mind keeps wandering. Is that normal?", ("normal", "notice", "return")),
        ("Are there apps that can guide me?", ("app", "guided", "timer")),
    ),
    _topic(
        "jump-start-car",
        "wants to jump-start a car",
        ("My car battery is dead. How do I jump-start it?", ("cable", "red", "black")),
        ("In what order do I remove the cables?", ("reverse", "black", "red")),
        ("How long should I drive afterwards?", ("minute", "alternator", "charge")),
    ),
    _topic(
        "resume",
        "wants to make a resume stand out",
        ("How can I make my resume stand out?", ("achievement", "number", "tailor")),
        ("How long should my resume be?", ("page", "relevant", "experience")),
        ("Should I include a photo?", ("country", "photo", "industry")),
    ),
    _topic(
        "eye-strain",
        "wants to reduce eye strain from screens",
        ("My eyes get tired from the computer screen. What helps?", ("break", "distance", "blink")),
        ("Should I change my screen settings?", ("brightness", "font", "contrast")),
        ("Do blue light glasses help?", ("evidence", "blue light", "sleep")),
    ),
    _topic(
        "pack-light",
        "wants to pack light for a week-long trip",
        ("How do I pack light for a one-week trip?", ("carry-on", "layer", "laundry")),
        ("How many pairs of shoes should I bring?", ("two", "comfortable", "wear")),
        ("How do I keep liquids from spilling?", ("bag", "bottle", "tight")),
    ),
    _topic(
        "kids-vegetables",
        "wants a child to eat more vegetables",
        ("How can I get my child to eat more vegetables?", ("small", "again", "together")),
        ("What vegetables do kids usually like?", ("carrot", "corn", "pea")),
        ("Is it okay to hide vegetables in other food?", ("sauce", "smoothie", "visible")),
    ),
    _topic(
        "cast-iron",
        "wants to clean a cast iron pan",
        ("How do I clean a cast iron pan?", ("scrub", "dry", "oil")),
        ("Can I use soap on it?", ("mild", "soap", "season")),
        ("How do I remove rust from it?", ("steel wool", "rust", "season")),
    ),
    _topic(
        "account-security",
        "wants to keep online accounts secure",
        ("How do I keep my online accounts secure?", ("password manager", "two-factor", "unique")),
        ("What makes a password strong?", ("long", "random", "passphrase")),
        ("What should I do if an account gets hacked?", ("change", "log out", "two-factor")),
    ),
)

TURNS_PER_TOPIC = 3


def _key(topic: Topic) -> str:
    return f"dialogue {topic.name}"


@cache
def _keyword_pattern(keyword: str) -> re.Pattern[str]:
    # At the start of a word (so prefixes such as "freez" match "freezer"), with any run of spaces or
    # hyphens between a keyword's words ("two-factor" matches "two factor").
    words = [re.escape(word) for word in re.split(r"[\s-]+", keyword.strip()) if word]
    return re.compile(r"(?<![a-z0-9])" + r"[\s-]+".join(words), re.IGNORECASE)


def keyword_coverage(reply: str, keywords: tuple[str, ...]) -> tuple[float, list[str]]:
    """The share of ``keywords`` that ``reply`` mentions (see the module docstring), and those mentioned."""
    mentioned = [keyword for keyword in keywords if _keyword_pattern(keyword).search(reply)]
    return (len(mentioned) / len(keywords) if keywords else 0.0), mentioned


def topics_of(split: Split) -> tuple[Topic, ...]:
    """The topics of a split."""
    return tuple(topic for topic in TOPICS if split_of(_key(topic)) == check_split(split))


class DialogueEnv(TextEnv):
    """A conversation with a rule-scored simulated user (see the module docstring).

    ``reset`` info: ``topic`` (its name) and ``goal``. ``step`` info: ``keywords`` of the question answered,
    ``mentioned``, ``coverage``, ``words`` (the reply's word count), ``turn``; at the end ``success`` and
    ``mean_coverage``. ``messages`` holds the conversation so far.
    """

    def __init__(
        self,
        split: Split = "train",
        max_turns: int = 3,
        user: Callable[[list[dict[str, str]]], str] | None = None,
    ) -> None:
        self.split = check_split(split)
        self.max_turns = check_int("max_turns", max_turns, 1)
        if self.max_turns > TURNS_PER_TOPIC:
            raise ValueError(
                f"max_turns must be <= {TURNS_PER_TOPIC} (each topic has {TURNS_PER_TOPIC} user messages), "
                f"got {self.max_turns}"
            )
        if user is not None and not callable(user):
            raise ValueError(f"user must be a callable (messages) -> str or None, got {type(user).__name__}")
        self.user = user
        self.topics = topics_of(self.split)
        self.topic = self.topics[0]
        self.messages: list[dict[str, str]] = []
        self.coverages: list[float] = []

    def _draw(self, rng: random.Random) -> Topic:
        return rng.choice(TOPICS)

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[Observation, dict]:
        """A new simulated user: its first message; the same seed gives the same topic."""
        check_options(options)
        self.topic = draw_in_split(seeded_rng(seed), self._draw, _key, self.split)
        first = self.topic.turns[0][0]
        self.messages = [{"role": "user", "content": first}]
        self.coverages = []
        self._start_episode()
        return first, {"topic": self.topic.name, "goal": self.topic.goal}

    def step(self, action: str) -> tuple[Observation, float, bool, bool, dict]:
        """Score the reply to the current question; the user's next message, or the end of the talk."""
        turn = self._begin_turn(action)
        keywords = self.topic.turns[turn - 1][1]
        coverage, mentioned = keyword_coverage(action, keywords)
        words = len(action.split())
        reward = coverage - (LENGTH_PENALTY if words == 0 or words > MAX_WORDS else 0.0)
        self.coverages.append(coverage)
        self.messages.append({"role": "assistant", "content": action})
        info: dict = {
            "keywords": list(keywords),
            "mentioned": mentioned,
            "coverage": coverage,
            "words": words,
            "turn": turn,
        }
        # The conversation ends naturally after the last turn: terminated, not truncated.
        terminated, truncated = self._end_turn(turn >= self.max_turns)
        if terminated:
            mean = sum(self.coverages) / len(self.coverages)
            info.update(success=mean >= SUCCESS_COVERAGE, mean_coverage=mean)
            return "", reward, terminated, truncated, info
        scripted = self.topic.turns[turn][0]
        reply = scripted if self.user is None else self._user_reply(scripted)
        self.messages.append({"role": "user", "content": reply})
        return reply, reward, terminated, truncated, info

    def _user_reply(self, scripted: str) -> str:
        assert self.user is not None
        system = (
            f"You are playing a user who {self.topic.goal}, talking with an assistant. Write your next "
            f"message to the assistant, in one or two sentences. Ask this next: {scripted}"
        )
        reply = self.user([{"role": "system", "content": system}, *(dict(m) for m in self.messages)])
        if not isinstance(reply, str):
            raise TypeError(f"the user callable must return a str, got {type(reply).__name__}")
        return reply
