"""Registries for backbones, datasets and stage methods (timm's `register_model` pattern).

A registry maps a name to a plain factory. Adding a method = one file + one `@REG.register`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .errors import UserError, did_you_mean


class Registry:
    """Name -> factory, with a helpful error for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            if name in self._items:
                raise KeyError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> Any:
        if name not in self._items:
            raise UserError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._items)}. "
                f"Registered: {', '.join(sorted(self._items))}. "
                "Run `uniframework list` to see everything that is registered."
            )
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, Any]]:
        return sorted(self._items.items())


# the stages in the order of the open-world loop (the CLI's help, the config reference)
LOOP_ORDER = ["pretrain", "supervised", "openset", "discover", "incremental", "detect"]

BACKBONES = Registry("backbone")
DATASETS = Registry("dataset")
STAGES = Registry("stage")

# Modules whose import registers backbones, datasets and stages.
PLUGINS = [
    "uniframework.pretrain.stage",
    "uniframework.openset.stage",
    "uniframework.models.backbones",
    "uniframework.data.datasets",
    "uniframework.supervised.stage",
    "uniframework.discover.stage",
    "uniframework.incremental.stage",
    "uniframework.detect.stage",
]


def load_plugins() -> None:
    """Import the modules that register the backbones, datasets and stages (imported by name,
    so this module imports none of them)."""
    for name in PLUGINS:
        importlib.import_module(name)
