"""Write a class-folder dataset (DIR/train/<class>/*, DIR/test/<class>/*) as torchvision's
cifar-10-batches-py files, so that a plain `python train.py` (and the tutorial's loop) read it exactly as
they read a downloaded CIFAR-10. For benchmarks on machines that cannot download.

    python bench/folder_to_cifar.py /tmp/cifar ./data

The training images are shuffled once (seed 0), as CIFAR-10's own files are; the class folders must be
CIFAR-10's ten classes.
"""
import argparse
import pickle
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from data import CIFAR_FILES, CIFAR_FOLDER, load_dataset  # noqa: E402
from model import CIFAR10_CLASSES  # noqa: E402


def write_batch(path, images, labels):
    with open(path, "wb") as f:
        pickle.dump({"data": images.reshape(len(images), -1).numpy(), "labels": labels.tolist()}, f, protocol=2)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("data_dir")
    args = p.parse_args()
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
    names = CIFAR_FILES["train"]
    for name, xs, ys in zip(names, train_x.chunk(len(names)), train_y.chunk(len(names))):
        write_batch(out / name, xs, ys)
    write_batch(out / CIFAR_FILES["test"][0], test_x, test_y)
    with open(out / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES)}, f, protocol=2)
    print(f"wrote {len(train_y)} training and {len(test_y)} test images to {out}")


if __name__ == "__main__":
    main()
