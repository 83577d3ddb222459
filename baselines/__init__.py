"""``baselines`` is the kit's name before version 0.2: an alias of :mod:`marginnce_kit`, kept in the checkout
(not installed) so that ``python -m baselines.table5`` and ``import baselines.models`` keep working from
the repository root. Deprecated (CHANGELOG.md): use ``marginnce_kit``.

Every ``baselines.X`` is the module object ``marginnce_kit.X`` itself (one copy of each class), and
``python -m baselines.X`` runs ``marginnce_kit/X.py`` as ``__main__``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import CodeType, ModuleType

OLD, NEW = "baselines", "marginnce_kit"


class _AliasLoader(importlib.abc.Loader):
    """Loads ``baselines.X`` as the already imported ``marginnce_kit.X`` (``get_code`` serves ``-m``)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:  # the target module is already executed
        return None

    def _target_loader(self) -> importlib.abc.InspectLoader:
        spec = importlib.util.find_spec(self.target)
        if spec is None or not isinstance(spec.loader, importlib.abc.InspectLoader):
            raise ImportError(f"{self.target} cannot be run as a script")
        return spec.loader

    def get_code(self, fullname: str) -> CodeType | None:
        return self._target_loader().get_code(self.target)

    def is_package(self, fullname: str) -> bool:
        return self._target_loader().is_package(self.target)


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(OLD + "."):
            return None
        new = NEW + fullname[len(OLD):]
        found = importlib.util.find_spec(new)
        if found is None:
            return None
        spec = importlib.machinery.ModuleSpec(fullname, _AliasLoader(new), is_package=found.submodule_search_locations
                                              is not None)
        spec.origin = found.origin
        return spec


if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _AliasFinder())

warnings.warn("baselines is the old name of marginnce_kit (deprecated since 0.2.0): import marginnce_kit, "
              "run python -m marginnce_kit.<tool>", DeprecationWarning, stacklevel=2)

from marginnce_kit import *  # noqa: E402,F403  (the kit's public names under the old name)

__path__: list[str] = []  # submodules come from the finder above
