"""Tiny datasets made on the spot (CIFAR-10 cannot be downloaded in tests), for the tests and bench scripts.

torchvision's CIFAR10 checks each batch file's md5 against the real CIFAR-10's before unpickling it. The
tests make it accept the md5s of the tiny files as well (accept_tiny_cifar, through tools/cifar_copy.py), in
their own process and, through tools/accepted_md5s/sitecustomize.py, in the scripts they start: the
project's code is left exactly as strict as it is for users.
"""
import pickle
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import cifar_copy  # noqa: E402  (the md5s torchvision accepts; tools/, shared with the benchmarks)

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TINY_CHECKSUMS = set()  # md5s of every tiny CIFAR-10 file written in this process


def class_images(n, num_classes, seed):
    """uint8 (n, 3, 32, 32) images whose mean colour depends on the label, so a network can learn them."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    base = (labels * 255 // max(1, num_classes - 1)).astype(np.int64)
    colour = np.stack([base, 255 - base, (base * 7) % 256], axis=1)[:, :, None, None]
    images = np.clip(colour + rng.integers(-40, 40, (n, 3, 32, 32)), 0, 255).astype(np.uint8)
    return images, labels


def write_cifar_batches(root, train_per_batch=40, test=100):
    """A cifar-10-batches-py folder in torchvision's layout (5 train batches, a test batch, batches.meta)."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        images, labels = class_images(test if name == "test_batch" else train_per_batch, 10, seed=i)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": images.reshape(len(images), -1), "labels": labels.tolist()}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CLASSES)}, f, protocol=2)
    TINY_CHECKSUMS.update(md5(folder / name) for name in [*names, "batches.meta"])
    return Path(root)


def md5(path):
    return cifar_copy.md5(path)


def accept_tiny_cifar(checksums=TINY_CHECKSUMS):
    """Make torchvision's CIFAR10 accept, besides CIFAR-10's own files, those whose md5 is in CHECKSUMS
    (every file write_cifar_batches wrote, by default)."""
    cifar_copy.accept(checksums)


def tiny_cifar_env(checksums=TINY_CHECKSUMS):
    """Environment variables under which a script started by a test accepts the files of CHECKSUMS (the
    tiny ones by default), as accept_tiny_cifar does in the test's own process."""
    return cifar_copy.environment(checksums)


def write_image_folder(root, classes=("cat", "dog", "ship"), train_per_class=12, test_per_class=6):
    """DIR/train/<class>/ and DIR/test/<class>/ images of mixed sizes and modes."""
    modes = ["RGB", "L", "RGBA", "P", "CMYK"]
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        images, labels = class_images(count * len(classes), len(classes), seed=len(split))
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = Path(root) / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            picture = Image.fromarray(image.transpose(1, 2, 0)).resize((32 + 8 * (i % 3), 32 + 4 * (i % 2)))
            mode = modes[i % len(modes)]
            picture.convert(mode).save(folder / f"{i:04d}.{'jpg' if mode == 'CMYK' else 'png'}")
    return Path(root)
