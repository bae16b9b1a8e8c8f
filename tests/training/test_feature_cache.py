"""The feature cache (same results as running the backbone, reuse, invalidation, damage, locking),
the backbone runtimes, and the throughput benchmark run end to end."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torchvision
from hydra.utils import instantiate

import crackdet.training.feature_cache as features
from crackdet.data.datamodule import CrackDataModule
from crackdet.data.synthetic import synthetic_image
from crackdet.errors import ConfigError, DataError
from crackdet.evaluation.predictions_file import read_predictions
from crackdet.models.backbone import build_backbone
from crackdet.models.lightning_model import CrackClassifier
from crackdet.models.runtime import build_feature_extractor
from crackdet.training.feature_cache import cached_features, usage_problem
from crackdet.training.train import train
from tests.conftest import TINY, compose_cfg, run_entry


@pytest.fixture
def extractions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records every call of the extraction function (its number of images)."""
    calls: list[int] = []
    real = features.extract_batches

    def counting(datamodule, extract, records, *args, **kwargs):
        calls.append(len(records))
        return real(datamodule, extract, records, *args, **kwargs)

    monkeypatch.setattr(features, "extract_batches", counting)
    return calls


def folder_datamodule(folder: Path, cache: Path, image_size: int = 48) -> CrackDataModule:
    """A set-up data module over every image of `folder` (all in the test split, in scan order)."""
    datamodule = CrackDataModule(
        str(folder),
        image_size=image_size,
        batch_size=4,
        num_workers=0,
        split="all",
        cache_dir=str(cache),
    )
    datamodule.setup()
    return datamodule


def replace_keeping_size_and_mtime(path: Path, crack: bool) -> None:
    """Put another image's bytes (padded to the same size) in `path`, keeping its mtime."""
    stat = path.stat()
    for seed in range(1000, 2000):
        buffer = io.BytesIO()
        synthetic_image(seed=seed, size=48, crack=crack).save(buffer, format="JPEG")
        if len(buffer.getvalue()) <= stat.st_size:
            break
    # JPEG decoders stop at the end-of-image marker: trailing padding is ignored.
    path.write_bytes(buffer.getvalue().ljust(stat.st_size, b"\0"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size


def head_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The trained head's tensors in a run's last checkpoint."""
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("net.head.")}


@pytest.mark.slow
def test_cached_features_train_like_the_backbone_and_are_reused(
    tiny_cfg, tmp_path: Path, synthetic_cache: Path, fresh_cache, extractions: list[int], caplog
):
    caplog.set_level(logging.INFO, logger="crackdet.training.feature_cache")
    # Two epochs with dropout: the shuffle order and the random stream must match across epochs;
    # a worker process in the image run must not change either.
    common = (
        f"paths.cache_dir={fresh_cache()}",
        f"data.data_dir={synthetic_cache / 'synthetic' / 'n20_s48_seed0'}",
        "trainer.max_epochs=2",
        "model.dropout=0.3",
        "data.num_workers=1",
    )
    runs = {
        name: train(tiny_cfg(*common, *extra, run_dir=tmp_path / name))
        for name, extra in (("images", ["data.feature_cache=off"]), ("extracted", []))
    }
    assert extractions == [40]
    assert "Feature cache not used: data.feature_cache=off" in caplog.text
    runs["reused"] = train(tiny_cfg(*common, run_dir=tmp_path / "reused"))
    assert extractions == [40], "the second cached run extracted again"
    assert "Loaded features of 40 images" in caplog.text

    reference = runs["images"]
    for name in ("extracted", "reused"):
        for stage in ("fit", "validate", "test"):
            assert runs[name][stage] == pytest.approx(reference[stage], abs=1e-5), (name, stage)
        torch.testing.assert_close(
            head_weights(tmp_path / name), head_weights(tmp_path / "images"), atol=1e-5, rtol=0
        )
        # Callbacks still find the images: predictions name the same files.
        cached = read_predictions(tmp_path / name / "predictions_test.csv")
        uncached = read_predictions(tmp_path / "images" / "predictions_test.csv")
        assert cached["path"] == uncached["path"]
        torch.testing.assert_close(cached["prob_crack"], uncached["prob_crack"], atol=1e-5, rtol=0)


def test_cache_is_rebuilt_when_weights_or_image_size_change_and_per_image_for_content(
    image_folder, tmp_path: Path, extractions: list[int], caplog
):
    caplog.set_level(logging.INFO, logger="crackdet.training.feature_cache")
    folder, cache = image_folder(n_per_class=2, size=48), tmp_path / "cache"
    weights = []
    for name in ("a", "b"):
        weights.append(tmp_path / f"{name}.pt")
        torch.save(torchvision.models.resnet18().state_dict(), weights[-1])
    backbone = build_backbone(str(weights[0]))

    first = cached_features(folder_datamodule(folder, cache), backbone)
    assert torch.equal(cached_features(folder_datamodule(folder, cache), backbone), first)
    assert len(extractions) == 1
    # The cached rows are the backbone's features of the images, in scan order.
    datamodule = folder_datamodule(folder, cache)
    with torch.no_grad():
        expected = backbone.eval()(datamodule.datasets["test"][2][0][None])
    torch.testing.assert_close(first[2:3], expected, atol=1e-4, rtol=0)

    cached_features(folder_datamodule(folder, cache), build_backbone(str(weights[1])))
    assert len(extractions) == 2, "other weights reused the first weights' features"
    cached_features(folder_datamodule(folder, cache, image_size=64), backbone)
    assert len(extractions) == 3, "another image size reused the 48 px features"
    # Replaced as `cp -p` or a backup restore would: same size, same modification time.
    changed = sorted((folder / "Positive").iterdir())[0]
    replace_keeping_size_and_mtime(changed, crack=True)
    caplog.clear()
    datamodule = folder_datamodule(folder, cache)
    again = cached_features(datamodule, backbone)
    assert extractions[3] == 1, f"{extractions}: only {changed.name} needed extracting"
    assert f"1 new or changed since cached, e.g. {changed.name}" in caplog.text
    with torch.no_grad():
        fresh = backbone.eval()(datamodule.datasets["test"][2][0][None])
    torch.testing.assert_close(again[2:3], fresh, atol=1e-4, rtol=0)
    assert torch.equal(again[3:], first[3:])
    # Random initialisations are told apart by their values, not by a name.
    torch.manual_seed(1)
    cached_features(folder_datamodule(folder, cache), build_backbone(None))
    torch.manual_seed(2)
    cached_features(folder_datamodule(folder, cache), build_backbone(None))
    assert extractions[4:] == [4, 4]


def test_damaged_cache_file_is_rebuilt_with_a_warning(
    image_folder, tmp_path: Path, extractions: list[int], caplog
):
    folder, cache = image_folder(n_per_class=2, size=48), tmp_path / "cache"
    backbone = build_backbone(None)
    first = cached_features(folder_datamodule(folder, cache), backbone)
    (path,) = (cache / "features").glob("*/*.pt")
    intact = path.read_bytes()
    # Inside the stored tensor, where no check of the file format would notice it.
    offset = intact.find(first[0].numpy().tobytes()[:64])
    assert offset > 0
    flipped = bytearray(intact)
    flipped[offset + 8] ^= 0xFF
    for damaged in (intact[: len(intact) // 2], bytes(flipped)):
        path.write_bytes(damaged)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="crackdet.training.feature_cache"):
            again = cached_features(folder_datamodule(folder, cache), backbone)
        assert f"Feature cache {path} is damaged" in caplog.text
        torch.testing.assert_close(again, first, atol=1e-5, rtol=0)
    assert len(extractions) == 3
    cached_features(folder_datamodule(folder, cache), backbone)
    assert len(extractions) == 3, "the rebuilt file was not reused"


def test_full_disk_or_a_changed_unreadable_image_never_ends_in_a_traceback(
    image_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
):
    folder, cache = image_folder(n_per_class=2, size=48), tmp_path / "cache"
    backbone = build_backbone(None)

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    with monkeypatch.context() as patch:
        patch.setattr(features, "atomic_write_bytes", full_disk)
        with caplog.at_level(logging.WARNING, logger="crackdet.training.feature_cache"):
            first = cached_features(folder_datamodule(folder, cache), backbone)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "Feature cache not saved: the disk holding" in warning and "is full" in warning
    assert not list((cache / "features").glob("*/*.pt"))
    # The run goes on with the features extracted in memory.
    with torch.no_grad():
        expected = backbone.eval()(folder_datamodule(folder, cache).datasets["test"][3][0][None])
    torch.testing.assert_close(first[3:4], expected, atol=1e-4, rtol=0)

    # An image damaged after the scan checked it: extracting it names the file, no traceback.
    datamodule = folder_datamodule(folder, cache)
    broken = sorted((folder / "Negative").iterdir())[1]
    broken.write_bytes(b"\0" * broken.stat().st_size)
    with pytest.raises(DataError, match=f"{broken}.*changed after the data folder was checked"):
        cached_features(datamodule, backbone)


def test_float32_runtimes_share_a_cache_other_precisions_do_not(image_folder, tmp_path: Path):
    datamodule = folder_datamodule(image_folder(n_per_class=1, size=48), tmp_path / "cache")
    keys = {
        (runtime, precision): features.settings_key("weights", datamodule, runtime, precision)
        for runtime in ("eager", "compile", "onnxruntime")
        for precision in ("32-true", "bf16-mixed")
    }
    assert len({keys[r, "32-true"] for r in ("eager", "compile", "onnxruntime")}) == 1
    assert keys["eager", "bf16-mixed"] != keys["eager", "32-true"]
    assert keys["onnxruntime", "bf16-mixed"] != keys["eager", "bf16-mixed"]


def test_concurrent_jobs_extract_once_and_share_the_file(
    image_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    folder, cache = image_folder(n_per_class=3, size=48), tmp_path / "cache"
    backbone = build_backbone(None)
    datamodules = [folder_datamodule(folder, cache) for _ in range(2)]
    calls = []
    real = features.extract_batches

    def slow(*args, **kwargs):
        calls.append(1)
        time.sleep(1.0)  # long enough for the other job to arrive while this one extracts
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "extract_batches", slow)
    # flock locks belong to open files, so two threads contend exactly like two processes.
    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(cached_features, dm, backbone) for dm in datamodules]
        results = [job.result() for job in jobs]
    assert len(calls) == 1
    assert torch.equal(results[0], results[1])
    (lock,) = (cache / "features").glob("*.lock")
    assert len(list(lock.with_suffix("").glob("*.pt"))) == 1


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ("data.feature_cache=off", "data.feature_cache=off"),
        ("data/augmentation=flip", "data.augmentation=flip"),
        ("model.bn_mode=train", "model.bn_mode=train"),
        ("model.trainable=last_stage", "model.trainable=last_stage"),
    ],
)
def test_cache_is_not_used_when_features_could_change(tiny_cfg, override: str, reason: str):
    assert usage_problem(instantiate(tiny_cfg().data), instantiate(tiny_cfg().model)) is None
    cfg = tiny_cfg(override)
    assert reason in usage_problem(instantiate(cfg.data), instantiate(cfg.model))


def test_unknown_feature_cache_mode_or_runtime_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="data.feature_cache=sometimes"):
        CrackDataModule(str(tmp_path), feature_cache="sometimes")
    with pytest.raises(ConfigError, match="model.backbone_runtime=tensorrt"):
        CrackClassifier(weights=None, backbone_runtime="tensorrt")


@pytest.fixture(scope="module")
def tiny_batch() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A random-init backbone, two 64 px images, and their eager features."""
    torch.manual_seed(0)
    backbone, images = build_backbone(None), torch.randn(2, 3, 64, 64)
    return backbone, images, build_feature_extractor(backbone, "eager", images)(images)


def test_onnxruntime_features_match_eager(tiny_batch):
    backbone, images, eager = tiny_batch
    extract = build_feature_extractor(backbone, "onnxruntime", images)
    torch.testing.assert_close(extract(images), eager, atol=1e-4, rtol=0)
    # The batch dimension is dynamic: a short last batch works too.
    torch.testing.assert_close(extract(images[:1]), eager[:1], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_compiled_features_match_eager(tiny_batch):
    backbone, images, eager = tiny_batch
    extract = build_feature_extractor(backbone, "compile", images)
    torch.testing.assert_close(extract(images), eager, atol=1e-4, rtol=0)
    torch.testing.assert_close(extract(images[:1]), eager[:1], atol=1e-4, rtol=0)


def test_compile_without_a_cpp_compiler_fails_clearly(tiny_batch, monkeypatch):
    from torch._inductor import cpp_builder

    def missing() -> str:
        raise RuntimeError("no working C++ compiler found")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    backbone, images, _ = tiny_batch
    with pytest.raises(ConfigError, match=r"backbone_runtime=compile needs a C\+\+ compiler"):
        build_feature_extractor(backbone, "compile", images)


@pytest.mark.slow
def test_throughput_benchmark_runs_end_to_end(image_folder, tmp_path: Path):
    folder, output = image_folder(n_per_class=8, size=40), tmp_path / "throughput.json"
    result = run_entry(
        "benchmarks/throughput.py",
        *("--data-dir", str(folder), "--images", "16", "--image-size", "32"),
        *("--batch-size", "8", "--runtimes", "eager", "--repeats", "1"),
        *("--predict-images", "8", "--sweep-images", "16", "--sweep-epochs", "2"),
        *("--sweep-jobs", "2", "--cold-images", "24", "--head-epochs", "2"),
        *("--output", str(output)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["in_memory"]["eager fp32"]["max_feature_difference_relative"] == 0
    assert report["extraction"]["fp32"]["images"] == 16
    cold = report["cold_train"]["fp32"]
    # 24 cold images from 16 photos: 8 of them are mirror images, extracted like the others.
    assert report["settings"]["cold_images_made_of"] == {"real": 16, "views": 8}
    assert cold["images"] == 24 and cold["extraction_images"] == 24
    assert cold["extraction_s"] + cold["other_s"] == pytest.approx(cold["seconds"])
    # The fp32 head is trained on the 16 photos' features, found in the cold run's cache.
    head = report["bf16_accuracy"]["fp32"]
    assert head["extracted_again"] == 0 and head["epochs"] == 2
    assert head["validation_images"] == 4 and 0 <= head["val_acc"] <= 1
    assert report["predict"]["images"] == 8
    assert report["sweep"]["jobs"] == 2 and report["sweep"]["ratio"] > 0
    assert report["targets"]["sweep_vs_single"]["value"] == report["sweep"]["ratio"]
    # Pipeline figures against the in-memory speed measured around each, and against the table.
    references, targets = report["references"], report["targets"]
    assert set(references) == {"extraction", "cold_train", "predict"}
    # The fastest runtime of the table (eager alone here), and predict.py's own runtime.
    assert references["cold_train"]["runtime"] == references["extraction"]["runtime"] == "eager"
    assert references["predict"]["runtime"] == report["extraction"]["fp32"]["runtime"]
    assert all(r["before"] > 0 and r["after"] > 0 for r in references.values())
    around = (references["cold_train"]["before"] + references["cold_train"]["after"]) / 2
    cold_target = targets["cold_train_vs_fastest_fp32"]
    assert cold_target["value"] == pytest.approx(cold["images_per_s"] / around)
    table = report["in_memory"]["eager fp32"]["images_per_s"]
    assert cold_target["vs_table"] == pytest.approx(cold["images_per_s"] / table)
    assert "Targets (ratios measured in this run)" in result.stdout


FAULT = "+callbacks.fault._target_=tests.training.extraction_faults."


def stored_features(cache: Path) -> dict[str, torch.Tensor]:
    """Every feature row kept in a cache folder, by image fingerprint."""
    (folder,) = (p for p in (cache / "features").iterdir() if p.is_dir())
    return features.FeatureStore(folder, folder.name).read()


@pytest.mark.slow
def test_sigterm_during_extraction_stops_keeps_features_and_the_rerun_ends_the_same(
    tmp_path: Path, synthetic_cache: Path, fresh_cache
):
    data = f"data.data_dir={synthetic_cache / 'synthetic' / 'n20_s48_seed0'}"
    reference = [*TINY, data, f"paths.cache_dir={fresh_cache('reference-cache')}"]
    train(compose_cfg(tmp_path / "reference", reference))
    run = [
        *TINY,
        data,
        f"paths.cache_dir={fresh_cache()}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    # 40 images in batches of 8: the signal arrives while the second batch is computed.
    stopped = run_entry(
        "train.py", *run, f"{FAULT}SignalDuringExtraction", "+callbacks.fault.batch=2"
    )
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "the features of 16 of 40 images are saved in" in output
    assert "Traceback" not in output and not (tmp_path / "run" / "metrics.json").exists()
    assert len(stored_features(tmp_path / "cache")) == 16

    rerun = run_entry("train.py", *run)
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-3000:]
    assert "Extracting features of 24 of 40 images" in output
    resumed, uninterrupted = (
        stored_features(tmp_path / "cache"),
        stored_features(tmp_path / "reference-cache"),
    )
    assert resumed.keys() == uninterrupted.keys()
    for fingerprint, row in uninterrupted.items():
        torch.testing.assert_close(resumed[fingerprint], row, atol=1e-5, rtol=0)
    metrics = [
        json.loads((d / "metrics.json").read_text())
        for d in (tmp_path / "run", tmp_path / "reference")
    ]
    for section in ("fit", "validate", "test"):
        assert metrics[0].get(section) == pytest.approx(metrics[1].get(section), abs=1e-6), section


@pytest.mark.slow
def test_a_cache_write_failing_on_rank_0_stops_every_ddp_process_with_the_error(
    tmp_path: Path, synthetic_cache: Path, fresh_cache
):
    result = run_entry(
        "train.py",
        *TINY,
        f"data.data_dir={synthetic_cache / 'synthetic' / 'n20_s48_seed0'}",
        f"paths.cache_dir={fresh_cache()}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "trainer=ddp_cpu",
        # A hang would end in a collective timing out after a minute, with a traceback.
        "+trainer.strategy.timeout._target_=datetime.timedelta",
        "+trainer.strategy.timeout.seconds=60",
        f"{FAULT}FailCacheWrite",
        timeout=400,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Cannot keep backbone features in paths.cache_dir" in output  # rank 0's own error
    assert "Process 0 of 2 failed, so all stop: Cannot keep backbone features" in output  # rank 1
    assert "Traceback" not in output
