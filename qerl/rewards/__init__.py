"""Rewards: verifiable math answers and format checks; importing this package registers them."""
from qerl.rewards.base import Reward
from qerl.rewards.gsm8k import GSM8KAccuracy
from qerl.rewards.math import MathAccuracy
from qerl.rewards.overlong import OverlongPenalty
from qerl.rewards.think_format import SoftThinkAnswerFormat, ThinkAnswerFormat

__all__ = ["GSM8KAccuracy", "MathAccuracy", "OverlongPenalty", "Reward", "SoftThinkAnswerFormat", "ThinkAnswerFormat"]
