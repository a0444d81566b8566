"""tudui.ipynb and train.py in Jupyter: the notebook runs top to bottom in a real kernel, and interrupting the
kernel stops a run cleanly and leaves the kernel able to resume it."""
import hashlib
import json
import os
import re
import signal
import time

import pytest
import torch

from conftest import CLASSES, ROOT, tiny_cifar_env

pytestmark = pytest.mark.slow  # every test here starts scripts, servers or kernels

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupyter_client = pytest.importorskip("jupyter_client")
NOTEBOOK = ROOT / "tudui.ipynb"


def text_of(cell):
    return "".join(output.get("text", "") + "".join(output.get("data", {}).get("text/plain", ""))
                   for output in cell.get("outputs", []))


def stop_tensorboards_of(logdir):
    """End the TensorBoard servers that %tensorboard started for LOGDIR (they outlive the kernel)."""
    from tensorboard import manager
    for info in manager.get_all():
        if info.logdir == str(logdir):
            try:
                os.kill(info.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def kernel_environment(cifar_dir):
    """Kernels start with this process's environment: with it, they accept the tiny CIFAR-10 files too."""
    saved = dict(os.environ)
    os.environ.update(tiny_cifar_env())
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def tiny_run_of_the_notebook(kernel_environment, cifar_dir, tmp_path_factory):
    """The committed notebook run in a real kernel from the repository's folder, in memory: its parameters
    cell replaced by one that trains 1 epoch on the tests' tiny CIFAR-10 folder, and a cell added at the
    end that prints the history's epochs. Returns it, the committed file's hash before, and the seconds."""
    logdir = tmp_path_factory.mktemp("notebook_logs")
    before = hashlib.sha256(NOTEBOOK.read_bytes()).hexdigest()
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1
    parameters[0].source = (f"data_dir = {str(cifar_dir)!r}\ndataset = 'cifar10'\nepochs = 1\n"
                            f"recipe = 'tuned'\nlogdir = {str(logdir)!r}")
    notebook.cells.append(nbformat.v4.new_code_cell('print(__import__("json").dumps(result.history["epoch"]))'))
    started = time.perf_counter()
    try:
        nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        stop_tensorboards_of(logdir)
    return notebook, before, time.perf_counter() - started


def test_every_cell_of_the_notebook_runs_without_error(tiny_run_of_the_notebook):
    notebook, _, seconds = tiny_run_of_the_notebook
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code_cells)
    errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    print(f"executed in {seconds:.1f} s")


def test_the_notebooks_history_has_one_record_per_epoch(tiny_run_of_the_notebook):
    notebook, _, _ = tiny_run_of_the_notebook
    assert json.loads(text_of(notebook.cells[-1])) == [0]


def test_the_notebooks_prediction_cell_prints_a_class_name(tiny_run_of_the_notebook):
    notebook, _, _ = tiny_run_of_the_notebook
    cell = next(c for c in notebook.cells if c.cell_type == "code" and "predict.predict(" in c.source)
    first_line = text_of(cell).split()
    assert first_line and first_line[0] in CLASSES


def test_the_notebooks_tensorboard_cell_started_tensorboard(tiny_run_of_the_notebook):
    notebook, _, _ = tiny_run_of_the_notebook
    cell = next(c for c in notebook.cells if c.cell_type == "code" and "%tensorboard" in c.source)
    shown = json.dumps(cell.outputs)
    port = re.search(r"const port = (\d+);", shown)  # the frame %tensorboard shows once its server answers
    assert "ERROR" not in shown and "tensorboard-frame" in shown and port and int(port.group(1)) > 0, shown[:500]


def test_running_the_notebook_does_not_rewrite_the_committed_file(tiny_run_of_the_notebook):
    _, before, _ = tiny_run_of_the_notebook
    assert hashlib.sha256(NOTEBOOK.read_bytes()).hexdigest() == before


def test_the_committed_notebook_holds_the_outputs_of_a_run_and_stays_small():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [c for c in notebook.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])]
    assert all(c.outputs for c in code_cells)
    training = next(c for c in code_cells if "train.run(recipe=recipe" in c.source)
    assert "epoch 9: train loss" in text_of(training)  # the committed parameters' 10 epochs
    assert NOTEBOOK.stat().st_size < 400_000


def wait_for(path, seconds=120):
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert path.exists(), f"{path} never appeared"


def test_interrupting_the_kernel_stops_the_run_names_the_resume_call_and_the_kernel_resumes_it(kernel_environment,
                                                                                              cifar_dir, tmp_path):
    manager = jupyter_client.KernelManager(kernel_name="python3")
    manager.start_kernel(cwd=str(ROOT))
    client = manager.client()
    client.start_channels()
    last = tmp_path / "logs" / "run" / "last.pth"
    try:
        client.wait_for_ready(timeout=120)
        request = client.execute(f"import train\nresult = train.run(epochs=100000, data_dir={str(cifar_dir)!r}, "
                                 f"logdir={str(tmp_path / 'logs')!r}, run_name='run', device='cpu', quiet=True)")
        wait_for(last)
        manager.interrupt_kernel()
        reply = client.get_shell_msg(timeout=120)
        while reply["parent_header"].get("msg_id") != request:  # the replies to the client's own requests
            reply = client.get_shell_msg(timeout=120)
        reply = reply["content"]
        assert reply["status"] == "error" and reply["ename"] == "Interrupted"
        assert f"train.run(resume={str(last)!r})" in reply["evalue"]
        saved_epoch = torch.load(last, weights_only=True)["epoch"]
        # the same run, in the same kernel: refused if the lock or the TensorBoard writer were still held
        resumed = client.execute_interactive(f"result = train.run(resume={str(last)!r}, epochs={saved_epoch + 2})",
                                             timeout=120)
        assert resumed["content"]["status"] == "ok"
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    epochs = [json.loads(line)["epoch"] for line in (last.parent / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(saved_epoch + 2))
