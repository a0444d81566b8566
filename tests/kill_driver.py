"""Kill -9 a training run at random moments, resuming from last.pth each time, until it finishes.

    python tests/kill_driver.py SNAPSHOT_DIR KILLS SEED -- TRAIN_ARGS...

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

import train  # noqa: E402


def start(argv):
    pid = os.fork()
    if pid == 0:
        try:
            train.main(argv)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        os._exit(code)
    return pid


def main():
    snapshots, kills, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    argv = sys.argv[sys.argv.index("--") + 1:]
    run_dir = Path(argv[argv.index("--logdir") + 1]) / argv[argv.index("--run-name") + 1]
    torch.set_num_threads(1)
    torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # pays torch's lazy optimizer imports once
    rng = random.Random(seed)
    killed, torn_temporaries = 0, 0
    while True:
        last = train.resumable_checkpoint(run_dir)  # as a user would, told so when starting afresh is refused
        resume = ["--resume", str(last)] if last else []
        pid = start(argv + resume)
        deadline = time.monotonic() + (rng.uniform(0.05, 0.5) if killed < kills else 600)
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
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
                          "exit_code": os.waitstatus_to_exitcode(status)}))
        return


if __name__ == "__main__":
    main()
