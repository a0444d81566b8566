"""Reading datasets from disk: torchvision's CIFAR-10 files (downloaded when missing) and image folders
(DIR/train/<class>/*, DIR/test/<class>/*, listed by torchvision's ImageFolder rules), each split as
whole tensors: images uint8 (N, 3, 32, 32), labels int64 (N,), and the class names. Also reading single
images for predict.py. Holds no model or training code.

Why the image decoding is our own: ImageFolder's loader keeps each image's size and clips 16-bit
pixels, where the network needs 32 x 32 RGB on the 0-255 scale.
"""
import hashlib
import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from tudui.errors import DataError, SettingsError
from tudui.files import atomic_write
from tudui.integrity import regular_file_problem

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
def class_names(count):
    """Names for COUNT outputs when a checkpoint names none: CIFAR-10's for 10, else the numbers."""
    return list(CIFAR10_CLASSES) if count == 10 else [str(i) for i in range(count)]


CACHE_FORMAT = 3  # raised whenever decoding or the cache's fields change, so that older caches are rebuilt


CIFAR10_ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def load_cifar10(data_dir, split, download=True, dry_run=False):
    """One SPLIT of CIFAR-10, "train" or "test" (load_cifar10_splits)."""
    return load_cifar10_splits(data_dir, (split,), download, dry_run)[0]


def load_cifar10_splits(data_dir, splits, download=True, dry_run=False):
    """(images, labels, classes) of each of SPLITS, read by torchvision's CIFAR10 from DATA_DIR (which
    checks all six files' md5s for each split before it unpickles one). When that fails, and never in a
    DRY_RUN (which writes nothing): downloaded if DOWNLOAD, or unpacked from a cifar-10-python.tar.gz
    placed in DATA_DIR whose md5 passes."""
    try:
        return [read_cifar10(data_dir, split, download, dry_run) for split in splits]
    except DataError:
        if dry_run or not (download or archive_check(data_dir) == "passes"):
            raise
    from torchvision.datasets import CIFAR10

    try:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        CIFAR10(root=str(data_dir), train=False, download=True)  # a valid archive there is unpacked, not fetched
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        raise cifar10_missing(Path(data_dir), True, False, e) from None
    return [read_cifar10(data_dir, split, download, dry_run) for split in splits]


def read_cifar10(data_dir, split, download, dry_run):
    from torchvision.datasets import CIFAR10

    try:
        dataset = CIFAR10(root=str(data_dir), train=split == "train", download=False)
    except (OSError, RuntimeError) as e:
        raise cifar10_missing(Path(data_dir), download, dry_run, e) from None
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # HWC back to NCHW
    return images, torch.tensor(dataset.targets, dtype=torch.int64), list(dataset.classes)


def archive_check(data_dir):
    """Whether a cifar-10-python.tar.gz placed in DATA_DIR "passes" or "fails" its md5 check; None when
    there is none."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    archive = Path(data_dir) / CIFAR10.filename
    if not archive.is_file():
        return None
    return "passes" if check_integrity(str(archive), CIFAR10.tgz_md5) else "fails"


def cifar10_missing(data_dir, download, dry_run, error):
    """The one-line error for CIFAR-10 files that torchvision could not find, verify or download: what
    is there, and the one way to get them without the network."""
    from torchvision.datasets import CIFAR10

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


def list_folder_split(root, split, classes=None, evaluating=False):
    """(classes, [(path, label), ...]) of DIR/SPLIT by ImageFolder's rules (make_dataset): class folders
    sorted by name, files with an image extension found through subfolders. Hidden folders
    (.ipynb_checkpoints) are not classes. CLASSES, when given, are the training split's, which this split
    must hold too, and no other; a class folder without images is refused. When EVALUATING a checkpoint
    of CLASSES, the test split may lack some, or hold no images of some."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise DataError(f"{split_dir} does not exist; a folder dataset needs DIR/train/<class>/ "
                        "and DIR/test/<class>/ image folders")
    try:
        found = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir() and entry.name[0] != ".")
        for name in found:  # class names become TensorBoard tags and report lines: text, one line each
            if not name.isprintable():
                raise DataError(f"class folder {str(split_dir / name)!r} has a name that is not printable text "
                                "(bytes that are not UTF-8, or control characters); rename it")
            if not (split_dir / name).resolve().is_relative_to(Path(root).resolve()):
                raise DataError(f"class folder {split_dir / name} leads outside {root} (a link to "
                                f"{(split_dir / name).resolve()}); a folder dataset's classes must be inside it")
        if not found:
            raise DataError(f"{split_dir} holds no class folders with images; expected {split_dir}/<class>/*.jpg")
        lacking = sorted(set(classes or found) - set(found)) if not evaluating else []
        unknown = sorted(set(found) - set(classes or found))
        if lacking or unknown:
            raise DataError(f"{Path(root) / 'train'} and {split_dir} must hold the same class folders, but "
                            + " and ".join(f"{where} lacks {', '.join(names)}" for where, names in
                                           ((split_dir, lacking), (Path(root) / "train", unknown)) if names)
                            + "; add or remove class folders so that both splits match")
        classes = list(classes or found)
        files = make_dataset(str(split_dir), {c: i for i, c in enumerate(classes)}, extensions=IMG_EXTENSIONS,
                             allow_empty=True)
    except OSError as e:
        raise DataError(f"cannot read {split_dir} ({e.strerror or e}); check its permissions") from None
    empty = [c for i, c in enumerate(classes) if c in found and not any(label == i for _, label in files)]
    if empty and not evaluating:
        raise DataError(f"{split_dir} has class folders with no images: {', '.join(empty)} (images end in "
                        f"{', '.join(IMG_EXTENSIONS)}); add images to them or remove them")
    return classes, [(Path(path), label) for path, label in files]


MAX_IMAGE_PIXELS = 40_000_000  # about a 6000x6000 photo; anything larger is refused before decoding


def decode_image(path):
    """Any image PIL reads (grayscale, RGBA, palette, CMYK ...) as uint8 RGB (3, 32, 32), resized
    bilinearly as torchvision's Resize((32, 32)) does. Raises DataError naming the problem."""
    from PIL import Image, UnidentifiedImageError

    if not str(path):  # Path("") is the current folder, which would be named instead
        raise DataError("an image path is empty; pass image files")
    path = Path(path)
    if regular_file_problem(path):  # a named pipe would block the read forever
        raise DataError(f"image {path} {regular_file_problem(path)}; pass image files")
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise DataError(f"image {path} is too large ({im.width}x{im.height} pixels, limit "
                                f"{MAX_IMAGE_PIXELS:,}); shrink it first")
            return rgb_32x32(im, f"image {path}")
    except FileNotFoundError:
        problem = "does not exist; check the path"
    except IsADirectoryError:
        problem = "is a directory; pass the image files inside it"
    except PermissionError:
        problem = "is not readable; check its permissions"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        problem = f"is too large (over {MAX_IMAGE_PIXELS:,} pixels); shrink it first"
    except UnidentifiedImageError:
        problem = "is not an image format PIL can read; convert it to PNG or JPEG"
    except DataError:
        raise
    except Exception as e:  # PIL raises many kinds for damaged files: truncated data, bad headers
        problem = f"is damaged or truncated ({type(e).__name__}: {str(e)[:100]}); remove or replace it"
    raise DataError(f"image {path} {problem}")


def rgb_32x32(im, name):
    """A PIL image as uint8 RGB (3, 32, 32); NAME says which image in the DataError it may raise."""
    from PIL import Image

    if im.mode.startswith("I;16"):  # convert("RGB") would clip every value over 255 to white
        sixteen_bit = np.asarray(im, dtype=np.uint32)
        im = Image.fromarray(((sixteen_bit * 255 + 32767) // 65535).astype(np.uint8), "L")
    elif im.mode in ("I", "F"):
        raise DataError(f"{name} has 32-bit pixel values (PIL mode {im.mode}), which have no fixed white; "
                        "save it with 8 or 16 bits per channel (PNG or JPEG)")
    im = im.convert("RGB")
    if im.size != (32, 32):
        im = im.resize((32, 32), Image.BILINEAR)
    return np.array(im, dtype=np.uint8).transpose(2, 0, 1).copy()


def image_pixels(image):
    """One image as the network sees it before normalization: float (3, 32, 32) on ToTensor's 0-1 scale.
    IMAGE is a file path (anything decode_image reads), a PIL image, or a (3, H, W) tensor, uint8 or float
    from 0 to 1; other sizes are resized to 32 x 32 bilinearly. Raises DataError naming the problem."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        return torch.from_numpy(decode_image(image)).float().div_(255)
    if isinstance(image, Image.Image):
        return torch.from_numpy(rgb_32x32(image, "the PIL image")).float().div_(255)
    if not (torch.is_tensor(image) and image.dim() == 3 and image.shape[0] == 3 and image.numel()):
        shape = f"a tensor of shape {tuple(image.shape)}" if torch.is_tensor(image) else type(image).__name__
        raise DataError(f"an image must be a file path, a PIL image or a (3, H, W) tensor (got {shape}); "
                        "for a batch, pass a list of images")
    if image.dtype == torch.uint8:
        pixels = image.float().div(255)
    elif image.is_floating_point() and torch.isfinite(image).all() and 0 <= image.min() and image.max() <= 1:
        pixels = image.float()
    else:
        raise DataError(f"an image tensor must be uint8, or float from 0 to 1 as ToTensor gives (got {image.dtype}"
                        f" from {image.min().item():.3g} to {image.max().item():.3g}); divide uint8 pixels by 255")
    if pixels.shape[1:] != (32, 32):
        pixels = torch.nn.functional.interpolate(pixels[None], size=(32, 32), mode="bilinear", antialias=True)[0]
    return pixels.cpu()


def _fingerprint(files):
    digest = hashlib.sha1()
    for path, label in files:
        st = path.stat()
        digest.update(f"{path.name}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load_folder(root, split, classes=None, write_cache=True, evaluating=False, skipped=None):
    """DIR/SPLIT/<class>/* images, converted to RGB 32x32. Decoded once, then cached next to the data
    (DIR/.tudui-cache/) when that folder is writable, so later runs start in a fraction of a second.
    Images that cannot be read are all named in one DataError, unless SKIPPED is a list: they are then
    left out, and their paths added to it."""
    classes, files = list_folder_split(root, split, classes, evaluating)
    cache = Path(root) / ".tudui-cache" / f"{split}.pt"
    key = f"{CACHE_FORMAT}:{_fingerprint(files)}:{','.join(classes)}"
    try:
        cached = torch.load(cache, weights_only=True)
        if cached.get("key") != key:
            raise ValueError("stale")
        images, labels, bad = cached["images"], cached["labels"], cached["bad"]
    except Exception:  # a missing, stale or damaged cache is rebuilt
        images, labels, bad = decode_folder(files)
        if write_cache:
            write_cache_file(cache, {"key": key, "images": images, "labels": labels, "bad": bad})
    if bad and skipped is None:
        first = bad[0][1]
        others = ", ".join(path for path, _ in bad[1:4]) + (" ..." if len(bad) > 4 else "")
        raise DataError(f"{len(bad)} of {len(files)} images in {Path(root) / split} cannot be read: {first}"
                        f"{f'; also {others}' if others else ''}. Replace or remove them, or give --skip-bad-images "
                        "to train on the rest")
    if skipped is not None:
        skipped.extend(path for path, _ in bad)
    return images, labels, classes


def decode_folder(files):
    """(images, labels, [(path, why), ...] of the images that cannot be read) of FILES, [(path, label)]."""
    def decoded(path):
        try:
            return decode_image(path)
        except DataError as e:
            return str(e)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL decodes without the GIL
        results = list(pool.map(decoded, [p for p, _ in files]))
    good = [i for i, result in enumerate(results) if not isinstance(result, str)]
    bad = [(str(files[i][0]), result) for i, result in enumerate(results) if isinstance(result, str)]
    images = torch.from_numpy(np.stack([results[i] for i in good]) if good else np.zeros((0, 3, 32, 32), np.uint8))
    return images, torch.tensor([files[i][1] for i in good], dtype=torch.int64), bad


def write_cache_file(path, payload):
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        path.parent.mkdir(exist_ok=True)
        atomic_write(buffer.getvalue(), path)
    except (OSError, SettingsError):  # a read-only or full data folder just means no cache
        print(f"note: the decoded images could not be cached in {path.parent} (it is full or read-only); the next "
              "run decodes them again", file=sys.stderr)


def load_dataset(kind, data_dir, download=True, dry_run=False, skipped=None):
    """(train_images, train_labels, test_images, test_labels, classes). A DRY_RUN writes nothing: no
    download, no cache. SKIPPED: as load_folder's."""
    if kind == "cifar10":
        (train_x, train_y, classes), (test_x, test_y, _) = load_cifar10_splits(data_dir, ("train", "test"), download,
                                                                               dry_run)
    else:
        train_x, train_y, classes = load_folder(data_dir, "train", write_cache=not dry_run, skipped=skipped)
        test_x, test_y, _ = load_folder(data_dir, "test", classes, write_cache=not dry_run, skipped=skipped)
    return train_x, train_y, test_x, test_y, classes


def load_test_split(kind, data_dir, download=True, classes=None):
    """The test split alone, labelled in the order of CLASSES (a checkpoint's class names) when its
    folders are among them, else in sorted folder order as training uses."""
    if kind == "cifar10":
        return load_cifar10(data_dir, "test", download)
    found, _ = list_folder_split(data_dir, "test", evaluating=True)
    named = classes and set(found) <= set(classes)
    return load_folder(data_dir, "test", classes if named else found, evaluating=True)
