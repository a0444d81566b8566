"""The seconds around the training loop, on the CPU: start-up, from launch to the first training step,
beside launch to the end of a bare `import torch, torchvision` in the same run, and the per-epoch
overhead (saving, logging, pictures): 11 epochs against 1 on a tiny dataset, minus the epochs' own
train and test seconds. (The tiny dataset's md5s are accepted through tests/registered_cifar, whose
sitecustomize imports torchvision in both.)

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
    """(wall seconds of `python ARGS` in CWD, its launch time, its stdout)."""
    launched = time.time()
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, check=True, capture_output=True, text=True,
                          env=dict(os.environ, **tiny_cifar_env()))
    return time.perf_counter() - started, launched, done.stdout


def bare_import(cwd):
    """Seconds from launching `python -c "import torch, torchvision"` to the end of those imports."""
    _, launched, out = timed(["-c", "import time, torch, torchvision; print(time.time())"], cwd)
    return float(out) - launched


def run(repo, data, logdir, epochs):
    """(process wall, seconds from launch to the first step, seconds of the epochs' own training and test)."""
    wall, launched, _ = timed([Path(repo) / "train.py", "--data-dir", data, "--no-download", "--device", "cpu", "--quiet",
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
            for k, repo in enumerate(rows):
                bare = bare_import(repo)
                one = run(repo, data, Path(tmp) / f"one-{k}-{i}", 1)
                eleven = run(repo, data, Path(tmp) / f"eleven-{k}-{i}", 11)
                overhead = ((eleven[0] - one[0]) - (eleven[2] - one[2])) / 10
                rows[repo].append((bare, one[1], overhead))
        for repo, measured in rows.items():
            bare, startup, overhead = (statistics.median(m[k] for m in measured) for k in range(3))
            print(f"| {repo} | {bare:.2f} | {startup:.2f} | {startup - bare:.2f} | {overhead * 1000:.0f} |")


if __name__ == "__main__":
    main()
