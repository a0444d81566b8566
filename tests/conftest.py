"""Fixtures on tiny datasets built on the spot (tiny_data.py) and helpers to run the scripts."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from tiny_data import (CLASSES, accept_tiny_cifar, class_images, md5, tiny_cifar_env,  # noqa: E402,F401
                       write_cifar_batches, write_image_folder)


accept_tiny_cifar()
if os.environ.get("PYTEST_XDIST_WORKER"):  # the suite's two processes share two cores: a thread each, and each script
    torch.set_num_threads(1)                # a test starts, too (torch's threads spin while they wait for work)
    os.environ["OMP_NUM_THREADS"] = "1"


def parse(argv):
    """The Settings that train.py's command line ARGV makes, as train.main makes them."""
    from tudui import checkpoints, settings

    given = settings.command_line_settings(argv)
    resumed = checkpoints.load_training_checkpoint(given["resume"]) if "resume" in given else None
    return settings.resolve(given, resumed)


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    return write_cifar_batches(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(scope="session")
def folder_dir(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("folder"))


@pytest.fixture(scope="session")
def finished_run(cifar_dir, tmp_path_factory):
    """One finished tiny run of the tutorial's recipe (2 epochs of 4 steps, the loss logged every 2), for
    the tests that only read what a run wrote: its TrainResult. Never write into its folder."""
    import train
    logdir = tmp_path_factory.mktemp("finished")
    return train.main(["--data-dir", str(cifar_dir), "--no-download", "--logdir", str(logdir), "--run-name", "run",
                       "--device", "cpu", "--quiet", "--epochs", "2", "--log-every", "2"])


@pytest.fixture
def train_args(cifar_dir, tmp_path):
    """Flags for a quick, fully local run on the tiny CIFAR-10 folder."""
    return ["--data-dir", str(cifar_dir), "--no-download", "--logdir", str(tmp_path / "logs"),
            "--run-name", "run", "--device", "cpu", "--quiet", "--batch-size", "64", "--log-every", "1"]


def run_script(*args, cwd=ROOT, timeout=240, env=None):
    """Run a project script as a user would; returns the CompletedProcess."""
    environment = dict(os.environ, PYTHONUNBUFFERED="1", **tiny_cifar_env(), **(env or {}))
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=environment)


def copy_of_the_project(folder, model_source=None, train_edits=()):
    """The project's scripts and package in FOLDER, with MODEL_SOURCE as its model.py (None: the shipped one)
    and train.py edited as a learner would: each (old, new) of TRAIN_EDITS replaces a line that must be there."""
    import shutil

    for name in ("train.py", "predict.py", "model.py"):
        shutil.copy(ROOT / name, folder / name)
    shutil.copytree(ROOT / "tudui", folder / "tudui", ignore=shutil.ignore_patterns("__pycache__"))
    if model_source is not None:
        (folder / "model.py").write_text(model_source)
    source = (folder / "train.py").read_text()
    for old, new in train_edits:
        assert old in source, f"train.py no longer has {old!r}"
        source = source.replace(old, new)
    (folder / "train.py").write_text(source)
    return folder


def run_in_copy(project, code, *args, timeout=240):
    """CODE, a Python script, run in PROJECT's folder (its train.py, model.py and tudui) in a process of its
    own; the CompletedProcess."""
    (project / "driver.py").write_text(code)
    return run_script("driver.py", *args, cwd=project, timeout=timeout)


def bad_input(capsys, argv, entry=None):
    """ARGV given to train.py's main (or ENTRY's) as the command line runs it must exit 2 with one line on
    stderr, 'error: ...'; returns that line."""
    import train
    from tudui import console
    code = console.run_cli(lambda: (entry or train.main)(argv))
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
    """A freshly initialised tutorial network's state_dict (seed 1): the keys and shapes of its files."""
    from tudui.checkpoints import TutorialTudui
    torch.manual_seed(1)
    return TutorialTudui().state_dict()


@pytest.fixture
def tutorial_network(monkeypatch):
    """For a test about the tutorial's own network (its layers, its checkpoints' keys and shapes): model.py's
    Tudui is, for the test, the tutorial's (tudui.checkpoints.TutorialTudui), whatever model.py holds."""
    import train
    from tudui import checkpoints
    monkeypatch.setattr(checkpoints, "Tudui", checkpoints.TutorialTudui)
    monkeypatch.setattr(train, "Tudui", checkpoints.TutorialTudui)
    return checkpoints.TutorialTudui


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


@pytest.fixture
def small_disk(tmp_path):
    """A function that mounts a tmpfs of SIZE bytes at tmp_path/NAME and returns its path: a real disk
    that fills up. Skips the test where mounting is not allowed (not root, no tmpfs)."""
    mounted = []

    def mount(name, size):
        folder = tmp_path / name
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()[:80]})")
        mounted.append(folder)
        return folder
    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
