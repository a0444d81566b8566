"""predict.py and load_tudui: every kind of Tudui checkpoint, safely; bad images one line each."""
import json
import shutil
import textwrap

import pytest
import torch

import predict
import train
from conftest import ROOT, SHARED, bad_input, needs_shared, run_script
from model import CIFAR10_CLASSES, CheckpointError, Tudui, load_tudui

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


def reference_weights():
    torch.manual_seed(1)
    return Tudui().state_dict()


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


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "weights.pth"
    torch.save(reference_weights(), path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """One image per awkward mode, each a different size."""
    from PIL import Image
    folder = tmp_path_factory.mktemp("images")
    base = Image.new("RGB", (40, 30), (200, 30, 30))
    for mode in ("RGB", "L", "RGBA", "P", "CMYK"):
        base.convert(mode).save(folder / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}")
    return folder


def run_predict(capsys, *argv):
    """predict.py's main in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_missing_arguments_are_one_line_not_the_usage_block(capsys):
    code, out, err = run_predict(capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == ["error: the following arguments are required: IMAGE, --checkpoint; "
                                        "see predict.py --help"]


def test_top_k_beyond_the_class_count_lists_every_class(checkpoint, images, capsys):
    code, out, _ = run_predict(capsys, "--checkpoint", checkpoint, "--json", "--top-k", "50", images / "RGB.png")
    assert code == 0 and len(json.loads(out)["predictions"]) == 10


def test_evaluating_on_a_dataset_with_another_class_count_is_one_line(tmp_path, cifar_dir, capsys):
    torch.save(Tudui(num_classes=4).state_dict(), tmp_path / "four.pth")
    err = bad_input(capsys, ["--evaluate", str(tmp_path / "four.pth"), "--data-dir", str(cifar_dir), "--no-download"])
    assert err == (f"error: {tmp_path / 'four.pth'} predicts 4 classes but the dataset has 10; "
                   "evaluate it on the dataset it was trained for")


def test_every_image_mode_is_classified(checkpoint, images, capsys):
    paths = sorted(images.iterdir())
    code, out, err = run_predict(capsys, "--checkpoint", checkpoint, *paths)
    assert code == 0 and err == ""
    assert [line.split(":")[0] for line in out.splitlines()] == [str(p) for p in paths]


def test_json_output_parses_with_top_k(checkpoint, images, capsys):
    _, out, _ = run_predict(capsys, "--checkpoint", checkpoint, "--json", "--top-k", "3", images / "RGB.png")
    record = json.loads(out)
    assert record["path"].endswith("RGB.png") and len(record["predictions"]) == 3
    probabilities = [p["probability"] for p in record["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001


def huge_png(path, side=100_000):
    """A valid PNG header announcing SIDE x SIDE pixels, with almost no data behind it."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10))
                     + chunk(b"IEND", b""))


BAD_IMAGES = {
    "missing.png": (lambda p: None, "does not exist"),
    "folder.png": (lambda p: p.mkdir(), "is a directory"),
    "text.png": (lambda p: p.write_text("just text"), "is not an image format"),
    "truncated.png": (lambda p: p.write_bytes((ROOT / "tests" / "data" / "sample.png").read_bytes()[:300]),
                      "damaged or truncated"),
    "huge.png": (huge_png, "too large"),
    "large.png": (lambda p: huge_png(p, 10_000), "too large"),  # where PIL only warns (89M to 179M pixels)
    "float.tiff": (lambda p: float_image(p), "32-bit pixel values (PIL mode F)"),  # no fixed white to scale to
}


def float_image(path):
    from PIL import Image
    Image.new("F", (40, 30), 0.5).save(path)


def test_a_16_bit_grayscale_image_keeps_its_grey_levels_instead_of_turning_white(tmp_path):
    import numpy as np
    from PIL import Image

    import data
    levels = np.linspace(0, 255, 32 * 32).round().reshape(32, 32).astype(np.uint16)
    Image.fromarray(levels * 257).save(tmp_path / "sixteen.png")  # 0..65535, as a 16-bit PNG stores them
    assert Image.open(tmp_path / "sixteen.png").mode == "I;16"
    assert (data.decode_image(tmp_path / "sixteen.png") == levels.astype(np.uint8)).all()


def test_each_bad_image_gets_one_line_and_the_good_ones_are_still_classified(checkpoint, images, tmp_path):
    for name, (make, _) in BAD_IMAGES.items():
        make(tmp_path / name)
    good = images / "RGB.png"
    result = run_script(ROOT / "predict.py", "--checkpoint", checkpoint, good, *(tmp_path / n for n in BAD_IMAGES), good)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(BAD_IMAGES)
    for line, (name, (_, words)) in zip(errors, BAD_IMAGES.items()):
        assert line.startswith(f"error: image {tmp_path / name} ") and words in line
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [str(good), str(good)]


def test_an_empty_image_path_is_called_empty_not_the_current_folder(checkpoint, capsys):
    code, out, err = run_predict(capsys, "--checkpoint", checkpoint, "")
    assert (code, out, err) == (1, "", "error: an image path is empty; pass image files\n")


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.write_bytes(b"\x00garbage")])
def test_bad_checkpoint_exits_2_with_one_line(images, tmp_path, make, capsys):
    make(tmp_path / "bad.pth")
    code, out, err = run_predict(capsys, "--checkpoint", tmp_path / "bad.pth", images / "RGB.png")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and str(tmp_path / "bad.pth") in err


@pytest.mark.parametrize("preprocess", [{"mean": [0.5] * 3, "std": None}, {"mean": [0.5] * 2, "std": [0.25] * 2},
                                        {"mean": [0.5] * 3, "std": [0.0] * 3}, {"mean": "abc", "std": [1.0] * 3},
                                        {"mean": [0.5] * 3, "std": [float("nan")] * 3}, ["not", "a", "dict"]])
def test_damaged_preprocessing_exits_2_with_one_line(images, tmp_path, preprocess, capsys):
    torch.save({"model": reference_weights(), "preprocess": preprocess}, tmp_path / "damaged.pth")
    code, out, err = run_predict(capsys, "--checkpoint", tmp_path / "damaged.pth", images / "RGB.png")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "preprocessing" in err


def test_evaluate_prints_per_class_accuracy_and_confusion_matrix(folder_dir, tmp_path, capsys):
    torch.save(Tudui(num_classes=3).state_dict(), tmp_path / "three.pth")
    metrics = train.main(["--evaluate", str(tmp_path / "three.pth"), "--dataset", "folder",
                          "--data-dir", str(folder_dir), "--device", "cpu"])
    out = capsys.readouterr().out
    assert "confusion matrix" in out and set(metrics["per_class_accuracy"]) == {"0", "1", "2"}
    rows = [line for line in out.splitlines() if line.split() and line.split()[0] in {"0", "1", "2"}]
    assert sum(int(v) for row in rows[-3:] for v in row.split()[1:]) == 18  # every test image counted once


def test_evaluating_a_folder_with_some_of_the_classes_labels_them_in_the_checkpoints_order(folder_dir, tmp_path):
    train.main(["--dataset", "folder", "--data-dir", str(folder_dir), "--epochs", "1", "--device", "cpu",
                "--logdir", str(tmp_path), "--run-name", "r", "--quiet"])
    evaluate = ["--evaluate", str(tmp_path / "r" / "last.pth"), "--dataset", "folder", "--device", "cpu"]
    full = train.main(evaluate + ["--data-dir", str(folder_dir)])
    for name in ("dog", "ship"):  # the first class, cat, is missing: sorted folder order would shift the labels
        shutil.copytree(folder_dir / "test" / name, tmp_path / "part" / "test" / name)
    part = train.main(evaluate + ["--data-dir", str(tmp_path / "part")])
    assert [part["per_class_accuracy"][c] for c in ("dog", "ship")] == [full["per_class_accuracy"][c]
                                                                        for c in ("dog", "ship")]


def test_evaluating_on_classes_named_otherwise_says_how_they_are_matched(folder_dir, tmp_path, capsys):
    train.main(["--dataset", "folder", "--data-dir", str(folder_dir), "--epochs", "1", "--device", "cpu",
                "--logdir", str(tmp_path), "--run-name", "r", "--quiet"])
    evaluate = ["--evaluate", str(tmp_path / "r" / "last.pth"), "--dataset", "folder", "--device", "cpu"]
    capsys.readouterr()
    train.main(evaluate + ["--data-dir", str(folder_dir)])
    assert capsys.readouterr().err == ""
    for old, new in (("cat", "x"), ("dog", "y"), ("ship", "z")):
        shutil.copytree(folder_dir / "test" / old, tmp_path / "renamed" / "test" / new)
    train.main(evaluate + ["--data-dir", str(tmp_path / "renamed")])
    assert capsys.readouterr().err == (f"note: the test classes (x, y, z) are not the class names of "
                                       f"{tmp_path / 'r' / 'last.pth'} (cat, dog, ship); test class i in this "
                                       "order is scored as its class i\n")


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(images, monkeypatch):
    import data
    from PIL import Image
    path = images / "RGB.png"
    width, height = Image.open(path).size
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", width * height)
    assert data.decode_image(path).shape == (3, 32, 32)
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", width * height - 1)
    with pytest.raises(data.DataError, match=f"image {path} is too large"):
        data.decode_image(path)


@needs_shared("tutorial", "tudui_29_gpu.pth")
def test_tutorial_checkpoint_classifies_the_tutorials_pictures():
    folder = SHARED / "tutorial"
    result = run_script(ROOT / "predict.py", "--checkpoint", folder / "tudui_29_gpu.pth", "--json", "--device", "cpu",
                        folder / "airplane.png", folder / "dog.png")
    labels = [json.loads(line)["predictions"][0]["class"] for line in result.stdout.splitlines()]
    assert labels == ["airplane", "dog"]


@needs_shared("tutorial", "tudui_0.pth")
def test_tutorial_file_naming_model_tudui_loads():
    assert load_tudui(SHARED / "tutorial" / "tudui_0.pth").model[8].out_features == 10


@needs_shared("cifar10-jpg.tar.xz")
def test_tutorial_checkpoint_scores_about_61_percent_on_the_real_test_images(real_cifar):
    metrics = train.main(["--evaluate", str(SHARED / "tutorial" / "tudui_29_gpu.pth"), "--dataset", "folder",
                          "--data-dir", str(real_cifar), "--device", "cpu"])
    assert 0.60 <= metrics["test_accuracy"] <= 0.625


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
    assert proc.stdout.readline().startswith("RGB.png: ")  # classifying: 19999 images to go, a few seconds
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines() == ["interrupted; files already saved are intact"]
    assert len(out.splitlines()) < 19999
