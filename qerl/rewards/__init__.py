"""Rewards: verifiable math answers, format checks, plain functions; importing this package registers them."""
from qerl.rewards.base import Reward
from qerl.rewards.function import RewardFunction
from qerl.rewards.gsm8k import GSM8KAccuracy
from qerl.rewards.math import MathAccuracy
from qerl.rewards.overlong import OverlongPenalty
from qerl.rewards.think_format import SoftThinkAnswerFormat, ThinkAnswerFormat

__all__ = ["GSM8KAccuracy", "MathAccuracy", "OverlongPenalty", "Reward", "RewardFunction", "SoftThinkAnswerFormat", "ThinkAnswerFormat"]
