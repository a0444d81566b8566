"""A training step recorded once as a CUDA graph and replayed with a single launch per step. Knows
nothing of what the step computes. Why: Tudui is so small that launching an eager step's ~60 kernels,
not running them, bounds it on a GPU (docs/speed.md)."""
import torch


class GraphedStep:
    """STEP(idx, scale), replayed as a CUDA graph for full batches of BATCH_SIZE indices.

    The graph replays the kernels of STEP on the tensors it was captured with, so STEP must read what
    changes between steps from tensors at fixed addresses (the batch's indices, which this class copies
    into its own, the lr in a device tensor, the epoch's augmentation plan), and SCALE must be the same
    for every full batch (it is recorded as a number). Smaller batches, such as an epoch's last, run
    eagerly. Returns what STEP returns: with a graph, the same tensors each time, so read them before the
    next call."""

    EAGER_WARMUP_STEPS = 3  # before capture: cuDNN picks its algorithms and the momentum buffers exist

    def __init__(self, step, batch_size, device):
        self.step = step
        self.static_idx = torch.zeros(batch_size, dtype=torch.int64, device=device)
        self.graph = self.static_result = None
        self.warmup_left = self.EAGER_WARMUP_STEPS

    def __call__(self, idx, scale):
        if len(idx) != len(self.static_idx):
            return self.step(idx, scale)
        self.static_idx.copy_(idx)
        if self.graph is None:
            if self.warmup_left > 0:
                self.warmup_left -= 1
                return self._eager_on_side_stream(scale)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_result = self.step(self.static_idx, scale)
        self.graph.replay()  # capture only records: this replay is the step itself
        return self.static_result

    def _eager_on_side_stream(self, scale):
        """Warm-up steps before a capture run on a side stream, as torch.cuda.graph's documentation asks."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            result = self.step(self.static_idx, scale)
        torch.cuda.current_stream().wait_stream(side)
        return result
