"""The seconds around the training loop, on the CPU: start-up to the first training step beside a bare
`import torch, torchvision` in the same run, and the per-epoch overhead (saving, logging, pictures):
11 epochs against 1 on a tiny dataset, minus the epochs' own train and test seconds.

    python bench/overhead.py                       # this checkout, 3 repeats of each
    python bench/overhead.py --repo OTHER          # another checkout's train.py beside this one's
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from tiny_data import tiny_cifar_env, write_cifar_batches  # noqa: E402


def timed(args, cwd):
    """(wall seconds of `python ARGS` in CWD, its launch time)."""
    launched = time.time()
    started = time.perf_counter()
    subprocess.run([sys.executable, *map(str, args)], cwd=cwd, check=True, capture_output=True,
                   env=dict(os.environ, **tiny_cifar_env()))
    return time.perf_counter() - started, launched


def run(repo, data, logdir, epochs):
    """(process wall, seconds from launch to the first step, seconds of the epochs' own training and test)."""
    wall, launched = timed([Path(repo) / "train.py", "--data-dir", data, "--no-download", "--device", "cpu", "--quiet",
                            "--epochs", epochs, "--logdir", logdir, "--run-name", "r"], repo)
    records = [json.loads(line) for line in (Path(logdir) / "r" / "metrics.jsonl").read_text().splitlines()]
    return wall, records[0]["started_at"] - launched, sum(r["epoch_seconds"] for r in records)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", action="append", default=[], help="other checkouts to measure beside this one")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores; {sys.version.split()[0]}")
    print("| checkout | bare import s | start-up to first step s | start-up - bare import s | overhead ms/epoch |\n"
          "|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        data = write_cifar_batches(Path(tmp) / "data")
        rows = {repo: [] for repo in [str(ROOT), *args.repo]}
        for i in range(args.repeats):  # the checkouts alternate, so that a busy moment hits each alike
            for repo in rows:
                bare, _ = timed(["-c", "import torch, torchvision"], repo)
                one = run(repo, data, Path(tmp) / f"one{i}{len(rows[repo])}", 1)
                eleven = run(repo, data, Path(tmp) / f"eleven{i}{len(rows[repo])}", 11)
                overhead = ((eleven[0] - one[0]) - (eleven[2] - one[2])) / 10
                rows[repo].append((bare, one[1], overhead))
        for repo, measured in rows.items():
            bare, startup, overhead = (statistics.median(m[k] for m in measured) for k in range(3))
            print(f"| {repo} | {bare:.2f} | {startup:.2f} | {startup - bare:.2f} | {overhead * 1000:.0f} |")


if __name__ == "__main__":
    main()
