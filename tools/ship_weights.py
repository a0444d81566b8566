"""Make the trained weights the project ships (tudui/weights/tuned-50-epochs.pth): a `--recipe tuned`
run of 50 epochs, trained here by train.py, then its last checkpoint without what only resuming needs
(the optimizer's momentum and the RNG state), with what made it and what it scores.

    python tools/ship_weights.py                                  # CIFAR-10 in ./data, as train.py gets it
    python tools/ship_weights.py --dataset folder --data-dir /tmp/cifar

The run's own folder (TensorBoard, metrics.jsonl, every checkpoint) stays in --logdir.
"""
import argparse
import io
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train  # noqa: E402
from tudui import SHIPPED_WEIGHTS  # noqa: E402
from tudui.checkpoints import read_checkpoint  # noqa: E402
from tudui.runs import atomic_write  # noqa: E402

RESUME_ONLY = ("format", "optimizer", "rng", "best_accuracy")


def shipped(checkpoint, trained_on):
    """CHECKPOINT (train.py's dict) as the file the project ships: loadable by load_tudui, --evaluate and
    predict.py, not resumable; TRAINED_ON says which copy of CIFAR-10 its test accuracy is of."""
    kept = {key: value for key, value in checkpoint.items() if key not in RESUME_ONLY}
    kept["trained_on"] = trained_on
    return kept


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "folder"])
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--trained-on", help="the data, in words (default: the --dataset and --data-dir)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logdir", default="./logs_train")
    p.add_argument("--out", default=str(SHIPPED_WEIGHTS))
    args = p.parse_args()
    result = train.main(["--recipe", "tuned", "--epochs", str(args.epochs), "--seed", str(args.seed),
                         "--dataset", args.dataset, "--data-dir", args.data_dir, "--logdir", args.logdir,
                         "--run-name", f"shipped-weights-seed{args.seed}"])
    trained_on = args.trained_on or f"--dataset {args.dataset} --data-dir {args.data_dir}"
    weights = shipped(read_checkpoint(result.last_path), trained_on)
    os.makedirs(Path(args.out).parent, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    atomic_write(buffer.getvalue(), args.out)
    print(f"{args.out}: {Path(args.out).stat().st_size / 1e6:.2f} MB, test accuracy "
          f"{weights['test_accuracy']:.2%} after {weights['epoch'] + 1} epochs, from {result.last_path}")


if __name__ == "__main__":
    main()
