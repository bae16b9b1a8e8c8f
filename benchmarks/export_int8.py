"""fp32 vs int8 ONNX export: agreement and speed on real images; numbers for the README, not a test.

    python benchmarks/export_int8.py                    # trains a head on the shared real sample
    python benchmarks/export_int8.py --ckpt outputs/train/<run>/checkpoints/best.ckpt

Without --ckpt it first trains through `python train.py` on the shared 2,000-image real sample
(stratified split, 224 px, `--epochs` epochs). ImageNet weights cannot be downloaded on the
project's machines, so that model is a random-init frozen ResNet18 with a trained head: its
accuracy is far below the real model's, but its agreement numbers come from real images rather
than from meaningless random weights. Then, through `python export.py`, it exports the
checkpoint as fp32 ONNX and as int8 ONNX (calibrated on `--calibration-images` of the sample),
and on `--images` other sample images measures, in one process:
1. agreement: fraction of identical crack decisions (at the checkpoint's threshold) and the
   largest p(crack) difference between fp32 and int8, plus each model's accuracy;
2. speed: images/s of ONNX Runtime fp32, ONNX Runtime int8 and PyTorch eager, on the same
   batches, rounds interleaved so that load from other processes hits all three alike.
The JSON report goes to benchmarks/results/export_int8-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from rich.console import Console
from rich.table import Table

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from crackdet.data.images import load_rgb  # noqa: E402
from crackdet.deploy.export import ProbabilityModel, onnx_session  # noqa: E402
from crackdet.deploy.inference import find_images, load_checkpoint, spread_sample  # noqa: E402
from crackdet.evaluation.threshold import decisions  # noqa: E402
from crackdet.io import write_json  # noqa: E402

REAL_SAMPLE = PROJECT_ROOT.parent / "shared" / "data" / "concrete_crack_sample"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REAL_SAMPLE,
        help="folder with Positive/ and Negative/ (default: the real sample)",
    )
    parser.add_argument(
        "--ckpt",
        type=Path,
        default=None,
        help="a training checkpoint (default: train one on --data-dir)",
    )
    parser.add_argument("--epochs", type=int, default=5, help="training epochs without --ckpt")
    parser.add_argument("--images", type=int, default=400, help="images for agreement")
    parser.add_argument("--calibration-images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32, help="batch for the speed runs")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved speed rounds")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="ONNX Runtime intra-op threads and torch threads",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON file (default: benchmarks/results/export_int8-<time>.json)",
    )
    return parser.parse_args(argv)


def entry(script: str, *overrides: str) -> None:
    """Run an entry point; its own output is kept out of the way unless it fails."""
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / script), *overrides],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode:
        raise SystemExit(f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def train_checkpoint(args: argparse.Namespace, work: Path) -> Path:
    """A random-init frozen ResNet18 with a head trained on the real sample (no ImageNet here)."""
    run_dir = work / "train"
    entry(
        "train.py",
        f"data.data_dir={args.data_dir}",
        "model.weights=null",
        "data.split=stratified",
        f"trainer.max_epochs={args.epochs}",
        "~callbacks.rich_progress_bar",
        "~callbacks.rich_model_summary",
        f"hydra.run.dir={run_dir}",
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return Path(metrics["best_checkpoint"])


def load_labelled(paths: list[Path], transform) -> tuple[np.ndarray, np.ndarray]:
    """Images as the exported model takes them, and their labels (1 = Positive/ = crack)."""
    images = torch.stack([transform(load_rgb(p)) for p in paths]).numpy()
    labels = np.array([int(p.parent.name == "Positive") for p in paths])
    return images, labels


def images_per_second(runs: dict[str, Any], batch: np.ndarray, rounds: int) -> dict[str, float]:
    """Median images/s of each runner on `batch`, rounds interleaved across runners."""
    for run in runs.values():
        run(batch)  # warm-up: allocations and kernel selection are not throughput
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run(batch)
            seconds[name].append(time.perf_counter() - start)
    return {name: len(batch) / statistics.median(s) for name, s in seconds.items()}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Train (unless --ckpt), export fp32 and int8, measure; returns the JSON-ready report."""
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "load_average_start": os.getloadavg(),
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    ckpt = args.ckpt or train_checkpoint(args, work)
    report["checkpoint"] = str(ckpt)
    all_images = find_images(str(args.data_dir))
    calibration = spread_sample(all_images, args.calibration_images)
    calibration_set = set(calibration)
    rest = [p for p in all_images if p not in calibration_set]
    evaluation = spread_sample(rest, args.images)
    calib_dir = work / "calibration"
    calib_dir.mkdir()
    for i, path in enumerate(calibration):
        (calib_dir / f"{i:04d}{path.suffix}").symlink_to(path.resolve())

    fp32, int8 = work / "fp32.onnx", work / "int8.onnx"
    entry("export.py", f"ckpt_path={ckpt}", f"output={fp32}")
    entry(
        "export.py",
        f"ckpt_path={ckpt}",
        f"output={int8}",
        "quantize=int8",
        f"calibration={calib_dir}",
        f"calibration_images={args.calibration_images}",
    )
    sidecar = json.loads(fp32.with_suffix(".json").read_text())
    threshold = sidecar["threshold"]

    loaded = load_checkpoint(ckpt)
    images, labels = load_labelled(evaluation, loaded.transform(normalize=False))
    sessions = {
        "onnx_fp32": onnx_session(fp32, args.threads),
        "onnx_int8": onnx_session(int8, args.threads),
    }
    module = ProbabilityModel(loaded).eval()

    def pytorch(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(batch)).numpy()

    runners = {name: (lambda b, s=s: s.run(None, {"image": b})[0]) for name, s in sessions.items()}
    runners["pytorch_fp32"] = pytorch
    probs = {
        name: np.concatenate([r(b) for b in np.array_split(images, max(1, len(images) // 32))])
        for name, r in runners.items()
    }
    preds = {
        name: decisions(torch.from_numpy(p[:, 1]), threshold).numpy() for name, p in probs.items()
    }
    fp32_p, int8_p = probs["onnx_fp32"][:, 1], probs["onnx_int8"][:, 1]
    diff = int8_p - fp32_p
    report["agreement"] = {
        "images": len(images),
        "threshold": threshold,
        "threshold_source": sidecar["threshold_source"],
        "identical_predictions_int8_vs_fp32": float(
            (preds["onnx_int8"] == preds["onnx_fp32"]).mean()
        ),
        "max_prob_diff_int8_vs_fp32": float(np.abs(diff).max()),
        "mean_prob_diff_int8_vs_fp32": float(np.abs(diff).mean()),
        "mean_signed_prob_diff_int8_minus_fp32": float(diff.mean()),
        # Only these images can change their decision: how crowded the threshold is.
        "fp32_within_max_diff_of_threshold": float(
            (np.abs(fp32_p - threshold) <= np.abs(diff).max()).mean()
        ),
        "max_prob_diff_onnx_fp32_vs_pytorch": float(
            np.abs(fp32_p - probs["pytorch_fp32"][:, 1]).max()
        ),
        "accuracy": {name: float((p == labels).mean()) for name, p in preds.items()},
    }
    batch = images[: args.batch_size]
    report["speed_images_per_s"] = images_per_second(runners, batch, args.rounds)
    report["speed_batch_size"] = len(batch)
    report["model_size_mb"] = {
        "onnx_fp32": fp32.stat().st_size / 2**20,
        "onnx_int8": int8.stat().st_size / 2**20,
    }
    report["machine"]["load_average_end"] = os.getloadavg()
    return report


def show(report: dict[str, Any], console: Console) -> None:
    """The report as a rich table."""
    table = Table(title=f"fp32 vs int8 ({report['machine']['cpus']} CPUs)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    agreement = report["agreement"]
    rows = [
        ("images (real, unseen in calibration)", f"{agreement['images']}"),
        ("threshold", f"{agreement['threshold']:.4f} ({agreement['threshold_source']})"),
        (
            "identical crack decisions int8 vs fp32",
            f"{agreement['identical_predictions_int8_vs_fp32']:.2%}",
        ),
        ("max |p int8 - p fp32|", f"{agreement['max_prob_diff_int8_vs_fp32']:.4f}"),
        ("mean p int8 - p fp32", f"{agreement['mean_signed_prob_diff_int8_minus_fp32']:+.4f}"),
        (
            "fp32 p within that max of the threshold",
            f"{agreement['fp32_within_max_diff_of_threshold']:.2%}",
        ),
        ("max |p onnx - p torch| (fp32)", f"{agreement['max_prob_diff_onnx_fp32_vs_pytorch']:.1e}"),
        *((f"accuracy {k}", f"{v:.2%}") for k, v in agreement["accuracy"].items()),
        *((f"images/s {k}", f"{v:.1f}") for k, v in report["speed_images_per_s"].items()),
        *((f"size MB {k}", f"{v:.1f}") for k, v in report["model_size_mb"].items()),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    """Measure and write the JSON report."""
    args = parse_args(argv)
    if not (args.data_dir / "Positive").is_dir():
        raise SystemExit(f"--data-dir {args.data_dir} has no Positive/ folder.")
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    output = args.output or PROJECT_ROOT / "benchmarks" / "results" / f"export_int8-{stamp}.json"
    with tempfile.TemporaryDirectory(prefix="crackdet-int8-") as work:
        report = run(args, Path(work))
    write_json(output, report)
    show(report, Console())
    Console().print(f"Report: {output}")


if __name__ == "__main__":
    main()
