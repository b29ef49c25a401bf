"""A click group whose subcommands are imported on first use.

`pykvm --help` should not pay for cffi, KVM or the container code: every
command group (`pykvm`, `pykvm container`) names its commands as
"module:attribute" strings and imports a module only when its command runs.
"""
from __future__ import annotations

import importlib
import importlib.util

import click

__all__ = ["LazyGroup"]


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def __init__(self, *args, lazy: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.available()))

    def available(self) -> list[str]:
        """Lazy commands whose module exists in this checkout."""
        names = []
        for name, target in self.lazy.items():
            module = target.partition(":")[0]
            if importlib.util.find_spec(module) is not None:
                names.append(name)
        return names

    def get_command(self, ctx, name):
        if name in self.lazy:
            module_name, _, attr = self.lazy[name].partition(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as e:
                if e.name != module_name:
                    raise
                return None
            return getattr(module, attr)
        return super().get_command(ctx, name)
