"""Deliberately wrong backends for the meta-test, kept out of the normal registry.

`pytest conformance --mutant NAME` registers one of them (or the correct `twin`)
and checks only it; `tests/test_mutation_score.py` asserts that the suite fails
every mutant and passes the twin.
"""
from __future__ import annotations

from . import mutants
from .twin import BlockwiseTwin


def _name(cls) -> str:
    """A mutant's name: the first word of its docstring (`mean_v: ...` -> `mean_v`)."""
    return cls.__doc__.split(":", 1)[0].strip()


MUTANTS = {_name(c): c for c in vars(mutants).values()
           if isinstance(c, type) and issubclass(c, BlockwiseTwin) and c is not BlockwiseTwin}


def make_backend(name: str) -> BlockwiseTwin:
    """A fresh instance of the twin (`twin`) or of the mutant called `name`, carrying that name."""
    if name == BlockwiseTwin.name:
        return BlockwiseTwin()
    if name not in MUTANTS:
        raise KeyError(f"unknown mutant {name!r}; known: twin, {', '.join(sorted(MUTANTS))}")
    backend = MUTANTS[name]()
    backend.name = name
    return backend
