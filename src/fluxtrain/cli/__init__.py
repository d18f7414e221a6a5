"""The ``fluxtrain`` command: ``fluxtrain fit`` (train a model), ``fluxtrain losses``."""
from __future__ import annotations

import argparse
import sys

from . import commands

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fluxtrain", description="Flux.jl's training toolkit for NumPy, PyTorch and JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, add_args, _run) in commands.COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _help, _add, run = commands.COMMANDS[args.command]
    try:
        return int(run(args) or 0)
    except commands.UserError as e:
        print(f"fluxtrain {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `fluxtrain losses | head`: the reader left; not an error
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("fluxtrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
