"""Logging a problem with a gold answer once per distinct answer, not once per row."""
from __future__ import annotations

import logging

MAX_REMEMBERED = 10_000


class WarnOnce:
    """`warn(key)` logs `template.format(key)` the first time `key` is seen; `count` counts every call."""

    def __init__(self, logger: logging.Logger, template: str) -> None:
        self.logger, self.template = logger, template
        self.seen: set[str] = set()
        self.count = 0

    def __call__(self, key: object) -> None:
        self.count += 1
        text = str(key)[:200]
        if text in self.seen:
            return
        if len(self.seen) < MAX_REMEMBERED:
            self.seen.add(text)
        self.logger.warning(self.template.format(text))
