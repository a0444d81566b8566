"""Milliseconds per training step (forward, loss, backward, SGD) of Tudui at one batch size, for each
memory format and precision, on one device. Isolates the network's own cost from the data path.

    python bench/step_time.py --device cpu --batch-size 64
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model import Tudui  # noqa: E402


def step_ms(device, batch_size, channels_last, amp, steps=30, repeats=3):
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as train.py: cuDNN times its algorithms and keeps the fastest
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = Tudui().to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.rand(batch_size, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch_size,), device=device)
    timings = []
    for repeat in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = nn.functional.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if repeat:  # the first round warms up
            timings.append((time.perf_counter() - started) / steps * 1000)
    return statistics.median(timings)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"| layout | precision | ms/step (batch {args.batch_size}, {device}) |\n|---|---|---|")
    for channels_last in (False, True):
        for amp in (False, True):
            ms = step_ms(device, args.batch_size, channels_last, amp, steps=args.steps if not amp else 5)
            print(f"| {'channels_last' if channels_last else 'NCHW'} | {'bf16 autocast' if amp else 'fp32'} | "
                  f"{ms:.1f} |", flush=True)


if __name__ == "__main__":
    main()
