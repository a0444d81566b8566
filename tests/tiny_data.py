"""Tiny datasets made on the spot (CIFAR-10 cannot be downloaded in tests), for the tests and bench scripts.

torchvision's CIFAR10 checks each batch file's md5 against the real CIFAR-10's before unpickling it. The
tiny files are registered with it as the test's own checksums (registered_cifar_checksums), in this
process or, through tests/registered_cifar/sitecustomize.py, in a script the test starts: the project's
code is left exactly as strict as it is for users.
"""
import contextlib
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
REGISTERED = Path(__file__).resolve().parent / "registered_cifar"


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
    return Path(root)


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def register_cifar_checksums(root):
    """Make torchvision's CIFAR10 accept the tiny files under ROOT (and only them, byte for byte)."""
    from torchvision.datasets import CIFAR10

    folder = Path(root) / CIFAR10.base_folder
    CIFAR10.train_list = [[name, md5(folder / name)] for name, _ in CIFAR10.train_list]
    CIFAR10.test_list = [[name, md5(folder / name)] for name, _ in CIFAR10.test_list]
    CIFAR10.meta = dict(CIFAR10.meta, md5=md5(folder / CIFAR10.meta["filename"]))


@contextlib.contextmanager
def registered_cifar_checksums(root):
    from torchvision.datasets import CIFAR10

    saved = CIFAR10.train_list, CIFAR10.test_list, CIFAR10.meta
    register_cifar_checksums(root)
    try:
        yield
    finally:
        CIFAR10.train_list, CIFAR10.test_list, CIFAR10.meta = saved


def registered_env(root):
    """Environment variables under which a script started by a test accepts the tiny files under ROOT."""
    path = os.pathsep.join(filter(None, [str(REGISTERED), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "TUDUI_TEST_CIFAR": str(root)}


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
