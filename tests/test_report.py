"""tudui/report.py: what made a checkpoint is recorded in it and said first by --evaluate and predict.py."""
import json
import re

import torch

import predict
import train
from conftest import ROOT
from tudui import console, report

OLD_CHECKPOINTS = ROOT / "tests" / "data"  # written by commit 516887d, before train.py was split into modules


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
    monkeypatch.setattr(report, "__file__", str(tmp_path / "tudui" / "report.py"))  # copied out of the checkout
    assert report.provenance(torch.device("cpu"), "call")["git_commit"] is None
    monkeypatch.undo()

    def no_git(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory: 'git'")
    monkeypatch.setattr(report.subprocess, "run", no_git)
    assert report.provenance(torch.device("cpu"), "call")["git_commit"] is None


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
