"""Time the tutorial's loop (bench/tutorial_loop.py) and train.py side by side, on the same data, in
one run, on every device present (or those given), and print a table: images/s, seconds per epoch,
process wall time, peak memory and the speed-up.

    python bench/compare.py --dataset folder --data-dir DIR --epochs 1
    python bench/compare.py --dataset folder --data-dir DIR --epochs 10 --tutorial-epochs 2 --devices cuda

"start-up s" runs from the launch to the first training step (imports, data, CUDA); "train s" sums the
training part of every epoch, "loop s" adds the test passes; "wall - loop" is start-up, exit and, for
train.py, the per-epoch checkpoints and TensorBoard pictures.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from cifar_copy import copy_environment  # noqa: E402


def run(cmd, env):
    """Run CMD in a fresh process; returns (its stdout, wall seconds, its peak RSS in MB, its launch time)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started, launched_at = time.perf_counter(), time.time()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"benchmark command failed: {' '.join(map(str, cmd))}\n{err.read()[-2000:]}")
        return out.read(), wall, usage.ru_maxrss / 1024, launched_at


def tutorial(args, device):
    out, wall, rss, launched_at = run([sys.executable, ROOT / "bench" / "tutorial_loop.py", "--dataset", args.dataset,
                          "--data-dir", args.data_dir, "--epochs", str(args.tutorial_epochs or args.epochs),
                          "--device", device], args.env)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")], wall, rss, launched_at


def ours(args, device, variant):
    with tempfile.TemporaryDirectory() as logdir:
        extra = {"fp32": [], "amp": ["--amp"], "eager": ["--no-cuda-graph"]}[variant] + args.train_flags
        _, wall, rss, launched_at = run([sys.executable, ROOT / "train.py", "--dataset", args.dataset, "--data-dir",
                            args.data_dir, "--no-download", "--epochs", str(args.epochs), "--device", device,
                            "--logdir", logdir, "--run-name", "bench", "--quiet", *extra], args.env)
        lines = (Path(logdir) / "bench" / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines], wall, rss, launched_at


def summary(name, records, wall, rss, launched_at):
    images_per_s = statistics.median(r["images_per_s"] for r in records)
    epoch_s = statistics.median(r["epoch_seconds"] for r in records)
    return {"loop": name, "epochs": len(records), "images_per_s": images_per_s, "epoch_s": epoch_s,
            "train_s": sum(r["train_seconds"] for r in records), "loop_s": sum(r["epoch_seconds"] for r in records),
            "wall_s": wall, "peak_rss_mb": rss, "startup_s": records[0]["started_at"] - launched_at,
            "accuracy": records[-1]["test_accuracy"]}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    p.add_argument("--tutorial-epochs", type=int, help="epochs of the (slow) tutorial loop; default: --epochs")
    p.add_argument("--variants", nargs="+", default=["fp32", "amp"], choices=["fp32", "amp", "eager"],
                   help="train.py as it is, with --amp, or with --no-cuda-graph")
    p.add_argument("--train-flags", nargs=argparse.REMAINDER, default=[],
                   help="more flags for train.py (last on the line), e.g. --train-flags --recipe tuned")
    return p


def main():
    args = build_parser().parse_args()
    # the CIFAR-10 files tools/cifar_copy.py writes are accepted by md5 (its --env)
    args.env = dict(os.environ, **(copy_environment(args.data_dir) if args.dataset == "cifar10" else {}))
    print(f"{os.cpu_count()} CPU cores; " + (torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"))
    print("| device | loop | epochs | start-up s | images/s | s/epoch (median) | train s | loop s | process wall s "
          "| wall - loop s | peak RSS MB | test acc | speed-up |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for device in args.devices:
        base = summary("tutorial", *tutorial(args, device))
        rows = [base] + [summary(f"train.py {v}", *ours(args, device, v)) for v in args.variants]
        for row in rows:
            print(f"| {device} | {row['loop']} | {row['epochs']} | {row['startup_s']:.1f} | {row['images_per_s']:.0f} | "
                  f"{row['epoch_s']:.2f} | "
                  f"{row['train_s']:.2f} | {row['loop_s']:.2f} | {row['wall_s']:.1f} | "
                  f"{row['wall_s'] - row['loop_s']:.1f} | {row['peak_rss_mb']:.0f} | {row['accuracy']:.2%} | "
                  f"{row['images_per_s'] / base['images_per_s']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
