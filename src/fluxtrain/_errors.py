"""Exceptions mirroring the Julia errors Flux throws; all are ``ValueError`` subclasses."""


class DimensionMismatch(ValueError):
    """Array sizes do not agree (Julia's ``DimensionMismatch``)."""


class DomainError(ValueError):
    """An argument is outside a function's domain (Julia's ``DomainError``),
    e.g. the log of a negative number or a non-finite loss in ``train``."""


class ArgumentError(ValueError):
    """An argument has a value the function does not accept (Julia's ``ArgumentError``)."""
