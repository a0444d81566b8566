"""tudui/datasets.py: CIFAR-10 through torchvision, image folders by ImageFolder's rules and their cache, images
of every kind, and bad data as one line each."""
import io
import os
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given

from tudui import datasets
import train
from conftest import CLASSES, FUZZ, write_cifar_batches, bad_input, random_or_mutated, write_image_folder
from tudui.datasets import DataError, decode_image
from tudui.errors import SettingsError


def test_folder_dataset_takes_classes_from_folder_names(folder_dir, tmp_path):
    metrics = train.main(["--dataset", "folder", "--data-dir", str(folder_dir), "--epochs", "1", "--device", "cpu",
                          "--logdir", str(tmp_path), "--run-name", "f", "--quiet"])
    ckpt = torch.load(tmp_path / "f" / "last.pth", weights_only=True)
    assert ckpt["classes"] == ["cat", "dog", "ship"] and ckpt["model"]["model.8.bias"].shape == (3,)
    assert metrics.test_accuracy is not None


def test_folder_dataset_is_cached_after_first_decode(tmp_path, monkeypatch):
    folder = write_image_folder(tmp_path / "images")
    first = datasets.load_folder(folder, "train")
    assert (folder / ".tudui-cache" / "train.pt").exists()
    monkeypatch.setattr(datasets, "decode_image", None)  # the second load must not decode at all
    second = datasets.load_folder(folder, "train")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_a_cache_from_another_cache_format_is_decoded_again(tmp_path, monkeypatch):
    folder = write_image_folder(tmp_path / "images")
    _, labels, _ = datasets.load_folder(folder, "train")
    decoded = []
    monkeypatch.setattr(datasets, "decode_image", lambda path: decoded.append(path) or np.zeros((3, 32, 32), np.uint8))
    monkeypatch.setattr(datasets, "CACHE_FORMAT", datasets.CACHE_FORMAT + 1)
    datasets.load_folder(folder, "train")
    assert len(decoded) == len(labels)


def test_a_changed_image_is_decoded_again_instead_of_read_from_the_cache(tmp_path):
    from PIL import Image

    from tudui.datasets import load_folder
    folder = write_image_folder(tmp_path / "images")
    images, _, _ = load_folder(folder, "train")
    Image.new("RGB", (48, 48), (255, 0, 0)).save(sorted((folder / "train" / "cat").glob("*.png"))[0])  # same name
    reloaded, _, _ = load_folder(folder, "train")
    assert not torch.equal(images, reloaded)
    assert (reloaded == torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1)).all((1, 2, 3)).sum() == 1


def test_cifar10_is_read_by_torchvision_as_uint8_images_with_the_class_names_of_its_meta_file(cifar_dir):
    images, labels, classes = datasets.load_cifar10(cifar_dir, "train", download=False)
    assert images.shape == (200, 3, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert classes == list(datasets.CIFAR10_CLASSES) == list(CLASSES)
    batch = pickle.load(open(cifar_dir / "cifar-10-batches-py" / "data_batch_1", "rb"), encoding="latin1")
    assert torch.equal(images[:40].reshape(40, -1), torch.from_numpy(batch["data"]))


def test_missing_dataset_with_no_download_is_one_clear_line(capsys, tmp_path):
    err = bad_input(capsys, ["--data-dir", str(tmp_path / "empty"), "--no-download", "--logdir", str(tmp_path)])
    assert "--no-download" in err and "CIFAR-10 is not in" in err


def test_a_cifar_folder_missing_some_batches_names_them(capsys, tmp_path):
    root = write_cifar_batches(tmp_path / "data")
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()  # an interrupted extraction, say
    err = bad_input(capsys, ["--data-dir", str(root), "--no-download", "--logdir", str(tmp_path)])
    assert f"{root / 'cifar-10-batches-py'} lacks data_batch_3 and --no-download was given" in err


def test_failed_download_is_one_clear_line(capsys, tmp_path, monkeypatch):
    from urllib.error import URLError

    from torchvision.datasets import cifar

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    err = bad_input(capsys, ["--data-dir", str(tmp_path / "data"), "--logdir", str(tmp_path)])
    assert "could not download CIFAR-10" in err and "check the network" in err


def test_unreadable_data_folder_is_one_clear_line(capsys, tmp_path):
    err = bad_input(capsys, ["--dataset", "folder", "--data-dir", str(tmp_path / "nowhere"), "--logdir", str(tmp_path)])
    assert "does not exist" in err


def test_a_cifar_batch_that_fails_its_md5_is_one_clear_line_and_is_never_unpickled(capsys, tmp_path):
    root = write_cifar_batches(tmp_path / "data")
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04garbage")
    err = bad_input(capsys, ["--data-dir", str(root), "--no-download", "--logdir", str(tmp_path)])
    assert f"{root / 'cifar-10-batches-py'} fails torchvision's md5 check (a damaged or altered file)" in err


@pytest.mark.parametrize("name", [os.fsdecode(b"ca\xeft"), "cat\tnew"])  # Latin-1 bytes; a tab
def test_a_class_folder_name_that_is_not_printable_text_is_one_line_before_anything_is_written(tmp_path, capsys,
                                                                                            name):
    root = write_image_folder(tmp_path / "data", train_per_class=2, test_per_class=1)
    for split in ("train", "test"):
        (root / split / "cat").rename(root / split / name)  # TensorBoard tags must be UTF-8: it crashed after epoch 0
    err = bad_input(capsys, ["--dataset", "folder", "--data-dir", str(root), "--logdir", str(tmp_path / "logs")])
    assert f"class folder {str(root / 'train' / name)!r} has a name that is not printable text" in err
    assert not (tmp_path / "logs").exists()


def test_truncated_image_in_a_folder_dataset_is_one_clear_line(tmp_path, capsys):
    root = write_image_folder(tmp_path / "data", train_per_class=2, test_per_class=1)
    victim = next((root / "train" / "cat").glob("*.png"))
    victim.write_bytes(victim.read_bytes()[:60])
    err = bad_input(capsys, ["--dataset", "folder", "--data-dir", str(root), "--logdir", str(tmp_path)])
    assert f"image {victim} is damaged or truncated" in err


def test_a_16_bit_grayscale_image_keeps_its_grey_levels_instead_of_turning_white(tmp_path):
    import numpy as np
    from PIL import Image

    levels = np.linspace(0, 255, 32 * 32).round().reshape(32, 32).astype(np.uint16)
    Image.fromarray(levels * 257).save(tmp_path / "sixteen.png")  # 0..65535, as a 16-bit PNG stores them
    assert Image.open(tmp_path / "sixteen.png").mode == "I;16"
    assert (datasets.decode_image(tmp_path / "sixteen.png") == levels.astype(np.uint8)).all()


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(images, monkeypatch):
    from PIL import Image

    path = images / "RGB.png"
    width, height = Image.open(path).size
    monkeypatch.setattr(datasets, "MAX_IMAGE_PIXELS", width * height)
    assert datasets.decode_image(path).shape == (3, 32, 32)
    monkeypatch.setattr(datasets, "MAX_IMAGE_PIXELS", width * height - 1)
    with pytest.raises(datasets.DataError, match=f"image {path} is too large"):
        datasets.decode_image(path)


def png_bytes():
    from PIL import Image
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


@FUZZ
@given(random_or_mutated(png_bytes()))
def test_image_loading_raises_only_data_error_on_any_bytes(tmp_path, data):
    path = tmp_path / "fuzz.png"
    path.write_bytes(data)
    try:
        assert decode_image(path).shape == (3, 32, 32)
    except DataError:
        pass


def test_a_dry_run_writes_no_cache_of_a_folder_dataset(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "images")
    train.main(["--dataset", "folder", "--data-dir", str(folder), "--logdir", str(tmp_path / "logs"), "--dry-run"])
    assert "everything is in place" in capsys.readouterr().out
    assert not (folder / ".tudui-cache").exists() and not (tmp_path / "logs").exists()
