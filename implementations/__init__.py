"""attnbench.implementations: the backends and the one registry.

    from attnbench.implementations import Backend, Capabilities, TorchBackend, register
    from attnbench.implementations import KernelLaunch     # what a Triton backend declares for `attnbench audit`
"""
from .base import ALL_CAUSAL, ALL_MASKS, Backend, Capabilities, KernelLaunch
from .registry import ENTRY_POINT_GROUP, all_backends, discover, get_backend, load_errors, origin, rediscover, register
from ._torch_common import TorchBackend

__all__ = ["ALL_CAUSAL", "ALL_MASKS", "Backend", "Capabilities", "ENTRY_POINT_GROUP", "KernelLaunch", "TorchBackend",
           "all_backends", "discover", "get_backend", "load_errors", "origin", "rediscover", "register"]
