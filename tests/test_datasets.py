"""tudui/datasets.py: CIFAR-10 through torchvision, image folders by ImageFolder's rules and their cache, images
of every kind, and bad data as one line each."""
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from tudui import checkpoints, datasets, load_tudui
import train
from model import Tudui
from conftest import CLASSES, bad_input, md5, write_cifar_batches, write_image_folder
from tudui.console import shown


def test_folder_dataset_takes_classes_from_folder_names(folder_dir, tmp_path):
    metrics = train.main(["--dataset", "folder", "--data-dir", str(folder_dir), "--epochs", "1", "--device", "cpu",
                          "--logdir", str(tmp_path), "--run-name", "f", "--quiet"])
    ckpt = torch.load(tmp_path / "f" / "last.pth", weights_only=True)
    assert ckpt["classes"] == ["cat", "dog", "ship"]
    assert load_tudui(tmp_path / "f" / "last.pth")(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    assert metrics.test_accuracy is not None


def test_folder_dataset_is_cached_after_first_decode(tmp_path, monkeypatch):
    folder = write_image_folder(tmp_path / "images")
    first = datasets.load_split("folder", folder, "train")
    assert (folder / ".tudui-cache" / "train.pt").exists()
    monkeypatch.setattr(datasets, "decode_image", None)  # the second load must not decode at all
    second = datasets.load_split("folder", folder, "train")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_a_cache_from_another_cache_format_is_decoded_again(tmp_path, monkeypatch):
    folder = write_image_folder(tmp_path / "images")
    _, labels, _ = datasets.load_split("folder", folder, "train")
    decoded = []
    monkeypatch.setattr(datasets, "decode_image", lambda path: decoded.append(path) or np.zeros((3, 32, 32), np.uint8))
    monkeypatch.setattr(datasets, "CACHE_FORMAT", datasets.CACHE_FORMAT + 1)
    datasets.load_split("folder", folder, "train")
    assert len(decoded) == len(labels)


def test_a_changed_image_is_decoded_again_instead_of_read_from_the_cache(tmp_path):
    from PIL import Image

    from tudui.datasets import load_split
    folder = write_image_folder(tmp_path / "images")
    images, _, _ = load_split("folder", folder, "train")
    Image.new("RGB", (48, 48), (255, 0, 0)).save(sorted((folder / "train" / "cat").glob("*.png"))[0])  # same name
    reloaded, _, _ = load_split("folder", folder, "train")
    assert not torch.equal(images, reloaded)
    assert (reloaded == torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1)).all((1, 2, 3)).sum() == 1


def test_cifar10_is_read_by_torchvision_as_uint8_images_with_the_class_names_of_its_meta_file(cifar_dir):
    images, labels, classes = datasets.load_split("cifar10", cifar_dir, "train", download=False)
    assert images.shape == (200, 3, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert classes == list(checkpoints.CIFAR10_CLASSES) == list(CLASSES)
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
    assert f"class folder {shown(root / 'train' / name)} has a name that is not printable text" in err
    assert not (tmp_path / "logs").exists()


def test_truncated_image_in_a_folder_dataset_is_one_clear_line(tmp_path, capsys):
    root = write_image_folder(tmp_path / "data", train_per_class=2, test_per_class=1)
    victim = next((root / "train" / "cat").glob("*.png"))
    victim.write_bytes(victim.read_bytes()[:60])
    err = bad_input(capsys, ["--dataset", "folder", "--data-dir", str(root), "--logdir", str(tmp_path)])
    assert f"image {victim} is damaged or truncated" in err


def test_a_dry_run_writes_no_cache_of_a_folder_dataset(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "images")
    train.main(["--dataset", "folder", "--data-dir", str(folder), "--logdir", str(tmp_path / "logs"), "--dry-run"])
    assert "everything is in place" in capsys.readouterr().out
    assert not (folder / ".tudui-cache").exists() and not (tmp_path / "logs").exists()


def test_an_empty_class_folder_is_refused_with_its_name(tmp_path, capsys):
    root = write_image_folder(tmp_path / "data", train_per_class=2, test_per_class=1)
    (root / "train" / "horse").mkdir()
    (root / "test" / "horse").mkdir()
    err = bad_input(capsys, ["--dataset", "folder", "--data-dir", str(root), "--logdir", str(tmp_path / "logs")])
    assert f"{root / 'train'} has class folders with no images: horse (images end in .jpg" in err


def test_train_and_test_must_hold_the_same_classes_and_a_mismatch_names_them_in_both_directions(tmp_path, capsys):
    root = write_image_folder(tmp_path / "data", train_per_class=2, test_per_class=1)
    shutil.rmtree(root / "test" / "dog")
    shutil.copytree(root / "test" / "cat", root / "test" / "zebra")
    err = bad_input(capsys, ["--dataset", "folder", "--data-dir", str(root), "--logdir", str(tmp_path / "logs")])
    assert (f"{root / 'train'} and {root / 'test'} must hold the same class folders, but {root / 'test'} lacks dog "
            f"and {root / 'train'} lacks zebra" in err)


def test_every_unreadable_image_of_a_split_is_named_in_one_message_with_their_count(tmp_path, capsys):
    root = write_image_folder(tmp_path / "data", train_per_class=4, test_per_class=1)
    victims = sorted((root / "train" / "cat").glob("*.png"))[:3]
    for victim in victims:
        victim.write_bytes(b"not an image")
    err = bad_input(capsys, ["--dataset", "folder", "--data-dir", str(root), "--logdir", str(tmp_path / "logs")])
    assert f"error: 3 of 12 images in {root / 'train'} cannot be read: image {victims[0]} is not an image format" in err
    assert f"also {victims[1]}, {victims[2]}. Replace or remove them, or give --skip-bad-images" in err


def test_skip_bad_images_trains_on_the_rest_and_lists_the_skipped_ones_in_config_json(tmp_path):
    root = write_image_folder(tmp_path / "data", train_per_class=4, test_per_class=1)
    victim = sorted((root / "train" / "dog").glob("*.png"))[0]
    victim.write_bytes(b"not an image")
    result = train.main(["--dataset", "folder", "--data-dir", str(root), "--logdir", str(tmp_path / "logs"),
                         "--run-name", "r", "--device", "cpu", "--quiet", "--epochs", "1", "--skip-bad-images"])
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["skip_bad_images"] and config["skipped_images"] == [str(victim)]
    assert torch.load(result.last_path, weights_only=True)["step"] == 1  # 11 images in one batch of 64


def test_evaluate_says_no_test_images_for_a_class_that_has_none(folder_dir, tmp_path, capsys):
    torch.save(Tudui(num_classes=3).state_dict(), tmp_path / "three.pth")
    shutil.copytree(folder_dir / "test", tmp_path / "part" / "test")
    for image in (tmp_path / "part" / "test" / "dog").iterdir():
        image.unlink()
    evaluation = train.main(["--evaluate", str(tmp_path / "three.pth"), "--dataset", "folder", "--data-dir",
                             str(tmp_path / "part"), "--device", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert "1       no test images" in lines and evaluation.per_class_accuracy["1"] is None


def tiny_cifar_archive(folder, cifar_dir):
    """cifar-10-python.tar.gz of the tiny CIFAR-10 files in FOLDER, as the real one holds them."""
    import tarfile
    folder.mkdir(parents=True)
    with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as archive:
        archive.add(cifar_dir / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return folder / "cifar-10-python.tar.gz"


def test_no_download_unpacks_a_placed_archive_that_passes_its_md5_check(tmp_path, cifar_dir, monkeypatch):
    from torchvision.datasets import CIFAR10
    archive = tiny_cifar_archive(tmp_path / "data", cifar_dir)
    monkeypatch.setattr(CIFAR10, "tgz_md5", md5(archive))  # as if it were CIFAR-10's own archive
    images, labels, classes = datasets.load_split("cifar10", tmp_path / "data", "test", download=False)
    assert len(labels) == 100 and (tmp_path / "data" / "cifar-10-batches-py" / "test_batch").is_file()


def test_a_dry_run_finds_a_placed_archive_says_it_passes_and_writes_nothing(tmp_path, cifar_dir, monkeypatch, capsys):
    from torchvision.datasets import CIFAR10
    archive = tiny_cifar_archive(tmp_path / "data", cifar_dir)
    monkeypatch.setattr(CIFAR10, "tgz_md5", md5(archive))
    err = bad_input(capsys, ["--data-dir", str(tmp_path / "data"), "--dry-run", "--logdir", str(tmp_path / "logs")])
    assert f"{archive} passes its md5 check and the real run unpacks it; --dry-run writes nothing" in err
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["cifar-10-python.tar.gz"]


@pytest.mark.parametrize("flag", ["--no-download", "--dry-run"])
def test_an_archive_that_fails_its_md5_check_is_named_as_such(tmp_path, cifar_dir, capsys, flag):
    archive = tiny_cifar_archive(tmp_path / "data", cifar_dir)  # not CIFAR-10's own bytes
    err = bad_input(capsys, ["--data-dir", str(tmp_path / "data"), flag, "--logdir", str(tmp_path / "logs")])
    assert f"{archive} fails its md5 check (a damaged or incomplete download); replace it: place " in err


def test_without_the_data_the_error_says_where_to_place_the_archive(tmp_path, capsys):
    err = bad_input(capsys, ["--data-dir", str(tmp_path / "empty"), "--no-download", "--logdir", str(tmp_path)])
    assert (f"or place cifar-10-python.tar.gz (from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz) in "
            f"{tmp_path / 'empty'}: the next run checks its md5 and unpacks it") in err


def test_a_class_folder_that_links_outside_the_data_folder_is_refused(tmp_path, capsys):
    root = write_image_folder(tmp_path / "data", train_per_class=2, test_per_class=1)
    for split in ("train", "test"):
        (root / split / "evil").symlink_to(tmp_path)
    err = bad_input(capsys, ["--dataset", "folder", "--data-dir", str(root), "--logdir", str(tmp_path / "logs")])
    assert f"class folder {root / 'train' / 'evil'} leads outside {root}" in err


def test_an_image_cache_that_does_not_fit_is_skipped_with_a_note_and_no_temporary_file(tmp_path, capsys, small_disk):
    data = small_disk("data", 400_000)
    write_image_folder(data, train_per_class=4, test_per_class=1)
    (data / "filler").write_bytes(bytes(300_000))  # what is left is too little for the cache
    images, _, _ = datasets.load_split("folder", data, "train")
    assert len(images) == 12
    assert "note: the decoded images could not be cached in" in capsys.readouterr().err
    assert not list((data / ".tudui-cache").glob(".*.tmp"))


@pytest.mark.parametrize("flags", [[], ["--dry-run"]], ids=["run", "dry run"])
def test_a_link_back_into_a_class_folder_is_refused_in_one_line_naming_it(tmp_path, capsys, flags):
    root = write_image_folder(tmp_path / "data", train_per_class=2, test_per_class=1)
    (root / "train" / "cat" / "loop").symlink_to(root / "train" / "cat")  # train/cat/loop -> .
    err = bad_input(capsys, ["--dataset", "folder", "--data-dir", str(root), "--logdir", str(tmp_path / "logs"),
                             *flags])
    assert f"{root / 'train' / 'cat' / 'loop'} is a link back to {root / 'train' / 'cat'}, a folder already listed" in err


NOT_UTF8 = os.fsdecode(b"ca\xeft.png")  # Latin-1 bytes in a file name, as an old camera or archive writes them


def test_an_image_name_whose_bytes_are_not_utf8_trains_and_a_broken_one_is_named_escaped(tmp_path, capsys):
    root = write_image_folder(tmp_path / "data", train_per_class=2, test_per_class=1)
    shutil.copy(next((root / "train" / "cat").iterdir()), root / "train" / "cat" / NOT_UTF8)
    train.main(["--dataset", "folder", "--data-dir", str(root), "--logdir", str(tmp_path / "logs"), "--device", "cpu",
                "--epochs", "1", "--quiet"])
    (root / "train" / "dog" / NOT_UTF8).write_bytes(b"not an image")
    err = bad_input(capsys, ["--dataset", "folder", "--data-dir", str(root), "--logdir", str(tmp_path / "logs")])
    assert f"{root / 'train' / 'dog'}/ca\\udceft.png" in err


def test_skip_bad_images_says_how_many_it_skipped_and_where_the_list_is(tmp_path, capsys):
    root = write_image_folder(tmp_path / "data", train_per_class=2, test_per_class=1)
    (root / "train" / "dog" / NOT_UTF8).write_bytes(b"not an image")
    (root / "train" / "cat" / "truncated.png").write_bytes(b"\x89PNG\r\n")
    capsys.readouterr()
    result = train.main(["--dataset", "folder", "--data-dir", str(root), "--logdir", str(tmp_path / "logs"),
                         "--device", "cpu", "--epochs", "1", "--quiet", "--skip-bad-images"])
    assert (f"--skip-bad-images: skipped 2 images that cannot be read, listed in {result.run_dir / 'config.json'}"
            in capsys.readouterr().err)
    assert len(json.loads((result.run_dir / "config.json").read_text())["skipped_images"]) == 2


def test_evaluate_honours_skip_bad_images_on_the_folder_its_run_trained_on(tmp_path, capsys):
    root = write_image_folder(tmp_path / "data", train_per_class=2, test_per_class=1)
    (root / "test" / "dog" / "truncated.png").write_bytes(b"\x89PNG\r\n")
    flags = ["--dataset", "folder", "--data-dir", str(root), "--skip-bad-images"]
    result = train.main(flags + ["--logdir", str(tmp_path / "logs"), "--device", "cpu", "--epochs", "1", "--quiet"])
    capsys.readouterr()
    evaluation = train.main(flags + ["--evaluate", str(result.last_path), "--device", "cpu"])
    assert evaluation.confusion.sum() == 3 and "skipped 1 test image that cannot be read" in capsys.readouterr().err
