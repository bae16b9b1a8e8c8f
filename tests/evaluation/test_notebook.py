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
    # The tiny run's backbone is random: the panel says its maps are not crack evidence.
    assert "The backbone is random (model.weights=null)" in figure.get_suptitle()
    plt.close(figure)


def test_histogram_counts_read_as_plain_numbers() -> None:
    import torch

    from crackdet.evaluation.curves import probability_histogram_figure

    probs = torch.cat([torch.full((300,), 0.9), torch.full((3,), 0.2), torch.full((40,), 0.1)])
    labels = torch.cat([torch.ones(303, dtype=torch.long), torch.zeros(40, dtype=torch.long)])
    figure = probability_histogram_figure(probs, labels, 0.5)
    figure.canvas.draw()
    ax = figure.axes[0]
    low, high = ax.get_ylim()
    visible = [
        t.get_text()
        for t, v in zip(ax.get_yticklabels(), ax.get_yticks(), strict=True)
        if low <= v <= high
    ]
    # Several plain-number ticks (5, 10, 20, 50, ...), not two powers of ten in TeX notation.
    assert len(visible) >= 4 and all(t.isdigit() for t in visible), visible
    plt.close(figure)
