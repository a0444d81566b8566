"""tudui/settings.py: the defaults are the tutorial's, the tuned recipe and the flags that override it, what a resumed run
keeps, and bad values as one line each."""
from pathlib import PureWindowsPath

import pytest
import torch

from tudui import settings
import train
from conftest import bad_input, parse


@pytest.mark.slow
def test_help_shows_every_default():
    shown = " ".join(settings.build_parser().format_help().split())
    for text in ("--epochs", "default: 10", "--batch-size", "64 (tutorial)", "0.01 (tutorial)",
                 "default: ./data", "default: ./logs_train", "default: auto", "default: 100", "default: 0"):
        assert text in shown


def test_defaults_are_the_tutorials_recipe():
    args = parse([])
    assert (args.epochs, args.batch_size, args.lr, args.momentum, args.weight_decay) == (10, 64, 0.01, 0.0, 0.0)
    assert (args.dataset, args.data_dir, args.logdir, args.log_every) == ("cifar10", "./data", "./logs_train", 100)
    assert not args.augment and not args.normalize and args.label_smoothing == 0 and args.schedule == "constant"
    assert (args.val_split, args.dry_run, args.deterministic, args.save_every, args.resume) == (0, False, False, 1, None)


def test_tuned_recipe_sets_every_tuned_setting():
    args = parse(["--recipe", "tuned"])
    assert {key: getattr(args, key) for key in settings.RECIPES["tuned"]} == settings.RECIPES["tuned"]


def test_explicit_flags_override_the_recipe_and_nothing_else():
    args = parse(["--recipe", "tuned", "--lr", "0.02", "--batch-size", "64", "--no-augment"])
    assert (args.lr, args.batch_size, args.augment) == (0.02, 64, False)
    untouched = {k: v for k, v in settings.RECIPES["tuned"].items() if k not in ("lr", "batch_size", "augment")}
    assert {key: getattr(args, key) for key in untouched} == untouched


def test_both_recipes_name_the_same_settings():
    assert settings.RECIPES["tutorial"].keys() == settings.RECIPES["tuned"].keys()


def test_tuned_recipe_with_sgd_drops_the_decay_meant_for_muons_weights():
    args = parse(["--recipe", "tuned", "--optimizer", "sgd"])
    assert (args.optimizer, args.muon_decay, args.weight_decay) == ("sgd", 0.0, settings.RECIPES["tuned"]["weight_decay"])


@pytest.fixture(scope="module")
def tutorial_run_checkpoint(cifar_dir, tmp_path_factory):
    logdir = tmp_path_factory.mktemp("logs")
    train.main(["--data-dir", str(cifar_dir), "--no-download", "--logdir", str(logdir), "--run-name", "run",
                "--device", "cpu", "--quiet", "--epochs", "1"])
    return str(logdir / "run" / "last.pth")


def test_a_resumed_run_keeps_its_recipe(tutorial_run_checkpoint, capsys):
    err = bad_input(capsys, ["--resume", tutorial_run_checkpoint, "--recipe", "tuned"])
    assert "was trained with --recipe tutorial, and a resumed run keeps its recipe" in err


def test_a_resumed_run_keeps_its_input_normalization(tutorial_run_checkpoint, capsys):
    err = bad_input(capsys, ["--resume", tutorial_run_checkpoint, "--normalize"])
    assert "was trained without --normalize" in err


def test_a_resumed_run_takes_a_single_setting_from_a_flag(tutorial_run_checkpoint):
    args = parse(["--resume", tutorial_run_checkpoint, "--lr", "0.02", "--recipe", "tutorial"])
    assert (args.recipe, args.lr, args.batch_size) == ("tutorial", 0.02, 64)


def test_a_resumed_run_keeps_its_validation_split(tutorial_run_checkpoint, capsys):
    err = bad_input(capsys, ["--resume", tutorial_run_checkpoint, "--val-split", "50"])
    assert "was trained with --val-split 0, and a resumed run keeps the validation split that chose its best.pth" in err


def test_a_run_saved_before_the_validation_split_resumes_without_one(tutorial_run_checkpoint, tmp_path):
    checkpoint = torch.load(tutorial_run_checkpoint, weights_only=True)
    del checkpoint["config"]["val_split"]
    torch.save(checkpoint, tmp_path / "older.pth")
    assert parse(["--resume", str(tmp_path / "older.pth")]).val_split == 0


def test_a_resumed_run_keeps_its_optimizer(tutorial_run_checkpoint, capsys):
    err = bad_input(capsys, ["--resume", tutorial_run_checkpoint, "--optimizer", "muon"])
    assert "was trained with --optimizer sgd, and a resumed run keeps its optimizer" in err


def test_a_run_saved_before_the_optimizer_flag_resumes_with_sgd(tutorial_run_checkpoint, tmp_path, capsys):
    checkpoint = torch.load(tutorial_run_checkpoint, weights_only=True)
    del checkpoint["config"]["optimizer"]
    torch.save(checkpoint, tmp_path / "older.pth")
    assert parse(["--resume", str(tmp_path / "older.pth")]).optimizer == "sgd"
    assert "was trained with --optimizer sgd" in bad_input(capsys, ["--resume", str(tmp_path / "older.pth"),
                                                                    "--optimizer", "muon"])


def test_a_run_saved_before_the_muon_decay_flag_resumes_without_decay(tutorial_run_checkpoint, tmp_path):
    checkpoint = torch.load(tutorial_run_checkpoint, weights_only=True)
    checkpoint["config"].update(recipe="tuned", optimizer="muon")
    del checkpoint["config"]["muon_decay"]
    torch.save(checkpoint, tmp_path / "older.pth")
    assert parse(["--resume", str(tmp_path / "older.pth")]).muon_decay == 0.0


@pytest.mark.parametrize("flags, words", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--lr", "inf"], "--lr must be a positive number"),
    (["--lr", "1e300"], "--lr must be a positive number up to 3.4e+38"),  # beyond float32: a traceback in SGD
    (["--weight-decay", "nan"], "--weight-decay must be 0 or more"),  # used to train on to NaN weights
    (["--weight-decay", "1e300"], "--weight-decay must be 0 or more, up to 3.4e+38"),
    (["--seed", str(2**64)], "--seed must be 0 to 4294967295"),  # beyond what torch.manual_seed takes
    (["--seed", "-1"], "--seed must be 0 to 4294967295"),
    (["--translate", "17"], "--translate must be 0 to 16 pixels"),
    (["--momentum", "1"], "--momentum must be in [0, 1)"),
    (["--nesterov"], "--nesterov needs --momentum above 0"),
    (["--weight-decay", "-0.0001"], "--weight-decay must be 0 or more"),
    (["--muon-decay", "nan"], "--muon-decay must be 0 or more"),
    (["--muon-decay", "0.1"], "--muon-decay applies to --optimizer muon only"),  # the tutorial recipe's SGD
    (["--warmup", "1"], "--warmup must be a fraction in [0, 1)"),
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
    (["--log-every", "0"], "--log-every must be at least 1"),
    (["--tta"], "--tta applies to --evaluate only"),
    (["--mistakes", "m.png"], "--mistakes applies to --evaluate only"),
    (["--evaluate", "x.pth", "--mistakes", "m.jpg"], "--mistakes names the PNG file to write, ending in .png"),
    (["--resume", ""], "--resume needs a checkpoint path (got an empty one)"),  # say, an unset shell variable
    (["--evaluate", ""], "--evaluate needs a checkpoint path (got an empty one)"),
    (["--run-name", ""], "--run-name must name a folder inside --logdir"),
    (["--run-name", "../elsewhere"], "--run-name must name a folder inside --logdir"),
    (["--val-split", "-1"], "--val-split must be 0 or more images (got -1)"),
    (["--val-split", "200"], "--val-split 200 would hold out every training image; the training split has 200"),
    (["--dry-run", "--evaluate", "x.pth"], "--dry-run checks a training run; leave it out with --evaluate"),
])
def test_bad_values_are_one_clear_line(capsys, train_args, flags, words):
    assert words in bad_input(capsys, train_args + flags)


@pytest.mark.parametrize("name, inside", [("run", True), ("runs/exp1", True), ("/tmp/run", False), ("C:run", False),
                                          ("\\run", False), ("C:\\run", False), ("..\\run", False)])
def test_a_run_name_must_stay_inside_logdir_under_windows_path_rules_too(monkeypatch, name, inside):
    monkeypatch.setattr(settings, "Path", PureWindowsPath)
    assert settings.names_a_subfolder(name) is inside


@pytest.mark.parametrize("flags, words", [
    (["--epochs", "abc"], "argument --epochs: invalid int value: 'abc'"),
    (["--recipe", "fast"], "argument --recipe: invalid choice: 'fast'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_flags_argparse_cannot_read_are_one_line_not_the_usage_block(capsys, flags, words):
    err = bad_input(capsys, flags)
    assert words in err and "--help" in err
