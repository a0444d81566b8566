"""tudui/checkpoints.py: every kind of Tudui checkpoint loads, safely, into model.py's network; damaged, foreign
or hostile ones are refused in one line and run nothing. The checkpoints here are the tutorial network's (its
keys and shapes, as its own files have them), so model.py's Tudui is the tutorial's in these tests
(conftest's tutorial_network), whatever model.py holds."""
import io
import os
import random
import textwrap
import zipfile

import pytest
import torch
from hypothesis import example, given

import predict
import train
from conftest import (FUZZ, ROOT, SHARED, bad_input, mutate, needs_shared, random_or_mutated, reference_weights,
                      run_script)
from tudui import checkpoints, load_tudui
from tudui.checkpoints import CIFAR10_CLASSES, TutorialTudui as Tudui
from tudui.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("tutorial_network")
OLD_CHECKPOINTS = ROOT / "tests" / "data"  # written by commit 516887d, before train.py was split into modules

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
    with pytest.raises(CheckpointError, match=r"\(model.7.weight is \(64, 2048\) in the checkpoint, \(64, 1024\) in "
                                              r"model.py\)"):
        load_tudui(tmp_path / "wide.pth")


def test_state_dict_of_another_network_is_refused(tmp_path):
    torch.save(torch.nn.Linear(3, 4).state_dict(), tmp_path / "linear.pth")
    with pytest.raises(CheckpointError, match=r"model.py has changed since .*linear.pth was trained \(missing "
                                              r"model.0.weight, model.0.bias, model.2.weight \.\.\.; unexpected "
                                              r"weight, bias\)"):
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


def test_truncated_checkpoint_is_one_line_for_resume_evaluate_and_predict(tmp_path, cifar_dir, capsys):
    import predict
    path = tmp_path / "truncated.pth"
    path.write_bytes(checkpoint_bytes()[:5000])
    for argv, entry in ((["--resume", str(path)], None),
                        (["--evaluate", str(path), "--data-dir", str(cifar_dir), "--no-download"], None),
                        (["--checkpoint", str(path), str(path)], predict.main)):
        assert str(path) in bad_input(capsys, argv, entry)  # exit 2, one line


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




class ReluTudui(torch.nn.Module):
    """A learner's next network: model.py's Tudui with activations."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 5, 1, 2), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Conv2d(32, 32, 5, 1, 2),
            torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Conv2d(32, 64, 5, 1, 2), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(1024, 64), torch.nn.ReLU(),
            torch.nn.Linear(64, num_classes))

    def forward(self, x):
        return self.model(x)


def test_a_checkpoint_of_another_network_says_model_py_changed_naming_the_keys_and_the_first_difference(tmp_path):
    relu = ReluTudui()
    torch.save({"model": relu.state_dict(), "network": str(relu), "classes": list(CIFAR10_CLASSES)},
               tmp_path / "relu.pth")
    with pytest.raises(CheckpointError) as raised:
        load_tudui(tmp_path / "relu.pth")
    message = str(raised.value)
    assert message.startswith(f"model.py has changed since {tmp_path / 'relu.pth'} was trained (missing model.2.weight")
    assert "unexpected model.3.weight" in message and len(message.splitlines()) == 1
    assert "it was trained with `(1): ReLU()` where model.py now has `(1): MaxPool2d(" in message


def test_a_checkpoint_loads_into_model_py_s_own_network_whatever_it_is(tmp_path, monkeypatch):
    from tudui import checkpoints
    monkeypatch.setattr(checkpoints, "Tudui", ReluTudui)  # as if model.py had been changed
    torch.manual_seed(0)
    relu = ReluTudui()
    torch.save({"model": relu.state_dict(), "network": str(relu)}, tmp_path / "relu.pth")
    net = load_tudui(tmp_path / "relu.pth")
    assert isinstance(net, ReluTudui) and not net.training
    assert all(torch.equal(net.state_dict()[key], value) for key, value in relu.state_dict().items())


def test_the_tutorials_files_keep_loading_with_the_tutorials_network_after_model_py_changes(tmp_path, monkeypatch):
    from tudui import checkpoints
    monkeypatch.setattr(checkpoints, "Tudui", ReluTudui)
    torch.save(reference_weights(), tmp_path / "tutorial_weights.pth")  # a bare state_dict records no network
    net = load_tudui(tmp_path / "tutorial_weights.pth")
    assert type(net).__name__ == "TutorialTudui"
    assert all(torch.equal(net.state_dict()[key], value) for key, value in reference_weights().items())


def test_a_tudui_whose_init_takes_no_argument_is_built_for_ten_classes_and_refused_for_others():
    from tudui.errors import SettingsError

    class NoArgumentTudui(torch.nn.Module):  # the tutorial's own model.py
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Linear(4, 10)
    assert checkpoints.num_classes_argument(NoArgumentTudui, 10) == ()
    assert checkpoints.num_classes_argument(Tudui, 3) == (3,)
    with pytest.raises(SettingsError, match=r"model.py's Tudui takes no num_classes argument, so it has CIFAR-10's 10 "
                                            r"outputs, but this data has 3 classes; give it one: def __init__\(self, "
                                            r"num_classes=10\)"):
        checkpoints.num_classes_argument(NoArgumentTudui, 3)


def test_what_load_tudui_returns_takes_to_tensor_input_and_normalizes_it_itself_with_the_tutorials_keys(tmp_path):
    net = Tudui()
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    torch.save({"model": net.state_dict(), "preprocess": {"mean": mean, "std": std}}, tmp_path / "normalized.pth")
    loaded = load_tudui(tmp_path / "normalized.pth")
    x = torch.rand(4, 3, 32, 32)
    by_hand = net.eval()((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(loaded(x), by_hand)
    assert list(loaded.state_dict()) == list(net.state_dict())  # model.0.weight ... model.8.bias, nothing more


def test_class_names_and_records_from_a_checkpoint_are_shown_with_control_characters_escaped(tmp_path, capsys):
    import predict
    from tudui import console
    forged = ["cat\x1b[31m", "dog\nimage.png: airplane 100.0%"] + [f"c{i}" for i in range(8)]
    torch.save({"model": reference_weights(), "classes": forged, "provenance": {"git_commit": 12345, "command": "x\n"}},
               tmp_path / "forged.pth")
    assert load_tudui(tmp_path / "forged.pth").classes[:2] == ["cat\\x1b[31m", "dog\\nimage.png: airplane 100.0%"]
    image = tmp_path / "cat.png"
    from PIL import Image
    Image.new("RGB", (32, 32), (200, 120, 40)).save(image)
    assert console.run_cli(lambda: predict.main(["--checkpoint", str(tmp_path / "forged.pth"), "--top-k", "10",
                                                 str(image)])) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and len(out.splitlines()) == 2 and "git 12345" in out and "`x\\n`" in out


def test_a_named_pipe_given_as_a_checkpoint_is_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "pipe.pth")
    with pytest.raises(CheckpointError, match=r"pipe.pth is a named pipe, not a file; pass a .pth checkpoint file"):
        load_tudui(tmp_path / "pipe.pth")


def test_a_checkpoint_larger_than_any_reasonable_network_is_refused_before_it_is_read(checkpoint, monkeypatch):
    monkeypatch.setattr(checkpoints, "MAX_CHECKPOINT_BYTES", 100_000)  # Tudui's weights are 0.6 MB
    with pytest.raises(CheckpointError, match=r"is 0 MB, over the 0 MB of any reasonable network"):
        load_tudui(checkpoint)


@pytest.mark.slow
def test_a_zip_bomb_checkpoint_is_refused_before_it_is_unpacked_in_bounded_memory(tmp_path):
    """A .pth whose deflated member unpacks to 300 MB, over the 256 MB limit (0.3 MB on disk): the peak memory
    of predict.py on it stays that of loading a real checkpoint."""
    bomb = tmp_path / "bomb.pth"
    good = io.BytesIO()
    torch.save(reference_weights(), good)
    with zipfile.ZipFile(io.BytesIO(good.getvalue())) as real, zipfile.ZipFile(bomb, "w") as evil:
        for item in real.infolist():
            evil.writestr(item, real.read(item))
        evil.compression = zipfile.ZIP_DEFLATED
        with evil.open("archive/data/98", "w", force_zip64=True) as member:  # 300 MB of zeros, deflated
            for _ in range(300):
                member.write(bytes(1 << 20))
    assert bomb.stat().st_size < 4 << 20
    torch.save(reference_weights(), tmp_path / "real.pth")
    peak = "import resource, sys, predict; from tudui import console; code = console.run_cli(lambda: predict.main(" \
           "[\"--checkpoint\", sys.argv[1], sys.argv[2]])); print(code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    image = tmp_path / "cat.png"
    from PIL import Image
    Image.new("RGB", (32, 32)).save(image)
    real, refused = (run_script("-c", peak, path, image) for path in (tmp_path / "real.pth", bomb))
    assert "holds a compressed member (archive/data/98), which torch.save never writes" in refused.stderr
    (real_code, real_kb), (refused_code, refused_kb) = (map(int, r.stdout.splitlines()[-1].split()) for r in (real, refused))
    assert (real_code, refused_code) == (0, 2) and refused_kb < real_kb + 100_000


def test_the_weights_checksum_covers_every_kind_of_tensor_and_changes_with_one_bit():
    weights = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).state_dict()  # and an int64 0-dim
    before = checkpoints.weights_checksum(weights)
    weights["0.weight"].view(torch.int32)[0, 0, 0, 0] ^= 1
    assert checkpoints.weights_checksum(weights) != before and len(before) == 64


def test_a_named_pipe_is_no_regular_file_and_a_missing_file_is_left_to_the_reader(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    assert checkpoints.regular_file_problem(tmp_path / "pipe") == "is a named pipe, not a file"
    assert checkpoints.regular_file_problem(tmp_path / "missing") is None


def test_a_compressed_zip_member_is_a_problem_where_torch_save_writes_none(tmp_path):
    torch.save({"w": torch.zeros(3)}, tmp_path / "plain.pth")
    assert checkpoints.checkpoint_size_problem(tmp_path / "plain.pth") is None
    with zipfile.ZipFile(tmp_path / "deflated.pth", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"x" * 1000)
    assert "holds a compressed member (archive/data.pkl)" in checkpoints.checkpoint_size_problem(tmp_path / "deflated.pth")


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
