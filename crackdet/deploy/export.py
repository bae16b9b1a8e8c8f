"""The job behind `python export.py`: the classifier as ONNX or a torch.export program, plus a sidecar."""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from omegaconf import DictConfig
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from crackdet.cli.validation import check_writable_dir
from crackdet.data.classes import CLASS_NAMES
from crackdet.data.images import load_rgb
from crackdet.deploy.inference import (
    LoadedCheckpoint,
    find_images,
    load_checkpoint,
    resolve_threshold,
    spread_sample,
)
from crackdet.errors import ConfigError, CrackdetError
from crackdet.io import write_json

log = logging.getLogger(__name__)

#: Default file name per format, in the export run directory.
FORMATS = {"onnx": "model.onnx", "pt2": "model.pt2"}
#: Formats no longer written, and what replaced them.
REPLACED_FORMATS = {
    "torchscript": "format=pt2 (torch.export; TorchScript's torch.jit.trace is deprecated in torch)"
}
QUANTIZATIONS = ("int8",)
INPUT_NAME, OUTPUT_NAME = "image", "probs"
#: An fp32 export that differs from PyTorch by more than this is refused.
PARITY_TOLERANCE = 1e-3


class ProbabilityModel(nn.Module):
    """The classifier with the normalisation folded in: RGB in [0, 1] -> class probabilities."""

    def __init__(self, loaded: LoadedCheckpoint):
        super().__init__()
        self.net = loaded.model.net
        self.register_buffer("mean", torch.tensor(loaded.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(loaded.std).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) RGB floats in [0, 1] -> (N, 2) softmax probabilities (column 1: crack)."""
        return self.net((image - self.mean) / self.std).softmax(dim=-1)


def onnx_session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session; `threads` caps its intra-op threads."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_pt2(path: str | Path) -> nn.Module:
    """Load an exported `.pt2` program (torch.export.save) as a callable module."""
    return torch.export.load(str(path)).module()


def run_exported(path: str | Path, fmt: str, images: torch.Tensor) -> np.ndarray:
    """Class probabilities from an exported model, run by ONNX Runtime or torch.export."""
    if fmt == "onnx":
        return onnx_session(path).run(None, {INPUT_NAME: images.numpy()})[0]
    with torch.inference_mode():
        return load_pt2(path)(images).numpy()


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path, opset: int | None) -> None:
    # The dynamo exporter (torch's default) with a symbolic batch size; one self-contained file.
    torch.onnx.export(
        module,
        (example,),
        str(path),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        external_data=False,
        opset_version=opset,
        verbose=False,
    )


def _export_pt2(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    # torch.export is torch's supported successor of torch.jit.trace; the batch size stays free.
    program = torch.export.export(
        module, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)
    )
    with warnings.catch_warnings():
        # The module is on the CPU (load_checkpoint), the case this save-time warning is not about.
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        torch.export.save(program, str(path))


class _Batches(CalibrationDataReader):
    """An ONNX Runtime calibration data reader over preprocessed image batches."""

    def __init__(self, batches: Sequence[np.ndarray]):
        self._batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(fp32_path: Path, int8_path: Path, batches: Sequence[np.ndarray]) -> None:
    """Static int8 quantization (QDQ, per-channel s8 weights, u8 activations) calibrated on `batches`.

    Static rather than dynamic: ONNX Runtime's dynamic int8 convolutions ran ~5x slower than
    fp32 on this project's CPUs, static QDQ ran faster (see benchmarks/export_int8.py). The final
    Softmax stays in float so the probabilities keep full resolution.
    """
    prepared = int8_path.with_name(f"{int8_path.stem}.prepared.onnx")
    quant_pre_process(str(fp32_path), str(prepared))
    softmax = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Softmax"]
    quantize_static(
        str(prepared),
        str(int8_path),
        _Batches(batches),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=softmax,
    )
    prepared.unlink()


def load_inputs(paths: Sequence[Path], loaded: LoadedCheckpoint) -> tuple[torch.Tensor, list[Path]]:
    """Images as exported models take them (resized, RGB in [0, 1]); unreadable ones skipped."""
    transform = loaded.transform(normalize=False)
    tensors, used = [], []
    for path in paths:
        try:
            tensors.append(transform(load_rgb(path)))
            used.append(path)
        except Exception as exc:  # any decoder failure: calibrate on the other images
            log.warning("Skipping %s: %s: %s", path, type(exc).__name__, exc)
    if not tensors:
        raise ConfigError(f"None of the {len(paths)} calibration image(s) could be read.")
    return torch.stack(tensors), used


def _calibration_images(cfg: DictConfig, loaded: LoadedCheckpoint) -> tuple[torch.Tensor, str]:
    source = cfg.get("calibration")
    if not source:
        source = loaded.data_dir
        if not source or not Path(source).is_dir():
            where = (
                f"the checkpoint's training folder {loaded.data_dir} does not exist here"
                if source
                else "the checkpoint records no training folder"
            )
            raise ConfigError(
                "quantize=int8 calibrates on representative images: set calibration=<folder or "
                f"glob> (data set crops or photo tiles); {where}."
            )
    paths = spread_sample(find_images(str(source), "calibration"), int(cfg.calibration_images))
    images, used = load_inputs(paths, loaded)
    log.info("Calibrating int8 on %d image(s) from %s.", len(used), source)
    return images, str(source)


def _agreement(reference: np.ndarray, other: np.ndarray, threshold: float) -> dict[str, float]:
    """Fraction of identical crack decisions and largest p(crack) difference of two models."""
    same = (reference[:, 1] >= threshold) == (other[:, 1] >= threshold)
    return {
        "images": int(len(reference)),
        "identical_predictions": float(same.mean()),
        "max_prob_diff": float(np.abs(reference[:, 1] - other[:, 1]).max()),
    }


def _targets(cfg: DictConfig, fmt: str) -> tuple[Path, Path]:
    """Model and sidecar paths; refuses to overwrite either."""
    if cfg.get("output"):
        model_path = Path(str(cfg.output)).expanduser()
    else:
        model_path = Path(cfg.paths.output_dir) / FORMATS[fmt]
    sidecar = model_path.with_suffix(".json")
    if sidecar == model_path:
        raise ConfigError(f"output={model_path} must not end in .json: that name is the sidecar's.")
    for path in (model_path, sidecar):
        if path.exists():
            raise ConfigError(
                f"{path} already exists; exports never overwrite a file. Choose another "
                "output=<path>, or leave output unset for a fresh run directory."
            )
    return model_path, sidecar


def _check_settings(cfg: DictConfig) -> tuple[str, str | None]:
    fmt, quantize = str(cfg.format), cfg.get("quantize")
    if fmt in REPLACED_FORMATS:
        raise ConfigError(f"format={fmt} is no longer written; use {REPLACED_FORMATS[fmt]}.")
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt} is not one of {sorted(FORMATS)}.")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConfigError(f"quantize={quantize} must be null or one of {list(QUANTIZATIONS)}.")
    if quantize and fmt != "onnx":
        raise ConfigError(f"quantize={quantize} needs format=onnx (ONNX Runtime quantization).")
    if int(cfg.calibration_images) < 1:
        raise ConfigError(f"calibration_images={cfg.calibration_images} must be at least 1.")
    return fmt, quantize


def export(cfg: DictConfig) -> dict[str, Any]:
    """Write the whole classifier (normalisation folded in) and its sidecar; verify it runs."""
    fmt, quantize = _check_settings(cfg)
    model_path, sidecar = _targets(cfg, fmt)
    # Before the slow part: an unwritable output would otherwise fail after exporting.
    check_writable_dir(
        model_path.parent,
        "output" if cfg.get("output") else "hydra.run.dir",
        "give output=<path> in a writable folder, or leave output unset for the run directory.",
    )
    loaded = load_checkpoint(cfg.get("ckpt_path"))
    threshold, source = resolve_threshold(
        cfg.get("threshold"), loaded.stored_threshold, setting="threshold"
    )
    module = ProbabilityModel(loaded).eval()
    size = loaded.image_size
    example, check = torch.rand(2, 3, size, size), torch.rand(3, 3, size, size)
    with torch.inference_mode():
        expected = module(check).numpy()
    # Bad calibration settings fail here, before the slow export.
    calibration = _calibration_images(cfg, loaded) if quantize else None

    model_path.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {}
    # Everything is written in a scratch folder beside the target, then moved into place whole.
    with tempfile.TemporaryDirectory(dir=model_path.parent, prefix=".export-") as scratch:
        fp32 = Path(scratch) / FORMATS[fmt]
        if fmt == "onnx":
            _export_onnx(module, example, fp32, cfg.get("opset"))
        else:
            _export_pt2(module, example, fp32)
        diff = float(np.abs(run_exported(fp32, fmt, check) - expected).max())
        if diff > PARITY_TOLERANCE:
            raise CrackdetError(
                f"The exported {fmt} model differs from PyTorch by {diff:.2e} (> "
                f"{PARITY_TOLERANCE}); nothing was written. Please report this with your "
                "torch/onnx versions."
            )
        meta["verification"] = {"max_abs_diff_vs_pytorch_fp32": diff, "random_inputs": 3}
        final = fp32
        if calibration is not None:
            images, calibration_source = calibration
            final = Path(scratch) / "model.int8.onnx"
            batches = [b.numpy() for b in images.split(8)]
            quantize_int8(fp32, final, batches)
            meta["calibration"] = {"source": calibration_source, "images": len(images)}
            meta["int8_vs_fp32_on_calibration_images"] = _agreement(
                run_exported(fp32, "onnx", images), run_exported(final, "onnx", images), threshold
            )
        final.replace(model_path)

    if fmt == "onnx":
        opsets = onnx.load(str(model_path), load_external_data=False).opset_import
        meta["opset"] = next(o.version for o in opsets if o.domain in ("", "ai.onnx"))
    write_json(sidecar, {**meta, **_sidecar(loaded, fmt, quantize, model_path, threshold, source)})
    log.info(
        "Wrote %s and %s (max |p - p_torch| = %.1e on random inputs).",
        model_path,
        sidecar,
        meta["verification"]["max_abs_diff_vs_pytorch_fp32"],
    )
    return {"model": str(model_path), "sidecar": str(sidecar), **meta}


def _sidecar(
    loaded: LoadedCheckpoint,
    fmt: str,
    quantize: str | None,
    model_path: Path,
    threshold: float,
    source: str,
) -> dict[str, Any]:
    """What a runtime needs to feed the model and read its answer, without this code base."""
    size = loaded.image_size
    return {
        "format": fmt,
        "file": model_path.name,
        "quantization": quantize,
        "checkpoint": str(loaded.path),
        "torch_version": torch.__version__,
        "class_names": list(CLASS_NAMES),
        "threshold": threshold,
        "threshold_source": source,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, size, size],
            "dtype": "float32",
            "layout": "NCHW",
            "channels": "RGB",
            "value_range": [0.0, 1.0],
            "preprocessing": (
                f"Resize the whole image (or each tile of a large photo) to {size}x{size} "
                f"({loaded.interpolation}, antialiased, no crop), divide 8-bit values by 255. The mean/std "
                "normalisation below is applied inside the model: do not apply it again."
            ),
            "normalization_inside_model": {"mean": loaded.mean, "std": loaded.std},
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", len(CLASS_NAMES)],
            "meaning": (
                "softmax probabilities in class_names order; probs[:, 1] is p(crack), a crack "
                "when probs[:, 1] >= threshold"
            ),
        },
    }
