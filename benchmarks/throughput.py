"""Throughput of the frozen backbone and of the feature cache: numbers for the README, not a test.

    python benchmarks/throughput.py --images 500     # a subset of the shared real sample
    python benchmarks/throughput.py --images 16 --image-size 32 --runtimes eager   # smoke run

In one process, on a folder of images (default: the shared 2,000-image real sample when present,
else generated images), it measures and reports (rich table, JSON under benchmarks/results/):
1. the compute ceiling: backbone images/s on in-memory batches, for each runtime;
2. cold extraction images/s through the feature cache's DataLoader path (workers decode and
   resize while the backbone runs) with the chosen runtime, and its ratio to the best ceiling;
3. one warm epoch (cached features) against one cold epoch (every image through the backbone);
4. a learning-rate multirun (4 jobs) against a single run, both starting from a cold cache;
5. peak resident memory.
The backbone has random weights: speed does not depend on their values, and ImageNet weights may
not be downloadable. The machine is usually shared, so the load average is recorded too.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
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
from crackdet.models.runtime import RUNTIMES, build_feature_extractor  # noqa: E402
from crackdet.training.feature_cache import FeatureCache, extract_features  # noqa: E402
from crackdet.training.train import train  # noqa: E402

REAL_SAMPLE = PROJECT_ROOT.parent / "shared" / "data" / "concrete_crack_sample"
CLASS_FOLDERS = ("Negative", "Positive")
TARGETS = {"extraction_vs_ceiling": 0.9, "warm_epoch_speedup": 100.0, "sweep_vs_single": 1.3}


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
        "--images", type=int, default=500, help="use this many images, half per class (0: all)"
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument(
        "--runtimes",
        nargs="+",
        choices=RUNTIMES,
        default=list(RUNTIMES),
        help="runtimes whose compute ceiling is measured",
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=None,
        help="runtime for extraction and training (default: fastest ceiling)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per ceiling")
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
        make_synthetic_dataset(target, n_per_class=max(1, n_images // 2), size=size)
        return f"generated ({size} px)"
    for k, folder in enumerate(CLASS_FOLDERS):
        files = sorted(p for p in (source / folder).iterdir() if p.is_file())
        count = len(files) if n_images <= 0 else (n_images + k) // 2
        (target / folder).mkdir(parents=True)
        for path in files[:count]:
            (target / folder / path.name).symlink_to(path.resolve())
    return str(source)


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    """Result of `fn(*args, **kwargs)` and the seconds it took."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def compute_ceilings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Backbone images/s on an in-memory batch, per runtime (preparation timed separately)."""
    torch.manual_seed(0)
    backbone = build_backbone(None).eval()
    batch = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    results: dict[str, dict[str, Any]] = {}
    for runtime in args.runtimes:
        try:
            extract, prepare_s = timed(build_feature_extractor, backbone, runtime, batch)
            extract(batch)  # warm-up: first-call allocations and kernel selection
            seconds = [timed(extract, batch)[1] for _ in range(args.repeats)]
        except CrackdetError as exc:
            results[runtime] = {"error": str(exc)}
            continue
        # The median batch: a shared machine's load comes and goes between batches.
        results[runtime] = {
            "images_per_s": args.batch_size / statistics.median(seconds),
            "batch_seconds": seconds,
            "prepare_s": prepare_s,
        }
    return results


class EpochTimer(L.Callback):
    """Wall time of every training epoch, its validation included."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)


class Bench:
    """Composes the real configs on the prepared images, in a work folder."""

    def __init__(self, args: argparse.Namespace, data_dir: Path, work: Path, runtime: str):
        self.args, self.work = args, work
        self.overrides = [
            f"data.data_dir={data_dir}",
            f"data.image_size={args.image_size}",
            f"data.batch_size={args.batch_size}",
            f"data.num_workers={args.workers}",
            "data.split=seed",
            "model.weights=null",
            f"model.backbone_runtime={runtime}",
            "trainer.max_epochs=1",
            "~callbacks.rich_progress_bar",
            "~callbacks.rich_model_summary",
        ]

    def cfg(self, run: str, cache: str, *overrides: str):
        """The training config of run `run` using feature cache folder `cache`."""
        return compose_config(
            self.work / "runs" / run,
            [*self.overrides, f"paths.cache_dir={self.work / cache}", *overrides],
        )

    def cold_extraction(self, runtime: str) -> dict[str, Any]:
        """Extraction through the cache's DataLoader path, runtime prepared beforehand."""
        cfg = self.cfg("extraction", "cache-extraction")
        datamodule = instantiate(cfg.data)
        datamodule.setup()
        model = instantiate(cfg.model)
        example = torch.zeros(self.args.batch_size, 3, self.args.image_size, self.args.image_size)
        extract, prepare_s = timed(build_feature_extractor, model.backbone, runtime, example)
        records = datamodule.scan.records
        _, seconds = timed(extract_features, datamodule, extract, records)
        return {
            "runtime": runtime,
            "images": len(records),
            "seconds": seconds,
            "images_per_s": len(records) / seconds,
            "prepare_s": prepare_s,
        }

    def epoch_seconds(self, run: str, cache: str, epochs: int, *overrides: str) -> list[float]:
        """Epoch times of a bare Trainer fit (no logger, checkpoints or progress bar)."""
        cfg = self.cfg(run, cache, *overrides)
        L.seed_everything(cfg.seed)  # as train() does: the same backbone, so the same cache key
        timer = EpochTimer()
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[FeatureCache(), timer],
        )
        trainer.fit(instantiate(cfg.model), datamodule=instantiate(cfg.data))
        return timer.seconds

    def training_runs(self, name: str, lrs: list[float]) -> list[float]:
        """Seconds of each full `train()` job (the default callbacks and logger), one cache."""
        return [
            timed(train, self.cfg(f"{name}/{i}", f"cache-{name}", f"model.optimizer.lr={lr}"))[1]
            for i, lr in enumerate(lrs)
        ]


def peak_memory_mb() -> dict[str, float]:
    """Peak resident set size of this process and of its (finished) children, in MB."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20  # KB on Linux, bytes on macOS
    return {
        "process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
        "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale,
    }


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import onnxruntime

    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "load_average_start": os.getloadavg(),
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """All five measurements; returns the JSON-ready report."""
    report: dict[str, Any] = {
        "machine": machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    data_dir = work / "data"
    report["settings"]["images_source"] = prepare_images(
        args.data_dir, args.images, args.image_size, data_dir
    )

    ceilings = compute_ceilings(args)
    working = {k: v for k, v in ceilings.items() if "images_per_s" in v}
    if not working:
        raise SystemExit(f"No runtime worked: {ceilings}")
    fastest = max(working, key=lambda k: working[k]["images_per_s"])
    runtime = args.runtime or fastest
    report["ceiling"], report["recommended_runtime"] = ceilings, fastest

    bench = Bench(args, data_dir, work, runtime)
    extraction = bench.cold_extraction(runtime)
    extraction["ratio_to_fastest_ceiling"] = (
        extraction["images_per_s"] / working[fastest]["images_per_s"]
    )
    report["cold_extraction"] = extraction

    lrs = [1e-3 * 3.0 ** (i - 1) for i in range(args.sweep_jobs)]
    single = bench.training_runs("single", lrs[1:2])
    sweep = bench.training_runs("sweep", lrs)
    report["sweep"] = {
        "single_run_s": single[0],
        "job_s": sweep,
        "sweep_s": sum(sweep),
        "ratio": sum(sweep) / single[0],
        "learning_rates": lrs,
    }

    # The sweep's cache is warm now; the cold epoch runs every image through the backbone.
    warm = bench.epoch_seconds("warm", "cache-sweep", 2)
    cold = bench.epoch_seconds("cold", "cache-cold", 1, "data.feature_cache=off")
    report["epochs"] = {
        "cold_epoch_s": cold[0],
        "warm_epoch_s": min(warm),
        "speedup": cold[0] / min(warm),
    }

    report["peak_memory_mb"] = peak_memory_mb()
    report["machine"]["load_average_end"] = os.getloadavg()
    report["targets"] = {
        "extraction_vs_ceiling": extraction["ratio_to_fastest_ceiling"]
        >= TARGETS["extraction_vs_ceiling"],
        "warm_epoch_speedup": report["epochs"]["speedup"] >= TARGETS["warm_epoch_speedup"],
        "sweep_vs_single": report["sweep"]["ratio"] <= TARGETS["sweep_vs_single"],
    }
    return report


def show(report: dict[str, Any], console: Console) -> None:
    """The report as a rich table."""
    table = Table(
        title="crackdet throughput "
        f"({report['machine']['cpus']} CPUs, GPU: {report['machine']['gpu']})"
    )
    table.add_column("measurement")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    for runtime, result in report["ceiling"].items():
        value = (
            f"{result['images_per_s']:.1f} images/s (+{result['prepare_s']:.1f} s setup)"
            if "images_per_s" in result
            else f"failed: {result['error'][:60]}"
        )
        table.add_row(f"1. ceiling, {runtime}", value, "")
    extraction, epochs, sweep = report["cold_extraction"], report["epochs"], report["sweep"]
    mark = {True: "met", False: "MISSED"}
    targets = report["targets"]
    table.add_row(
        f"2. cold extraction, {extraction['runtime']}",
        f"{extraction['images_per_s']:.1f} images/s",
        "",
    )
    table.add_row(
        "   ratio to fastest ceiling",
        f"{extraction['ratio_to_fastest_ceiling']:.2f}",
        f">= {TARGETS['extraction_vs_ceiling']} {mark[targets['extraction_vs_ceiling']]}",
    )
    table.add_row(
        "3. cold / warm epoch",
        f"{epochs['cold_epoch_s']:.2f} s / {epochs['warm_epoch_s']:.3f} s "
        f"= {epochs['speedup']:.0f}x",
        f">= {TARGETS['warm_epoch_speedup']:.0f}x {mark[targets['warm_epoch_speedup']]}",
    )
    table.add_row(
        f"4. {len(sweep['job_s'])}-job sweep / single run",
        f"{sweep['sweep_s']:.1f} s / {sweep['single_run_s']:.1f} s = {sweep['ratio']:.2f}x",
        f"<= {TARGETS['sweep_vs_single']}x {mark[targets['sweep_vs_single']]}",
    )
    memory = report["peak_memory_mb"]
    table.add_row(
        "5. peak resident memory",
        f"{memory['process']:.0f} MB (workers {memory['children']:.0f} MB)",
        "",
    )
    table.add_row("recommended runtime", report["recommended_runtime"], "")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its JSON report."""
    args = parse_args(argv)
    # The feature cache says what it does (extract, load, wait) as train.py would show it.
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
