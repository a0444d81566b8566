"""Where one train.py training step spends its time: the operators (and on CUDA the kernels) of eager
steps under torch.profiler, how many kernels, copies and fills one step runs on the GPU, and the
milliseconds per step: eager, of which the optimizer step alone, and (on CUDA) replayed as a CUDA graph.
It also counts the operators one step dispatches, on any device: on a GPU each is about one kernel, which
a CUDA graph still runs one after another, and a graphed step is the count with the lr in a device
tensor. It runs train.py's own step (make_train_step) on random images, each batch drawn, augmented and
converted by the loader that trains (TrainBatches): exactly the code that trains.

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
import train  # noqa: E402
from tudui import batches, devices, settings  # noqa: E402
from tudui.cuda_graph import GraphedStep, lr_in_device_tensor  # noqa: E402
from tudui.distributed import World  # noqa: E402

WARMUP_STEPS = GraphedStep.EAGER_WARMUP_STEPS + 2  # eager warm-up, capture, and one more


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Step:
    """train.py's step on the next batch of random images, with the lr set before each call as
    train_one_epoch sets it. DEVICE_LR (default: GRAPHED) gives the optimizer a CUDA graph records: its
    lr in a device tensor."""

    def __init__(self, s, device, graphed, steps, device_lr=None):
        n = s.batch_size * (WARMUP_STEPS + steps)
        norm = batches.normalizer({"mean": [0.5] * 3, "std": [0.25] * 3} if s.normalize else {}, device)
        loader = batches.TrainBatches(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=device),
                                      torch.randint(0, 10, (n,), device=device), s.batch_size, norm, s, World())
        model = train.build_model(10, device, s.seed)
        self.optimizer = train.build_optimizer(model, s)
        self.scheduler = train.build_scheduler(self.optimizer, s, len(loader))
        loss_fn = nn.CrossEntropyLoss(reduction="sum", label_smoothing=s.label_smoothing)
        self.step = train.make_train_step(model, loss_fn, self.optimizer, s.amp)
        if graphed:
            self.step = GraphedStep(self.step, self.optimizer, s.batch_size, device)
        elif device_lr:
            lr_in_device_tensor(self.optimizer, device)
        self.loader, self.batches, self.steps, self.s = loader, iter(loader), steps, s

    def __call__(self):
        batch = next(self.batches, None)
        if batch is None:  # a new epoch
            self.batches = iter(self.loader)
            batch = next(self.batches)
        result = self.step(*batch)
        self.scheduler.step()
        return result


def ms_per_step(step, device):
    """The mean time of the steps after the warm-up (and, graphed, the capture)."""
    for _ in range(WARMUP_STEPS):
        step()
    sync(device)
    started = time.perf_counter()
    for _ in range(step.steps):
        step()
    sync(device)
    return (time.perf_counter() - started) / step.steps * 1000


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
    for _ in range(WARMUP_STEPS):
        step()
    with OperatorCount() as counter:
        step()
    return counter.count


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--recipe", choices=sorted(settings.RECIPES), default="tutorial")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rows", type=int, default=25, help="table rows")
    opts = p.parse_args()
    device = torch.device(opts.device)
    args = settings.resolve({"recipe": opts.recipe, "device": opts.device})
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
        for _ in range(step.steps):
            step()
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
