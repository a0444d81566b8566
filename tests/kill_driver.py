"""Kill -9 a training run at random moments, starting the same command (--resume auto) again each time, until it finishes.

    python tests/kill_driver.py SNAPSHOT_DIR KILLS SEED FIRST_SAVE_SECONDS -- TRAIN_ARGS...

Kill times are measured in the time a run takes from its start to its first saved epoch: half the runs
are killed at random before it (0.1x to 1x: start-up or mid-epoch), half around it (0.9x to 1.2x: mid-write,
or just after a save). So a run saves an epoch only every few kills, on a fast machine as on a slow one,
and all KILLS kills land before it ends. That time is FIRST_SAVE_SECONDS (what the summary of a run without
kills reports) until a killed run has saved an epoch, then the latest such run's.

Torch is imported once here and each run is a forked child process, so dozens of real SIGKILLs take
seconds instead of minutes of interpreter start-ups. This process never computes with torch (one thread,
no tensor work), which keeps forking safe. After every kill the run folder's files are copied to
SNAPSHOT_DIR/KILL_NUMBER/ for the test to check; prints a JSON summary.
"""
import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402

from tudui import console  # noqa: E402
import train  # noqa: E402


def start(argv):
    pid = os.fork()
    if pid == 0:
        os._exit(console.run_cli(lambda: train.main(argv)))
    return pid


def main():
    snapshots, kills, seed, to_first_save = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    argv = sys.argv[sys.argv.index("--") + 1:]
    run_dir = Path(argv[argv.index("--logdir") + 1]) / argv[argv.index("--run-name") + 1]
    torch.set_num_threads(1)
    torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # pays torch's lazy optimizer imports once
    rng = random.Random(seed)
    killed, torn_temporaries, first_save_seconds = 0, 0, None
    while True:
        saved_before, first_save_seconds = last_saved(run_dir), None
        started = time.monotonic()
        pid = start(argv + ["--resume", "auto"])  # the same command every time, as a requeued job runs it
        # half the kills at random before the run's first save, half around it, where the writes are
        around_save = rng.uniform(0.9, 1.2) if rng.random() < 0.5 else rng.uniform(0.1, 1.0)
        deadline = started + (around_save * to_first_save if killed < kills else 600)
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if first_save_seconds is None and last_saved(run_dir) != saved_before:
                first_save_seconds = to_first_save = time.monotonic() - started
            time.sleep(0.005)
        else:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            killed += 1
            torn_temporaries += len(list(run_dir.glob(".*.tmp")))
            if run_dir.exists():
                shutil.copytree(run_dir, snapshots / str(killed))
            continue
        print(json.dumps({"kills": killed, "torn_temporaries": torn_temporaries,
                          "exit_code": os.waitstatus_to_exitcode(status), "first_save_seconds": first_save_seconds}))
        return


def last_saved(run_dir):
    """When last.pth was last replaced (None before the first save)."""
    try:
        return (run_dir / "last.pth").stat().st_mtime_ns
    except FileNotFoundError:
        return None


if __name__ == "__main__":
    main()
