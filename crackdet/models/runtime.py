"""Running a frozen backbone for inference: eager PyTorch, torch.compile, ONNX Runtime or OpenVINO.

The LightningModule keeps a plain, differentiable backbone (Grad-CAM, export, training steps);
these wrappers are inference-only copies used where features are computed in bulk: the feature
cache, eval.py, predict.py and the benchmarks. `auto` picks the fastest installed runtime that
keeps float32 parity with eager PyTorch; `bf16` trades a little accuracy for speed where the
hardware computes bfloat16 natively.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

from crackdet.errors import ConfigError
from crackdet.io import atomic_write_bytes
from crackdet.models.options import PRECISIONS, RUNTIMES
from crackdet.seams import torch_cpu_has_native_bf16

log = logging.getLogger(__name__)

#: Runtimes `auto` considers on a CPU, fastest first (benchmarks/throughput.py measures them):
#: OpenVINO 1.9x and ONNX Runtime 1.8x eager at fp32 on a 2-core AVX-512 machine.
AUTO_ORDER_CPU = ("openvino", "onnxruntime", "eager")
#: The Python package each runtime needs, and how to install it.
_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}

#: A batch of normalised images (N, 3, H, W) -> features (N, feature width), without autograd.
#: Built with `normalization=(mean, std)`, it takes the uint8 images `resize_transform` makes.
FeatureFn = Callable[[torch.Tensor], torch.Tensor]
#: (mean, std) per channel, as `batch_normalizer` and `eval_transform` apply them.
Normalization = tuple[Sequence[float], Sequence[float]]


@dataclass(frozen=True)
class RuntimeChoice:
    """The runtime and precision a backbone runs with, and why they were chosen."""

    runtime: str
    precision: str
    reason: str

    def describe(self) -> str:
        """One line for the log: `openvino fp32 (auto: ...)`."""
        return f"{self.runtime} {self.precision} ({self.reason})"


def check_runtime(runtime: str) -> str:
    """Return `runtime` when it names a known backbone runtime, else raise a ConfigError."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"model.backbone_runtime={runtime} must be one of {list(RUNTIMES)}.")
    return runtime


def check_precision(precision: str) -> str:
    """Return `precision` when it is fp32 or bf16, else raise a ConfigError."""
    if precision not in PRECISIONS:
        raise ConfigError(
            f"model.backbone_precision={precision} must be one of {list(PRECISIONS)}."
        )
    return precision


def installed(runtime: str) -> bool:
    """Whether the package a runtime needs can be imported here (eager and compile: always)."""
    package = _PACKAGES.get(runtime)
    if package is None:
        return True
    try:
        importlib.import_module(package)
    except ImportError:
        return False
    return True


@cache
def _openvino_core():
    # One Core per process: each holds its own plugins and thread pools.
    import openvino as ov

    return ov.Core()


def openvino_cpu_has_bf16() -> bool:
    """Whether OpenVINO reports native bfloat16 on this CPU (OPTIMIZATION_CAPABILITIES)."""
    return "BF16" in _openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def bf16_problem(runtime: str, device: torch.device) -> str | None:
    """Why `runtime` cannot compute bfloat16 natively on `device`, or None when it can."""
    if runtime == "eager":
        if device.type == "cuda":
            if torch.cuda.is_bf16_supported(including_emulation=False):
                return None
            return f"the GPU {torch.cuda.get_device_name(device)} has no native bfloat16"
        if device.type == "cpu":
            if torch_cpu_has_native_bf16():
                return None
            return "PyTorch reports no native bfloat16 support on this CPU (oneDNN)"
        return f"bfloat16 is only offered on CPUs and CUDA GPUs, not on {device.type}"
    if runtime == "openvino":
        if openvino_cpu_has_bf16():
            return None
        return "OpenVINO reports no BF16 among this CPU's OPTIMIZATION_CAPABILITIES"
    return f"{runtime} runs this backbone in float32 only"


def _refuse_bf16(runtime: str, problem: str, device: torch.device) -> ConfigError:
    supported = [
        r
        for r in AUTO_ORDER_CPU
        if r != runtime and installed(r) and bf16_problem(r, device) is None
    ]
    fix = (
        f"model.backbone_runtime={supported[0]} (native bfloat16 here), or "
        if supported and runtime != "auto"
        else ""
    )
    return ConfigError(
        f"model.backbone_precision=bf16 with model.backbone_runtime={runtime}: {problem}. "
        f"Use {fix}model.backbone_precision=fp32."
    )


def choose_runtime(
    runtime: str, precision: str = "fp32", device: torch.device | str = "cpu"
) -> RuntimeChoice:
    """Resolve `auto` and check that the runtime is installed and supports the precision.

    `auto` takes the fastest installed runtime on a CPU (OpenVINO, then ONNX Runtime, then eager;
    for bf16 the first with native bfloat16), and eager PyTorch on a GPU.
    """
    check_runtime(runtime)
    check_precision(precision)
    device = torch.device(device)
    if runtime != "auto":
        if not installed(runtime):
            raise ConfigError(
                f"model.backbone_runtime={runtime} needs the `{_PACKAGES[runtime]}` package: "
                f"pip install {_PACKAGES[runtime]}, or use model.backbone_runtime=auto."
            )
        if precision == "bf16" and (problem := bf16_problem(runtime, device)):
            raise _refuse_bf16(runtime, problem, device)
        return RuntimeChoice(runtime, precision, "set by model.backbone_runtime")
    if device.type != "cpu":
        if precision == "bf16" and (problem := bf16_problem("eager", device)):
            raise _refuse_bf16("auto", problem, device)
        return RuntimeChoice("eager", precision, f"auto: PyTorch's own kernels on {device.type}")
    skipped = []
    for candidate in AUTO_ORDER_CPU:
        if not installed(candidate):
            skipped.append(f"{candidate} is not installed")
            continue
        if precision == "bf16" and (problem := bf16_problem(candidate, device)):
            skipped.append(problem)
            continue
        why = "the fastest installed runtime on a CPU"
        if precision == "fp32" and candidate != "eager":
            why += ", with float32 parity to eager PyTorch"
        return RuntimeChoice(candidate, precision, "; ".join([f"auto: {why}", *skipped]))
    raise _refuse_bf16("auto", "; ".join(skipped), device)


def _inference_copy(backbone: nn.Module, device: torch.device) -> nn.Module:
    # A copy, so that eval mode and memory layout never leak into the module being trained.
    module = copy.deepcopy(backbone).eval().requires_grad_(False)
    return module.to(device=device, memory_format=torch.channels_last)


def _eager(module: nn.Module, device: torch.device, precision: str) -> FeatureFn:
    dtype = torch.bfloat16 if precision == "bf16" else None

    def run(images: torch.Tensor) -> torch.Tensor:
        images = images.to(device).contiguous(memory_format=torch.channels_last)
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=dtype, enabled=dtype is not None),
        ):
            return module(images).float()

    return run


def _require_cpp_compiler() -> None:
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as exc:  # inductor raises its own error types for a missing compiler
        raise ConfigError(
            "model.backbone_runtime=compile needs a C++ compiler on the CPU (torch.compile's "
            f"inductor backend generates C++), and none was found ({type(exc).__name__}: {exc}). "
            "Install g++ (or set CXX), or use model.backbone_runtime=auto or eager."
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
                "Use model.backbone_runtime=auto or eager."
            ) from exc
        return out[:n]

    run(example)  # compile now, so the cost is paid before the first real batch
    return run


def module_digest(module: nn.Module) -> str:
    """A hash of every parameter and buffer value: it changes whenever the outputs could."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Hide the exporter's INFO lines (one per optimisation pass) from the run's log."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def onnx_file(module: nn.Module, example: torch.Tensor, folder: Path) -> Path:
    """The backbone exported to ONNX (dynamic batch) in `folder`, exported only when not there.

    The name covers the weights, the input size and the torch version, so ONNX Runtime and
    OpenVINO of every later run (and every job of a sweep) reuse one export.
    """
    cpu_module = copy.deepcopy(module).float().cpu().to(memory_format=torch.contiguous_format)
    key = hashlib.blake2b(
        f"{module_digest(cpu_module)}:{tuple(example.shape[1:])}:{torch.__version__}".encode(),
        digest_size=12,
    ).hexdigest()
    path = folder / f"backbone-{key}.onnx"
    if path.is_file():
        log.info("Using the backbone's ONNX export %s.", path)
        return path
    # Two rows: a batch dimension of size 1 would be specialised instead of exported as dynamic.
    sample = torch.zeros((2, *example.shape[1:]))
    try:
        with _quiet("onnx_ir", "onnxscript"):
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
            f"Exporting the backbone to ONNX failed ({type(exc).__name__}: {exc}). "
            "Use model.backbone_runtime=eager."
        ) from exc
    atomic_write_bytes(path, model_bytes)
    log.info("Exported the backbone to ONNX: %s.", path)
    return path


def _to_device(features, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(features).to(device)


def _onnxruntime(model: Path, device: torch.device) -> FeatureFn:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(model), options, providers=providers)

    def run(images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().cpu().contiguous().numpy()
        (features,) = session.run(["features"], {"images": array})
        return _to_device(features, device)

    return run


def _normalized_openvino_model(core, model: Path, normalization: Normalization):
    """The backbone with uint8 input, scaled to [0, 1] and normalised inside OpenVINO's graph."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    mean, std = normalization
    steps = PrePostProcessor(core.read_model(str(model)))
    steps.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NCHW"))
    steps.input().model().set_layout(ov.Layout("NCHW"))
    steps.input().preprocess().convert_element_type(ov.Type.f32).scale(255.0).mean(
        [float(m) for m in mean]
    ).scale([float(s) for s in std])
    return steps.build()


def _openvino(
    model: Path,
    device: torch.device,
    precision: str,
    cache: Path,
    normalization: Normalization | None = None,
) -> FeatureFn:
    config = {
        # OpenVINO's CPU default is bf16 wherever the CPU has it: ask for what was chosen.
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        # The compiled blob is kept on disk: later runs skip OpenVINO's compilation.
        "CACHE_DIR": str(cache),
    }
    core = _openvino_core()
    if normalization is None:
        compiled = core.compile_model(str(model), "CPU", config)
    else:
        # Bytes in, normalised in the graph: 4x less data handed over, and no separate float pass
        # over the batch in Python (extraction from files ran at 0.90-0.93 of the in-memory
        # speed this way on 2 cores, against 0.88 normalising in torch first).
        normalized = _normalized_openvino_model(core, model, normalization)
        compiled = core.compile_model(normalized, "CPU", config)
    request = compiled.create_infer_request()
    dtype = torch.uint8 if normalization is not None else torch.float32

    def run(images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to("cpu", dtype).contiguous().numpy()
        features = request.infer({0: array})[compiled.output(0)]
        return _to_device(features.copy(), device)

    return run


def _exported(
    module: nn.Module,
    example: torch.Tensor,
    device: torch.device,
    choice: RuntimeChoice,
    folder: Path,
    normalization: Normalization | None,
) -> FeatureFn:
    model = onnx_file(module, example, folder)
    if choice.runtime == "onnxruntime":
        return _normalizing(_onnxruntime(model, device), normalization, torch.device("cpu"))
    from crackdet.distributed import process_rank

    # One compile cache per process: OpenVINO writes its blob in place, and DDP ranks compiling at
    # once would read each other's half-written files.
    cache = folder / "openvino" / f"rank{process_rank()}"
    return _openvino(model, device, choice.precision, cache, normalization)


def _normalizing(
    extract: FeatureFn, normalization: Normalization | None, device: torch.device
) -> FeatureFn:
    """`extract` fed uint8 images normalised on `device` first, as eval_transform would have."""
    if normalization is None:
        return extract
    from crackdet.data.transforms import batch_normalizer

    normalize = batch_normalizer(*normalization)

    def run(images: torch.Tensor) -> torch.Tensor:
        return extract(normalize(images.to(device)))

    return run


def build_feature_extractor(
    backbone: nn.Module,
    runtime: str,
    example: torch.Tensor,
    device: torch.device | str | None = None,
    precision: str = "fp32",
    cache_dir: str | Path | None = None,
    normalization: Normalization | None = None,
) -> FeatureFn:
    """An inference-only function computing `backbone` features with the chosen runtime.

    `example` is a batch of the shape that will be used (its batch size and image size): compile,
    ONNX export and OpenVINO compilation happen here, so their one-off cost is not mixed into
    throughput. ONNX exports and OpenVINO's compiled models are kept under
    `<cache_dir>/runtimes/` (a temporary folder without one).

    The function takes normalised float images; with `normalization=(mean, std)` it takes the
    uint8 images of `resize_transform` instead and normalises them itself, exactly as
    `eval_transform` does (OpenVINO inside its compiled graph, the others with
    `batch_normalizer` on the backbone's device).
    """
    if device is None:
        device = next(backbone.parameters()).device
    device = torch.device(device)
    choice = choose_runtime(runtime, precision, device)
    log.info("Backbone runtime: %s.", choice.describe())
    module = _inference_copy(backbone, device)
    if choice.runtime == "eager":
        return _normalizing(_eager(module, device, choice.precision), normalization, device)
    if choice.runtime == "compile":
        return _normalizing(_compiled(module, device, example), normalization, device)
    if cache_dir is not None:
        folder = Path(cache_dir) / "runtimes"
        return _exported(module, example, device, choice, folder, normalization)
    # Neither runtime reads its files after loading them: a temporary folder is enough.
    with tempfile.TemporaryDirectory(prefix="crackdet-runtime-") as folder:
        return _exported(module, example, device, choice, Path(folder), normalization)
