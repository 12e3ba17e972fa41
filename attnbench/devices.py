"""Whether a device named on the command line can run here: one check for every entry point."""
from __future__ import annotations

from attnbench.reference import AttentionInputError


def device_unavailable_reason(device: str) -> str | None:
    """Why `device` ("cpu" or "cuda") cannot be used in this process, or None."""
    if device != "cuda":
        return None
    import torch

    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) was built without CUDA; install a CUDA build of torch"
    if not torch.cuda.is_available():
        return "no CUDA device is visible (torch.cuda.is_available() is False)"
    return None


def require_device(device: str, *, option: str = "--device") -> None:
    """Raise AttentionInputError (the CLI prints one line, exit 2) before any work when `device` is unusable."""
    reason = device_unavailable_reason(device)
    if reason:
        raise AttentionInputError(f"{option} {device}: {reason}")
