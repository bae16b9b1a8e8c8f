"""The private APIs crackdet relies on still exist in the installed dependencies."""

from __future__ import annotations

import torch

from crackdet.seams import torch_cpu_has_native_bf16


def test_torch_reports_native_cpu_bf16_through_the_seam():
    # If upstream renames the op, the seam would silently answer False: catch that here.
    assert hasattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported")
    assert isinstance(torch_cpu_has_native_bf16(), bool)
