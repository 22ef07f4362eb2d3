"""rlxf.envs: the text environments, played by scripted agents (pure Python, no model)."""

from __future__ import annotations

import warnings

import gymnasium
import pytest

from rlxf.envs import (
    BUILTIN_ENVS,
    ArithmeticEnv,
    CalculatorEnv,
    DialogueEnv,
    GuessNumberEnv,
    TextEnv,
    extract_answer,
    make_env,
    register_gymnasium,
    safe_eval,
)
from rlxf.envs.base import split_of
from rlxf.envs.dialogue import TOPICS, keyword_coverage
from rlxf.envs.gym import GYMNASIUM_IDS, flatten_observation

ENV_CLASSES = [ArithmeticEnv, GuessNumberEnv, CalculatorEnv, DialogueEnv]


# --- extract_answer ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 42.", 42),
        ("17 + 25 = 42", 42),
        ("-3", -3),
        ("no number", None),
        ("Answer: 12, since 5+7=12", 12),
        ("Answer: 12, since 5+7=13", 12),  # the marker wins over the last number
        ("**Answer:** 7", 7),
        ("the answer is below. 8", 8),  # the first number after the marker
        ("I think the answer is unclear, maybe 9", 9),
        ("It is 1,234 in total", 1234),
        ("12,345,678", 12345678),
        ("1,2,3", 3),  # a list, not thousands commas
        ("5-3=2", 2),
        ("x = -3", -3),
        ("42.0", 42),
        ("3.5", None),  # a number, but not an integer
        ("the 42nd time", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


# --- the interface: determinism, splits, errors ----------------------------------------------------------


@pytest.mark.parametrize("cls", ENV_CLASSES)
def test_same_seed_same_episode(cls):
    first = cls().reset(seed=7)
    assert cls().reset(seed=7) == first
    tasks = {repr(cls().reset(seed=seed)) for seed in range(30)}
    assert len(tasks) > 1  # seeds do draw different tasks


def _task(cls, seed, split):
    _, info = cls(split=split).reset(seed=seed)
    return info.get("question", info.get("secret", info.get("topic")))


@pytest.mark.parametrize("cls", ENV_CLASSES)
def test_train_and_test_are_disjoint(cls):
    train = {_task(cls, seed, "train") for seed in range(500)}
    test = {_task(cls, seed, "test") for seed in range(500)}
    assert train and test
    assert not train & test


def test_split_is_a_function_of_the_content():
    assert split_of("17 + 25") == split_of("17 + 25")
    shares = [split_of(f"{a} + {b}") == "test" for a in range(1, 41) for b in range(1, 41)]
    assert 0.15 < sum(shares) / len(shares) < 0.25  # about one problem in five is held out


@pytest.mark.parametrize("cls", ENV_CLASSES)
def test_step_before_reset_and_after_the_end_raise(cls):
    env = cls(max_turns=1)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step("42")
    env.reset(seed=0)
    _, _, terminated, truncated, info = env.step("42")
    assert terminated or truncated
    assert isinstance(info["success"], bool)
    with pytest.raises(RuntimeError, match="episode ended"):
        env.step("42")
    env.reset(seed=1)  # a new episode may be played
    env.step("42")


@pytest.mark.parametrize("cls", ENV_CLASSES)
def test_constructors_validate(cls):
    with pytest.raises(ValueError, match="max_turns must be >= 1, got 0"):
        cls(max_turns=0)
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        cls(split="val")
    with pytest.raises(ValueError, match="max_turns must be an integer"):
        cls(max_turns=True)


def test_constructor_errors_of_each_env():
    with pytest.raises(ValueError, match=r"unknown operations \['/'\]"):
        ArithmeticEnv(operations=("+", "/"))
    with pytest.raises(ValueError, match="max_operand must be >= 1, got 0"):
        ArithmeticEnv(max_operand=0)
    with pytest.raises(ValueError, match="high must be > low"):
        GuessNumberEnv(low=5, high=5)
    with pytest.raises(ValueError, match="max_operand must be >= 20"):
        CalculatorEnv(max_operand=5)
    with pytest.raises(ValueError, match="max_turns must be <= 3"):
        DialogueEnv(max_turns=4)
    with pytest.raises(ValueError, match="user must be a callable"):
        DialogueEnv(user="a user")
    with pytest.raises(ValueError, match="seed must be an integer"):
        ArithmeticEnv().reset(seed=1.5)
    with pytest.raises(ValueError, match="takes no reset options"):
        ArithmeticEnv().reset(seed=0, options={"level": 2})


# --- arithmetic -------------------------------------------------------------------------------------------


def test_arithmetic_single_turn():
    env = ArithmeticEnv(operations=("+",), max_operand=50)
    observation, info = env.reset(seed=3)
    a, b = (int(x) for x in info["question"].split(" + "))
    assert observation == f"What is {a} + {b}? Give only the number."
    assert info["answer"] == a + b
    assert env.step(f"{a} + {b} = {a + b}") == (
        "",
        1.0,
        True,
        False,
        {"answer": a + b, "extracted": a + b, "turn": 1, "success": True},
    )
    env.reset(seed=3)
    observation, reward, terminated, truncated, info = env.step(str(a + b + 1))
    assert (observation, reward, terminated, truncated, info["success"]) == ("", 0.0, True, False, False)


def test_arithmetic_retries_until_correct_or_truncated():
    env = ArithmeticEnv(max_turns=3)
    _, info = env.reset(seed=0)
    wrong = str(info["answer"] + 1)
    assert env.step(wrong)[:4] == ("That is not correct. Try again.", 0.0, False, False)
    observation, reward, terminated, truncated, info = env.step(f"Answer: {info['answer']}")
    assert (observation, reward, terminated, truncated, info["success"]) == ("", 1.0, True, False, True)

    env.reset(seed=0)
    for _ in range(2):
        assert env.step(wrong)[2:4] == (False, False)
    observation, reward, terminated, truncated, info = env.step(wrong)
    assert (observation, reward, terminated, truncated, info["success"]) == ("", 0.0, False, True, False)


# --- guess the number -------------------------------------------------------------------------------------


def _binary_search(env: GuessNumberEnv, seed: int) -> tuple[int, dict, bool]:
    """Play an episode by binary search: (turns, last info, truncated)."""
    env.reset(seed=seed)
    low, high = env.low, env.high
    while True:
        guess = (low + high) // 2
        observation, reward, terminated, truncated, info = env.step(f"My guess: {guess}")
        if terminated or truncated:
            return info["turn"], info, truncated
        assert reward == 0.0
        if observation == "Higher.":
            low = guess + 1
        else:
            assert observation == "Lower."
            high = guess - 1


@pytest.mark.parametrize("split", ["train", "test"])
def test_binary_search_wins_guess_number_within_7_turns(split):
    env = GuessNumberEnv(split=split)
    for seed in range(40):
        turns, info, truncated = _binary_search(env, seed)
        assert info["success"] is True and not truncated
        assert turns <= 7


def test_guess_number_hints_and_truncation():
    env = GuessNumberEnv(max_turns=3)
    observation, info = env.reset(seed=5)
    assert (
        observation == "I am thinking of a whole number between 1 and 100. Guess it: reply with one number."
    )
    secret = info["secret"]
    assert 1 <= secret <= 100
    assert env.step("hmm")[:4] == ("Reply with one whole number between 1 and 100.", 0.0, False, False)
    assert env.step(str(secret - 1) if secret > 1 else "0")[0] == "Higher."
    observation, reward, terminated, truncated, info = env.step(str(secret + 1))
    assert (observation, reward, terminated, truncated, info["success"]) == ("", 0.0, False, True, False)

    env.reset(seed=5)
    assert env.step("101")[0] == "Lower."  # out of range, still answered truthfully
    assert env.step(f"It is {secret}")[1:4] == (1.0, True, False)


# --- calculator -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("2 + 3 * 4", 14),
        ("(2 + 3) * 4", 20),
        ("-3 ** 2", -9),
        ("7 // 2", 3),
        ("7 / 2", 3.5),
        ("7 % 3", 1),
        ("2 ** 10", 1024),
        ("2 ^ 10", 1024),  # calculator notation for a power
        ("1,234 * 2", 2468),
        ("347 * 28", 9716),
        ("+5 - -5", 10),
        ("2 ** -1", 0.5),
    ],
)
def test_safe_eval_computes(expression, value):
    assert safe_eval(expression) == value


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("__import__('os')", "not allowed"),
        ("__import__('os').system('true')", "not allowed"),
        ("x + 1", "names are not allowed: x"),
        ("(1).real", "attribute access is not allowed"),
        ("abs(-1)", "function calls are not allowed"),
        ("'a' * 3", "only numbers are allowed"),
        ("True + 1", "only numbers are allowed"),
        ("1j * 2", "only numbers are allowed"),
        ("[1, 2]", "List is not allowed"),
        ("1 if 1 else 2", "IfExp is not allowed"),
        ("9**999999", "exponent too large"),
        ("99**99", "result too large"),
        ("10**60 * 10**60 * 10**60", "result too large"),
        ("1 / 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("1e308 * 10", "not a finite number"),
        ("(-8) ** 0.5", "not a real number"),
        ("1 +", "not an arithmetic expression"),
        ("", "empty expression"),
        ("1+" * 150 + "1", "expression too long"),
    ],
)
def test_safe_eval_rejects(expression, error):
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace("[", r"\[")):
        safe_eval(expression)


def test_calculator_solved_with_the_tool():
    env = CalculatorEnv()
    observation, info = env.reset(seed=11)
    question = info["question"]
    assert observation == (
        f"What is {question}? You can use a calculator: write <calc>EXPRESSION</calc> and you will get the "
        "result. When you know the answer, write Answer: NUMBER."
    )
    observation, reward, terminated, truncated, step_info = env.step(
        f"Let me compute. <calc>{question}</calc>"
    )
    assert (observation, reward, terminated, truncated) == (
        f"<result>{info['answer']}</result>",
        0.0,
        False,
        False,
    )
    assert step_info["tool_calls"] == 1
    result = int(observation.removeprefix("<result>").removesuffix("</result>"))
    observation, reward, terminated, truncated, step_info = env.step(f"Answer: {result}")
    assert (observation, reward, terminated, truncated) == ("", 1.0, True, False)
    assert step_info["success"] is True and step_info["tool_calls"] == 1


def test_calculator_wrong_answer_errors_reminders_and_truncation():
    env = CalculatorEnv(max_turns=3)
    _, info = env.reset(seed=2)
    observation, reward, terminated, _, step_info = env.step(f"answer: {info['answer'] + 10}")
    assert (observation, reward, terminated, step_info["success"]) == ("", 0.0, True, False)

    env.reset(seed=2)
    observation, *_ = env.step("<calc>2*3</calc> and <calc>os.system('ls')</calc> <calc>x</calc>")
    assert observation == (
        "<result>6</result>\n<result>error: function calls are not allowed</result>\n"
        "<result>error: names are not allowed: x</result>"
    )
    observation, reward, terminated, truncated, step_info = env.step("I am not sure.")
    assert observation.startswith("Write <calc>EXPRESSION</calc> to use the calculator")
    assert (reward, terminated, truncated, step_info["tool_calls"]) == (0.0, False, False, 3)
    observation, reward, terminated, truncated, step_info = env.step("<calc>1+1</calc>")
    assert (observation, reward, terminated, truncated, step_info["success"]) == ("", 0.0, False, True, False)


def test_calculator_tasks_are_products_or_sums_of_three():
    for seed in range(20):
        _, info = CalculatorEnv().reset(seed=seed)
        numbers = [int(n) for n in info["question"].replace("*", "+").split(" + ")]
        assert len(numbers) in (2, 3) and all(99 <= n <= 999 for n in numbers)
        assert safe_eval(info["question"]) == info["answer"]


# --- dialogue ---------------------------------------------------------------------------------------------


def test_keyword_coverage_counts_word_starts_case_insensitively():
    assert keyword_coverage("Soaking the soil, then let it DRY.", ("soak", "dry", "drain")) == (
        2 / 3,
        ["soak", "dry"],
    )
    assert keyword_coverage("Boil the water.", ("oil",))[0] == 0.0
    assert keyword_coverage("Use two factor login.", ("two-factor",))[0] == 1.0


def test_dialogue_helpful_agent_succeeds():
    env = DialogueEnv()
    observation, info = env.reset(seed=4)
    topic = next(t for t in TOPICS if t.name == info["topic"])
    assert observation == topic.turns[0][0]
    for turn, (message, keywords) in enumerate(topic.turns, start=1):
        assert observation == message
        observation, reward, terminated, truncated, step_info = env.step(
            "Try this: " + ", ".join(keywords) + "."
        )
        assert reward == 1.0 and not truncated
        assert terminated == (turn == 3)
    assert observation == ""
    assert step_info["success"] is True and step_info["mean_coverage"] == 1.0


def test_dialogue_penalties_and_failure():
    env = DialogueEnv(max_turns=2)
    _, info = env.reset(seed=4)
    topic = next(t for t in TOPICS if t.name == info["topic"])
    observation, reward, terminated, truncated, _ = env.step("   ")
    assert (observation, reward, terminated, truncated) == (topic.turns[1][0], -0.5, False, False)
    long_reply = " ".join(topic.turns[1][1]) + " word" * 120  # every keyword, but 123 words
    observation, reward, terminated, truncated, step_info = env.step(long_reply)
    assert (observation, reward, terminated, truncated) == ("", 0.5, True, False)
    assert step_info["mean_coverage"] == 0.5 and step_info["success"] is True
    env.reset(seed=4)
    env.step("I cannot help with that.")
    assert env.step("Sorry.")[4]["success"] is False


def test_dialogue_user_callable_writes_the_replies():
    seen = []

    def user(messages):
        seen.append(messages)
        return "Tell me more!"

    env = DialogueEnv(user=user)
    first, info = env.reset(seed=1)
    assert env.step("Hello")[0] == "Tell me more!"
    messages = seen[0]
    assert messages[0]["role"] == "system" and info["goal"] in messages[0]["content"]
    assert messages[1:] == [{"role": "user", "content": first}, {"role": "assistant", "content": "Hello"}]
    env.step("Bye")
    assert env.step("Done")[0] == ""  # no user reply after the last turn
    assert len(seen) == 2


# --- make_env ---------------------------------------------------------------------------------------------


class DuckEnv:
    """A class with reset and step, not a TextEnv subclass."""

    max_turns = 1

    def reset(self, seed=None, options=None):
        return "hello", {}

    def step(self, action):
        return "", 0.0, True, False, {"success": False}


class NoStep:
    """A class without step."""

    def reset(self, seed=None, options=None):
        return "hello", {}


def test_make_env_by_name_and_by_module_path():
    assert set(BUILTIN_ENVS) == {"arithmetic", "guess-number", "calculator", "dialogue"}
    env = make_env("guess-number", split="test", high=10, max_turns=4)
    assert isinstance(env, GuessNumberEnv) and (env.split, env.high, env.max_turns) == ("test", 10, 4)
    env = make_env("rlxf.envs.arithmetic:ArithmeticEnv", max_operand=9)
    assert isinstance(env, ArithmeticEnv) and env.max_operand == 9
    assert isinstance(make_env("test_envs:DuckEnv"), DuckEnv)


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("nope", "unknown environment 'nope': use a built-in name (arithmetic, guess-number, calculator, "),
        ("nope", "'package.module:ClassName'"),
        ("rlxf.envs.arithmetic:Nope", "module 'rlxf.envs.arithmetic' has no attribute 'Nope'"),
        ("no_such_module_xyz:Env", "cannot import module 'no_such_module_xyz'"),
        ("rlxf.envs.arithmetic:extract_answer", "'extract_answer' is a function, not a class"),
        ("test_envs:NoStep", "NoStep is not a TextEnv subclass and has no callable step"),
        ("", "an environment spec must be"),
    ],
)
def test_make_env_bad_specs(spec, error):
    with pytest.raises(ValueError) as caught:
        make_env(spec)
    assert error in str(caught.value)
    assert spec == "" or repr(spec) in str(caught.value)


def test_make_env_unknown_argument():
    with pytest.raises(ValueError) as caught:
        make_env("arithmetic", max_operands=9)
    assert str(caught.value) == (
        "environment 'arithmetic' does not accept the argument(s) max_operands; ArithmeticEnv accepts: "
        "split, operations, max_operand, max_turns"
    )


def test_text_env_base_class():
    env = TextEnv()
    assert env.max_turns == 1
    with pytest.raises(NotImplementedError):
        env.reset()
    with env:  # a context manager that closes
        pass


# --- gymnasium --------------------------------------------------------------------------------------------


def test_gymnasium_make_round_trip_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the passive env checker warns on anything off-spec
        register_gymnasium()  # registering again neither fails nor warns
        env = gymnasium.make("rlxf/Arithmetic-v0", split="test")
        observation, info = env.reset(seed=3)
        assert observation == f"What is {info['question']}? Give only the number."
        assert split_of(info["question"]) == "test"
        observation, reward, terminated, truncated, info = env.step(f"The answer is {info['answer']}.")
        assert (observation, reward, terminated, truncated, info["success"]) == ("", 1.0, True, False, True)
        env.close()


@pytest.mark.parametrize("env_id", sorted(GYMNASIUM_IDS))
def test_gymnasium_observations_are_in_the_space(env_id):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gymnasium.make(env_id)
        for seed in range(5):
            observation, _ = env.reset(seed=seed)
            assert observation in env.observation_space
            done = False
            while not done:
                observation, _, terminated, truncated, _ = env.step("<calc>1/0</calc> 42 drain!")
                assert observation in env.observation_space
                done = terminated or truncated


class ChatEnv(TextEnv):
    """A first observation that is a list of messages."""

    def reset(self, seed=None, options=None):
        self._start_episode()
        system = {"role": "system", "content": "Be brief."}
        return [system, {"role": "user", "content": "Hi"}, {"role": "user", "content": "Say 1."}], {}

    def step(self, action):
        self._begin_turn(action)
        terminated, truncated = self._end_turn(True)
        return "", 1.0, terminated, truncated, {"success": True}


def test_gymnasium_adapter_flattens_chat_messages():
    from rlxf.envs.gym import GymnasiumTextEnv

    assert flatten_observation("plain") == "plain"
    env = GymnasiumTextEnv(ChatEnv())
    observation, _ = env.reset(seed=0)
    assert observation == "Be brief.\n\nSay 1."
    assert env.step("1") == ("", 1.0, True, False, {"success": True})
    with pytest.raises(ValueError, match="need an environment name"):
        GymnasiumTextEnv(ChatEnv(), split="test")
