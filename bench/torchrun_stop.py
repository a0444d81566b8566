"""What agreeing on a stop costs each step under torchrun on the CPU: two gloo processes all-reduce the
stop request as train.py's loop does (World.agree_to_stop), STEPS times, and print the mean per step.

    python bench/torchrun_stop.py --steps 5000
"""
import argparse
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tudui.console import StopOnSignal  # noqa: E402
from tudui.distributed import World  # noqa: E402


def rank_main(rank, port, steps, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    world, stop, device = World(rank, 2), StopOnSignal(), torch.device("cpu")
    for _ in range(100):  # warm-up
        world.agree_to_stop(stop, device, synced=False)
    dist.barrier()
    started = time.perf_counter()
    for _ in range(steps):
        world.agree_to_stop(stop, device, synced=False)
    results[rank] = (time.perf_counter() - started) / steps
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    args = parser.parse_args()
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(rank_main, args=(port, args.steps, results), nprocs=2)
    print(f"agreeing on a stop, 2 gloo processes on the CPU: {max(results.values()) * 1e6:.1f} us a step "
          f"(rank 0 {results[0] * 1e6:.1f}, rank 1 {results[1] * 1e6:.1f}), {args.steps} steps")


if __name__ == "__main__":
    main()
