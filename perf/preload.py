"""Imported by the worker forkserver: backend discovery once per run, not once per point.

Only imports happen here (no torch op): a forked child of a process with a live
OpenMP pool hangs on its first parallel region.
"""
from attnbench.implementations import all_backends

all_backends()
