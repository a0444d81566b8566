"""The tutorial's training loop, re-implemented faithfully, as the baseline for bench/compare.py.

Per-sample PIL conversion and ToTensor through a DataLoader (batch 64, no shuffling, as the tutorial),
eager steps, `.item()` every 100 steps, a test pass under eval() and no_grad() after each epoch with the
tutorial's summed test loss. The images are the same uint8 arrays train.py uses, served the way
torchvision's CIFAR10 dataset serves them (Image.fromarray, then the transform).

    python bench/tutorial_loop.py --dataset folder --data-dir DIR --epochs 1 --device cpu
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tudui.datasets import load_split  # noqa: E402
from model import Tudui  # noqa: E402


class ArrayDataset(Dataset):
    """What torchvision.datasets.CIFAR10.__getitem__ does: uint8 array -> PIL image -> transform."""

    def __init__(self, images, labels):
        self.images = images.permute(0, 2, 3, 1).numpy()  # HWC, as CIFAR10.data
        self.labels = labels.tolist()
        self.transform = torchvision.transforms.ToTensor()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    (train_x, train_y, _), (test_x, test_y, _) = (load_split(args.dataset, args.data_dir, split, download=False)
                                                  for split in ("train", "test"))
    if args.dataset == "folder":  # folders list images class by class; CIFAR-10's files are in random order
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))
        train_x, train_y = train_x[order], train_y[order]
    train_dataloader = DataLoader(ArrayDataset(train_x, train_y), batch_size=64)
    test_dataloader = DataLoader(ArrayDataset(test_x, test_y), batch_size=64)

    torch.manual_seed(0)
    tudui = Tudui().to(device)
    loss_fn = nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(tudui.parameters(), lr=0.01)
    total_train_step = 0
    for i in range(args.epochs):
        started, started_at = time.perf_counter(), time.time()
        tudui.train()
        for imgs, targets in train_dataloader:
            imgs, targets = imgs.to(device), targets.to(device)
            loss = loss_fn(tudui(imgs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_train_step += 1
            if total_train_step % 100 == 0:
                loss.item()  # the tutorial prints and logs it here: a host-device sync
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - started
        tudui.eval()
        total_test_loss, total_accuracy = 0.0, 0
        with torch.no_grad():
            for imgs, targets in test_dataloader:
                imgs, targets = imgs.to(device), targets.to(device)
                outputs = tudui(imgs)
                total_test_loss += loss_fn(outputs, targets).item()
                total_accuracy += (outputs.argmax(1) == targets).sum().item()
        print(json.dumps({"epoch": i, "started_at": started_at, "train_seconds": train_seconds,
                          "epoch_seconds": time.perf_counter() - started,
                          "images_per_s": len(train_y) / train_seconds,
                          "test_accuracy": total_accuracy / len(test_y)}), flush=True)


if __name__ == "__main__":
    main()
