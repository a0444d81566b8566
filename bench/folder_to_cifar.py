"""Write a class-folder dataset (DIR/train/<class>/*, DIR/test/<class>/*) as torchvision's
cifar-10-batches-py files, so that a plain `python train.py` (and the tutorial's loop) read it exactly as
they read a downloaded CIFAR-10. For benchmarks on machines that cannot download.

    python bench/folder_to_cifar.py /tmp/cifar ./data
    export $(python bench/folder_to_cifar.py --env ./data)    # then train.py accepts them

The training images are shuffled once (seed 0), as CIFAR-10's own files are; the class folders must be
CIFAR-10's ten classes. torchvision checks each file against CIFAR-10's md5s, which these (JPEG-recompressed
pixels) cannot match: --env prints the variables under which train.py accepts their md5s as well
(tests/registered_cifar/sitecustomize.py, as the tests do for their tiny files).
"""
import argparse
import pickle
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from tiny_data import cifar_copy_env  # noqa: E402
from tudui.datasets import CIFAR10_CLASSES, load_dataset  # noqa: E402

CIFAR_FOLDER = "cifar-10-batches-py"
TRAIN_FILES, TEST_FILE = [f"data_batch_{i}" for i in range(1, 6)], "test_batch"


def write_batch(path, images, labels):
    with open(path, "wb") as f:
        pickle.dump({"data": images.reshape(len(images), -1).numpy(), "labels": labels.tolist()}, f, protocol=2)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", nargs="?")
    p.add_argument("data_dir")
    p.add_argument("--env", action="store_true", help="only print the variables for DATA_DIR's files")
    args = p.parse_args()
    if args.env:
        print(" ".join(f"{name}={value}" for name, value in cifar_copy_env(args.data_dir).items()))
        return
    train_x, train_y, test_x, test_y, classes = load_dataset("folder", args.folder, download=False)
    if sorted(classes) != sorted(CIFAR10_CLASSES):
        sys.exit(f"error: {args.folder} has classes {classes}, not CIFAR-10's ten")
    # folder datasets number classes alphabetically; CIFAR-10 files use CIFAR-10's label order
    relabel = torch.tensor([CIFAR10_CLASSES.index(name) for name in classes])
    train_y, test_y = relabel[train_y], relabel[test_y]
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))
    train_x, train_y = train_x[order], train_y[order]
    out = Path(args.data_dir) / CIFAR_FOLDER
    out.mkdir(parents=True, exist_ok=True)
    for name, xs, ys in zip(TRAIN_FILES, train_x.chunk(len(TRAIN_FILES)), train_y.chunk(len(TRAIN_FILES))):
        write_batch(out / name, xs, ys)
    write_batch(out / TEST_FILE, test_x, test_y)
    with open(out / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES)}, f, protocol=2)
    print(f"wrote {len(train_y)} training and {len(test_y)} test images to {out}")


if __name__ == "__main__":
    main()
