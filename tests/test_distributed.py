"""train.py under torchrun: DistributedDataParallel on CPU (gloo) computes what one process computes."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import train
from conftest import ROOT, bad_input, run_script, tiny_cifar_env

FLAGS = ["--no-download", "--device", "cpu", "--quiet", "--epochs", "1", "--batch-size", "64",
         "--momentum", "0.9", "--augment", "--normalize", "--run-name", "run"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--optimizer", "sgd", "--val-split", "40"], ["--optimizer", "muon"]])
def test_two_gloo_processes_match_one_process_and_leave_one_set_of_files(cifar_dir, tmp_path, extra):
    """The first case also checks that every rank holds out the same validation images."""
    flags = [*FLAGS, *extra]
    result = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", ROOT / "train.py",
                        "--data-dir", cifar_dir, "--logdir", tmp_path / "ddp", *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("test accuracy") == 1  # only rank 0 speaks
    train.main(["--data-dir", str(cifar_dir), "--logdir", str(tmp_path / "single"), *flags])

    assert [p.name for p in (tmp_path / "ddp").iterdir()] == ["run"]
    files = sorted(p.name for p in (tmp_path / "ddp" / "run").iterdir() if not p.name.startswith("."))
    events = [f for f in files if f.startswith("events.out")]  # train.py's writer's and the run folder's, rank 0's
    assert len(events) == 2 and len([f for f in events if f.endswith(".tudui")]) == 1
    assert [f for f in files if f.endswith(".pth")] == ["best.pth", "last.pth", "tudui_epoch_0.pth"]
    ddp = torch.load(tmp_path / "ddp" / "run" / "last.pth", weights_only=True)
    single = torch.load(tmp_path / "single" / "run" / "last.pth", weights_only=True)
    assert ddp["config"]["optimizer"] == extra[1]
    assert ddp["metrics"].get("val_accuracy") == single["metrics"].get("val_accuracy")
    for key, tensor in single["model"].items():
        torch.testing.assert_close(ddp["model"][key], tensor, atol=1e-4, rtol=0)
    assert ddp["test_accuracy"] == single["test_accuracy"]
    assert ddp["metrics"]["train_loss_mean"] == pytest.approx(single["metrics"]["train_loss_mean"], abs=1e-4)


@pytest.mark.slow
def test_an_error_after_the_processes_join_exits_2_on_every_rank_with_its_line(tmp_path):
    result = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", ROOT / "train.py",
                        "--data-dir", tmp_path / "missing", "--no-download", "--device", "cpu",
                        "--logdir", tmp_path / "logs", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.count("error: CIFAR-10 is not in") == 2
    assert result.stderr.count("exitcode  : 2 ") == 2, result.stderr[-3000:]  # torchrun's report, per rank
    assert "terminate called" not in result.stderr


def test_global_batch_that_does_not_divide_across_processes_is_one_clear_line(monkeypatch, capsys, cifar_dir):
    for name, value in {"WORLD_SIZE": "3", "RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)  # as torchrun sets them
    err = bad_input(capsys, ["--data-dir", str(cifar_dir), "--batch-size", "64"])
    assert "must divide evenly across 3 processes" in err


@pytest.mark.parametrize("environment, says", [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE is 2 but RANK, MASTER_ADDR, MASTER_PORT are not set: start several processes "
                          "with torchrun"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE must be a whole number of processes (got 'two')"),
])
def test_a_world_size_set_outside_torchrun_is_one_clear_line(monkeypatch, capsys, train_args, environment, says):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert says in bad_input(capsys, train_args + ["--epochs", "1"])


def test_plain_python_run_never_touches_torch_distributed(train_args):
    train.main(train_args + ["--epochs", "1"])
    assert not torch.distributed.is_initialized()


def test_ranks_stop_on_what_they_agreed_not_on_a_signal_that_lands_after_the_all_reduce(monkeypatch):
    """A signal landing on one rank just after the all-reduce must wait for the next step's, which every rank
    makes: stopping on it at once left the other ranks in a collective with a peer gone."""
    from tudui.console import StopOnSignal
    from tudui.distributed import World

    stop = StopOnSignal()

    def all_reduce_then_a_signal_lands(tensor, op=None):  # the other rank saw no signal: the MAX stays 0
        stop.requested, stop.signal = True, signal.SIGTERM
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce_then_a_signal_lands)
    world = World(rank=0, size=2)
    assert world.agree_to_stop(stop, torch.device("cpu")) is False  # this step: neither rank stops
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor, op=None: None)  # the next: the MAX has it
    assert world.agree_to_stop(stop, torch.device("cpu")) is True and stop.signal == signal.SIGTERM


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_whole_process_group_stops_both_ranks_after_one_step_and_rank_0_alone_says_how_to_resume(
        cifar_dir, tmp_path, stop):
    """As a scheduler preempts a job: the signal reaches every rank at once (the two processes are started as
    torchrun starts them, in a process group of their own). Each exits 128 + the signal, none prints a
    traceback, and rank 0's last line is the torchrun command that resumes the run."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    logdir = tmp_path / "logs"
    argv = [sys.executable, str(ROOT / "train.py"), "--data-dir", str(cifar_dir), "--no-download", "--device", "cpu",
            "--batch-size", "64", "--epochs", "100000", "--log-every", "1", "--logdir", str(logdir), "--run-name", "run"]
    ranks = []
    for rank in (0, 1):
        env = dict(os.environ, **tiny_cifar_env(), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PYTHONUNBUFFERED="1")
        ranks.append(subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=env, process_group=0 if rank == 0 else ranks[0].pid))
    deadline = time.time() + 120
    while not (logdir / "run" / "last.pth").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)  # mid-epoch
    os.killpg(ranks[0].pid, stop)
    (_, err0), (_, err1) = (rank.communicate(timeout=120) for rank in ranks)
    assert [rank.returncode for rank in ranks] == [128 + stop] * 2, err0[-2000:] + err1[-2000:]
    assert "Traceback" not in err0 + err1 and "nothing saved yet" not in err1 and "resume" not in err1
    assert err0.strip().splitlines()[-1].endswith(
        f"resume with: torchrun --nproc_per_node=2 train.py --resume {logdir / 'run' / 'last.pth'}")
