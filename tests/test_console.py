"""tudui/console.py: Ctrl-C, bad input and closed pipes on the command line: one line, the right exit code, no traceback."""
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, assert_every_final_file_loads, run_script, tiny_cifar_env
from tudui import console


def script_env():
    return dict(os.environ, PYTHONUNBUFFERED="1", **tiny_cifar_env())


def train_command(cifar_dir, logdir, *extra):
    return [sys.executable, str(ROOT / "train.py"), "--data-dir", str(cifar_dir), "--no-download", "--device", "cpu",
            "--logdir", str(logdir), "--run-name", "run", "--quiet", "--recipe", "tuned", "--batch-size", "64", "--lr", "0.01", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["Ctrl-C", "SIGTERM", "SIGHUP"])
def test_a_stop_signal_ends_the_run_cleanly_with_a_pasteable_resume_command_and_exit_128_plus_its_number(
        cifar_dir, tmp_path, stop):
    logdir = tmp_path / "my logs"  # a space, which the printed command must quote
    proc = subprocess.Popen(train_command(cifar_dir, logdir, "--epochs", "100000"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=script_env())
    run_dir = logdir / "run"
    deadline = time.time() + 60
    while not (run_dir / "last.pth").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + stop, err
    command = err.strip().splitlines()[-1].split("resume with: ")[1]
    assert shlex.split(command) == ["python", "train.py", "--resume", str(run_dir / "last.pth")]
    assert "Traceback" not in err
    assert_every_final_file_loads(run_dir)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run_dir))


@pytest.mark.slow
def test_sigterm_during_a_save_lets_the_save_finish_and_leaves_no_temporary_file(cifar_dir, tmp_path):
    """The run then stops at the next step; before the loop, the save in progress is undone instead."""
    proc = subprocess.Popen(train_command(cifar_dir, tmp_path, "--epochs", "100000"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=script_env())
    run_dir, deadline = tmp_path / "run", time.time() + 60
    while not list(run_dir.glob(".last.pth.*.tmp")) and time.time() < deadline:  # a checkpoint's save under way
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert_every_final_file_loads(run_dir)
    assert not list(run_dir.glob(".*.tmp")) and "Traceback" not in err


@pytest.mark.slow
def test_sigterm_before_training_begins_exits_143_with_one_line_and_no_half_written_file(cifar_dir, tmp_path):
    proc = subprocess.Popen(train_command(cifar_dir, tmp_path, "--epochs", "100000"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=script_env())
    run_dir, deadline = tmp_path / "run", time.time() + 60
    while not run_dir.exists() and time.time() < deadline:  # the run's folder is made before config.json
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] in ("SIGTERM: stopped; files already saved are intact",
                                            "interrupted in epoch 0; its partial progress is discarded. nothing saved yet")
    assert not list(run_dir.glob(".*.tmp")) and "Traceback" not in err


def test_a_second_ctrl_c_stops_at_once_and_the_previous_handler_comes_back():
    before = signal.getsignal(signal.SIGINT)
    stop = console.StopOnSignal()
    with stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at the next bytecode: well before this ends
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
def test_ctrl_c_outside_the_training_loop_is_one_line_and_exit_130(checkpoint, images):
    """Ctrl-C while predict.py works through a long list of images."""
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


@pytest.mark.slow
def test_bad_input_on_the_command_line_prints_no_traceback(tmp_path):
    result = run_script(ROOT / "train.py", "--resume", tmp_path / "missing.pth")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: checkpoint {tmp_path / 'missing.pth'} does not exist; check the path"


@pytest.mark.slow
def test_output_into_a_closed_pipe_ends_without_a_traceback(checkpoint, images, cifar_dir):
    """Like `| head` that has read its lines and gone: exit code 1, nothing on stderr."""
    for command in (["predict.py", "--checkpoint", checkpoint, images / "RGB.png"],
                    ["train.py", "--evaluate", checkpoint, "--data-dir", cifar_dir, "--no-download"]):
        proc = subprocess.Popen([sys.executable, str(ROOT / command[0]), *map(str, command[1:])],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=script_env())
        proc.stdout.close()
        assert (proc.stderr.read(), proc.wait(timeout=60)) == ("", 1)


def test_the_progress_bar_draws_on_a_terminal_or_in_a_notebook_and_nowhere_else(monkeypatch):
    assert console.progress_bar("epoch 0", enabled=True)(range(4)).disable  # pytest's stderr is no terminal
    monkeypatch.setattr(console, "in_notebook", lambda: True)
    bar = console.progress_bar("epoch 0", enabled=True)(range(4))
    assert not bar.disable and list(bar) == [0, 1, 2, 3]
    assert console.progress_bar("epoch 0", enabled=False)(range(4)).disable  # --quiet


@pytest.mark.parametrize("config, is_kernel", [({"IPKernelApp": {"connection_file": "k.json"}}, True), ({}, False)])
def test_a_notebook_is_an_ipython_shell_run_by_a_kernel_app_and_a_terminal_ipython_is_not(monkeypatch, config,
                                                                                          is_kernel):
    import types
    shell = types.SimpleNamespace(config=config)
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    assert console.in_notebook() is is_kernel


def stopped_after_epoch_0(monkeypatch, while_closing):
    """train.py's run gets SIGTERM after saving epoch 0, and WHILE_CLOSING() runs as it closes its files."""
    from tudui import runs
    real_log_epoch, real_exit = runs.RunFolder.log_epoch, runs.RunFolder.__exit__

    def then_sigterm(self, *args):
        real_log_epoch(self, *args)
        os.kill(os.getpid(), signal.SIGTERM)

    def closing(self, *exc):
        while_closing()
        return real_exit(self, *exc)
    monkeypatch.setattr(runs.RunFolder, "log_epoch", then_sigterm)
    monkeypatch.setattr(runs.RunFolder, "__exit__", closing)


def test_a_second_sigterm_while_the_run_closes_its_files_keeps_the_resume_call(train_args, tmp_path, monkeypatch,
                                                                                 capsys):
    import train
    stopped_after_epoch_0(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))
    assert console.run_cli(lambda: train.main(train_args + ["--epochs", "3"])) == 143
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith(f"resume with: python train.py --resume {tmp_path / 'logs' / 'run' / 'last.pth'}")


def test_a_notebook_interrupt_while_the_run_closes_still_raises_interrupted_with_the_resume_call(cifar_dir, tmp_path,
                                                                                               monkeypatch):
    import train
    from tudui import distributed
    from tudui.errors import Interrupted
    real_leave = distributed.World.leave

    def interrupted_again(self, finished):  # the kernel's second interrupt, after the loop's handlers are gone
        real_leave(self, finished)
        raise KeyboardInterrupt
    monkeypatch.setattr(distributed.World, "leave", interrupted_again)
    stopped_after_epoch_0(monkeypatch, lambda: None)
    with pytest.raises(Interrupted, match=r"resume with: train\.run\(resume=") as raised:
        train.run(data_dir=cifar_dir, no_download=True, logdir=tmp_path, run_name="run", device="cpu", quiet=True,
                  epochs=3)
    assert raised.value.signal_number == signal.SIGTERM
