"""What glibc's reuse of freed memory (tudui.devices.keep_freed_memory, which `python train.py` sets up)
buys each epoch on the CPU: the same run from the command line, and from Python as a notebook starts it,
which leaves the process's allocator alone; each in a fresh process, alternating, on the same data.

    python bench/allocator.py --data-dir /tmp/pydata --repeats 2 -- --recipe tuned --epochs 2
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from cifar_copy import copy_environment  # noqa: E402

WAYS = {"python train.py (reuses freed memory)": [str(ROOT / "train.py")],
        "train.main from Python (as a notebook)": ["-c", "import sys, train; train.main(sys.argv[1:])"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="CIFAR-10's files, or a copy by tools/cifar_copy.py")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("train_flags", nargs="*", help="after --: train.py's flags")
    args = parser.parse_args()
    env = {**__import__("os").environ, **copy_environment(args.data_dir)}
    seconds = {way: [] for way in WAYS}
    for _ in range(args.repeats):
        for way, command in WAYS.items():
            with tempfile.TemporaryDirectory() as logdir:
                subprocess.run([sys.executable, *command, "--data-dir", args.data_dir, "--no-download", "--device",
                                "cpu", "--logdir", logdir, "--run-name", "bench", "--quiet", *args.train_flags],
                               cwd=ROOT, env=env, check=True, capture_output=True)
                records = [json.loads(line) for line in (Path(logdir) / "bench" / "metrics.jsonl").open()]
                seconds[way] += [record["train_seconds"] for record in records]
    print(f"train seconds per epoch, {args.repeats} runs each of {' '.join(args.train_flags)}:")
    base = statistics.median(seconds["train.main from Python (as a notebook)"])
    for way, values in seconds.items():
        print(f"  {way}: median {statistics.median(values):.2f} s ({', '.join(f'{v:.2f}' for v in values)}), "
              f"{base / statistics.median(values):.3f}x")


if __name__ == "__main__":
    main()
