"""Fingerprints of the weights and momentum buffers that three-epoch runs of four recipes end with, on a
tiny CIFAR-10 made on the spot: run it against two versions of the code to show a change kept every bit.

    python tools/same_weights.py                  # this checkout
    python tools/same_weights.py --repo OTHER     # another checkout's train.py, on the same data
"""
import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {
    "tutorial": [],
    "tuned": ["--recipe", "tuned"],
    "sgd-onecycle-warmup": ["--momentum", "0.9", "--schedule", "onecycle", "--warmup", "0.1"],
    "amp-nesterov": ["--amp", "--momentum", "0.9", "--nesterov"],
}


def fingerprint(state):
    digest = hashlib.sha256()
    for key in sorted(state["model"]):
        digest.update(key.encode() + state["model"][key].numpy().tobytes())
    for slot in sorted(state["optimizer"]["state"]):
        digest.update(state["optimizer"]["state"][slot]["momentum_buffer"].numpy().tobytes())
    return digest.hexdigest()[:16]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=str(ROOT), help="the checkout whose train.py runs")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_data import accept_tiny_cifar, write_cifar_batches

    sys.path.insert(0, args.repo)
    import torch
    import train

    with tempfile.TemporaryDirectory() as tmp:
        data = write_cifar_batches(Path(tmp) / "data", train_per_batch=240, test=200)
        accept_tiny_cifar()
        for name, flags in RECIPES.items():
            logs = Path(tmp) / name
            train.main(["--data-dir", str(data), "--no-download", "--logdir", str(logs), "--run-name", "run",
                        "--device", "cpu", "--quiet", "--epochs", "3", *flags])
            state = torch.load(logs / "run" / "last.pth", weights_only=True)
            print(f"{name:22s} {fingerprint(state)}")


if __name__ == "__main__":
    main()
