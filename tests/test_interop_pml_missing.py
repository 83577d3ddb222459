"""Without pytorch-metric-learning, marginnce_loss.contrib.pml imports and MarginNTXentLoss names the extra."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_missing_dependency_is_one_clear_import_error() -> None:
    """In a fresh interpreter where pytorch_metric_learning cannot be imported: the core and the module import,
    reading the class raises ImportError with the install command (run as a subprocess: no module cache shared)."""
    code = (
        "import sys; sys.modules['pytorch_metric_learning'] = None\n"
        "import marginnce_loss, marginnce_loss.contrib.pml as m\n"
        "try:\n    from marginnce_loss.contrib.pml import MarginNTXentLoss\n"
        "except ImportError as e:\n    print('ImportError:', e)\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('pytorch_metric_learning', 'lightning')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == (
        "ImportError: marginnce_loss.contrib.pml needs pytorch-metric-learning, which is not installed: "
        "pip install 'marginnce-loss[pml]' (or pip install pytorch-metric-learning)"
    )
    assert lines[1] == "['pytorch_metric_learning']"  # only the blocked entry: nothing else was loaded
    assert "Traceback" not in out.stderr
