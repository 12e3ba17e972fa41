"""attnbench.implementations: the backends and the one registry.

    from attnbench.implementations import Backend, Capabilities, TorchBackend, register
"""
from .base import ALL_CAUSAL, ALL_MASKS, Backend, Capabilities
from .registry import ENTRY_POINT_GROUP, all_backends, discover, get_backend, load_errors, origin, rediscover, register
from ._torch_common import TorchBackend

__all__ = ["ALL_CAUSAL", "ALL_MASKS", "Backend", "Capabilities", "ENTRY_POINT_GROUP", "TorchBackend",
           "all_backends", "discover", "get_backend", "load_errors", "origin", "rediscover", "register"]
