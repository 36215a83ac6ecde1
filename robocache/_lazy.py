"""Package attributes imported on first use (PEP 562 module __getattr__), so that
`import robocache` and `import robocache.formats` stay cheap."""

from __future__ import annotations

import importlib

from . import _deps


def lazy_getattr(package: str, table: dict[str, str], namespace: dict):
    """A module __getattr__ for `package`: attribute `name` is the attribute of that name of
    module `table[name]`, imported on first access and then kept in `namespace` (the package's
    globals), so later accesses never come back here."""
    def __getattr__(name: str):
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            value = getattr(importlib.import_module(module), name)
        except ModuleNotFoundError as exc:  # an optional dependency: say which extra has it
            _deps.reraise(exc, f"{package}.{name}")
        namespace[name] = value
        return value

    return __getattr__
