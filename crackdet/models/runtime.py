"""Running a frozen backbone for feature extraction: eager PyTorch, torch.compile or ONNX Runtime.

The LightningModule keeps a plain, differentiable backbone (Grad-CAM, export); these wrappers are
inference-only copies used where features are computed in bulk (the feature cache, benchmarks).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from crackdet.errors import ConfigError

RUNTIMES = ("eager", "compile", "onnxruntime")

#: A batch of normalised images (N, 3, H, W) -> features (N, feature width), without autograd.
FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def check_runtime(runtime: str) -> str:
    """Return `runtime` when it names a known backbone runtime, else raise a ConfigError."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"model.backbone_runtime={runtime} must be one of {list(RUNTIMES)}.")
    return runtime


def _inference_copy(backbone: nn.Module, device: torch.device) -> nn.Module:
    # A copy, so that eval mode and memory layout never leak into the module being trained.
    module = copy.deepcopy(backbone).eval().requires_grad_(False)
    return module.to(device=device, memory_format=torch.channels_last)


def _eager(module: nn.Module, device: torch.device) -> FeatureFn:
    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(images.to(device).contiguous(memory_format=torch.channels_last))

    return run


def _require_cpp_compiler() -> None:
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as exc:  # inductor raises its own error types for a missing compiler
        raise ConfigError(
            "model.backbone_runtime=compile needs a C++ compiler on the CPU (torch.compile's "
            f"inductor backend generates C++), and none was found ({type(exc).__name__}: {exc}). "
            "Install g++ (or set CXX), or use model.backbone_runtime=onnxruntime or eager."
        ) from exc


def _compiled(module: nn.Module, device: torch.device, example: torch.Tensor) -> FeatureFn:
    if device.type == "cpu":
        _require_cpp_compiler()
    # freezing folds the constant weights (and BatchNorm) into the convolutions at compile time.
    compiled = torch.compile(module, dynamic=False, options={"freezing": True})
    batch = len(example)

    def run(images: torch.Tensor) -> torch.Tensor:
        n = len(images)
        images = images.to(device)
        if n < batch:
            # Pad a short last batch: one shape means one compilation, not a second one.
            pad = images.new_zeros((batch - n, *images.shape[1:]))
            images = torch.cat([images, pad])
        try:
            with torch.inference_mode():
                out = compiled(images.contiguous(memory_format=torch.channels_last))
        except Exception as exc:  # compiler and codegen failures surface here, at first call
            raise ConfigError(
                f"model.backbone_runtime=compile failed ({type(exc).__name__}: {exc}). "
                "Use model.backbone_runtime=onnxruntime or eager."
            ) from exc
        return out[:n]

    run(example)  # compile now, so the cost is paid before the first real batch
    return run


def _onnxruntime(module: nn.Module, device: torch.device, example: torch.Tensor) -> FeatureFn:
    import onnxruntime as ort

    cpu_module = module.float().cpu()
    # Two rows: a batch dimension of size 1 would be specialised instead of exported as dynamic.
    sample = torch.zeros((2, *example.shape[1:]))
    try:
        program = torch.onnx.export(
            cpu_module,
            (sample,),
            dynamo=True,
            verbose=False,
            input_names=["images"],
            output_names=["features"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
        model_bytes = program.model_proto.SerializeToString()
    except Exception as exc:
        raise ConfigError(
            f"model.backbone_runtime=onnxruntime: exporting the backbone to ONNX failed "
            f"({type(exc).__name__}: {exc}). Use model.backbone_runtime=eager."
        ) from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(model_bytes, options, providers=providers)

    def run(images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().cpu().contiguous().numpy()
        (features,) = session.run(["features"], {"images": array})
        return torch.from_numpy(features).to(device)

    return run


def build_feature_extractor(
    backbone: nn.Module,
    runtime: str,
    example: torch.Tensor,
    device: torch.device | str | None = None,
) -> FeatureFn:
    """An inference-only function computing `backbone` features with the chosen runtime.

    `example` is a batch of the shape that will be used (its batch size and image size): compile
    and ONNX export happen here, so that their one-off cost is not mixed into throughput.
    """
    check_runtime(runtime)
    if device is None:
        device = next(backbone.parameters()).device
    device = torch.device(device)
    module = _inference_copy(backbone, device)
    if runtime == "eager":
        return _eager(module, device)
    if runtime == "compile":
        return _compiled(module, device, example)
    return _onnxruntime(module, device, example)
