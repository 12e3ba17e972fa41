"""Imported once by the worker forkserver: discover backends and probe their CPU capabilities there,
so each forked point inherits the probes instead of re-running them. CUDA is deliberately not probed
here: a process that initialised CUDA must not fork."""
from attnbench.implementations import all_backends

for _backend in all_backends():
    if "cpu" in _backend.devices and not _backend.unavailable_reason():
        _backend.capabilities("cpu")
