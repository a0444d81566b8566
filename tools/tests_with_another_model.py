"""Run the quick tier (or any pytest arguments) in copies of the project whose model.py holds another
network, to show that the tests take model.py's Tudui as it is.

    python tools/tests_with_another_model.py                         # every network below, quick tier
    python tools/tests_with_another_model.py --networks resnet18 -- -x tests/test_train.py
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

NETWORKS = {
    # BatchNorm, ReLU, other widths, layers not named `model`
    "batchnorm-relu": '''import torch
from torch import nn


class Tudui(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(48, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))
''',
    # a torchvision network inside Tudui
    "resnet18": '''import torch
import torchvision
from torch import nn


class Tudui(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=num_classes)

    def forward(self, x):
        return self.net(x)
''',
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", choices=sorted(NETWORKS), default=sorted(NETWORKS))
    parser.add_argument("pytest_args", nargs="*", default=["-q", "-m", "not slow"],
                        help="after --: pytest's arguments (default: the quick tier)")
    args = parser.parse_args()
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True)
    failed = False
    for name in args.networks:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "project"
            for relative in tracked.stdout.splitlines():
                (copy / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / relative, copy / relative)
            (copy / "model.py").write_text(NETWORKS[name])
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "pytest", *args.pytest_args], cwd=copy, capture_output=True,
                                  text=True)
            summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
            print(f"{name}: exit {done.returncode}, {summary} ({time.perf_counter() - started:.1f} s)", flush=True)
            if done.returncode:
                print(done.stdout[-6000:])
                failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
