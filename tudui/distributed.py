"""The process a run trains in: under torchrun, the process group, each rank's share of the work, the sums across
ranks and the stop they agree on; otherwise one process, World(), which never touches torch.distributed."""
import contextlib
import os

import torch

from tudui.devices import pick_device
from tudui.errors import SettingsError


class World:
    """This process's place among those torchrun started: rank RANK of SIZE (World() is a plain run). Every rank
    draws the same order and takes a contiguous slice of each global batch and of the test set; losses and counts
    are summed across ranks."""

    def __init__(self, rank=0, size=1):
        self.rank, self.size = rank, size

    def share_of_batch(self, indices):
        return indices.tensor_split(self.size)[self.rank]

    def share_of(self, n):
        return slice(self.rank * n // self.size, (self.rank + 1) * n // self.size)

    def sum(self, *tensors):
        """All-reduce TENSORS in place (a no-op in a plain run)."""
        if self.size > 1:
            for tensor in tensors:
                torch.distributed.all_reduce(tensor)

    def agree_to_stop(self, stop, device, synced=True):
        """Whether a stop was asked for (StopOnSignal STOP) on any rank: under torchrun the ranks all-reduce the
        request after every step on the CPU, on a GPU after the steps whose host already waits (SYNCED), so that all
        stop after the same one: what they agreed, never a signal that landed after the all-reduce (next step's)."""
        if self.size == 1:
            return stop.requested
        if not synced and device.type != "cpu":
            return False
        asked = torch.tensor([stop.signal or 0], device=device)
        torch.distributed.all_reduce(asked, torch.distributed.ReduceOp.MAX)
        if asked.item():
            stop.requested, stop.signal = True, int(asked.item())
        return bool(asked.item())

    def wrap(self, model, device):
        """MODEL for training: under DistributedDataParallel when there are several processes."""
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def leave(self, finished):
        """Close the process group; after a FINISHED run, once the ranks have waited for each other (a rank exiting
        while rank 0 still wrote its files sometimes aborted in gloo's teardown)."""
        if self.size > 1:
            if finished:
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()


@contextlib.contextmanager
def start(settings):
    """(World, device) for the with-block: this rank's under torchrun (--evaluate runs alone), else a plain run on
    --device."""
    launched = os.environ.get("WORLD_SIZE", "1")  # how many processes torchrun started
    if not launched.isdigit() or int(launched) < 1:
        raise SettingsError(f"WORLD_SIZE must be a whole number of processes (got {launched!r}); leave it to torchrun")
    if int(launched) > 1 and not settings.evaluate:
        if settings.dry_run:
            raise SettingsError("--dry-run checks one process; run it without torchrun, as python train.py")
        world, device = join_torchrun(settings)
    else:
        world, device = World(), pick_device(settings.device)
    finished = False
    try:
        yield world, device
        finished = True
    finally:
        world.leave(finished)


def join_torchrun(args):
    """Under torchrun: join the process group (nccl on CUDA, gloo on CPU) and return (World, device). --batch-size
    stays the global batch; only rank 0 prints."""
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise SettingsError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} "
                            f"{'is' if len(missing) == 1 else 'are'} not set: start several processes with "
                            "torchrun (see README), or unset WORLD_SIZE for one")
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if args.batch_size % size:
        raise SettingsError(f"--batch-size {args.batch_size} is the global batch and must divide evenly across "
                            f"{size} processes; use a multiple of {size}")
    use_cuda = args.device in ("auto", "cuda") and torch.cuda.is_available()
    if args.device not in ("auto", "cpu", "cuda") or (args.device == "cuda" and not use_cuda):
        raise SettingsError(f"--device {args.device} cannot be used under torchrun here; use cuda (nccl) or cpu (gloo)")
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    if rank != 0:
        args.quiet = True
    return World(rank, size), device
