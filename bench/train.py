"""One epoch of ``fluxtrain.train`` on an MLP vs a hand-written loop (filled in below)."""
from __future__ import annotations


def run(quick: bool, reps: int, libs: list[str]) -> str:
    return "## train\n\n(not yet measured)\n"
