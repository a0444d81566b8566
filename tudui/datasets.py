"""Datasets from disk as whole tensors, images uint8 (N, 3, 32, 32), labels int64 and class names:
torchvision's CIFAR10 (downloaded when missing) and ImageFolder (DIR/train/<class>/*, with the checks a run
needs), and the one-line errors for what cannot be read. No model or training code; one image is images.py's.
"""
import contextlib
import hashlib
import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets as torchvision_datasets
from torchvision.datasets import CIFAR10

from tudui.checkpoints import class_names
from tudui.console import shown
from tudui.errors import DataError, SettingsError
from tudui.runs import atomic_write
from tudui.images import decode_image, image_pixels

CACHE_FORMAT = 4  # raised whenever decoding or the cache's fields change, so that older caches are rebuilt
CIFAR10_ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def downloads(data_dir, no_download=False, dry_run=False):
    """Whether torchvision's CIFAR10 may fetch what is missing: never in a --dry-run; with --no-download, only to
    unpack a cifar-10-python.tar.gz placed in DATA_DIR whose md5 passes."""
    return not dry_run and (not no_download or archive_check(data_dir) == "passes")


@contextlib.contextmanager
def cifar10_errors(data_dir, download, dry_run=False):
    """What torchvision's CIFAR10 raises in the block, as cifar10_missing's one-line DataError."""
    try:
        yield
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        raise cifar10_missing(Path(data_dir), download, dry_run, e) from None


def archive_check(data_dir):
    """Whether a cifar-10-python.tar.gz placed in DATA_DIR "passes" or "fails" its md5 check; None if none."""
    from torchvision.datasets.utils import check_integrity

    archive = Path(data_dir) / CIFAR10.filename
    if not archive.is_file():
        return None
    return "passes" if check_integrity(str(archive), CIFAR10.tgz_md5) else "fails"


def cifar10_missing(data_dir, download, dry_run, error):
    """The error for CIFAR-10 files torchvision could not find, verify or download: what is there, and how to
    get them without the network."""
    folder, archive = data_dir / CIFAR10.base_folder, data_dir / CIFAR10.filename
    names = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    missing = [name for name in names if not (folder / name).is_file()]
    offline = (f"place {CIFAR10.filename} (from {CIFAR10_ARCHIVE_URL}) in {data_dir}: the next run checks its md5 "
               "and unpacks it")
    found = archive_check(data_dir)
    if found == "fails":
        return DataError(f"{archive} fails its md5 check (a damaged or incomplete download); replace it: {offline}")
    if found == "passes" and dry_run and missing:
        return DataError(f"{archive} passes its md5 check and the real run unpacks it; --dry-run writes nothing, "
                         "so it stops here: run without --dry-run")
    if download and not dry_run:
        return DataError(f"could not download CIFAR-10 into {data_dir} ({str(error)[:150]}); check the network, "
                         f"or {offline}")
    if not missing:
        where = f"{folder} fails torchvision's md5 check (a damaged or altered file); delete it"
    elif folder.is_dir():
        where = f"{folder} lacks {', '.join(missing)}"
    else:
        where = f"CIFAR-10 is not in {folder}"
    why = ("--dry-run downloads nothing; run without it to fetch CIFAR-10 (about 170 MB)" if dry_run
           else "--no-download was given; drop --no-download to fetch it")
    return DataError(f"{where} and {why}, or {offline}")


class ImageFolder(torchvision_datasets.ImageFolder):
    """torchvision's ImageFolder, images read as uint8 RGB (3, 32, 32), with one-line DataErrors for what a run
    cannot use: hidden folders are no classes; unprintable class names, class folders leading outside ROOT's
    parent, links back into a listed folder and classes without images are refused. CLASSES (the training
    split's) must be this split's too; EVALUATING a checkpoint of CLASSES, it may lack some."""

    def __init__(self, root, classes=None, evaluating=False):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{shown(root)} does not exist; a folder dataset needs DIR/train/<class>/ and "
                            "DIR/test/<class>/ image folders")
        self.expected, self.evaluating = classes, evaluating
        try:
            super().__init__(str(root), loader=decode_image, allow_empty=True)
        except OSError as e:
            raise DataError(f"cannot read {shown(root)} ({e.strerror or e}); check its permissions") from None
        labelled = {label for _, label in self.samples}
        found = set(self.found)
        empty = [c for i, c in enumerate(self.classes) if c in found and i not in labelled]
        if empty and not evaluating:
            raise DataError(f"{shown(root)} has class folders with no images: {', '.join(map(shown, empty))} (images "
                            f"end in {', '.join(self.extensions)}); add images to them or remove them")

    def find_classes(self, directory):
        split_dir, train_dir = Path(directory), Path(directory).parent / "train"
        self.found = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir() and entry.name[0] != ".")
        for name in self.found:  # class names become TensorBoard tags and report lines: text, one line each
            if not name.isprintable():
                raise DataError(f"class folder {shown(split_dir / name)} has a name that is not printable text "
                                "(bytes that are not UTF-8, or control characters); rename it")
            if not (split_dir / name).resolve().is_relative_to(split_dir.parent.resolve()):
                raise DataError(f"class folder {shown(split_dir / name)} leads outside {shown(split_dir.parent)} (a "
                                f"link to {shown((split_dir / name).resolve())}); a folder dataset's classes must be "
                                "inside it")
        if not self.found:
            raise DataError(f"{shown(split_dir)} holds no class folders with images; expected "
                            f"{shown(split_dir)}/<class>/*.jpg")
        lacking = sorted(set(self.expected or self.found) - set(self.found)) if not self.evaluating else []
        unknown = sorted(set(self.found) - set(self.expected or self.found))
        if lacking or unknown:
            raise DataError(f"{shown(train_dir)} and {shown(split_dir)} must hold the same class folders, but "
                            + " and ".join(f"{shown(where)} lacks {', '.join(map(shown, names))}" for where, names in
                                           ((split_dir, lacking), (train_dir, unknown)) if names)
                            + "; add or remove class folders so that both splits match")
        classes = list(self.expected or self.found)
        return classes, {name: i for i, name in enumerate(classes)}

    def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        for name in class_to_idx:  # a link back to a listed folder would be followed again and again
            seen = {}
            for here, _, _ in os.walk(Path(directory) / name, followlinks=True):
                real = os.path.realpath(here)
                if real in seen:
                    raise DataError(f"{shown(here)} is a link back to {shown(seen[real])}, a folder already listed, "
                                    "so its images would be counted again and again; remove the link")
                seen[real] = here
        return [(Path(path), label) for path, label in torchvision_datasets.folder.make_dataset(
            directory, class_to_idx, extensions, is_valid_file, allow_empty)]


def folder_tensors(dataset, write_cache=True, skipped=None):
    """An ImageFolder's images, labels and classes, decoded once, then cached beside the data (DIR/.tudui-cache/)
    where it is writable. Images that cannot be read are named in one DataError, or left out and their paths
    added to SKIPPED when it is a list."""
    root, files, classes = Path(dataset.root), dataset.samples, dataset.classes
    cache = root.parent / ".tudui-cache" / f"{root.name}.pt"
    digest = hashlib.sha1()
    for path, label in files:
        st = path.stat()
        digest.update(f"{path.name}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode(errors="surrogateescape"))
    key = f"{CACHE_FORMAT}:{digest.hexdigest()}:{','.join(classes)}"
    try:
        cached = torch.load(cache, weights_only=True)
        if cached.get("key") != key:
            raise ValueError("stale")
        images, labels, bad = cached["images"], cached["labels"], cached["bad"]
    except Exception:  # a missing, stale or damaged cache is rebuilt
        images, labels, bad = decode_folder(files)
        try:
            if write_cache:
                buffer = io.BytesIO()
                torch.save({"key": key, "images": images, "labels": labels, "bad": bad}, buffer)
                cache.parent.mkdir(exist_ok=True)
                atomic_write(buffer.getvalue(), cache)
        except (OSError, SettingsError):  # a read-only or full data folder just means no cache
            print(f"note: the decoded images could not be cached in {cache.parent} (it is full or read-only); the "
                  "next run decodes them again", file=sys.stderr)
    if bad and skipped is None:
        first = bad[0][1]
        others = ", ".join(path for path, _ in bad[1:4]) + (" ..." if len(bad) > 4 else "")
        raise DataError(f"{len(bad)} of {len(files)} images in {shown(root)} cannot be read: {first}"
                        f"{f'; also {others}' if others else ''}. Replace or remove them, or give --skip-bad-images "
                        "to train on the rest")
    if skipped is not None:
        skipped.extend(path for path, _ in bad)
    return images, labels, classes


def decode_folder(files):
    """(images, labels, [(path, why), ...] of those that cannot be read) of FILES, [(path, label)], decoded on all
    cores."""
    def decoded(path):
        try:
            return decode_image(path)
        except DataError as e:
            return str(e)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL decodes without the GIL
        results = list(pool.map(decoded, [p for p, _ in files]))
    good = [i for i, result in enumerate(results) if not isinstance(result, str)]
    bad = [(shown(files[i][0]), result) for i, result in enumerate(results) if isinstance(result, str)]
    images = torch.from_numpy(np.stack([results[i] for i in good]) if good else np.zeros((0, 3, 32, 32), np.uint8))
    return images, torch.tensor([files[i][1] for i in good], dtype=torch.int64), bad


def dataset_tensors(dataset, write_cache=True, skipped=None):
    """Any dataset train.py made as (images uint8 (N, 3, 32, 32), labels, classes): a CIFAR10 from its arrays,
    an ImageFolder by folder_tensors, any other (or one given a transform=, run here once) item by item."""
    transform = getattr(dataset, "transform", None)
    if transform is None and isinstance(dataset, CIFAR10):
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # HWC back to NCHW
        return images, torch.tensor(dataset.targets, dtype=torch.int64), list(dataset.classes)
    if transform is None and isinstance(dataset, ImageFolder):
        return folder_tensors(dataset, write_cache, skipped)
    if transform is not None:
        print(f"note: the {type(dataset).__name__} dataset's transform runs once per image, as it is loaded; "
              "augmentation drawn anew every epoch goes in train.py's transform", file=sys.stderr)
    images, labels = [], []
    for image, label in dataset:
        images.append(image_pixels(image).mul_(255).round_().to(torch.uint8))
        labels.append(int(label))
    classes = list(getattr(dataset, "classes", None) or class_names(max(labels, default=0) + 1))
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), classes


def load_split(kind, data_dir, split, download=True, classes=None, evaluating=False, skipped=None):
    """(images, labels, classes) of one SPLIT, "train" or "test", of CIFAR-10 (fetched as downloads() says) or of
    DIR/SPLIT/<class>/* (ImageFolder's CLASSES and EVALUATING; evaluating a checkpoint of CLASSES, labelled in their
    order when its folders are among them; SKIPPED: folder_tensors')."""
    if kind == "cifar10":
        with cifar10_errors(data_dir, download):
            return dataset_tensors(CIFAR10(str(data_dir), train=split == "train",
                                           download=downloads(data_dir, not download)))
    if evaluating:
        found = ImageFolder(Path(data_dir) / split, evaluating=True).classes
        classes = classes if classes and set(found) <= set(classes) else found
    return dataset_tensors(ImageFolder(Path(data_dir) / split, classes, evaluating), skipped=skipped)
