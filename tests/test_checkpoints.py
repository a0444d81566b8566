"""tudui/checkpoints.py: every kind of Tudui checkpoint loads, safely; damaged, foreign or hostile ones are refused in
one line and run nothing; a training checkpoint carries what resuming needs."""
import io
import json
import math
import random
import re
import shutil
import textwrap
import zipfile

import pytest
import torch
from hypothesis import example, given

from tudui import checkpoints
from tudui import console
from tudui import settings
import predict
import train
from tudui import load_tudui
from conftest import (FUZZ, ROOT, SHARED, bad_input, mutate, needs_shared, parse, random_or_mutated, reference_weights,
                      run_script)
from tudui.cuda_graph import GraphedStep
from tudui.errors import CheckpointError
from model import Tudui
from tudui.datasets import CIFAR10_CLASSES

TUTORIAL_MODEL_SOURCE = textwrap.dedent("""
    import torch
    from torch import nn

    class Tudui(nn.Module):
        def __init__(self):
            super(Tudui, self).__init__()
            self.model = nn.Sequential(
                nn.Conv2d(3, 32, 5, 1, 2), nn.MaxPool2d(2), nn.Conv2d(32, 32, 5, 1, 2), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 5, 1, 2), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 4 * 4, 64),
                nn.Linear(64, 10))

        def forward(self, x):
            return self.model(x)
""")


def tutorial_whole_model(folder, where):
    """Save a whole model the tutorial's way; its pickle names the class __main__.Tudui or model.Tudui."""
    folder.mkdir()
    if where == "__main__":
        script = TUTORIAL_MODEL_SOURCE + "\ntorch.manual_seed(1)\ntorch.save(Tudui(), 'whole.pth')\n"
    else:
        (folder / "model.py").write_text(TUTORIAL_MODEL_SOURCE)
        script = "import torch\nfrom model import *\ntorch.manual_seed(1)\ntorch.save(Tudui(), 'whole.pth')\n"
    (folder / "save.py").write_text(script)
    assert run_script("save.py", cwd=folder).returncode == 0
    return folder / "whole.pth"


@pytest.mark.slow
@pytest.mark.parametrize("where", ["__main__", "model"])
def test_tutorial_whole_model_file_loads_with_its_weights(tmp_path, where):
    net = load_tudui(tutorial_whole_model(tmp_path / "saved", where))
    assert not net.training
    for key, tensor in reference_weights().items():
        assert torch.equal(net.state_dict()[key], tensor)


def test_bare_state_dict_loads(tmp_path):
    torch.save(reference_weights(), tmp_path / "weights.pth")
    assert torch.equal(load_tudui(tmp_path / "weights.pth").model[0].weight, reference_weights()["model.0.weight"])


@pytest.mark.parametrize("layout", [
    lambda weights: {"epoch": 4, "model_state_dict": weights, "optimizer_state_dict": {"state": {}}, "loss": 0.9},
    lambda weights: {"state_dict": weights, "epoch": 4},  # Lightning's layout
])
def test_the_weights_of_a_general_checkpoint_load(tmp_path, layout):
    """PyTorch's recipe for saving a general checkpoint keeps the weights under model_state_dict."""
    torch.save(layout(reference_weights()), tmp_path / "general.pth")
    net = load_tudui(tmp_path / "general.pth")
    assert all(torch.equal(net.state_dict()[k], v) for k, v in reference_weights().items())


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_weights_saved_from_a_wrapped_model_load_without_the_wrappers_key_prefix(tmp_path, prefix):
    """DataParallel and DistributedDataParallel put module. before every key, torch.compile _orig_mod."""
    assert next(iter(torch.nn.DataParallel(Tudui()).state_dict())) == "module.model.0.weight"
    torch.save({prefix + k: v for k, v in reference_weights().items()}, tmp_path / "wrapped.pth")
    loaded = load_tudui(tmp_path / "wrapped.pth")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in reference_weights().items())


def test_training_checkpoint_loads_with_classes_and_preprocessing(folder_dir, tmp_path):
    train.main(["--dataset", "folder", "--data-dir", str(folder_dir), "--epochs", "1", "--device", "cpu",
                "--logdir", str(tmp_path), "--run-name", "r", "--quiet", "--normalize"])
    net = load_tudui(tmp_path / "r" / "last.pth")
    assert net.classes == ["cat", "dog", "ship"] and len(net.preprocess["mean"]) == 3


def test_hostile_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return open, (str(marker), "w")
    torch.save({"model": Exploit()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused"):
        load_tudui(tmp_path / "evil.pth")
    assert not marker.exists()


def test_a_checkpoint_zip_with_a_hostile_pickle_inside_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    good = zipfile.ZipFile(io.BytesIO(checkpoint_bytes()))
    with zipfile.ZipFile(tmp_path / "evil.pth", "w") as evil:
        for item in good.infolist():
            evil.writestr(item, payload if item.filename.endswith("data.pkl") else good.read(item))
    with pytest.raises(CheckpointError, match="refused"):
        load_tudui(tmp_path / "evil.pth")
    assert not marker.exists()


def test_state_dict_of_another_shape_names_the_mismatch(tmp_path):
    weights = reference_weights()
    weights["model.7.weight"] = torch.zeros(64, 2048)
    torch.save(weights, tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match=r"model.7.weight has shape \(64, 2048\), Tudui needs \(64, 1024\)"):
        load_tudui(tmp_path / "wide.pth")


def test_state_dict_of_another_network_is_refused(tmp_path):
    torch.save(torch.nn.Linear(3, 4).state_dict(), tmp_path / "linear.pth")
    with pytest.raises(CheckpointError, match="not a Tudui checkpoint"):
        load_tudui(tmp_path / "linear.pth")


def test_state_dict_with_no_outputs_is_refused(tmp_path):
    weights = reference_weights()
    weights["model.8.weight"], weights["model.8.bias"] = torch.zeros(0, 64), torch.zeros(0)
    torch.save(weights, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="no outputs"):
        load_tudui(tmp_path / "empty.pth")


def test_state_dict_with_a_nan_weight_is_refused_naming_the_tensor(tmp_path):
    weights = reference_weights()
    weights["model.2.bias"][5] = float("nan")
    torch.save(weights, tmp_path / "diverged.pth")
    with pytest.raises(CheckpointError, match=r"non-finite weights \(NaN or infinity\) in model.2.bias"):
        load_tudui(tmp_path / "diverged.pth")


def test_other_class_count_loads_with_that_width(tmp_path):
    torch.save(Tudui(num_classes=4).state_dict(), tmp_path / "four.pth")
    assert load_tudui(tmp_path / "four.pth").classes == ["0", "1", "2", "3"]


@pytest.mark.parametrize("names", [list(range(10)), "abcdefghij", {"a": 1}])
def test_class_names_that_are_not_a_list_of_strings_are_replaced(tmp_path, names):
    torch.save({"model": Tudui().state_dict(), "classes": names}, tmp_path / "odd.pth")
    assert load_tudui(tmp_path / "odd.pth").classes == list(CIFAR10_CLASSES)


def test_class_names_that_do_not_fit_the_outputs_are_replaced_by_numbers(tmp_path):
    torch.save({"model": Tudui(num_classes=4).state_dict(), "classes": ["a", "b"]}, tmp_path / "four.pth")
    assert load_tudui(tmp_path / "four.pth").classes == ["0", "1", "2", "3"]


@needs_shared("tutorial", "tudui_29_gpu.pth")
def test_weights_trained_by_the_tutorial_load_unchanged():
    net = load_tudui(SHARED / "tutorial" / "tudui_29_gpu.pth")
    assert sum(p.numel() for p in net.parameters()) == 145_578
    assert not net.training and net.classes == list(CIFAR10_CLASSES)


@needs_shared("tutorial", "tudui_0.pth")
def test_tutorial_file_naming_model_tudui_loads():
    assert load_tudui(SHARED / "tutorial" / "tudui_0.pth").model[8].out_features == 10


def checkpoint_bytes():
    buffer = io.BytesIO()
    torch.save(Tudui().state_dict(), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("damage", [
    lambda good: good[: len(good) // 2],
    lambda good: good[:4] + bytes(random.Random(1).randrange(256) for _ in range(4096)),
    lambda good: b"",
])
def test_damaged_checkpoint_is_one_clear_line(tmp_path, damage, train_args, capsys):
    path = tmp_path / "damaged.pth"
    path.write_bytes(damage(checkpoint_bytes()))
    with pytest.raises(CheckpointError, match="not a readable PyTorch file"):
        load_tudui(path)
    err = bad_input(capsys, train_args + ["--resume", str(path)])
    assert err.startswith(f"error: checkpoint {path} is not a readable PyTorch file")


@pytest.mark.parametrize("content", [(ROOT / "tests" / "data" / "sample.png").read_bytes(),
                                     bytes(random.Random(1).randrange(256) for _ in range(4096))])
def test_a_file_that_never_was_a_checkpoint_is_called_so_not_truncated(tmp_path, content, capsys):
    path = tmp_path / "cat.png"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="is not a PyTorch file: it does not begin as torch.save's files do"):
        load_tudui(path)
    err = bad_input(capsys, ["--evaluate", str(path)])
    assert "truncated" not in err and "check that it names a .pth checkpoint" in err


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


@pytest.mark.slow
def test_truncated_checkpoint_is_one_line_for_resume_evaluate_and_predict(tmp_path, cifar_dir):
    path = tmp_path / "truncated.pth"
    path.write_bytes(checkpoint_bytes()[:5000])
    for command in ([ROOT / "train.py", "--resume", path], [ROOT / "train.py", "--evaluate", path,
                    "--data-dir", cifar_dir, "--no-download"], [ROOT / "predict.py", "--checkpoint", path, path]):
        result = run_script(*command)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and str(path) in result.stderr


def test_damaged_preprocessing_is_one_line_for_resume_and_evaluate(train_args, cifar_dir, tmp_path, capsys):
    train.main(train_args + ["--epochs", "1", "--normalize"])
    checkpoint = torch.load(tmp_path / "logs" / "run" / "last.pth", weights_only=True)
    checkpoint["preprocess"]["std"] = [0.0] * 3
    damaged = tmp_path / "damaged.pth"
    torch.save(checkpoint, damaged)
    capsys.readouterr()
    evaluate = ["--evaluate", str(damaged), "--data-dir", str(cifar_dir), "--no-download"]
    for argv in (["--resume", str(damaged)], evaluate):
        err = bad_input(capsys, argv)
        assert "damaged preprocessing" in err and str(damaged) in err


def _with_two_param_groups(optimizer):
    return dict(optimizer, param_groups=optimizer["param_groups"] * 2)


@pytest.mark.parametrize("field, damage, says", [
    ("config", lambda config: dict(config, epochs="ten"), "its configuration has epochs = 'ten'"),
    ("config", lambda config: dict(config, recipe="fast"), "its configuration has recipe = 'fast'"),
    ("config", lambda config: "junk", "config missing or malformed"),
    ("rng", lambda rng: None, "rng missing or malformed"),
    ("rng", lambda rng: {"torch": torch.zeros(3)}, "RNG state does not load"),
    ("optimizer", _with_two_param_groups, "optimizer or RNG state does not load"),
    ("metrics", lambda metrics: dict(metrics, epoch=7), "metrics missing or malformed"),
    ("epoch", lambda epoch: -1, "epoch, metrics missing or malformed"),  # the metrics are of another epoch then
])
def test_a_training_checkpoint_with_a_damaged_field_is_one_line_on_resume(train_args, tmp_path, capsys, field,
                                                                           damage, says):
    train.main(train_args + ["--epochs", "1"])
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
    state = checkpoints.optimizer_state(graphed)
    assert all(type(group["lr"]) is float and math.isclose(group["lr"], args.lr, rel_tol=1e-6)
               for group in state["param_groups"])

    plain = train.build_optimizer(model, args)
    checkpoints.load_optimizer_state(plain, state)
    assert type(plain.param_groups[0]["lr"]) is float and not plain.param_groups[0]["fused"]
    for p in model.parameters():
        assert torch.equal(plain.state[p]["momentum_buffer"], graphed.state[p]["momentum_buffer"])


@FUZZ
@given(random_or_mutated(checkpoint_bytes()))
@example(b"G")  # a float opcode cut short: struct.error inside torch's unpickler, once found by this fuzzing
@example(mutate(checkpoint_bytes(), [(291, 74)]))  # a persistent id that is no tuple: torch's AssertionError
def test_load_tudui_raises_only_checkpoint_error_on_any_bytes(tmp_path, data):
    path = tmp_path / "fuzz.pth"
    path.write_bytes(data)
    try:
        load_tudui(path)
    except CheckpointError:
        pass


OLD_CHECKPOINTS = ROOT / "tests" / "data"  # written by commit 516887d, before train.py was split into modules


@pytest.mark.parametrize("name", ["tutorial_epoch_0_v516887d.pth", "tuned_epoch_0_v516887d.pth"])
def test_a_checkpoint_written_before_the_split_into_modules_loads_and_resumes(cifar_dir, tmp_path, name):
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


def test_an_old_muon_checkpoint_resumes_to_the_weights_the_old_code_reached(cifar_dir, tmp_path):
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
    monkeypatch.setattr(checkpoints, "__file__", str(tmp_path / "checkpoints.py"))  # as if copied out of the checkout
    assert checkpoints.git_commit() is None
    monkeypatch.undo()

    def no_git(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory: 'git'")
    monkeypatch.setattr(checkpoints.subprocess, "run", no_git)
    assert checkpoints.git_commit() is None


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
