"""Tiny datasets built on the spot (CIFAR-10 cannot be downloaded in tests) and helpers to run the scripts."""
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


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


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    return write_cifar_batches(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(scope="session")
def folder_dir(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("folder"))


@pytest.fixture
def train_args(cifar_dir, tmp_path):
    """Flags for a quick, fully local run on the tiny CIFAR-10 folder."""
    return ["--data-dir", str(cifar_dir), "--no-download", "--logdir", str(tmp_path / "logs"),
            "--run-name", "run", "--device", "cpu", "--quiet", "--batch-size", "64", "--log-every", "1"]


def run_script(*args, cwd=ROOT, timeout=240, env=None):
    """Run a project script as a user would; returns the CompletedProcess."""
    environment = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=environment)


def bad_input(capsys, argv):
    """train.main(ARGV) must exit 2 with one line on stderr, 'error: ...'; returns that line."""
    import train
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def cosine_lrs(peak, steps):
    """The cosine schedule written out: the lr of each of STEPS steps, from PEAK down towards 0."""
    return [peak * 0.5 * (1 + math.cos(math.pi * step / steps)) for step in range(steps)]


def needs_shared(*parts):
    path = SHARED.joinpath(*parts)
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is absent (only the team's machines have ../shared)")


@pytest.fixture(scope="session")
def real_cifar(tmp_path_factory):
    """The real CIFAR-10 test images from ../shared, unpacked once (evaluation only)."""
    archive = SHARED / "cifar10-jpg.tar.xz"
    root = tmp_path_factory.mktemp("real_cifar")
    subprocess.run(["tar", "-xJf", str(archive), "-C", str(root), "test"], check=True)
    return root
