"""Registry of ``fluxtrain`` sub-commands: name -> (help, add_arguments, run).

Each sub-command lives in its own module and registers itself here, so the parser in
``cli/__init__.py`` never changes when a command is added.
"""
from __future__ import annotations

import argparse
from typing import Callable

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr with exit status 2."""


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def deco(run):
        COMMANDS[name] = (help, add_arguments, run)
        return run
    return deco


def _load() -> None:
    # Imported for their registration side effect; each is a leaf module.
    import importlib
    for mod in ("losses_cmd", "fit"):
        importlib.import_module(f"{__package__}.{mod}")


_load()
