"""``python -m marginnce_kit.prepare``."""

from .cli import run

run()
