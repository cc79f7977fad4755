"""TRL-style reward functions, exactly as a TRL user writes them (no qerl import): the tutorial's example."""
import re

THINK_ANSWER = re.compile(r"^<think>.+?</think>\s*<answer>.+?</answer>$", re.DOTALL)


def format_reward(completions, **kwargs):
    """Reward 1.0 for `<think>...</think><answer>...</answer>`, else 0.0 (works on text and chat completions)."""
    texts = [completion[0]["content"] if isinstance(completion, list) else completion for completion in completions]
    return [1.0 if THINK_ANSWER.match(text.strip()) else 0.0 for text in texts]


def accuracy_reward(completions, solution, **kwargs):
    """Reward 1.0 when the text inside <answer>...</answer> equals the dataset's `solution` column."""
    rewards = []
    for completion, gold in zip(completions, solution):
        text = completion[0]["content"] if isinstance(completion, list) else completion
        found = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
        rewards.append(1.0 if found and found.group(1).strip() == str(gold).strip() else 0.0)
    return rewards
