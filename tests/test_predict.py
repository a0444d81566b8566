"""predict.py: images of every kind classified with any checkpoint, from the command line and from Python;
bad images one line each."""
import json
import re

import pytest
import torch

from tudui import console
import predict
from tudui import load_tudui
from conftest import ROOT, SHARED, needs_shared, random_batch, reference_weights, run_script
from tudui.errors import CheckpointError, DataError
from tudui.checkpoints import CIFAR10_CLASSES
from PIL import Image


def run_predict(capsys, *argv):
    """predict.py's main in this process, as its command line runs it: (exit code, stdout, stderr)."""
    code = console.run_cli(lambda: predict.main([str(a) for a in argv]))
    out, err = capsys.readouterr()
    return code, out, err


def test_missing_arguments_are_one_line_not_the_usage_block(capsys):
    code, out, err = run_predict(capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == ["error: the following arguments are required: IMAGE; see predict.py --help"]


def test_every_image_mode_is_classified(checkpoint, images, capsys):
    paths = sorted(images.iterdir())
    code, out, err = run_predict(capsys, "--checkpoint", checkpoint, *paths)
    assert code == 0 and err == ""
    assert [line.split(":")[0] for line in out.splitlines()[1:]] == [str(p) for p in paths]


def test_top_k_beyond_the_class_count_lists_every_class(checkpoint, images, capsys):
    code, out, _ = run_predict(capsys, "--checkpoint", checkpoint, "--json", "--top-k", "50", images / "RGB.png")
    assert code == 0 and len(json.loads(out)["predictions"]) == 10


def test_json_output_parses_with_top_k(checkpoint, images, capsys):
    _, out, _ = run_predict(capsys, "--checkpoint", checkpoint, "--json", "--top-k", "3", images / "RGB.png")
    record = json.loads(out)
    assert record["path"].endswith("RGB.png") and len(record["predictions"]) == 3
    probabilities = [p["probability"] for p in record["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001


def test_predict_with_tta_gives_an_image_and_its_mirror_the_same_probabilities(untrained_weights):
    net = load_tudui(untrained_weights)
    image = random_batch(1)[0]
    cpu = torch.device("cpu")
    plain = [predict.classify(net, im, cpu) for im in (image, image.flip(2))]
    averaged = [predict.classify(net, im, cpu, tta=True) for im in (image, image.flip(2))]
    assert not torch.allclose(plain[0], plain[1])
    torch.testing.assert_close(averaged[0], averaged[1])
    torch.testing.assert_close(averaged[0], (plain[0] + plain[1]) / 2)


def huge_png(path, side=100_000):
    """A valid PNG header announcing SIDE x SIDE pixels, with almost no data behind it."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10))
                     + chunk(b"IEND", b""))


def float_image(path):
    from PIL import Image
    Image.new("F", (40, 30), 0.5).save(path)


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


@pytest.mark.slow
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
    assert [line.split(":")[0] for line in result.stdout.splitlines()[1:]] == [str(good), str(good)]


def test_an_empty_image_path_is_called_empty_not_the_current_folder(checkpoint, capsys):
    code, out, err = run_predict(capsys, "--checkpoint", checkpoint, "")
    assert (code, out.splitlines()[1:], err) == (1, [], "error: an image path is empty; pass image files\n")


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


@pytest.mark.slow
@needs_shared("tutorial", "tudui_29_gpu.pth")
def test_tutorial_checkpoint_classifies_the_tutorials_pictures():
    folder = SHARED / "tutorial"
    result = run_script(ROOT / "predict.py", "--checkpoint", folder / "tudui_29_gpu.pth", "--json", "--device", "cpu",
                        folder / "airplane.png", folder / "dog.png")
    labels = [json.loads(line)["predictions"][0]["class"] for line in result.stdout.splitlines()]
    assert labels == ["airplane", "dog"]


def test_the_shipped_weights_are_a_tuned_50_epoch_run_with_its_provenance_and_test_accuracy():
    from tudui import SHIPPED_WEIGHTS
    net = load_tudui(SHIPPED_WEIGHTS, tutorials=True)  # the safe path: weights_only, the checksum
    assert net.config["recipe"] == "tuned" and net.config["epochs"] == 50
    assert net.provenance["command"].startswith("python train.py --recipe tuned --epochs 50")
    assert 0.75 < net.test_accuracy < 1 and net.classes == list(CIFAR10_CLASSES)
    assert SHIPPED_WEIGHTS.stat().st_size < 1_000_000


@needs_shared("tutorial", "dog.png")
def test_the_shipped_weights_classify_the_tutorials_dog_picture_as_a_dog():
    assert predict.predict(SHARED / "tutorial" / "dog.png", device="cpu")[0]["class"] == "dog"


def test_without_checkpoint_predict_uses_the_shipped_weights_and_says_so_first(images, capsys):
    code, out, _ = run_predict(capsys, images / "RGB.png", "--device", "cpu")
    first, made_by, result = out.splitlines()
    assert code == 0 and first.startswith("no --checkpoint: using the weights shipped with the project, ")
    assert "(--recipe tuned, 50 epochs, " in first and first.endswith("pass --checkpoint for your own")
    assert made_by.startswith("checkpoint ") and result.startswith(f"{images / 'RGB.png'}: ")


def test_missing_shipped_weights_are_one_line_naming_both_ways_out(monkeypatch, images, tmp_path, capsys):
    monkeypatch.setattr(predict, "SHIPPED_WEIGHTS", tmp_path / "gone.pth")
    code, out, err = run_predict(capsys, images / "RGB.png")
    assert code == 2 and out == ""
    assert err == (f"error: the shipped weights {tmp_path / 'gone.pth'} are missing from this copy of the project; "
                   "pass --checkpoint, or make them with: python tools/ship_weights.py\n")


def test_predict_from_python_takes_a_path_a_pil_image_or_a_uint8_or_float_tensor_alike(checkpoint, tmp_path):
    from PIL import Image
    image = random_batch(1)[0]
    picture = Image.fromarray(image.permute(1, 2, 0).numpy())
    picture.save(tmp_path / "picture.png")
    by_path = predict.predict(tmp_path / "picture.png", checkpoint, top_k=3)
    assert [guess["class"] for guess in by_path][0] in CIFAR10_CLASSES and len(by_path) == 3
    assert predict.predict(picture, checkpoint, top_k=3) == by_path
    assert predict.predict(image, checkpoint, top_k=3) == by_path
    assert predict.predict(image.float() / 255, checkpoint, top_k=3) == by_path


def test_predict_from_python_takes_a_loaded_network_and_a_list_of_images(checkpoint):
    images = list(random_batch(3))
    one_by_one = [predict.predict(image, checkpoint) for image in images]
    assert predict.predict(images, load_tudui(checkpoint)) == one_by_one


def test_predict_from_python_resizes_a_tensor_of_another_size(checkpoint):
    assert len(predict.predict(torch.rand(3, 64, 48), checkpoint, top_k=2)) == 2


@pytest.mark.parametrize("image, says", [
    (torch.rand(1, 3, 32, 32), "an image must be a file path, a PIL image or a (3, H, W) tensor (got a tensor of "
                               "shape (1, 3, 32, 32)); for a batch, pass a list of images"),
    (torch.rand(3, 32, 32) * 255, "an image tensor must be uint8, or float from 0 to 1 as ToTensor gives"),
    ("/nonexistent.png", "image /nonexistent.png does not exist; check the path"),
])
def test_a_bad_image_from_python_raises_data_error_with_the_command_lines_message(checkpoint, image, says):
    with pytest.raises(DataError, match=re.escape(says)):
        predict.predict(image, checkpoint)


def test_a_bad_checkpoint_from_python_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        predict.predict(random_batch(1)[0], tmp_path / "missing.pth")


def test_predict_puts_any_network_in_eval_mode_for_the_call_and_leaves_it_as_it_found_it():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(3 * 32 * 32, 10))
    image = random_batch(1)[0]
    answers = [predict.predict(image, net, top_k=10) for _ in range(3)]
    assert answers[0] == answers[1] == answers[2]  # Dropout off: the same probabilities each time
    assert net.training  # and back in training mode, as it came


@pytest.mark.slow
def test_load_tudui_on_to_tensor_input_agrees_with_predict_for_the_tuned_recipe(cifar_dir, tmp_path):
    """The tuned recipe normalizes its input: load_tudui's network must do so itself, as predict.py does."""
    from torchvision.transforms.functional import to_tensor

    import train
    from tudui.datasets import load_split
    result = train.run(data_dir=cifar_dir, no_download=True, logdir=tmp_path, run_name="tuned", recipe="tuned",
                       batch_size=64, epochs=2, device="cpu", quiet=True)
    images, _, _ = load_split("cifar10", cifar_dir, "test", download=False)
    net = load_tudui(result.last_path)
    for image in images[:40]:
        as_pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        by_hand = net.classes[net(to_tensor(as_pil)[None]).argmax(1).item()]
        assert by_hand == predict.predict(as_pil, result.last_path)[0]["class"]


def test_control_characters_in_an_image_name_are_printed_escaped_and_forge_no_line(images, tmp_path, capsys):
    forged = tmp_path / "dog.png\nforged: airplane 99%\x1b[2J.png"
    forged.write_bytes((images / "RGB.png").read_bytes())
    (tmp_path / "bad\n.png").write_bytes(b"not an image")
    code, out, err = run_predict(capsys, forged, tmp_path / "bad\n.png", "--device", "cpu")
    assert code == 1 and "\x1b" not in out + err
    assert not any(line.startswith("forged") for line in out.splitlines())
    assert f"{tmp_path}/dog.png\\nforged: airplane 99%\\x1b[2J.png: " in out
    assert err.strip().splitlines() == [f"error: image {tmp_path}/bad\\n.png is not an image format PIL can read; "
                                        "convert it to PNG or JPEG"]


def test_a_phone_photo_stored_turned_is_classified_as_it_is_shown(tmp_path):
    upright = Image.fromarray(random_batch(1, seed=4)[0].permute(1, 2, 0).numpy()).resize((64, 48))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: the camera stored it turned; viewers turn it back clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.png", exif=exif.tobytes())
    upright.save(tmp_path / "upright.png")
    as_stored, as_shown = (predict.predict(tmp_path / name, top_k=10, device="cpu") for name in ("phone.png",
                                                                                                 "upright.png"))
    assert as_stored == as_shown
