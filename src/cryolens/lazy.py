"""Package namespaces that import their submodules on first use (PEP 562).

A stage package re-exports its public names, but importing the package must stay cheap:
the CLI imports every stage's ``Params`` at start-up, and a ``params`` module's package
``__init__`` runs first. So an ``__init__`` lists its exports instead of importing them::

    __getattr__, __dir__ = lazy_exports(__name__, {"cryolens.ctf.fit": ["fit_ctf", "evaluate_ctf"]})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]) -> tuple[Callable[[str], Any], Callable[[], list]]:
    """``(__getattr__, __dir__)`` for ``package``: each name in ``exports[module]`` is imported from that module
    when first looked up (then cached in the package's namespace).

    Importing a submodule binds it in the package under its own name, over any export of that name, so
    no submodule may share its name with an export (``tests/test_house.py`` checks it)."""
    where = {name: module for module, names in exports.items() for name in names}

    def getattr_(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        mod, pkg = importlib.import_module(module), importlib.import_module(package)
        for export in exports[module]:
            setattr(pkg, export, getattr(mod, export))
        return getattr(mod, name)

    def dir_() -> list:
        return sorted(where)

    return getattr_, dir_
