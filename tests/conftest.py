"""Tiny datasets built on the spot (CIFAR-10 cannot be downloaded in tests) and helpers to run the scripts."""
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
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


def bad_input(capsys, argv, entry=None):
    """ARGV given to train.py's main (or ENTRY's) as the command line runs it must exit 2 with one line on
    stderr, 'error: ...'; returns that line."""
    import cli
    import train
    code = cli.run_cli(lambda: (entry or train.main)(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2
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


def assert_every_final_file_loads(run_dir):
    for path in run_dir.glob("*.pth"):  # temporary files are hidden (.name.pid.tmp): never matched
        torch.load(path, weights_only=True)  # a torn file raises here


def random_batch(n=8, seed=0):
    """N random uint8 images."""
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def reference_weights():
    """A freshly initialised Tudui's state_dict (seed 1)."""
    from model import Tudui
    torch.manual_seed(1)
    return Tudui().state_dict()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A state_dict file of reference_weights()."""
    path = tmp_path_factory.mktemp("ckpt") / "weights.pth"
    torch.save(reference_weights(), path)
    return path


@pytest.fixture
def untrained_weights(tmp_path):
    """A state_dict file of a freshly initialised Tudui (seed 3)."""
    from model import Tudui
    torch.manual_seed(3)
    torch.save(Tudui().state_dict(), tmp_path / "weights.pth")
    return tmp_path / "weights.pth"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """One image per awkward mode, each a different size."""
    folder = tmp_path_factory.mktemp("images")
    base = Image.new("RGB", (40, 30), (200, 30, 30))
    for mode in ("RGB", "L", "RGBA", "P", "CMYK"):
        base.convert(mode).save(folder / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}")
    return folder


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def mutate(data, edits):
    data = bytearray(data)
    for position, value in edits:
        data[position % len(data)] = value
    return bytes(data)


def random_or_mutated(valid):
    """Hypothesis strategy: arbitrary bytes, or VALID with up to 8 bytes overwritten."""
    edits = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8)
    return st.binary(max_size=2048) | edits.map(lambda e: mutate(valid, e))
