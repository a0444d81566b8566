"""cli.py: Ctrl-C, bad input and closed pipes on the command line: one line, the right exit code, no traceback."""
import os
import signal
import subprocess
import sys
import time

import pytest

import cli
from conftest import ROOT, assert_every_final_file_loads, run_script


def train_command(cifar_dir, logdir, *extra):
    return [sys.executable, str(ROOT / "train.py"), "--data-dir", str(cifar_dir), "--no-download", "--device", "cpu",
            "--logdir", str(logdir), "--run-name", "run", "--quiet", "--recipe", "tuned", "--batch-size", "64", "--lr", "0.01", *extra]


def test_ctrl_c_stops_cleanly_prints_the_resume_command_and_exits_130(cifar_dir, tmp_path):
    proc = subprocess.Popen(train_command(cifar_dir, tmp_path, "--epochs", "100000"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "run"
    deadline = time.time() + 60
    while not (run_dir / "last.pth").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"python train.py --resume {run_dir / 'last.pth'}" in err and "Traceback" not in err
    assert_every_final_file_loads(run_dir)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run_dir))


def test_a_second_ctrl_c_stops_at_once_and_the_previous_handler_comes_back():
    before = signal.getsignal(signal.SIGINT)
    stop = cli.StopOnCtrlC()
    with stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at the next bytecode: well before this ends
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_outside_the_training_loop_is_one_line_and_exit_130(checkpoint, images):
    """Ctrl-C while predict.py works through a long list of images."""
    import os
    import signal
    import subprocess
    import sys
    # Python leaves Ctrl-C ignored in a program started with SIGINT ignored (as `cmd &` does): start it as a shell would
    proc = subprocess.Popen([sys.executable, str(ROOT / "predict.py"), "--checkpoint", str(checkpoint),
                             *["RGB.png"] * 20000], cwd=images, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline().startswith(f"checkpoint {checkpoint}: ")
    assert proc.stdout.readline().startswith("RGB.png: ")  # classifying: 19999 images to go, a few seconds
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines() == ["interrupted; files already saved are intact"]
    assert len(out.splitlines()) < 19999


def test_bad_input_on_the_command_line_prints_no_traceback(tmp_path):
    result = run_script(ROOT / "train.py", "--resume", tmp_path / "missing.pth")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: checkpoint {tmp_path / 'missing.pth'} does not exist; check the path"


def test_output_into_a_closed_pipe_ends_without_a_traceback(checkpoint, images, cifar_dir):
    """Like `| head` that has read its lines and gone: exit code 1, nothing on stderr."""
    import os
    import subprocess
    import sys
    for command in (["predict.py", "--checkpoint", checkpoint, images / "RGB.png"],
                    ["train.py", "--evaluate", checkpoint, "--data-dir", cifar_dir, "--no-download"]):
        proc = subprocess.Popen([sys.executable, str(ROOT / command[0]), *map(str, command[1:])],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        proc.stdout.close()
        assert (proc.stderr.read(), proc.wait(timeout=60)) == ("", 1)


def test_the_progress_bar_draws_on_a_terminal_or_in_a_notebook_and_nowhere_else(monkeypatch):
    assert cli.progress_bar(4, "epoch 0", enabled=True).disable  # pytest's stderr is no terminal
    monkeypatch.setattr(cli, "in_notebook", lambda: True)
    bar = cli.progress_bar(4, "epoch 0", enabled=True)
    assert not bar.disable
    bar.close()
    assert cli.progress_bar(4, "epoch 0", enabled=False).disable  # --quiet


def test_outside_a_notebook_this_process_is_not_taken_for_one():
    assert not cli.in_notebook()
