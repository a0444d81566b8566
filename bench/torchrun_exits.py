"""How often a finished two-process torchrun run on the CPU (gloo) still exits with a failure.

Runs `torchrun --standalone --nproc_per_node=2 train.py` for one epoch on a tiny dataset, RUNS times, and
counts the runs whose exit code is not 0; the first such run's stderr says how it failed. --script runs
another copy of train.py (say one from an older commit) with the same flags, to compare.

    python bench/torchrun_exits.py --runs 100
"""
import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from tiny_data import tiny_cifar_env, write_cifar_batches  # noqa: E402  (the tests' tiny CIFAR-10)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--script", type=Path, default=ROOT / "train.py")
    args = parser.parse_args(argv)
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = write_cifar_batches(Path(tmp) / "cifar")
        for run in range(1, args.runs + 1):
            result = subprocess.run(
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                 str(args.script), "--data-dir", str(data_dir), "--logdir", str(Path(tmp) / f"logs{run}"),
                 "--no-download", "--device", "cpu", "--quiet", "--epochs", "1", "--batch-size", "64",
                 "--momentum", "0.9", "--augment", "--normalize"],
                capture_output=True, text=True, env=dict(os.environ, **tiny_cifar_env()))
            if result.returncode:
                failures.append(run)
                if len(failures) == 1:  # all of stderr: the rank's own message comes before torchrun's report
                    print(f"run {run} exited {result.returncode}:\n{result.stderr}")
            print(f"run {run}: exit {result.returncode}", flush=True)
    print(f"{len(failures)} of {args.runs} runs failed{f' (runs {failures})' if failures else ''}")
    return len(failures)


if __name__ == "__main__":
    main()
