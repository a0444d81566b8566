"""train.py under torchrun: DistributedDataParallel on CPU (gloo) computes what one process computes."""

import pytest
import torch

import train
from conftest import ROOT, bad_input, run_script

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
