"""Seeded synthetic arithmetic problems with difficulty knobs, for small models."""
from __future__ import annotations

import random

from qerl.data.base import DatasetError, PromptDataModule, PromptRow
from qerl.registry import DATASETS

NAMES = ("Sam", "Mia", "Leo", "Ava", "Noah", "Zoe", "Omar", "Lily")
ITEMS = ("apples", "marbles", "stickers", "coins", "books", "shells", "pencils", "cards")
_WORDS = {
    "+": "{name} then gets {n} more.",
    "-": "{name} then gives away {n}.",
    "*": "{name} then ends up with {n} times as many.",
}


def evaluate(operands: list[int], ops: list[str], left_to_right: bool) -> int:
    """Exact integer value: usual precedence (`*` first), or strictly left to right (word problems)."""
    if left_to_right:
        value = operands[0]
        for op, n in zip(ops, operands[1:]):
            value = value + n if op == "+" else value - n if op == "-" else value * n
        return value
    terms, signs = [operands[0]], [1]
    for op, n in zip(ops, operands[1:]):
        if op == "*":
            terms[-1] *= n
        else:
            terms.append(n)
            signs.append(1 if op == "+" else -1)
    return sum(s * t for s, t in zip(signs, terms))


@DATASETS.register()
class Arithmetic(PromptDataModule):
    """Synthetic arithmetic (`What is 12 + 35?` or a short word problem) with exact integer answers.

    Difficulty knobs: `digits` per operand, `num_operands`, `operations` (any of
    "+-*"), `word_problems` (story wording, evaluated left to right, never negative).
    Splits are generated from `seed`; val and test avoid train problems while the
    problem space allows. Two 1-2 digit additions suit SmolLM2-135M (low but non-zero
    starting accuracy). Other arguments: see `PromptDataModule`.

    Args:
        num_train: train problems (plus `num_val` more generated for the val hold-out).
        num_val: validation problems (`val_size`, if given, overrides it).
        num_test: test problems.
        min_digits: smallest operand digit count (1 allows 0-9).
    """

    def __init__(
        self,
        digits: int = 2,
        num_operands: int = 2,
        operations: str = "+",
        word_problems: bool = False,
        num_train: int = 2000,
        num_val: int = 100,
        num_test: int = 200,
        min_digits: int = 1,
        val_size: int | None = None,
        val_split: float | None = None,
        **kwargs,
    ) -> None:
        held = val_size if val_size is not None else (None if val_split is not None else num_val)
        super().__init__(val_size=held, val_split=val_split, **kwargs)
        if not 1 <= min_digits <= digits <= 18:
            raise DatasetError(f"Arithmetic: need 1 <= min_digits <= digits <= 18, got {min_digits}, {digits}.")
        if num_operands < 2:
            raise DatasetError(f"Arithmetic: num_operands must be >= 2, got {num_operands}.")
        bad = set(operations) - set("+-*")
        if not operations or bad:
            raise DatasetError(f"Arithmetic: operations must be drawn from '+-*', got {operations!r}.")
        if num_train < 1 or num_test < 1:
            raise DatasetError(f"Arithmetic: num_train and num_test must be >= 1, got {num_train}, {num_test}.")
        self.digits, self.min_digits, self.num_operands = digits, min_digits, num_operands
        self.operations, self.word_problems = operations, word_problems
        self.num_train, self.num_test = num_train, num_test
        self.num_held = int(held or 0) if val_split is None else round(val_split * num_train / (1 - val_split))

    def load_rows(self, split: str) -> list[PromptRow]:
        if split == "train":
            return self.generate(self.num_train + self.num_held, self.seed, avoid=set())
        train = {r.question for r in self._raw_rows("train")}
        return self.generate(self.num_test, self.seed + 1_000_003, avoid=train)

    def generate(self, count: int, seed: int, avoid: set[str]) -> list[PromptRow]:
        rng = random.Random(seed)
        rows = []
        for index in range(count):
            for _ in range(20):  # re-draw a problem that is already in train, while the space allows
                question, answer = self.problem(rng)
                if question not in avoid:
                    break
            rows.append(PromptRow(question, str(answer), {"source": f"arithmetic:{seed}:{index}"}))
        return rows

    def problem(self, rng: random.Random) -> tuple[str, int]:
        low = 0 if self.min_digits == 1 else 10 ** (self.min_digits - 1)
        operands = [rng.randint(low, 10 ** self.digits - 1) for _ in range(self.num_operands)]
        ops = [rng.choice(self.operations) for _ in range(self.num_operands - 1)]
        if not self.word_problems:
            text = " ".join(f"{a} {op}" for a, op in zip(operands, ops)) + f" {operands[-1]}"
            return f"What is {text}?", evaluate(operands, ops, left_to_right=False)
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        value, sentences = operands[0], [f"{name} has {operands[0]} {item}."]
        for i, op in enumerate(ops):
            n = operands[i + 1]
            if op == "-" and n > value:  # never take away more than there is
                n = rng.randint(0, value)
                operands[i + 1] = n
            value = evaluate([value, n], [op], left_to_right=True)
            sentences.append(_WORDS[op].format(name=name, n=n))
        sentences.append(f"How many {item} does {name} have now?")
        return " ".join(sentences), value
