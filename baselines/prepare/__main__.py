"""``python -m baselines.prepare``."""

from .cli import run

run()
