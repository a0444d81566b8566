"""The data: datasets as whole tensors (images uint8 (N, 3, 32, 32), labels int64 (N,), class names),
reading image files, each epoch's seeded order and augmentation plan, batch augmentation, normalization
statistics, and the conversion to the network's input. Holds no model or training code.

Loading a split once into one tensor replaces the tutorial's per-sample DataLoader + ToTensor:
`images.float() / 255` is numerically what ToTensor gives, and batches are slices of a permutation.
"""
import codecs
import hashlib
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

from errors import DataError, SettingsError
from model import CIFAR10_CLASSES

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
CACHE_FORMAT = 2  # raised whenever decode_image changes, so that caches of the old decoding are rebuilt


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10's python batches are pickles of dicts of numpy arrays. Allowing only numpy's array
    reconstruction keeps a tampered data file from running code."""

    def find_class(self, module, name):
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            return _reconstruct
        if (module, name) in {("numpy", "ndarray"), ("numpy", "dtype")}:
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # how protocol-2 pickles from Python 3 store bytes
            return codecs.encode
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")


def _read_cifar_batch(path):
    try:
        with open(path, "rb") as f:
            entry = _ArrayOnlyUnpickler(f, encoding="latin1").load()
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry["labels"] if "labels" in entry else entry["fine_labels"], dtype=np.int64)
        if len(labels) != len(data):
            raise ValueError(f"{len(data)} images but {len(labels)} labels")
        return data, labels
    except Exception as e:  # any malformation of a data file means the same thing to the user
        raise DataError(f"{path} is not a readable CIFAR-10 batch ({type(e).__name__}: {str(e)[:120]}); "
                        f"delete the {CIFAR_FOLDER} folder and download it again") from None


def load_cifar10(data_dir, split, download, dry_run=False):
    """The torchvision CIFAR-10 files in DATA_DIR/cifar-10-batches-py, downloaded by torchvision if missing
    (never in a DRY_RUN, which writes nothing)."""
    folder = Path(data_dir) / CIFAR_FOLDER
    files = [folder / name for name in CIFAR_FILES[split]]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        if dry_run or not download:
            where = f"{folder} lacks {', '.join(missing)}" if folder.is_dir() else f"CIFAR-10 is not in {folder}"
            why = ("--dry-run downloads nothing; run without it to fetch CIFAR-10 (about 170 MB)" if dry_run
                   else "--no-download was given; drop --no-download to fetch it")
            raise DataError(f"{where} and {why}, or point --data-dir at a folder that has it")
        _download_cifar10(data_dir, split)
    parts = [_read_cifar_batch(f) for f in files]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
        raise DataError(f"{folder} has labels outside 0-9; delete the folder and download it again")
    return images, labels, list(CIFAR10_CLASSES)


def _download_cifar10(data_dir, split):
    import torchvision  # only needed for the one-time download

    try:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        torchvision.datasets.CIFAR10(root=str(data_dir), train=(split == "train"), download=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        raise DataError(f"could not download CIFAR-10 into {data_dir} ({str(e)[:150]}); "
                        "check the network, or place cifar-10-python.tar.gz there by hand") from None


def _list_folder_split(root, split):
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise DataError(f"{split_dir} does not exist; a folder dataset needs DIR/train/<class>/ "
                        "and DIR/test/<class>/ image folders")
    try:
        classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
        files = [(p, c) for c in classes for p in sorted((split_dir / c).iterdir())
                 if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    except OSError as e:
        raise DataError(f"cannot read {split_dir} ({e.strerror or e}); check its permissions") from None
    if not classes or not files:
        raise DataError(f"{split_dir} holds no class folders with images; expected {split_dir}/<class>/*.jpg")
    for name in classes:  # class names become TensorBoard tags and report lines: text, one line each
        if not name.isprintable():
            raise DataError(f"class folder {str(split_dir / name)!r} has a name that is not printable text "
                            "(bytes that are not UTF-8, or control characters); rename it")
    return classes, files


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


def load_folder(root, split, classes=None, write_cache=True):
    """DIR/SPLIT/<class>/* images, converted to RGB 32x32. Decoded once, then cached next to the data
    (DIR/.tudui-cache/) when that folder is writable, so later runs start in a fraction of a second."""
    found, files = _list_folder_split(root, split)
    classes = classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{Path(root) / split} has classes {unknown} that the training split lacks; "
                        "both splits need the same class folders")
    index = {c: i for i, c in enumerate(classes)}
    files = [(p, index[c]) for p, c in files]
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
        _write_cache(cache, {"key": key, "images": images, "labels": labels})
    return images, labels, classes


def _write_cache(path, payload):
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except OSError:  # a read-only data folder just means no cache
        tmp.unlink(missing_ok=True)


def load_dataset(kind, data_dir, download=True, dry_run=False):
    """(train_images, train_labels, test_images, test_labels, classes). A DRY_RUN writes nothing: no
    download, no cache."""
    if kind == "cifar10":
        train_x, train_y, classes = load_cifar10(data_dir, "train", download, dry_run)
        test_x, test_y, _ = load_cifar10(data_dir, "test", download, dry_run)
    else:
        train_x, train_y, classes = load_folder(data_dir, "train", write_cache=not dry_run)
        test_x, test_y, _ = load_folder(data_dir, "test", classes, write_cache=not dry_run)
    return train_x, train_y, test_x, test_y, classes


def load_test_split(kind, data_dir, download=True, classes=None):
    """The test split alone, labelled in the order of CLASSES (a checkpoint's class names) when its
    folders are among them, else in sorted folder order as training uses."""
    if kind == "cifar10":
        return load_cifar10(data_dir, "test", download)
    found, _ = _list_folder_split(data_dir, "test")
    return load_folder(data_dir, "test", classes if classes and set(found) <= set(classes) else found)


# ---------------------------------------------------------------------------------------------- from uint8 to input

def channel_stats(images):
    """Per-channel mean and std of uint8 images, on the 0-1 scale ToTensor gives, from each channel's
    histogram of its 256 pixel values: exact, and without a float copy of the dataset."""
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for channel in images.transpose(0, 1):
        counts = torch.bincount(channel.reshape(-1), minlength=256).double()
        pixels = counts.sum()
        mean = (counts * values).sum() / pixels
        means.append(mean.item())
        stds.append(((counts * (values - mean) ** 2).sum() / (pixels - 1)).sqrt().item())
    return means, stds


def normalizer(preprocess, device):
    """A checkpoint's preprocess dict as (mean, std) tensors on DEVICE, made once so that no step copies
    from the host; None when the input is plain x / 255."""
    if preprocess.get("mean") is None:
        return None
    return tuple(torch.tensor(preprocess[k], device=device).view(1, -1, 1, 1) for k in ("mean", "std"))


def to_input(images, norm=None):
    """uint8 (B, 3, H, W) images, or float ones already on the 0-1 scale, as the network's float input:
    x / 255 (ToTensor), then (x - mean) / std if NORM."""
    x = images.float().div_(255) if images.dtype == torch.uint8 else images.to(torch.float32, copy=True)
    if norm is not None:
        x = x.sub_(norm[0]).div_(norm[1])
    return x.contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------- order and augmentation

def epoch_generator(seed, epoch):
    """Each epoch's randomness (order, augmentation) depends only on (seed, epoch): resumed runs and every
    distributed rank draw exactly what an uninterrupted single process would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def hold_out(images, labels, size, seed):
    """(training images, labels, validation images, labels): SIZE of the training images held out, drawn as
    epoch -1's order (epoch_generator), so by the seed alone: every epoch, a resumed run, --evaluate and
    every torchrun rank hold out the same images. Both parts keep the images' order."""
    if size >= len(labels):
        raise SettingsError(f"--val-split {size} would hold out every training image; the training split has "
                            f"{len(labels)}, so hold out fewer")
    order = torch.randperm(len(labels), generator=epoch_generator(seed, -1))
    kept, held = order[size:].sort().values, order[:size].sort().values
    return images[kept], labels[kept], images[held], labels[held]


def augment_plan(n, generator, max_shift):
    """Per-image flip flags and (dy, dx) shifts in [-max_shift, max_shift] for one epoch."""
    flips = torch.rand(n, generator=generator) < 0.5
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
    return flips, shifts


def augment_batch(images, flips, shifts):
    """Flip and translate a uint8 batch on its own device as tensor ops: each image is gathered through
    indices shifted by (dy, dx), and the strip uncovered at the edge mirrors the image (reflect padding,
    torchvision's padding_mode="reflect"), so no border of constant colour appears."""
    images = torch.where(flips.view(-1, 1, 1, 1), images.flip(3), images)
    b, c, h, w = images.shape
    rows = mirror(torch.arange(h, device=images.device) - shifts[:, 0:1], h).view(b, 1, h, 1)
    cols = mirror(torch.arange(w, device=images.device) - shifts[:, 1:2], w).view(b, 1, 1, w)
    batch = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    chans = torch.arange(c, device=images.device).view(1, c, 1, 1)
    return images[batch, chans, rows, cols]


def mirror(index, size):
    """Reflect out-of-range indices back into [0, size): -1 -> 1, size -> size - 2 (for shifts below size)."""
    return (size - 1) - ((size - 1) - index.abs()).abs()
