"""tudui/training_checkpoints.py: a training checkpoint holds what resuming needs, damaged fields are one line
each, checkpoints of earlier versions still resume, and each records what made it."""
import json
import math
import re
import os
import shlex
import shutil
import signal

import pytest
import torch

import predict
import train
from conftest import ROOT, bad_input, parse
from model import Tudui
from tudui import console, load_tudui, runs, settings, training_checkpoints
from tudui.cuda_graph import GraphedStep

OLD_CHECKPOINTS = ROOT / "tests" / "data"  # written by commit 516887d, before train.py was split into modules


def _with_two_param_groups(optimizer):
    return dict(optimizer, param_groups=optimizer["param_groups"] * 2)


def _with_first_momentum(optimizer, buffer):
    return dict(optimizer, state={**optimizer["state"], 0: {"momentum_buffer": buffer}})


def test_resuming_from_weights_alone_says_what_takes_them_instead(tmp_path, train_args, capsys):
    torch.save(Tudui().state_dict(), tmp_path / "weights.pth")
    err = bad_input(capsys, train_args + ["--resume", str(tmp_path / "weights.pth")])
    assert f"{tmp_path / 'weights.pth'} is not a training checkpoint written by train.py" in err
    assert "cannot be resumed; --evaluate and predict.py take it as it is" in err


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.write_bytes(b"not a checkpoint"), lambda p: p.mkdir()])
def test_bad_resume_file_is_one_clear_line(capsys, train_args, tmp_path, make):
    path = tmp_path / "ckpt.pth"
    make(path)
    err = bad_input(capsys, train_args + ["--resume", str(path)])
    assert str(path) in err


@pytest.mark.parametrize("field, damage, says", [
    ("config", lambda config: dict(config, epochs="ten"), "its configuration has epochs = 'ten'"),
    ("config", lambda config: dict(config, recipe="fast"), "its configuration has recipe = 'fast'"),
    ("config", lambda config: "junk", "config missing or malformed"),
    ("rng", lambda rng: None, "rng missing or malformed"),
    ("rng", lambda rng: {"torch": torch.zeros(3)}, "RNG state does not load"),
    ("optimizer", _with_two_param_groups, "optimizer or RNG state does not load"),
    ("metrics", lambda metrics: dict(metrics, epoch=7), "metrics missing or malformed"),
    ("epoch", lambda epoch: -1, "epoch, metrics missing or malformed"),  # the metrics are of another epoch then
    ("step", lambda step: 2**64, "step missing or malformed"),
    ("metrics", lambda metrics: dict(metrics, test_loss="low"), "metrics missing or malformed"),
    ("optimizer", lambda state: _with_first_momentum(state, torch.zeros(3)), "a momentum_buffer of shape (3,) for a "
                                                                              "weight of (32, 3, 5, 5)"),
    ("optimizer", lambda state: _with_first_momentum(state, torch.full((32, 3, 5, 5), float("nan"))),
     "a momentum_buffer holds NaN or infinity"),
])
def test_a_training_checkpoint_with_a_damaged_field_is_one_line_on_resume(train_args, tmp_path, capsys, field,
                                                                           tutorial_network,
                                                                           damage, says):
    train.main(train_args + ["--epochs", "1", "--momentum", "0.9"])
    checkpoint = torch.load(tmp_path / "logs" / "run" / "last.pth", weights_only=True)
    checkpoint[field] = damage(checkpoint[field])
    damaged = tmp_path / "damaged.pth"
    torch.save(checkpoint, damaged)
    capsys.readouterr()
    err = bad_input(capsys, ["--resume", str(damaged), "--epochs", "2"])
    assert f"{damaged} is a damaged training checkpoint (" in err and says in err


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_checkpoints_hold_a_plain_lr_whatever_optimizer_wrote_them(optimizer):
    """A graphed run keeps its lr in a device tensor for the fused SGD kernel; its checkpoints must still
    resume in a plain run (and the reverse), carrying the momentum buffers across."""
    args = parse(["--recipe", "tuned", "--optimizer", optimizer])
    model = train.build_model(10, torch.device("cpu"), seed=0)
    graphed = train.build_optimizer(model, args)
    GraphedStep(train.make_train_step(model, torch.nn.CrossEntropyLoss(), graphed, False), graphed, 2, torch.device("cpu"))
    assert all(isinstance(group["lr"], torch.Tensor) for group in graphed.param_groups)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    graphed.step()
    state = training_checkpoints.optimizer_state(graphed)
    assert all(type(group["lr"]) is float and math.isclose(group["lr"], args.lr, rel_tol=1e-6)
               for group in state["param_groups"])

    plain = train.build_optimizer(model, args)
    training_checkpoints.load_optimizer_state(plain, state)
    assert type(plain.param_groups[0]["lr"]) is float and not plain.param_groups[0]["fused"]
    for p in model.parameters():
        assert torch.equal(plain.state[p]["momentum_buffer"], graphed.state[p]["momentum_buffer"])


@pytest.mark.parametrize("name", ["tutorial_epoch_0_v516887d.pth", "tuned_epoch_0_v516887d.pth"])
def test_a_checkpoint_written_before_the_split_into_modules_loads_and_resumes(cifar_dir, tmp_path, name,
                                                                              tutorial_network):
    """Epoch 0 of a 2-epoch run (`--epochs 2`, and `--recipe tuned --batch-size 64` for the Muon one) on
    the tests' tiny CIFAR-10 folder, which conftest builds the same way every time."""
    run_dir = tmp_path / "logs" / "run"
    run_dir.mkdir(parents=True)
    shutil.copy(OLD_CHECKPOINTS / name, run_dir / "tudui_epoch_0.pth")
    saved = torch.load(run_dir / "tudui_epoch_0.pth", weights_only=True)
    net = load_tudui(run_dir / "tudui_epoch_0.pth")
    assert all(torch.equal(net.state_dict()[key], tensor) for key, tensor in saved["model"].items())
    train.main(["--resume", str(run_dir / "tudui_epoch_0.pth"), "--data-dir", str(cifar_dir), "--logdir",
                str(tmp_path / "logs"), "--run-name", "run", "--quiet"])
    resumed = torch.load(run_dir / "last.pth", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["step"] == 2 * saved["step"]
    this_call = ("data_dir", "logdir", "run_name", "resume", "device")
    kept = {k: v for k, v in saved["config"].items() if k not in this_call}
    assert {k: resumed["config"][k] for k in kept} == kept  # settings added since take their defaults


def test_an_old_muon_checkpoint_resumes_to_the_weights_the_old_code_reached(cifar_dir, tmp_path, tutorial_network):
    """Its epoch 1 as the old code trained it, on this project's AVX-512 CPU: another CPU's convolutions add
    in another order, hence the tolerance."""
    run_dir = tmp_path / "logs" / "run"
    run_dir.mkdir(parents=True)
    shutil.copy(OLD_CHECKPOINTS / "tuned_epoch_0_v516887d.pth", run_dir / "tudui_epoch_0.pth")
    train.main(["--resume", str(run_dir / "tudui_epoch_0.pth"), "--data-dir", str(cifar_dir), "--logdir",
                str(tmp_path / "logs"), "--run-name", "run", "--quiet"])
    resumed = torch.load(run_dir / "last.pth", weights_only=True)["model"]
    old_epoch_1 = torch.load(OLD_CHECKPOINTS / "tuned_epoch_1_weights_v516887d.pth", weights_only=True)
    for key, tensor in old_epoch_1.items():
        torch.testing.assert_close(resumed[key], tensor, rtol=1e-4, atol=1e-5)


def test_each_checkpoint_records_the_versions_the_commit_the_device_and_the_call_that_made_it(train_args, tmp_path):
    import torchvision

    import tudui
    result = train.run(data_dir=train_args[1], no_download=True, logdir=tmp_path, run_name="r", device="cpu",
                       quiet=True, epochs=1)
    made_by = torch.load(result.last_path, weights_only=True)["provenance"]
    assert made_by["version"] == tudui.__version__ and made_by["device"] == "cpu"
    assert (made_by["torch"], made_by["torchvision"]) == (str(torch.__version__), str(torchvision.__version__))
    assert made_by["command"] == (f"train.run(data_dir={train_args[1]!r}, no_download=True, logdir={tmp_path!r}, "
                                  "run_name='r', device='cpu', quiet=True, epochs=1)")
    if (ROOT / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}(\+changes)?", made_by["git_commit"])


def test_outside_a_git_checkout_or_without_git_the_commit_is_none_and_nothing_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(training_checkpoints, "__file__", str(tmp_path / "training_checkpoints.py"))  # as if copied out of the checkout
    assert training_checkpoints.git_commit() is None
    monkeypatch.undo()

    def no_git(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory: 'git'")
    monkeypatch.setattr(training_checkpoints.subprocess, "run", no_git)
    assert training_checkpoints.git_commit() is None


def test_evaluate_and_predict_first_say_what_made_the_checkpoint(train_args, cifar_dir, tmp_path, images, capsys):
    result = train.main(train_args + ["--epochs", "1"])
    capsys.readouterr()
    train.main(["--evaluate", str(result.last_path), "--data-dir", str(cifar_dir), "--device", "cpu"])
    evaluated = capsys.readouterr().out.splitlines()[0]
    assert console.run_cli(lambda: predict.main(["--checkpoint", str(result.last_path), str(images / "RGB.png")])) == 0
    predicted = capsys.readouterr().out
    for first_line in (evaluated, predicted.splitlines()[0]):
        assert first_line.startswith(f"checkpoint {result.last_path}: version ")
        assert f"torch {torch.__version__}" in first_line and "trained on cpu by `python train.py " in first_line


def test_a_checkpoint_from_before_the_record_says_it_has_none_and_still_loads(images, capsys):
    old = OLD_CHECKPOINTS / "tuned_epoch_0_v516887d.pth"
    assert console.run_cli(lambda: predict.main(["--checkpoint", str(old), str(images / "RGB.png"), "--json"])) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["predictions"]  # with --json, stdout holds the images' objects alone
    assert err.strip() == f"checkpoint {old}: no record of what made it (an older train.py, or not train.py, wrote it)"


def test_a_flipped_bit_in_the_weights_is_refused_as_damage_by_resume_predict_and_evaluate(train_args, cifar_dir,
                                                                                         tmp_path, images, capsys):
    result = train.main(train_args + ["--epochs", "1"])
    checkpoint = torch.load(result.last_path, weights_only=True)
    bias = next(tensor for tensor in checkpoint["model"].values() if tensor.dtype == torch.float32 and tensor.dim() == 1)
    bias.view(torch.int32)[0] ^= 1 << 20  # one bit of one weight, as a failing disk flips it
    torch.save(checkpoint, tmp_path / "flipped.pth")
    says = f"checkpoint {tmp_path / 'flipped.pth'} is damaged: its weights do not match the checksum saved with them"
    for argv in (["--resume", str(tmp_path / "flipped.pth"), "--epochs", "2"],
                 ["--evaluate", str(tmp_path / "flipped.pth"), "--data-dir", str(cifar_dir), "--no-download"]):
        assert says in bad_input(capsys, argv)
    assert says in bad_input(capsys, ["--checkpoint", str(tmp_path / "flipped.pth"), str(images / "RGB.png")],
                             predict.main)


# ------------------------------------------------- --resume auto: the same command starts, goes on, or is done

def test_resume_auto_starts_a_run_that_has_no_checkpoint_then_goes_on_then_has_nothing_to_train(train_args, tmp_path,
                                                                                               capsys):
    first = train.main(train_args + ["--epochs", "1", "--resume", "auto"])  # nothing saved yet: it starts
    assert first.epoch == 0
    second = train.main(train_args + ["--epochs", "2", "--resume", "auto"])
    assert second.epoch == 1 and second.history["epoch"] == [0, 1]
    capsys.readouterr()
    assert console.run_cli(lambda: train.main(train_args + ["--epochs", "2", "--resume", "auto"])) == 0
    assert "nothing to train" in capsys.readouterr().err


def test_resume_auto_takes_the_newest_epoch_file_that_loads_when_last_pth_is_gone_or_torn(train_args, tmp_path):
    run_dir = tmp_path / "logs" / "run"
    train.main(train_args + ["--epochs", "3"])
    (run_dir / "last.pth").write_bytes((run_dir / "last.pth").read_bytes()[:1000])  # torn, as no kill leaves it
    (run_dir / "tudui_epoch_2.pth").unlink()
    assert training_checkpoints.auto_resume(settings.command_line_settings(train_args + ["--resume", "auto"])) == str(
        run_dir / "tudui_epoch_1.pth")


def test_resume_auto_without_a_run_name_is_one_line(capsys, cifar_dir):
    err = bad_input(capsys, ["--data-dir", str(cifar_dir), "--resume", "auto"])
    assert "--resume auto needs --run-name" in err


def test_resume_auto_prints_the_same_command_to_go_on_after_a_stop(train_args, tmp_path, monkeypatch, capsys):
    real_log_epoch = runs.RunFolder.log_epoch

    def then_sigterm(self, record, *args):
        real_log_epoch(self, record, *args)
        os.kill(os.getpid(), signal.SIGTERM)  # the scheduler's preemption, after epoch 0 is saved
    monkeypatch.setattr(runs.RunFolder, "log_epoch", then_sigterm)
    argv = train_args + ["--epochs", "3", "--resume", "auto"]
    assert console.run_cli(lambda: train.main(argv)) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"run the same command to go on: "
                                                                     f"{shlex.join(['python', 'train.py', *argv])}")
