"""Exit code and peak memory of predict.py and train.py given hostile files, beside a normal load:
a checkpoint whose deflated zip member unpacks to 1 GiB, a 190-byte data_batch_1 that asks numpy for a
1.8 GB array, and named pipes given as a checkpoint and as an image.

    python bench/hostile_files.py
"""
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from tiny_data import tiny_cifar_env, write_cifar_batches  # noqa: E402


class HugeArray:
    """Pickles as numpy building a (600080, 3072) uint8 array from almost nothing (np.ndarray(shape))."""

    def __reduce__(self):
        return np.ndarray, ((600_080, 3072), np.uint8)


def run(*args, env=None):
    """(exit code, the child's peak RSS in MB, its last stderr line) of `python ARGS`."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
                                env=dict(os.environ, **(env or {})), text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        err.seek(0)
        last = (err.read().strip().splitlines() or [""])[-1]
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss // 1024, last[:110]


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from PIL import Image
        Image.new("RGB", (32, 32)).save(tmp / "image.png")
        from model import Tudui
        torch.save(Tudui().state_dict(), tmp / "real.pth")
        with zipfile.ZipFile(tmp / "real.pth") as real, zipfile.ZipFile(tmp / "bomb.pth", "w") as bomb:
            for item in real.infolist():
                bomb.writestr(item, real.read(item))
            bomb.compression = zipfile.ZIP_DEFLATED
            with bomb.open("real/data/99", "w", force_zip64=True) as member:
                for _ in range(1024):
                    member.write(bytes(1 << 20))
        data = write_cifar_batches(tmp / "cifar")
        env = tiny_cifar_env()
        (data / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps({"data": HugeArray(), "labels": []}))
        os.mkfifo(tmp / "pipe.pth")
        os.mkfifo(tmp / "pipe.png")
        rows = [
            ("a real Tudui checkpoint (0.6 MB)", run("predict.py", "--checkpoint", tmp / "real.pth", tmp / "image.png")),
            (f"zip bomb checkpoint ({(tmp / 'bomb.pth').stat().st_size >> 10} KB, 1 GiB unpacked)",
             run("predict.py", "--checkpoint", tmp / "bomb.pth", tmp / "image.png")),
            ("named pipe as the checkpoint", run("predict.py", "--checkpoint", tmp / "pipe.pth", tmp / "image.png")),
            ("named pipe as an image", run("predict.py", "--checkpoint", tmp / "real.pth", tmp / "pipe.png")),
            ("tiny CIFAR-10, --dry-run", run("train.py", "--data-dir", write_cifar_batches(tmp / "good"), "--dry-run",
                                             "--device", "cpu", "--logdir", tmp / "logs", env=tiny_cifar_env())),
            (f"{(data / 'cifar-10-batches-py' / 'data_batch_1').stat().st_size}-byte data_batch_1 (unpickled: 1.8 GB)",
             run("train.py", "--data-dir", data, "--no-download", "--device", "cpu", "--logdir", tmp / "logs",
                 env=env)),
        ]
    print(f"{os.cpu_count()} CPU cores; this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")
    print("| file | exit code | peak RSS MB | last line |\n|---|---|---|---|")
    for name, (code, rss, last) in rows:
        print(f"| {name} | {code} | {rss} | {last} |")


if __name__ == "__main__":
    main()
