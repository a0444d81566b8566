"""Run tudui.ipynb top to bottom in place, so that the outputs committed with it are those of one real run:
from the repository's folder, in a real kernel, with the notebook's own parameters cell (CIFAR-10 in
./data; tools/cifar_copy.py writes the real images there where nothing can be downloaded). The
progress bars' redraws are left out of the saved outputs: they are a live display, not a result. Ends the
TensorBoard server that the notebook's %tensorboard cell starts.

    python tools/cifar_copy.py /tmp/cifar ./data     # once, on a machine that cannot download
    python tools/run_notebook.py
"""
import os
import signal
import sys
import time
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "tudui.ipynb"
WIDGET = "application/vnd.jupyter.widget-view+json"


def is_progress_bar(output):
    """A tqdm bar's output: a widget, or stderr text that only redraws a line (each piece starts with \\r)."""
    if output.output_type == "display_data":
        return WIDGET in output.data
    return output.output_type == "stream" and output.name == "stderr" and output.text.lstrip(" ").startswith("\r")


def main():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    started = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=3600, kernel_name="python3", store_widget_state=False,
                            resources={"metadata": {"path": str(ROOT)}}).execute()
    seconds = time.perf_counter() - started
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [output for output in cell.outputs if not is_progress_bar(output)]
    notebook.metadata.pop("widgets", None)
    nbformat.write(notebook, NOTEBOOK)
    from tensorboard import manager
    for info in manager.get_all():
        if Path(info.logdir).resolve().is_relative_to(ROOT):
            os.kill(info.pid, signal.SIGTERM)
    print(f"ran {NOTEBOOK.name} in {seconds:.1f} s; it is now {NOTEBOOK.stat().st_size:,} bytes")


if __name__ == "__main__":
    sys.exit(main())
