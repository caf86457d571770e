"""Package exports imported on first use, so that light commands skip heavy imports."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports each export from its module on first access.

    Args:
        package: The package's ``__name__``, for error messages.
        exports: Exported name → the module that defines it.

    Returns:
        The ``__getattr__`` function for the package.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(exports[name]), name)

    return __getattr__
