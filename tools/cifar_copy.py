"""Copies of CIFAR-10 in torchvision's own format, and the md5s torchvision then accepts: a class-folder
dataset (DIR/train/<class>/*, DIR/test/<class>/*) written as cifar-10-batches-py files, so that a plain
`python train.py` (and the tutorial's loop) read it exactly as they read a downloaded CIFAR-10. For
benchmarks on machines that cannot download, and for the tests' tiny files.

    python tools/cifar_copy.py /tmp/cifar ./data
    export $(python tools/cifar_copy.py --env ./data)    # then train.py accepts them

The training images are shuffled once (seed 0), as CIFAR-10's own files are; the class folders must be
CIFAR-10's ten classes. torchvision checks each file against CIFAR-10's md5s, which these (JPEG-recompressed
pixels) cannot match: --env prints the variables under which a script accepts their md5s as well
(tools/accepted_md5s/sitecustomize.py runs accept() at its start). The project's code is left exactly as
strict as it is for users.
"""
import argparse
import os
import pickle
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACCEPTED = ROOT / "tools" / "accepted_md5s"

CIFAR_FOLDER = "cifar-10-batches-py"
TRAIN_FILES, TEST_FILE = [f"data_batch_{i}" for i in range(1, 6)], "test_batch"


def md5(path):
    from torchvision.datasets.utils import calculate_md5  # in chunks, as torchvision's own check reads

    return calculate_md5(str(path))


def accept(checksums):
    """Make torchvision's CIFAR10 accept, besides CIFAR-10's own files, those whose md5 is in CHECKSUMS (a
    set, which may grow). Each file is still checked before it is read."""
    from torchvision.datasets import cifar

    if getattr(cifar.check_integrity, "accepts", None) is not None:
        cifar.check_integrity.accepts.update(checksums)
        return

    def check_integrity(path, checksum=None):  # torchvision's check, with more checksums accepted
        if not os.path.isfile(path):
            return False
        digest = md5(path)
        return checksum is None or digest == checksum or digest in check_integrity.accepts
    check_integrity.accepts = checksums
    cifar.check_integrity = check_integrity


def environment(checksums):
    """Environment variables under which a script accepts the files of CHECKSUMS too, as accept() does in
    this process (through tools/accepted_md5s/sitecustomize.py)."""
    path = os.pathsep.join(filter(None, [str(ACCEPTED), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "TUDUI_ACCEPT_CIFAR_MD5": ",".join(sorted(checksums))}


def copy_environment(data_dir):
    """environment() for every file of DATA_DIR/cifar-10-batches-py."""
    folder = Path(data_dir) / CIFAR_FOLDER
    return environment({md5(path) for path in folder.iterdir() if path.is_file()} if folder.is_dir() else set())


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
        print(" ".join(f"{name}={value}" for name, value in copy_environment(args.data_dir).items()))
        return
    import torch

    sys.path.insert(0, str(ROOT))
    from tudui.checkpoints import CIFAR10_CLASSES
    from tudui.datasets import load_split

    (train_x, train_y, classes), (test_x, test_y, _) = (load_split("folder", args.folder, split)
                                                        for split in ("train", "test"))
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
