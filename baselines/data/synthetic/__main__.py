"""``python -m baselines.data.synthetic``."""

import sys

from .cli import main

sys.exit(main())
