"""TextArena's one-player games as rlxf environments (rlxf/envs/textarena.py): a scripted binary search wins
GuessTheNumber, the observations are TextArena's new messages without the player's echo, the test split
plays other seeds, repeated invalid moves end the game with TextArena's verdict, and `make_env("textarena/...")`
errors name the problem."""

from __future__ import annotations

import re

import pytest

from rlxf.envs import make_env
from rlxf.envs.textarena import TextArenaEnv


def play_binary_search(env: TextArenaEnv, seed: int) -> tuple[float, dict, int]:
    observation, _ = env.reset(seed=seed)
    low, high = map(int, re.search(r"between (\d+) and (\d+)", observation).groups())
    for turn in range(1, 20):
        guess = (low + high) // 2
        observation, reward, terminated, truncated, info = env.step(f"My guess: [{guess}]")
        if terminated or truncated:
            return reward, info, turn
        assert f"[{guess}]" not in observation  # the player's own action is not echoed back
        if "higher" in observation.lower():
            low = guess + 1
        elif "lower" in observation.lower():
            high = guess - 1
    raise AssertionError("the game did not end")


def test_binary_search_wins_guess_the_number():
    env = make_env("textarena/GuessTheNumber-v0-raw", max_turns=10)
    reward, info, turns = play_binary_search(env, seed=3)
    assert reward > 0 and info["success"] is True and turns <= 5  # 1..20 in at most ceil(log2 21) guesses


def test_the_test_split_plays_other_seeds_and_an_invalid_move_ends_the_game():
    first_train, _ = TextArenaEnv("GuessTheNumber-v0-raw").reset(seed=1)
    first_test, info = TextArenaEnv("GuessTheNumber-v0-raw", split="test").reset(seed=1)
    assert info["seed"] == 1 and first_train.startswith("You are Player 0")
    env = TextArenaEnv("GuessTheNumber-v0-raw")
    env.reset(seed=1)
    observation, reward, terminated, truncated, info = env.step("[500]")  # outside 1..20: TextArena warns
    assert "invalid move" in observation.lower() and not terminated and reward == 0.0
    observation, reward, terminated, truncated, info = env.step("[600]")  # and the second one ends the game
    assert terminated and not truncated and reward <= 0 and info["success"] is False and info["invalid_move"]
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step("[5]")


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="no environment 'GuessTheNumbr-v0'"):
        make_env("textarena/GuessTheNumbr-v0")
    with pytest.raises(ValueError, match="one-player game"):
        make_env("textarena/ConnectFour-v0").reset(seed=0)
