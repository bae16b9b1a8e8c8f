"""Private APIs of dependencies that crackdet needs where no public one exists, in one place.

Each seam fails loudly (or answers conservatively) when upstream changes, and has a test.
"""

from __future__ import annotations


def torch_cpu_has_native_bf16() -> bool:
    """Whether PyTorch's CPU kernels (oneDNN) have native bfloat16 support on this CPU.

    PyTorch has no public query for this; `torch.ops.mkldnn._is_mkldnn_bf16_supported` is what
    its own tests use. A missing op answers False: bf16 is then refused, never emulated slowly.
    """
    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(probe()) if probe is not None else False
