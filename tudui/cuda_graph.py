"""A training step recorded once as a CUDA graph and replayed with one launch per step, and what a graph asks of the
optimizer. Why: Tudui is so small that launching an eager step's ~60 kernels bounds it on a GPU (docs/speed.md)."""
import torch


class GraphedStep:
    """STEP(imgs, targets, scale), replayed as a CUDA graph for full batches of BATCH_SIZE images: each batch is
    copied into the graph's own inputs; the OPTIMIZER's lr becomes a 0-dim device tensor (which torch's schedulers
    write in place) read by the fused kernel; SCALE is recorded as a number. Other batches run eagerly. With a
    graph, the same result tensors come back each time: copy them before the next call."""

    EAGER_WARMUP_STEPS = 3  # before capture: cuDNN picks its algorithms and the momentum buffers exist

    def __init__(self, step, optimizer, batch_size, device):
        self.step = step
        for group in optimizer.param_groups:  # the lr as a device tensor, read at each replay by the fused kernel
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
            if "fused" in group:  # SGD's; Muon's own SGD part fuses by itself
                group["fused"] = True
        self.batch_size, self.warmup_left = batch_size, self.EAGER_WARMUP_STEPS
        self.static_inputs = self.graph = self.static_result = None

    def __call__(self, imgs, targets, scale):
        if len(targets) != self.batch_size:
            return self.step(imgs, targets, scale)
        if self.static_inputs is None:
            self.static_inputs = (torch.empty_like(imgs), torch.empty_like(targets))
        self.static_inputs[0].copy_(imgs)
        self.static_inputs[1].copy_(targets)
        if self.graph is None:
            if self.warmup_left > 0:
                self.warmup_left -= 1
                return self._eager_on_side_stream(scale)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_result = self.step(*self.static_inputs, scale)
        self.graph.replay()  # capture only records: this replay is the step itself
        return self.static_result

    def _eager_on_side_stream(self, scale):
        """Warm-up steps before a capture run on a side stream, as torch.cuda.graph's documentation asks."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            result = self.step(*self.static_inputs, scale)
        torch.cuda.current_stream().wait_stream(side)
        return result


def uses_cuda_graph(settings, device, world):
    """Whether a run replays its steps as a CUDA graph: one process on a CUDA GPU, unless --no-cuda-graph."""
    return settings.cuda_graph and device.type == "cuda" and world.size == 1
