"""Evaluation: scoring held-out prompts (qerl eval, validation during fit), adapter loading, reports, quality."""
