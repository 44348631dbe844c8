"""notebooks/backprop.ipynb runs top to bottom in a plain Jupyter kernel, as a learner runs it."""

import json

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "backprop.ipynb"


def test_the_notebook_is_kept_without_outputs():
    raw = json.loads(NOTEBOOK.read_text())
    code = [c for c in raw["cells"] if c["cell_type"] == "code"]
    kept = [i for i, c in enumerate(code) if c["outputs"] or c["execution_count"] is not None]
    assert code and not kept, (
        f"{NOTEBOOK} was saved with the outputs of code cells {kept}: clear them before committing "
        f"(Jupyter: Edit > Clear Outputs of All Cells; or jupyter nbconvert --clear-output --inplace {NOTEBOOK})"
    )


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("HANDPROP_OUTPUTS", str(tmp_path))  # its run goes here, not into outputs/
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "ConfigError: model.hiden: unknown key. Did you mean model.hidden?" in text
    assert "test accuracy" in text and "the three agree" in text
    # the lesson's own network first, then the default recipe's kind
    assert "network: 784 -> 16 -> 16 -> 10 ('sigmoid', 'sigmoid', 'sigmoid') quadratic" in text
    assert "('relu', 'identity'), cross_entropy, label smoothing 0.1" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 5  # weights, confusion matrix, descent, backprop, one neuron's changes
    lesson, default = sorted(p.parent for p in tmp_path.rglob("metrics.json"))
    assert {p.name for p in (lesson / "pictures").iterdir()} >= {"descent.png", "backprop.png"}
    assert (lesson / "train.log").is_file() and (lesson / ".hydra" / "overrides.yaml").is_file()
