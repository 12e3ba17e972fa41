"""Deliberately wrong backends for the meta-test, kept out of the normal registry.

`pytest conformance --mutant NAME` registers one of them (or the correct `twin`)
and checks only it; `tests/test_mutation_score.py` asserts that the suite fails
every mutant and passes the twin.
"""
from __future__ import annotations

from . import mutants
from .twin import BlockwiseTwin, FlashPrecisionTwin

# Correct twins: the suite must pass each (the plain twin, and one rounding P as FlashAttention does).
TWINS = {BlockwiseTwin.name: BlockwiseTwin, FlashPrecisionTwin.name: FlashPrecisionTwin}


def _name(cls) -> str:
    """A mutant's name: the first word of its docstring (`mean_v: ...` -> `mean_v`)."""
    return cls.__doc__.split(":", 1)[0].strip()


MUTANTS = {_name(c): c for c in vars(mutants).values()
           if isinstance(c, type) and issubclass(c, BlockwiseTwin) and c.__module__ == mutants.__name__}


def make_backend(name: str) -> BlockwiseTwin:
    """A fresh instance of a correct twin (`TWINS`) or of the mutant called `name`, carrying that name."""
    if name in TWINS:
        return TWINS[name]()
    if name not in MUTANTS:
        raise KeyError(f"unknown mutant {name!r}; known: {', '.join(TWINS)}, {', '.join(sorted(MUTANTS))}")
    backend = MUTANTS[name]()
    backend.name = name
    return backend
