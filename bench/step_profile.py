"""Where one train.py training step spends its time: the operators (and on CUDA the kernels) of eager
steps under torch.profiler, how many kernels, copies and fills one step runs on the GPU, and the
milliseconds per step: eager, of which the optimizer step alone, and (on CUDA) replayed as a CUDA graph.
It also counts the operators one step dispatches, on any device: on a GPU each is about one kernel, which
a CUDA graph still runs one after another, and a graphed step is the count with the lr in a device
tensor. It runs train.py's own step (make_step) on random images: exactly the code that trains.

    python bench/step_profile.py --device cuda --recipe tutorial
    python bench/step_profile.py --device cpu --recipe tuned --steps 5
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import config  # noqa: E402
import data  # noqa: E402
import devices  # noqa: E402
import train  # noqa: E402
from cuda_graph import GraphedStep  # noqa: E402

WARMUP_STEPS = GraphedStep.EAGER_WARMUP_STEPS + 2  # eager warm-up, capture, and one more


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Step:
    """train.py's step on random images, with the lr set before each call as train_one_epoch sets it.
    DEVICE_LR (default: GRAPHED) gives the optimizer a CUDA graph records: its lr in a device tensor."""

    def __init__(self, args, device, graphed, steps, device_lr=None):
        n = args.batch_size * (WARMUP_STEPS + steps)
        tensors = {"train_x": torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=device),
                   "train_y": torch.randint(0, 10, (n,), device=device),
                   "norm": data.normalizer({"mean": [0.5] * 3, "std": [0.25] * 3} if args.normalize else {}, device)}
        if args.augment:
            plan = data.augment_plan(n, torch.Generator().manual_seed(0), args.translate)
            tensors["flips"], tensors["shifts"] = (t.to(device) for t in plan)
        model = train.build_model(10, device, args.seed)
        self.optimizer = train.build_optimizer(model, args, graphed if device_lr is None else device_lr)
        loss_fn = nn.CrossEntropyLoss(reduction="sum", label_smoothing=args.label_smoothing)
        self.step = train.make_step(model, self.optimizer, loss_fn, tensors, args, graphed)
        self.batches = torch.arange(n, device=device).split(args.batch_size)
        self.args = args

    def __call__(self, idx):
        train.set_lr(self.optimizer, self.args.lr)
        return self.step(idx, 1 / self.args.batch_size)


def ms_per_step(step, device):
    """Runs every batch once; the mean time of those after the warm-up (and, graphed, the capture)."""
    for idx in step.batches[:WARMUP_STEPS]:
        step(idx)
    sync(device)
    started = time.perf_counter()
    for idx in step.batches[WARMUP_STEPS:]:
        step(idx)
    sync(device)
    return (time.perf_counter() - started) / len(step.batches[WARMUP_STEPS:]) * 1000


def optimizer_ms(step, device, repeats=50):
    """The optimizer's step alone, repeated on the gradients the last step left: its share of a step."""
    for _ in range(WARMUP_STEPS):
        step.optimizer.step()
    sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        step.optimizer.step()
    sync(device)
    return (time.perf_counter() - started) / repeats * 1000


class OperatorCount(TorchDispatchMode):
    """Counts the operators dispatched inside it, views (which launch nothing) left out."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.namespace == "aten" and not func.is_view
        return func(*args, **(kwargs or {}))


def operators_per_step(args, device, device_lr):
    step = Step(args, device, False, 1, device_lr)
    for idx in step.batches[:WARMUP_STEPS]:
        step(idx)
    with OperatorCount() as counter:
        step(step.batches[WARMUP_STEPS])
    return counter.count


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--recipe", choices=sorted(config.RECIPES), default="tutorial")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rows", type=int, default=25, help="table rows")
    opts = p.parse_args()
    device = torch.device(opts.device)
    args, _ = config.parse_args(["--recipe", opts.recipe, "--device", opts.device])
    devices.keep_freed_memory()  # as train.main does
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    print(f"operators per step, views left out: {operators_per_step(args, device, False)} with a plain lr, "
          f"{operators_per_step(args, device, True)} with the lr in a device tensor (as in the CUDA graph)")
    step = Step(args, device, False, opts.steps)
    print(f"eager: {ms_per_step(step, device):.3f} ms/step (batch {args.batch_size}, {device}), "
          f"of which the optimizer step alone {optimizer_ms(step, device):.3f} ms")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for idx in step.batches[WARMUP_STEPS:]:
            step(idx)
        sync(device)
    if device.type == "cuda":
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        print(f"{len(kernels) / opts.steps:.1f} GPU activities (kernels, copies, fills) per step, "
              f"{sum(e.time_range.elapsed_us() for e in kernels) / opts.steps / 1000:.3f} ms of GPU time per step")
        print(prof.key_averages().table(sort_by="device_time_total", row_limit=opts.rows))
        print(f"CUDA graph: {ms_per_step(Step(args, device, True, opts.steps), device):.3f} ms/step")
    else:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=opts.rows))


if __name__ == "__main__":
    main()
