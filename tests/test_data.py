"""data.py: datasets as tensors and their cache, images of every kind, the conversion to input, each epoch's
order and augmentation, and bad data as one line each."""
import io
import os

import numpy as np
import pytest
import torch
from hypothesis import given

import data
import train
from conftest import FUZZ, bad_input, class_images, random_batch, random_or_mutated, write_image_folder
from data import DataError, decode_image
from errors import SettingsError


def test_folder_dataset_takes_classes_from_folder_names(folder_dir, tmp_path):
    metrics = train.main(["--dataset", "folder", "--data-dir", str(folder_dir), "--epochs", "1", "--device", "cpu",
                          "--logdir", str(tmp_path), "--run-name", "f", "--quiet"])
    ckpt = torch.load(tmp_path / "f" / "last.pth", weights_only=True)
    assert ckpt["classes"] == ["cat", "dog", "ship"] and ckpt["model"]["model.8.bias"].shape == (3,)
    assert metrics.test_accuracy is not None


def test_folder_dataset_is_cached_after_first_decode(tmp_path, monkeypatch):
    import data
    folder = write_image_folder(tmp_path / "images")
    first = data.load_folder(folder, "train")
    assert (folder / ".tudui-cache" / "train.pt").exists()
    monkeypatch.setattr(data, "decode_image", None)  # the second load must not decode at all
    second = data.load_folder(folder, "train")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_a_cache_from_another_cache_format_is_decoded_again(tmp_path, monkeypatch):
    import data
    folder = write_image_folder(tmp_path / "images")
    _, labels, _ = data.load_folder(folder, "train")
    decoded = []
    monkeypatch.setattr(data, "decode_image", lambda path: decoded.append(path) or np.zeros((3, 32, 32), np.uint8))
    monkeypatch.setattr(data, "CACHE_FORMAT", data.CACHE_FORMAT + 1)
    data.load_folder(folder, "train")
    assert len(decoded) == len(labels)


def test_a_changed_image_is_decoded_again_instead_of_read_from_the_cache(tmp_path):
    from PIL import Image

    from data import load_folder
    folder = write_image_folder(tmp_path / "images")
    images, _, _ = load_folder(folder, "train")
    Image.new("RGB", (48, 48), (255, 0, 0)).save(sorted((folder / "train" / "cat").glob("*.png"))[0])  # same name
    reloaded, _, _ = load_folder(folder, "train")
    assert not torch.equal(images, reloaded)
    assert (reloaded == torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1)).all((1, 2, 3)).sum() == 1


def test_missing_dataset_with_no_download_is_one_clear_line(capsys, tmp_path):
    err = bad_input(capsys, ["--data-dir", str(tmp_path / "empty"), "--no-download", "--logdir", str(tmp_path)])
    assert "--no-download" in err and "CIFAR-10 is not in" in err


def test_a_cifar_folder_missing_some_batches_names_them(capsys, tmp_path):
    from conftest import write_cifar_batches
    root = write_cifar_batches(tmp_path / "data")
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()  # an interrupted extraction, say
    err = bad_input(capsys, ["--data-dir", str(root), "--no-download", "--logdir", str(tmp_path)])
    assert f"{root / 'cifar-10-batches-py'} lacks data_batch_3 and --no-download was given" in err


def test_failed_download_is_one_clear_line(capsys, tmp_path, monkeypatch):
    from urllib.error import URLError

    import torchvision

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    err = bad_input(capsys, ["--data-dir", str(tmp_path / "data"), "--logdir", str(tmp_path)])
    assert "could not download CIFAR-10" in err and "check the network" in err


def test_unreadable_data_folder_is_one_clear_line(capsys, tmp_path):
    err = bad_input(capsys, ["--dataset", "folder", "--data-dir", str(tmp_path / "nowhere"), "--logdir", str(tmp_path)])
    assert "does not exist" in err


def test_corrupt_cifar_batch_is_one_clear_line(capsys, tmp_path):
    from conftest import write_cifar_batches
    root = write_cifar_batches(tmp_path / "data")
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04garbage")
    err = bad_input(capsys, ["--data-dir", str(root), "--no-download", "--logdir", str(tmp_path)])
    assert "data_batch_3 is not a readable CIFAR-10 batch" in err


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

    import data
    levels = np.linspace(0, 255, 32 * 32).round().reshape(32, 32).astype(np.uint16)
    Image.fromarray(levels * 257).save(tmp_path / "sixteen.png")  # 0..65535, as a 16-bit PNG stores them
    assert Image.open(tmp_path / "sixteen.png").mode == "I;16"
    assert (data.decode_image(tmp_path / "sixteen.png") == levels.astype(np.uint8)).all()


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(images, monkeypatch):
    from PIL import Image

    import data
    path = images / "RGB.png"
    width, height = Image.open(path).size
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", width * height)
    assert data.decode_image(path).shape == (3, 32, 32)
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", width * height - 1)
    with pytest.raises(data.DataError, match=f"image {path} is too large"):
        data.decode_image(path)


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


def test_uint8_to_input_equals_torchvision_to_tensor():
    from PIL import Image
    from torchvision.transforms.functional import to_tensor
    images, _ = class_images(4, 10, seed=0)
    expected = torch.stack([to_tensor(Image.fromarray(im.transpose(1, 2, 0))) for im in images])
    assert torch.equal(data.to_input(torch.from_numpy(images)), expected)


def test_channel_stats_equal_the_mean_and_std_of_all_pixels():
    images = random_batch(50)
    pixels = images.double().div(255).transpose(0, 1).reshape(3, -1)
    mean, std = data.channel_stats(images)
    assert mean == pytest.approx(pixels.mean(1).tolist(), rel=1e-12)
    assert std == pytest.approx(pixels.std(1).tolist(), rel=1e-12)


def test_each_epoch_reshuffles_in_a_seeded_order():
    first = torch.randperm(100, generator=data.epoch_generator(0, 0))
    assert torch.equal(first, torch.randperm(100, generator=data.epoch_generator(0, 0)))
    assert not torch.equal(first, torch.randperm(100, generator=data.epoch_generator(0, 1)))


def test_augmentation_plan_is_determined_by_seed_and_epoch():
    first = data.augment_plan(1000, data.epoch_generator(3, 5), 2)
    again = data.augment_plan(1000, data.epoch_generator(3, 5), 2)
    other_epoch = data.augment_plan(1000, data.epoch_generator(3, 6), 2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], other_epoch[1])


@pytest.mark.parametrize("max_shift", [0, 2, 4])
def test_translate_bounds_the_shifts(max_shift):
    flips, shifts = data.augment_plan(5000, torch.Generator().manual_seed(0), max_shift)
    assert shifts.abs().max().item() == max_shift and 0.45 < flips.float().mean().item() < 0.55


def test_augmented_batch_keeps_shape_and_dtype():
    images = random_batch()
    flips, shifts = data.augment_plan(len(images), torch.Generator().manual_seed(0), 4)
    out = data.augment_batch(images, flips, shifts)
    assert out.shape == images.shape and out.dtype == torch.uint8


def test_no_flip_and_no_shift_leaves_the_batch_unchanged():
    images = random_batch()
    out = data.augment_batch(images, torch.zeros(8, dtype=torch.bool), torch.zeros(8, 2, dtype=torch.int64))
    assert torch.equal(out, images)


def test_flip_mirrors_left_to_right():
    images = random_batch()
    out = data.augment_batch(images, torch.ones(8, dtype=torch.bool), torch.zeros(8, 2, dtype=torch.int64))
    assert torch.equal(out, images.flip(3))


def test_shift_moves_the_image_and_mirrors_it_into_the_gap():
    images = random_batch(1)
    out = data.augment_batch(images, torch.zeros(1, dtype=torch.bool), torch.tensor([[2, -1]]))
    assert torch.equal(out[0, :, 2:, :-1], images[0, :, :-2, 1:])
    assert torch.equal(out[0, :, :2, :-1], images[0, :, [2, 1], 1:])  # rows -2, -1 mirror rows 2, 1
    assert torch.equal(out[0, :, 2:, -1], images[0, :, :-2, -2])  # column 32 mirrors column 30


def test_the_held_out_images_depend_on_the_seed_alone_and_are_not_trained_on():
    images, labels = torch.arange(100).view(100, 1), torch.arange(100)
    train_x, train_y, val_x, val_y = data.hold_out(images, labels, 30, seed=7)
    assert len(val_y) == 30 and len(train_y) == 70 and not set(val_y.tolist()) & set(train_y.tolist())
    assert torch.equal(val_x.view(-1), val_y) and train_y.tolist() == sorted(train_y.tolist())
    assert torch.equal(data.hold_out(images, labels, 30, seed=7)[3], val_y)
    assert not torch.equal(data.hold_out(images, labels, 30, seed=8)[3], val_y)


def test_holding_out_every_training_image_is_refused():
    with pytest.raises(SettingsError, match="--val-split 100 would hold out every training image"):
        data.hold_out(torch.zeros(100, 1), torch.zeros(100), 100, seed=0)


def test_a_dry_run_writes_no_cache_of_a_folder_dataset(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "images")
    train.main(["--dataset", "folder", "--data-dir", str(folder), "--logdir", str(tmp_path / "logs"), "--dry-run"])
    assert "everything is in place" in capsys.readouterr().out
    assert not (folder / ".tudui-cache").exists() and not (tmp_path / "logs").exists()
