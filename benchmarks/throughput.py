"""Throughput of the backbone runtimes and of the whole pipeline: numbers for the README, not a test.

    python benchmarks/throughput.py                      # the shared real sample, 6-8 min on 2 cores
    python benchmarks/throughput.py --images 16 --image-size 32 --runtimes eager --sweep-images 16

In one run, on a folder of images (default: the shared 2,000-image real sample when present,
else generated images), it measures and reports (rich table, JSON under benchmarks/results/):
1. backbone images/s on in-memory batches for every installed runtime at fp32 and bf16 (bf16
   where the hardware has it natively; a refused combination says why), each with its largest
   feature difference from eager fp32; CUDA rows when a GPU is present;
2. extraction through the feature cache's DataLoader path (decoding included) with the default
   runtime at fp32 and at bf16;
3. whole-process cold training runs (`python train.py`, fresh cache) at fp32 and bf16 over
   `--cold-images` images (4,000, the issue's size: when the folder has fewer, mirror images of
   its photos make up the count, and the report says how many), then the accuracy delta of
   bf16: a head trained for `--head-epochs` on each precision's features of the folder's own
   images (val/acc, largest p(crack) difference on the validation images);
4. whole-process `python predict.py` over `--predict-images` images;
5. a whole-process `--sweep-jobs`-job multirun on warm cached features against one such job;
and checks the targets as ratios of numbers measured in this run. The fastest fp32 runtime's
in-memory speed is measured again just before and just after the fp32 extraction, the fp32 cold
run and predict.py (predict's own runtime for it), and each of those figures is divided by the
mean of its two: the host's speed drifts by several percent within minutes on a shared machine,
and that drift is not the pipeline's cost. The ratio against the first table is reported
beside it. The backbone has random
weights (ImageNet weights may not be downloadable); speed does not depend on their values.
The machine is usually shared, so the load average is recorded too.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from PIL import Image, ImageOps
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from crackdet.cli.config import compose_config  # noqa: E402
from crackdet.data.synthetic import make_synthetic_dataset  # noqa: E402
from crackdet.errors import CrackdetError  # noqa: E402
from crackdet.io import write_json  # noqa: E402
from crackdet.models.backbone import build_backbone  # noqa: E402
from crackdet.models.runtime import (  # noqa: E402
    PRECISIONS,
    RUNTIMES,
    build_feature_extractor,
    choose_runtime,
    installed,
)
from crackdet.training.feature_cache import extract_features  # noqa: E402

REAL_SAMPLE = PROJECT_ROOT.parent / "shared" / "data" / "concrete_crack_sample"
CLASS_FOLDERS = ("Negative", "Positive")
CONCRETE_RUNTIMES = tuple(r for r in RUNTIMES if r != "auto")
TARGETS = {
    "cold_train_vs_fastest_fp32": 0.8,
    "extraction_vs_fastest_fp32": 0.9,
    "bf16_extraction_speedup": 1.7,
    "bf16_val_acc_delta_points": 0.3,
    "predict_vs_runtime": 0.7,
    "sweep_vs_single": 1.8,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"folder with {'/'.join(CLASS_FOLDERS)}/ (default: {REAL_SAMPLE} "
        "when present, else generated images)",
    )
    parser.add_argument(
        "--images", type=int, default=0, help="use this many images, half per class (0: all)"
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument(
        "--runtimes",
        nargs="+",
        choices=CONCRETE_RUNTIMES,
        default=[r for r in CONCRETE_RUNTIMES if r != "compile"],
        help="runtimes measured in memory (compile takes about a minute to set up: add it)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per runtime")
    parser.add_argument(
        "--cold-images",
        type=int,
        default=4000,
        help="images of the cold training runs; when the folder has fewer, mirror images of its "
        "photos (re-encoded JPEGs) make up the count (0: the folder as it is)",
    )
    parser.add_argument(
        "--head-epochs", type=int, default=20, help="epochs of the heads bf16 is compared with"
    )
    parser.add_argument("--head-lr", type=float, default=1e-2)
    parser.add_argument("--predict-images", type=int, default=1000)
    parser.add_argument("--sweep-images", type=int, default=1000)
    parser.add_argument("--sweep-epochs", type=int, default=5)
    parser.add_argument("--sweep-jobs", type=int, default=4)
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON file (default: benchmarks/results/throughput-<time>.json)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep data links, caches and runs here (default: a temporary folder)",
    )
    return parser.parse_args(argv)


def prepare_images(source: Path | None, n_images: int, size: int, target: Path) -> str:
    """Link `n_images` files (half per class) of `source` into `target`, or generate them."""
    if source is None and (REAL_SAMPLE / "Positive").is_dir():
        source = REAL_SAMPLE
    if source is None:
        make_synthetic_dataset(target, n_per_class=max(1, n_images // 2 or 100), size=size)
        return f"generated ({size} px)"
    for k, folder in enumerate(CLASS_FOLDERS):
        files = sorted(p for p in (source / folder).iterdir() if p.is_file())
        count = len(files) if n_images <= 0 else (n_images + k) // 2
        (target / folder).mkdir(parents=True)
        for path in files[:count]:
            (target / folder / path.name).symlink_to(path.resolve())
    return str(source)


def subset(source: Path, n_images: int, target: Path) -> Path:
    """Links to the first `n_images` images of `source` (half per class) in `target`."""
    prepare_images(source, n_images, 0, target)
    return target


#: Distinct views of a photo that make up a cold-run folder larger than the real one.
VIEWS = {
    "mirrored": ImageOps.mirror,
    "flipped": ImageOps.flip,
    "rotated": lambda image: image.rotate(180),
}


def cold_images(source: Path, n_images: int, target: Path) -> dict[str, int]:
    """`target` with `n_images` images, half per class: links to `source`'s, then views of them.

    A view (mirror image, upside down, rotated) is another photo of the same concrete: another
    file with other bytes, decoded and run through the backbone like any other.
    """
    counts = {"real": 0, "views": 0}
    for k, folder in enumerate(CLASS_FOLDERS):
        files = sorted(p for p in (source / folder).iterdir() if p.is_file())
        count = (n_images + k) // 2
        if count > len(files) * (1 + len(VIEWS)):
            raise SystemExit(f"--cold-images {n_images}: {source / folder} has too few images.")
        (target / folder).mkdir(parents=True)
        for path in files[:count]:
            (target / folder / path.name).symlink_to(path.resolve())
        for i in range(max(0, count - len(files))):
            name, view = list(VIEWS.items())[i // len(files)]
            original = files[i % len(files)]
            with Image.open(original) as image:
                view(image.convert("RGB")).save(
                    target / folder / f"{original.stem}-{name}.jpg", quality=95
                )
        counts["real"] += min(count, len(files))
        counts["views"] += max(0, count - len(files))
    return counts


def count_images(folder: Path) -> int:
    """Files in the class folders."""
    return sum(1 for c in CLASS_FOLDERS for p in (folder / c).iterdir() if p.is_file())


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    """Result of `fn(*args, **kwargs)` and the seconds it took."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def random_weights(path: Path) -> Path:
    """A random-init backbone saved as a weights file: every run of the benchmark uses it."""
    torch.manual_seed(0)
    torch.save(build_backbone(None).state_dict(), path)
    return path


def shared_runtimes(cache: Path, work: Path) -> Path:
    """`cache`, whose runtimes/ folder (ONNX export, OpenVINO blobs) is the benchmark's own.

    The export is a one-off per weights and machine (timed in the in-memory table); cold runs
    start without features, as on a machine where the runtime was set up before.
    """
    cache.mkdir(parents=True, exist_ok=True)
    (work / "cache-runtimes" / "runtimes").mkdir(parents=True, exist_ok=True)
    if not (cache / "runtimes").exists():
        (cache / "runtimes").symlink_to(work / "cache-runtimes" / "runtimes")
    return cache


def in_memory(args: argparse.Namespace, work: Path) -> dict[str, dict[str, Any]]:
    """Backbone images/s on an in-memory batch per runtime, precision and device."""
    backbone = build_backbone(str(args.weights)).eval()
    batch = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    reference = build_feature_extractor(backbone, "eager", batch, "cpu")(batch)
    results: dict[str, dict[str, Any]] = {}
    for device in devices:
        for runtime in args.runtimes:
            for precision in PRECISIONS:
                name = f"{runtime} {precision}" + (" cuda" if device == "cuda" else "")
                try:
                    extract, prepare_s = timed(
                        build_feature_extractor,
                        backbone,
                        runtime,
                        batch,
                        device,
                        precision,
                        work / "cache-runtimes",
                    )
                    features = extract(batch)  # warm-up: allocations and kernel selection
                    seconds = [timed(extract, batch)[1] for _ in range(args.repeats)]
                except CrackdetError as exc:
                    results[name] = {"runtime": runtime, "precision": precision, "error": str(exc)}
                    continue
                difference = (features.float().cpu() - reference).abs().max()
                # The median batch: a shared machine's load comes and goes between batches.
                results[name] = {
                    "runtime": runtime,
                    "precision": precision,
                    "device": device,
                    "images_per_s": args.batch_size / statistics.median(seconds),
                    "batch_seconds": seconds,
                    "prepare_s": prepare_s,
                    "max_feature_difference_relative": float(difference / reference.abs().max()),
                }
    eager = results.get("eager fp32", {}).get("images_per_s")
    for result in results.values():
        if eager and "images_per_s" in result:
            result["vs_eager_fp32"] = result["images_per_s"] / eager
    return results


class References:
    """In-memory speed of an fp32 runtime, measured again right before and after a measurement.

    The host's own speed drifts by several percent within minutes on a shared machine, and the
    in-memory table is measured first. Each pipeline figure is also compared with the same
    runtime's in-memory speed measured around it (mean of before and after), which leaves only
    what the pipeline itself costs in the ratio; both ratios are reported.
    """

    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.batch = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
        self._extractors: dict[str, Any] = {}

    def speed(self, runtime: str) -> float:
        """Images/s of `runtime` at fp32 on the in-memory batch now (median of the batches)."""
        if runtime not in self._extractors:
            backbone = build_backbone(str(self.args.weights)).eval()
            extract = build_feature_extractor(
                backbone, runtime, self.batch, "cpu", "fp32", self.work / "cache-runtimes"
            )
            extract(self.batch)  # warm-up
            self._extractors[runtime] = extract
        seconds = [
            timed(self._extractors[runtime], self.batch)[1] for _ in range(self.args.repeats)
        ]
        return self.args.batch_size / statistics.median(seconds)

    def around(self, runtime: str, measure: Any) -> tuple[Any, dict[str, Any]]:
        """`measure()`, with `runtime`'s in-memory speed just before and just after it."""
        before = self.speed(runtime)
        result = measure()
        after = self.speed(runtime)
        return result, {
            "runtime": runtime,
            "before": before,
            "after": after,
            "images_per_s": (before + after) / 2,
        }


def fastest_fp32(in_memory_results: dict[str, dict[str, Any]]) -> str:
    """The runtime with the highest fp32 in-memory speed on the CPU."""
    fp32 = {
        r["runtime"]: r["images_per_s"]
        for r in in_memory_results.values()
        if r.get("precision") == "fp32" and r.get("device") == "cpu" and "images_per_s" in r
    }
    return max(fp32, key=fp32.get)


def extraction(data_dir: Path, args: argparse.Namespace, work: Path, precision: str) -> dict:
    """Extraction through the feature cache's DataLoader path, runtime prepared beforehand."""
    cfg = compose_config(
        work / "runs" / f"extraction-{precision}",
        [
            f"data.data_dir={data_dir}",
            f"data.image_size={args.image_size}",
            f"data.batch_size={args.batch_size}",
            f"paths.cache_dir={work / 'cache-runtimes'}",
            "data.split=seed",
            f"model.weights={args.weights}",
        ],
    )
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    model = instantiate(cfg.model)
    example = torch.zeros(args.batch_size, 3, args.image_size, args.image_size)
    choice = choose_runtime(cfg.model.backbone_runtime, precision)
    extract, prepare_s = timed(
        build_feature_extractor,
        model.backbone,
        choice.runtime,
        example,
        "cpu",
        precision,
        work / "cache-runtimes",
        (datamodule.mean, datamodule.std),  # the feature cache hands over uint8 images
    )
    records = datamodule.scan.records
    _, seconds = timed(extract_features, datamodule, extract, records, False)
    return {
        "runtime": choice.runtime,
        "precision": precision,
        "images": len(records),
        "seconds": seconds,
        "images_per_s": len(records) / seconds,
        "prepare_s": prepare_s,
    }


def entry(script: str, *overrides: str) -> float:
    """Seconds a whole `python <script> <overrides>` process takes; its failure stops the run."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / script), *overrides],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{script} {' '.join(overrides)} failed:\n{result.stderr[-3000:]}")
    return seconds


def _train_overrides(data_dir: Path, args: argparse.Namespace, cache: Path) -> list[str]:
    return [
        f"data.data_dir={data_dir}",
        f"data.image_size={args.image_size}",
        f"data.batch_size={args.batch_size}",
        "data.split=seed",
        f"model.weights={args.weights}",
        f"paths.cache_dir={shared_runtimes(cache, args.work)}",
        "trainer.accelerator=cpu",
        "~callbacks.rich_progress_bar",
    ]


#: The feature cache's log line of a run that extracted features.
EXTRACTED = re.compile(r"Extracted (\d+) features in ([\d.]+) s")


def extraction_seconds(run: Path) -> tuple[int, float]:
    """(images, seconds) of the feature extraction a training run logged in its train.log."""
    found = EXTRACTED.search((run / "train.log").read_text())
    if found is None:
        raise SystemExit(f"{run / 'train.log'} has no 'Extracted N features in S s' line.")
    return int(found.group(1)), float(found.group(2))


def _val_probabilities(run: Path) -> dict[str, tuple[int, float]]:
    """(label, p(crack)) of every validation image of a run, by path."""
    with open(run / "predictions_val.csv", newline="") as handle:
        return {
            row["path"]: (int(row["label"]), float(row["prob_crack"]))
            for row in csv.DictReader(handle)
        }


def cold_training(
    data_dir: Path,
    args: argparse.Namespace,
    work: Path,
    references: References | None = None,
    fastest: str | None = None,
) -> dict[str, Any]:
    """Whole-process cold runs (1 epoch, fresh caches) at fp32 and bf16.

    With `references`, the fp32 run gets `fastest`'s in-memory speed around it ("reference").
    """
    n = count_images(data_dir)
    runs: dict[str, Any] = {}
    for precision in PRECISIONS:
        run = work / "runs" / f"cold-{precision}"
        overrides = _train_overrides(data_dir, args, work / f"cache-cold-{precision}")
        try:
            choose_runtime("auto", precision)
        except CrackdetError as exc:
            runs[precision] = {"error": str(exc)}
            continue

        def cold_run(
            precision: str = precision, overrides: list[str] = overrides, run: Path = run
        ) -> float:
            return entry(
                "train.py",
                *overrides,
                f"model.backbone_precision={precision}",
                f"hydra.run.dir={run}",
            )

        reference = None
        if references is not None and fastest is not None and precision == "fp32":
            seconds, reference = references.around(fastest, cold_run)
        else:
            seconds = cold_run()
        metrics = json.loads((run / "metrics.json").read_text())
        extracted, extraction_s = extraction_seconds(run)
        runs[precision] = {
            "run": str(run),
            "images": n,
            "seconds": seconds,
            "images_per_s": n / seconds,
            "val_acc": metrics["fit"]["val/acc"],
            # The same run's own split: its extraction, and everything else (start-up with the
            # imports of torch and Lightning, the scan, training, checkpoints, figures, exit).
            "extraction_images": extracted,
            "extraction_s": extraction_s,
            "extraction_images_per_s": extracted / extraction_s,
            "other_s": seconds - extraction_s,
        }
        if reference is not None:
            runs[precision]["reference"] = reference
    return runs


def _val_accuracy(probabilities: dict[str, tuple[int, float]], threshold: float = 0.5) -> float:
    return sum((p >= threshold) == bool(y) for y, p in probabilities.values()) / len(probabilities)


def head_accuracy(
    data_dir: Path, args: argparse.Namespace, work: Path, cold: dict[str, Any]
) -> dict[str, Any]:
    """bf16 against fp32: a head trained on each precision's features of `data_dir`'s images.

    The features come from the cold runs' caches (keyed on content, so the folder's images are
    found there). One cold epoch barely moves a head on random-weight features; `--head-epochs`
    at `--head-lr` trains one that separates the classes, so the delta measures the features.
    """
    heads: dict[str, Any] = {}
    for precision in PRECISIONS:
        if "seconds" not in cold.get(precision, {}):
            continue
        run = work / "runs" / f"head-{precision}"
        entry(
            "train.py",
            *_train_overrides(data_dir, args, work / f"cache-cold-{precision}"),
            f"model.backbone_precision={precision}",
            f"trainer.max_epochs={args.head_epochs}",
            f"model.optimizer.lr={args.head_lr}",
            f"hydra.run.dir={run}",
        )
        extraction = EXTRACTED.search((run / "train.log").read_text())
        probabilities = _val_probabilities(run)
        heads[precision] = {
            "run": str(run),
            "epochs": args.head_epochs,
            # Of the best checkpoint, as predictions_val.csv lists them (p >= 0.5 is a crack).
            "val_acc": _val_accuracy(probabilities),
            "validation_images": len(probabilities),
            "extracted_again": int(extraction.group(1)) if extraction else 0,
        }
    if set(PRECISIONS) <= heads.keys():
        fp32, bf16 = (_val_probabilities(Path(heads[p]["run"])) for p in PRECISIONS)
        heads["bf16_vs_fp32"] = {
            "val_acc_delta_points": 100 * (heads["bf16"]["val_acc"] - heads["fp32"]["val_acc"]),
            "max_probability_difference": max(abs(fp32[k][1] - bf16[k][1]) for k in fp32),
            "validation_images": len(fp32),
        }
    return heads


def predict_run(data_dir: Path, ckpt: Path, n_images: int, work: Path) -> dict[str, Any]:
    """A whole `python predict.py` process over `n_images` images of `data_dir`."""
    folder = subset(data_dir, n_images, work / "predict-images")
    n = count_images(folder)
    run = work / "runs" / "predict"
    seconds = entry(
        "predict.py",
        f"ckpt_path={ckpt}",
        f"input={folder}",
        f"hydra.run.dir={run}",
        f"paths.cache_dir={work / 'cache-runtimes'}",
        "predict.device=cpu",
    )
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds}


def sweep(data_dir: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One job and a multirun of `--sweep-jobs` learning rates, both on warm cached features."""
    folder = subset(data_dir, args.sweep_images, work / "sweep-images")
    overrides = [
        *_train_overrides(folder, args, work / "cache-sweep"),
        f"trainer.max_epochs={args.sweep_epochs}",
    ]
    lrs = [1e-3 * 3.0 ** (i - 1) for i in range(args.sweep_jobs)]
    warm_up = entry("train.py", *overrides, f"hydra.run.dir={work / 'runs' / 'sweep-warm-up'}")
    single = entry("train.py", *overrides, f"hydra.run.dir={work / 'runs' / 'sweep-single'}")
    multirun = entry(
        "train.py",
        "-m",
        *overrides,
        f"model.optimizer.lr={','.join(f'{lr:.6g}' for lr in lrs)}",
        f"hydra.sweep.dir={work / 'runs' / 'sweep-multirun'}",
    )
    return {
        "images": count_images(folder),
        "epochs": args.sweep_epochs,
        "cold_warm_up_s": warm_up,
        "single_job_s": single,
        "multirun_s": multirun,
        "jobs": len(lrs),
        "ratio": multirun / single,
    }


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_start": os.getloadavg(),
    }
    for package in ("onnxruntime", "openvino"):
        if installed(package):
            info[package] = __import__(package).__version__
    return info


def targets(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target's measured ratio, its bound and whether it was met.

    A pipeline figure is divided by the in-memory speed measured around it (`References`);
    `vs_table` divides it by the in-memory table's figure instead, measured minutes earlier.
    """
    table = report["in_memory"]
    fastest = table[f"{fastest_fp32(table)} fp32"]["images_per_s"]
    references = report.get("references", {})

    def around(name: str, table_speed: float) -> float:
        reference = references.get(name)
        return reference["images_per_s"] if reference else table_speed

    cold, extracted = report["cold_train"]["fp32"], report["extraction"]["fp32"]
    vs_table: dict[str, float] = {
        "cold_train_vs_fastest_fp32": cold["images_per_s"] / fastest,
        "extraction_vs_fastest_fp32": extracted["images_per_s"] / fastest,
    }
    measured: dict[str, float | None] = {
        "cold_train_vs_fastest_fp32": cold["images_per_s"] / around("cold_train", fastest),
        "extraction_vs_fastest_fp32": extracted["images_per_s"] / around("extraction", fastest),
        "bf16_extraction_speedup": None,
        "bf16_val_acc_delta_points": None,
        "predict_vs_runtime": None,
        "sweep_vs_single": report["sweep"]["ratio"],
    }
    if "images_per_s" in report["extraction"].get("bf16", {}):
        measured["bf16_extraction_speedup"] = (
            report["extraction"]["bf16"]["images_per_s"]
            / report["extraction"]["fp32"]["images_per_s"]
        )
    if "bf16_vs_fp32" in report["bf16_accuracy"]:
        measured["bf16_val_acc_delta_points"] = abs(
            report["bf16_accuracy"]["bf16_vs_fp32"]["val_acc_delta_points"]
        )
    same = table.get(f"{extracted['runtime']} fp32", {})
    if "images_per_s" in same:
        predicted = report["predict"]["images_per_s"]
        vs_table["predict_vs_runtime"] = predicted / same["images_per_s"]
        measured["predict_vs_runtime"] = predicted / around("predict", same["images_per_s"])
    result = {}
    for name, value in measured.items():
        bound = TARGETS[name]
        at_most = name in ("sweep_vs_single", "bf16_val_acc_delta_points")
        met = None if value is None else (value <= bound if at_most else value >= bound)
        result[name] = {
            "value": value,
            "vs_table": vs_table.get(name),
            "bound": f"{'<=' if at_most else '>='} {bound}",
            "met": met,
        }
    return result


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every measurement; returns the JSON-ready report."""
    report: dict[str, Any] = {
        "machine": machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    data_dir = work / "data"
    report["settings"]["images_source"] = prepare_images(
        args.data_dir, args.images, args.image_size, data_dir
    )
    args.work, args.weights = work, random_weights(work / "random-backbone.pt")
    report["in_memory"] = in_memory(args, work)
    references, fastest = References(args, work), fastest_fp32(report["in_memory"])
    report["references"] = {}
    report["extraction"] = {}
    for precision in PRECISIONS:
        try:
            if precision == "fp32":
                report["extraction"][precision], report["references"]["extraction"] = (
                    references.around(fastest, lambda: extraction(data_dir, args, work, "fp32"))
                )
            else:
                report["extraction"][precision] = extraction(data_dir, args, work, precision)
        except CrackdetError as exc:
            report["extraction"][precision] = {"error": str(exc)}
    cold_dir = data_dir
    if args.cold_images > 0:
        cold_dir = work / "cold-data"
        report["settings"]["cold_images_made_of"] = cold_images(
            data_dir, args.cold_images, cold_dir
        )
    report["cold_train"] = cold_training(cold_dir, args, work, references, fastest)
    report["references"]["cold_train"] = report["cold_train"]["fp32"].pop("reference", None)
    report["bf16_accuracy"] = head_accuracy(data_dir, args, work, report["cold_train"])
    ckpt = Path(report["cold_train"]["fp32"]["run"]) / "checkpoints" / "best.ckpt"
    report["predict"], report["references"]["predict"] = references.around(
        report["extraction"]["fp32"]["runtime"],
        lambda: predict_run(data_dir, ckpt, args.predict_images, work),
    )
    report["sweep"] = sweep(data_dir, args, work)
    report["machine"]["load_average_end"] = os.getloadavg()
    report["targets"] = targets(report)
    return report


def show(report: dict[str, Any], console: Console) -> None:
    """The report as rich tables."""
    machine_ = report["machine"]
    table = Table(
        title=f"Backbone in memory ({machine_['cpus']} CPUs, {machine_['cpu_capability']}, "
        f"GPU: {machine_['gpu']}), batch {report['settings']['batch_size']}, "
        f"{report['settings']['image_size']} px"
    )
    for column in ("runtime", "images/s", "vs eager fp32", "max feature diff (rel.)", "setup"):
        table.add_column(column, justify="left" if column == "runtime" else "right")
    for name, r in report["in_memory"].items():
        if "error" in r:
            table.add_row(name, "refused", "", "", r["error"][:70])
            continue
        table.add_row(
            name,
            f"{r['images_per_s']:.1f}",
            f"{r.get('vs_eager_fp32', 0):.2f}x",
            f"{r['max_feature_difference_relative']:.1e}",
            f"{r['prepare_s']:.1f} s",
        )
    console.print(table)
    pipeline = Table(title="Whole pipeline (decoding included)")
    pipeline.add_column("measurement")
    pipeline.add_column("result", justify="right")
    for precision, r in report["extraction"].items():
        value = f"{r['images_per_s']:.1f} images/s" if "images_per_s" in r else "refused"
        pipeline.add_row(f"extraction, {r.get('runtime', 'auto')} {precision}", value)
    cold = report["cold_train"]
    made_of = report["settings"].get("cold_images_made_of")
    for precision in PRECISIONS:
        r = cold.get(precision, {})
        if "seconds" in r:
            views = f" ({made_of['views']} of them views)" if made_of and made_of["views"] else ""
            pipeline.add_row(
                f"cold train.py, {precision}, {r['images']} images{views}",
                f"{r['seconds']:.1f} s = {r['images_per_s']:.1f} images/s; of it extraction "
                f"{r['extraction_s']:.1f} s ({r['extraction_images_per_s']:.1f} images/s), "
                f"the rest {r['other_s']:.1f} s",
            )
    heads = report["bf16_accuracy"]
    if "bf16_vs_fp32" in heads:
        delta = heads["bf16_vs_fp32"]
        pipeline.add_row(
            f"bf16 vs fp32, head trained {heads['fp32']['epochs']} epochs on each "
            f"({delta['validation_images']} val images)",
            f"val/acc {100 * heads['fp32']['val_acc']:.2f}% -> "
            f"{100 * heads['bf16']['val_acc']:.2f}% ({delta['val_acc_delta_points']:+.2f} "
            f"points), max |dp| {delta['max_probability_difference']:.4f}",
        )
    p = report["predict"]
    pipeline.add_row(
        f"predict.py, {p['images']} images",
        f"{p['seconds']:.1f} s = {p['images_per_s']:.1f} images/s",
    )
    s = report["sweep"]
    pipeline.add_row(
        f"{s['jobs']}-job multirun / 1 job, warm cache ({s['images']} images, {s['epochs']} ep.)",
        f"{s['multirun_s']:.1f} s / {s['single_job_s']:.1f} s = {s['ratio']:.2f}x",
    )
    console.print(pipeline)
    references = report.get("references", {})
    if references:
        around = Table(title="In-memory fp32 speed measured just before / after each measurement")
        for column in ("measurement", "runtime", "before", "after"):
            around.add_column(column, justify="left" if column == "measurement" else "right")
        for name, r in references.items():
            if r:
                around.add_row(name, r["runtime"], f"{r['before']:.1f}", f"{r['after']:.1f}")
        console.print(around)
    goals = Table(title="Targets (ratios measured in this run)")
    for column in ("target", "measured", "vs the first table", "bound", ""):
        goals.add_column(column)
    mark = {True: "met", False: "MISSED", None: "not measured"}
    for name, t in report["targets"].items():
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        first = "" if t.get("vs_table") is None else f"{t['vs_table']:.2f}"
        goals.add_row(name, value, first, t["bound"], mark[t["met"]])
    console.print(goals)
    console.print(
        "measured: a pipeline figure / the in-memory speed measured around it; vs the first "
        "table: / the in-memory table's figure, measured minutes earlier."
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its JSON report."""
    args = parse_args(argv)
    crackdet_log = logging.getLogger("crackdet")
    crackdet_log.setLevel(logging.INFO)
    crackdet_log.addHandler(RichHandler(show_path=False))
    output = args.output or (
        PROJECT_ROOT / "benchmarks" / "results" / f"throughput-{datetime.now():%Y%m%d-%H%M%S}.json"
    )
    if output.exists():
        raise SystemExit(f"{output} exists; choose another --output (results are never replaced).")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="crackdet-bench-"))
    if args.work_dir and any(work.iterdir() if work.exists() else []):
        raise SystemExit(f"--work-dir {work} is not empty; give an empty or new folder.")
    work.mkdir(parents=True, exist_ok=True)
    try:
        report = run(args, work)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    write_json(output, report)
    console = Console()
    show(report, console)
    console.print(f"Written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
