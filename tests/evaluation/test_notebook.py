"""notebooks/misclassifications.ipynb runs headless on a run directory and draws every section."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from crackdet.cli.config import PROJECT_ROOT
from crackdet.evaluation import analysis
from crackdet.evaluation.evaluate import evaluate
from tests.conftest import compose_cfg

NOTEBOOK = PROJECT_ROOT / "notebooks" / "misclassifications.ipynb"
SECTIONS = (
    "Confusion matrix",
    "Most confident false negatives",
    "Most confident false positives",
    "p(crack) per true class",
    "Recall and precision against threshold",
    "Grad-CAM of the mistakes",
)


def _require_python3_kernel() -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no Jupyter kernel named python3: run `python -m ipykernel install --user`")


def test_committed_notebook_has_no_outputs() -> None:
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert any("parameters" in c.metadata.get("tags", []) for c in code)


@pytest.mark.slow
def test_notebook_draws_every_section_for_a_training_run(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    papermill = pytest.importorskip("papermill")
    nbformat = pytest.importorskip("nbformat")
    _require_python3_kernel()
    # run_dir comes from the environment variable; n_images through the parameters cell.
    monkeypatch.setenv("CRACKDET_RUN_DIR", str(trained_run))
    executed = tmp_path / "executed.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(executed),
        parameters={"n_images": 4},
        kernel_name="python3",
        cwd=str(tmp_path),
        progress_bar=False,
    )

    notebook = nbformat.read(executed, as_version=4)
    images: dict[str, int] = {}
    section = None
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("## "):
            section = cell.source[3:].splitlines()[0]
            images[section] = 0
        elif cell.cell_type == "code" and section:
            images[section] += sum("image/png" in o.get("data", {}) for o in cell.outputs)
    assert images == dict.fromkeys(SECTIONS, 1)
    text = "".join(
        o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs
    )
    assert f"training run {trained_run}" in text


def test_analysis_reads_an_eval_run(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    results = evaluate(
        compose_cfg(
            out,
            [f"ckpt_path={trained_run / 'checkpoints' / 'best.ckpt'}", "data.num_workers=0"],
            config_name="eval",
        )
    )
    run = analysis.load_run(out)
    assert (run.kind, run.split, len(run.labels)) == ("eval", "test", results["samples"])
    assert run.threshold == results["operating_point"]["threshold"]
    assert run.ckpt_path == Path(results["ckpt_path"])

    # Cracks given p(crack) 0.05 are the most confident misses at any sensible threshold.
    run.probs[run.labels == 1] = 0.05
    missed = analysis.mistakes(run, "fn", 2)
    assert len(missed) == 2 and all(run.labels[i] == 1 for i in missed)
    assert analysis.mistakes(run, "fp", 100) == [
        i
        for i in sorted(range(len(run.labels)), key=lambda i: -run.probs[i])
        if run.labels[i] == 0 and run.probs[i] >= run.threshold
    ]
    figure = analysis.gradcam_figure(run, k=2)
    overlays = [ax for ax in figure.axes if ax.images]
    assert len(overlays) == 2
    plt.close(figure)
