"""notebooks/Jasper_inference.ipynb runs headless and shows the transcripts and the plots, both
when executed here and in the outputs stored in the repository."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from jasper.transcribe import Transcriber, load_model
from tests.conftest import AUDIO, REFERENCE, REPO

NOTEBOOK = REPO / "notebooks" / "Jasper_inference.ipynb"
RECORDINGS = sorted(AUDIO.rglob("*.wav"))
PLOTS = 3  # waveform, log-mel features, character probabilities
SKIP_MESSAGE = "No Triton server ready"


def run_notebook(tmp_dir: Path, timeout: int = 300, **parameters: object) -> nbformat.NotebookNode:
    """Run a copy of the notebook headless from notebooks/ (where Jupyter starts it), with
    ``parameters`` appended to its parameter cell, on a kernel of this interpreter (not whatever
    ``python3`` kernel the machine has registered); return it with its outputs.

    The Triton tests can call it with ``TRITON_URL`` pointing at their server."""
    spec = tmp_dir / "kernels" / "recipe-python"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "recipe", "language": "python"})
    )
    manager = KernelManager(
        kernel_name="recipe-python",
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]),
    )
    nb = nbformat.read(NOTEBOOK, as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    cell.source += "".join(f"\n{name} = {value!r}" for name, value in parameters.items())
    resources = {"metadata": {"path": str(NOTEBOOK.parent)}}
    try:
        NotebookClient(nb, km=manager, timeout=timeout, resources=resources).execute()
    finally:  # kept for a look at what failed
        nbformat.write(nb, tmp_dir / NOTEBOOK.name)
    return nb


def code_outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def printed(nb: nbformat.NotebookNode) -> str:
    return "".join(out["text"] for out in code_outputs(nb) if out["output_type"] == "stream")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_shows_transcripts_and_plots(nb: nbformat.NotebookNode) -> str:
    outputs = code_outputs(nb)
    assert [out for out in outputs if out["output_type"] == "error"] == []
    text = printed(nb)
    for recording in RECORDINGS:
        assert f"{recording.name} (" in text, recording.name
    assert text.count("transcript: ") == len(RECORDINGS)
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) >= PLOTS
    return text


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> nbformat.NotebookNode:
    """The notebook run headless with the Triton URL at a port nobody listens on."""
    tmp = tmp_path_factory.mktemp("notebook")
    return run_notebook(tmp, TRITON_URL=f"127.0.0.1:{closed_port()}")


def test_notebook_runs_headless_with_transcripts_and_plots(executed):
    text = assert_shows_transcripts_and_plots(executed)
    assert SKIP_MESSAGE in text  # the Triton cell skips cleanly without a server


def test_notebook_transcripts_are_the_transcribers(executed):
    """The notebook prints what jasper.transcribe gives for its default checkpoint, loaded the
    same way (plain model, 16 leading frames)."""
    small = REFERENCE / "small_model"
    model, cfg = load_model(small / "checkpoint.pt", small / "config.yaml")
    transcriber = Transcriber(model, cfg, "cpu", pad_leading=16)
    text = printed(executed)
    for result in transcriber.transcribe_files(RECORDINGS):
        assert f"transcript: {result.text}\n" in text, result.name


def test_stored_notebook_shows_transcripts_and_plots():
    """Readers of the repository see the outputs without running anything; the file stays small."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert_shows_transcripts_and_plots(nb)
    assert NOTEBOOK.stat().st_size < 1_000_000
