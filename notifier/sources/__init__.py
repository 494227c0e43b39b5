"""Event sources, one module each; the module name is the key under `sources:`.

Modules are found with pkgutil and imported only when the config names them,
so a daemon that watches only disks never imports the log machinery.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from notifier.sources.base import Source

_NOT_SOURCES = {"base", "matching", "rules", "tail"}


@cache
def names() -> tuple[str, ...]:
    """Every source key this installation knows, without importing them."""
    found = [
        m.name
        for m in pkgutil.iter_modules(__path__)
        if not m.name.startswith("_") and m.name not in _NOT_SOURCES
    ]
    if len(found) != len(set(found)):
        raise RuntimeError(f"duplicate source modules: {sorted(found)}")
    return tuple(sorted(found))


@cache
def get(name: str) -> type[Source]:
    """The Source class registered under `name` (imports its module)."""
    if name not in names():
        raise KeyError(name)
    module = importlib.import_module(f"{__name__}.{name}")
    cls = getattr(module, "SOURCE", None)
    if cls is None or not issubclass(cls, Source):
        raise RuntimeError(f"notifier.sources.{name} does not define SOURCE = <a Source subclass>")
    if cls.key != name:
        raise RuntimeError(f"notifier.sources.{name}: SOURCE.key is {cls.key!r}, must be {name!r}")
    return cls
