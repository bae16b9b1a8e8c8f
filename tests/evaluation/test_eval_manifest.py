"""eval.py evaluates exactly the images its checkpoint's run held out, whatever the folder holds now."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from crackdet.data.manifest import MANIFEST_NAME, SplitManifest, manifest_of_checkpoint
from crackdet.errors import DataError
from crackdet.evaluation.evaluate import evaluate
from crackdet.training.train import train
from tests.conftest import REAL_SAMPLE, compose_cfg, needs_real_sample, run_entry


def _evaluate(out: Path, ckpt: Path, *overrides: str) -> dict:
    return evaluate(
        compose_cfg(
            out, [f"ckpt_path={ckpt}", "data.num_workers=0", *overrides], config_name="eval"
        )
    )


def _paths(predictions_csv: Path, root: Path) -> list[str]:
    with open(predictions_csv, newline="") as handle:
        return [Path(r["path"]).relative_to(root).as_posix() for r in csv.DictReader(handle)]


@pytest.fixture
def changed_copy(trained_run: Path, tmp_path: Path) -> tuple[Path, SplitManifest, str]:
    """A copy of the run's folder with 3 images added and one test image replaced by another."""
    best = trained_run / "checkpoints" / "best.ckpt"
    manifest = manifest_of_checkpoint(best)
    data_dir = Path(torch.load(best, weights_only=True)["datamodule_hyper_parameters"]["data_dir"])
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    replaced = manifest.split("test")[0].path
    trained_on = manifest.split("train")[0].path
    (copy / replaced).write_bytes((copy / trained_on).read_bytes())
    for i in range(3):
        shutil.copy(copy / trained_on, copy / "Positive" / f"added_{i}.jpg")
    return copy, manifest, replaced


def test_changed_test_image_is_named_and_refused(trained_run, changed_copy, tmp_path) -> None:
    copy, manifest, replaced = changed_copy
    with pytest.raises(DataError) as info:
        _evaluate(
            tmp_path / "eval", trained_run / "checkpoints" / "best.ckpt", f"data.data_dir={copy}"
        )
    message = str(info.value)
    assert f"1 of the {len(manifest.split('test'))} test images" in message
    assert f"1 changed: {replaced} (different content)" in message
    assert "eval.on_mismatch=skip" in message
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_skip_evaluates_the_unchanged_test_images_and_never_the_new_ones(
    trained_run, changed_copy, tmp_path, caplog
) -> None:
    copy, manifest, replaced = changed_copy
    out = tmp_path / "eval"
    caplog.set_level("INFO")
    results = _evaluate(
        out,
        trained_run / "checkpoints" / "best.ckpt",
        f"data.data_dir={copy}",
        "eval.on_mismatch=skip",
    )
    expected = [e.path for e in manifest.split("test") if e.path != replaced]
    assert _paths(out / "predictions.csv", copy) == expected
    images = json.loads((out / "metrics.json").read_text())["images"]
    assert images["source"] == "split manifest"
    assert images["manifest"] == str(trained_run / "checkpoints" / "best.ckpt")
    assert (images["in_manifest"], images["evaluated"], images["changed"]) == (
        len(expected) + 1,
        len(expected),
        1,
    )
    assert images["not_in_manifest"] == 3 and images["digest"] != images["manifest_digest"]
    assert results["metrics"]["test/samples"] == len(expected)
    assert "3 file(s) in" in caplog.text and "Positive/added_0.jpg" in caplog.text


def test_unchanged_folder_digest_equals_the_manifests(trained_run, tmp_path) -> None:
    out = tmp_path / "eval"
    _evaluate(out, trained_run / "checkpoints" / "best.ckpt", "data.split=val")
    images = json.loads((out / "metrics.json").read_text())["images"]
    assert images["digest"] == images["manifest_digest"]
    assert images["evaluated"] == images["in_manifest"] > 0 and images["missing"] == 0


def test_a_checkpoint_without_manifest_warns_that_the_split_is_rebuilt(
    trained_run, tmp_path, caplog
) -> None:
    checkpoint = torch.load(trained_run / "checkpoints" / "best.ckpt", weights_only=True)
    del checkpoint["CrackDataModule"]
    old = tmp_path / "old_run" / "checkpoints" / "best.ckpt"
    old.parent.mkdir(parents=True)
    torch.save(checkpoint, old)
    assert not (old.parent.parent / MANIFEST_NAME).exists()
    results = _evaluate(tmp_path / "eval", old)
    assert "holds no split manifest" in caplog.text and "rebuilt from the recorded" in caplog.text
    assert results["images"]["source"].startswith("rebuilt from the recorded split settings")
    # The run directory's CSV serves when the checkpoint holds none.
    shutil.copy(trained_run / MANIFEST_NAME, old.parent.parent / MANIFEST_NAME)
    results = _evaluate(tmp_path / "eval2", old)
    assert results["images"]["manifest"] == str(old.parent.parent / MANIFEST_NAME)


@pytest.mark.slow
@needs_real_sample
def test_real_sample_eval_reports_exactly_the_runs_test_images_after_the_folder_changed(
    tmp_path: Path, fresh_cache
) -> None:
    pool = {c: sorted((REAL_SAMPLE / c).glob("*.jpg")) for c in ("Positive", "Negative")}
    data = tmp_path / "data"
    for cls, files in pool.items():
        (data / cls).mkdir(parents=True)
        for path in files[:150]:
            shutil.copy2(path, data / cls / path.name)
    run = tmp_path / "run"
    train(
        compose_cfg(
            run,
            [
                f"data.data_dir={data}",
                "data.split=stratified",
                "model.weights=null",
                "data.image_size=48",
                "data.batch_size=50",
                "data.num_workers=0",
                "trainer=cpu",
                "trainer.max_epochs=1",
                f"paths.cache_dir={fresh_cache()}",
                "~callbacks.rich_progress_bar",
                "~callbacks.rich_model_summary",
            ],
        )
    )
    tested = _paths(run / "predictions_test.csv", data)
    assert tested == [e.path for e in SplitManifest.read_csv(run / MANIFEST_NAME).split("test")]

    # 40 more images, and one test image replaced by another photo of the same size and mtime.
    for cls, files in pool.items():
        for path in files[150:170]:
            shutil.copy2(path, data / cls / path.name)
    replaced = data / tested[0]
    size, stat = replaced.stat().st_size, replaced.stat()
    other = next(p for p in pool["Negative"][170:] if p.stat().st_size <= size)
    replaced.write_bytes(other.read_bytes().ljust(size, b"\0"))  # bytes after the JPEG end: ignored
    os.utime(replaced, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert replaced.stat().st_size == size and replaced.stat().st_mtime_ns == stat.st_mtime_ns

    eval_args = [f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", "data.num_workers=0"]
    refused = run_entry("eval.py", *eval_args, f"hydra.run.dir={tmp_path / 'eval_refused'}")
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert f"1 changed: {tested[0]} (different content)" in refused.stdout + refused.stderr

    out = tmp_path / "eval"
    done = run_entry("eval.py", *eval_args, "eval.on_mismatch=skip", f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert _paths(out / "predictions.csv", data) == tested[1:]
    images = json.loads((out / "metrics.json").read_text())["images"]
    assert (images["evaluated"], images["changed"], images["not_in_manifest"]) == (
        len(tested) - 1,
        1,
        40,
    )
    assert "40 file(s) in" in done.stdout + done.stderr
