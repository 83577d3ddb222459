"""``python -m marginnce_kit.data.synthetic``."""

import sys

from .cli import main

sys.exit(main())
