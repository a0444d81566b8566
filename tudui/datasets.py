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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from tudui.errors import DataError, SettingsError
from tudui.files import atomic_write

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CACHE_FORMAT = 2  # raised whenever decode_image changes, so that caches of the old decoding are rebuilt


def load_cifar10(data_dir, split, download, dry_run=False):
    """torchvision's CIFAR10 in DATA_DIR, downloaded by it when missing (never in a DRY_RUN, which writes
    nothing). SPLIT is "train" or "test". torchvision checks every file's md5 against CIFAR-10's before it
    unpickles one."""
    from torchvision.datasets import CIFAR10

    try:
        if download and not dry_run:
            Path(data_dir).mkdir(parents=True, exist_ok=True)
        dataset = CIFAR10(root=str(data_dir), train=split == "train", download=download and not dry_run)
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        raise cifar10_missing(Path(data_dir), download, dry_run, e) from None
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(dataset.targets, dtype=torch.int64), list(dataset.classes)


def cifar10_missing(data_dir, download, dry_run, error):
    """The one-line error for CIFAR-10 files that torchvision could not find, verify or download."""
    from torchvision.datasets import CIFAR10

    folder = data_dir / CIFAR10.base_folder
    names = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    missing = [name for name in names if not (folder / name).is_file()]
    if download and not dry_run:
        return DataError(f"could not download CIFAR-10 into {data_dir} ({str(error)[:150]}); check the network, "
                         f"or place {CIFAR10.filename} in {data_dir} and run again")
    if not missing:
        where = f"{folder} fails torchvision's md5 check (a damaged or altered file); delete it"
    elif folder.is_dir():
        where = f"{folder} lacks {', '.join(missing)}"
    else:
        where = f"CIFAR-10 is not in {folder}"
    why = ("--dry-run downloads nothing; run without it to fetch CIFAR-10 (about 170 MB)" if dry_run
           else "--no-download was given; drop --no-download to fetch it")
    return DataError(f"{where} and {why}, or point --data-dir at a folder that has it")


def list_folder_split(root, split, classes=None, allow_empty=False):
    """(classes, [(path, label), ...]) of DIR/SPLIT by ImageFolder's rules (find_classes and make_dataset):
    class folders sorted by name, files with an image extension found through subfolders, and a class
    with none refused. Hidden folders (.ipynb_checkpoints) are not classes. CLASSES, when given, are the
    training split's, which this split must have too, unless ALLOW_EMPTY (a checkpoint's classes, scored
    on the test images there are)."""
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
        if not found:
            raise DataError(f"{split_dir} holds no class folders with images; expected {split_dir}/<class>/*.jpg")
        unknown = sorted(set(found) - set(classes or found))
        if unknown:
            raise DataError(f"{split_dir} has classes {unknown} that the training split lacks; "
                            "both splits need the same class folders")
        classes = list(classes or found)
        files = make_dataset(str(split_dir), {c: i for i, c in enumerate(classes)}, extensions=IMG_EXTENSIONS,
                             allow_empty=allow_empty)
    except FileNotFoundError as e:  # make_dataset's: a class without images
        raise DataError(f"{split_dir}: {str(e).strip()}; add images to those class folders or remove them") from None
    except OSError as e:
        raise DataError(f"cannot read {split_dir} ({e.strerror or e}); check its permissions") from None
    return classes, [(Path(path), label) for path, label in files]


MAX_IMAGE_PIXELS = 40_000_000  # about a 6000x6000 photo; anything larger is refused before decoding


def decode_image(path):
    """Any image PIL reads (grayscale, RGBA, palette, CMYK ...) as uint8 RGB (3, 32, 32), resized
    bilinearly as torchvision's Resize((32, 32)) does. Raises DataError naming the problem."""
    from PIL import Image, UnidentifiedImageError

    if not str(path):  # Path("") is the current folder, which would be named instead
        raise DataError("an image path is empty; pass image files")
    path = Path(path)
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


def load_folder(root, split, classes=None, write_cache=True, allow_empty=False):
    """DIR/SPLIT/<class>/* images, converted to RGB 32x32. Decoded once, then cached next to the data
    (DIR/.tudui-cache/) when that folder is writable, so later runs start in a fraction of a second."""
    classes, files = list_folder_split(root, split, classes, allow_empty)
    cache = Path(root) / ".tudui-cache" / f"{split}.pt"
    key = f"{CACHE_FORMAT}:{_fingerprint(files)}:{','.join(classes)}"
    try:
        cached = torch.load(cache, weights_only=True)
        if cached.get("key") == key:
            return cached["images"], cached["labels"], classes
    except Exception:  # a missing, stale or damaged cache is rebuilt
        pass
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL decodes without the GIL
        images = torch.from_numpy(np.stack(list(pool.map(decode_image, [p for p, _ in files]))))
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    if write_cache:
        write_cache_file(cache, {"key": key, "images": images, "labels": labels})
    return images, labels, classes


def write_cache_file(path, payload):
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        path.parent.mkdir(exist_ok=True)
        atomic_write(buffer.getvalue(), path)
    except (OSError, SettingsError):  # a read-only or full data folder just means no cache
        pass


def load_cifar10_splits(data_dir, download, dry_run):
    """Both splits of CIFAR-10, read at once on two threads (torchvision checks all six files' md5s for
    each split, and hashing runs without the GIL); downloaded first when that fails and DOWNLOAD allows."""
    try:
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda split: load_cifar10(data_dir, split, False, dry_run), ("train", "test")))
    except DataError:
        if not download or dry_run:
            raise
    return [load_cifar10(data_dir, split, True) for split in ("train", "test")]


def load_dataset(kind, data_dir, download=True, dry_run=False):
    """(train_images, train_labels, test_images, test_labels, classes). A DRY_RUN writes nothing: no
    download, no cache."""
    if kind == "cifar10":
        (train_x, train_y, classes), (test_x, test_y, _) = load_cifar10_splits(data_dir, download, dry_run)
    else:
        train_x, train_y, classes = load_folder(data_dir, "train", write_cache=not dry_run)
        test_x, test_y, _ = load_folder(data_dir, "test", classes, write_cache=not dry_run)
    return train_x, train_y, test_x, test_y, classes


def load_test_split(kind, data_dir, download=True, classes=None):
    """The test split alone, labelled in the order of CLASSES (a checkpoint's class names) when its
    folders are among them, else in sorted folder order as training uses."""
    if kind == "cifar10":
        return load_cifar10(data_dir, "test", download)
    found, _ = list_folder_split(data_dir, "test")
    named = classes and set(found) <= set(classes)
    return load_folder(data_dir, "test", classes if named else found, allow_empty=named)
