"""Muon (Keller Jordan's optimizer) for hidden layers' weights, with SGD for the other parameters, as one
torch.optim.Optimizer, written as torch.optim.Muon is; its constants: docs/recipes.md. Knows nothing of Tudui.

    optimizer = Muon(hidden_weights_apart(model), lr=0.08)  # Muon for each conv's and Linear's weight but the last
"""
import torch
from torch.optim.sgd import sgd as sgd_update  # torch.optim.SGD's step, as a function


class Muon(torch.optim.Optimizer):
    """Muon for the groups marked use_muon: each weight (a conv's filters as a matrix of one row per output) moves
    by its Nesterov momentum, orthogonalized, so that every direction of a layer moves at the same rate
    (torch.optim.Muon takes 2-D weights only); the other groups step as torch.optim.SGD. Muon's lr is lr x lr_ratio,
    its momentum muon_momentum; its fixed-size steps grow the weights unless muon_decay shrinks them, each step
    scaling them by one minus Muon's lr x muon_decay. lr may be a 0-dim device tensor, which the SGD part's fused
    kernel reads."""

    def __init__(self, params, lr=0.02, momentum=0.9, nesterov=True, weight_decay=0.0, muon_decay=0.0,
                 lr_ratio=0.25, muon_momentum=0.95, ns_steps=5):
        if float(lr) < 0 or not 0 <= momentum < 1 or not 0 <= muon_momentum < 1 or weight_decay < 0 or muon_decay < 0:
            raise ValueError(f"invalid Muon setting: lr {lr}, momentum {momentum}, muon_momentum {muon_momentum}, "
                             f"weight_decay {weight_decay}, muon_decay {muon_decay}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        muon_decay=muon_decay, lr_ratio=lr_ratio, muon_momentum=muon_momentum, ns_steps=ns_steps,
                        use_muon=False)
        super().__init__(params, defaults)
        self.padded = {}  # per Muon group: its weights as one zero-padded batch of matrices (padded_matrices)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            with_grads = [p for p in group["params"] if p.grad is not None]
            for p in with_grads:
                if "momentum_buffer" not in self.state[p]:  # allocated once: a step allocates nothing
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            if group["use_muon"]:
                self._muon_step(group, index)
                continue
            sgd_update(with_grads, [p.grad for p in with_grads], [self.state[p]["momentum_buffer"] for p in with_grads],
                       fused=isinstance(group["lr"], torch.Tensor) or None, weight_decay=group["weight_decay"],
                       momentum=group["momentum"], lr=group["lr"], dampening=0.0, nesterov=group["nesterov"],
                       maximize=False)
        return loss

    def _muon_step(self, group, index):
        lr = group["lr"] * group["lr_ratio"]  # once per step: with a tensor lr, each product is a kernel
        decay, momentum = group["muon_decay"], group["muon_momentum"]
        shrink = 1 - lr * decay if decay else None  # no extra kernels in the steps of runs without it
        if index not in self.padded:  # allocated once: a step allocates nothing
            self.padded[index] = padded_matrices(group["params"])
        padded, step_scales = self.padded[index]
        stepped = [(p, i) for i, p in enumerate(group["params"]) if p.grad is not None]
        for p, i in stepped:
            if decay:
                p.mul_(shrink)
            buffer = self.state[p]["momentum_buffer"]
            buffer.mul_(momentum).add_(p.grad)
            torch.add(p.grad, buffer, alpha=momentum, out=as_weight(padded[i], p))  # Nesterov
        # every weight's matrix in one batch: on a GPU, a product of matrices this small costs about a kernel
        # launch whatever its size, and the batch runs each Newton-Schulz product once, not once per layer
        directions = orthogonalize(padded, group["ns_steps"]).mul_(lr * step_scales)
        for p, i in stepped:
            p.sub_(as_weight(directions[i], p))


def hidden_weights_apart(model):
    """MODEL's parameters as Muon's two groups: the weights of every Conv2d and Linear but the last, and the
    rest."""
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    hidden = [layer.weight for layer in layers[:-1]]
    rest = [p for p in model.parameters() if all(p is not weight for weight in hidden)]
    return [{"params": hidden, "use_muon": True}, {"params": rest}]


def orthogonalize(matrices, steps=5):
    """The nearest matrix with all singular values 1, roughly (those within 100x of the largest land in 0.7 to 1.2):
    Keller Jordan's quintic Newton-Schulz iteration, on each matrix of a batch (..., rows, columns)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = matrices.reshape(-1, *matrices.shape[-2:])
    x = x / (x.norm(dim=(1, 2), keepdim=True) + 1e-7)
    wide = x.size(1) <= x.size(2)
    x = x if wide else x.mT
    for _ in range(steps):
        gram = torch.bmm(x, x.mT)
        # a x + (b gram + c gram gram) x, each product with its sum in one kernel (as torch.optim.Muon)
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x if wide else x.mT).reshape(matrices.shape)


def padded_matrices(weights):
    """Zeros to hold each weight as a matrix of one row per output (transposed when taller than wide), all padded to
    one size, which Newton-Schulz keeps zero; and each weight's step scale (a tall matrix's scaled up to a wide
    one's)."""
    shapes = [(w.shape[0], w[0].numel()) for w in weights]
    rows, columns = max(min(shape) for shape in shapes), max(max(shape) for shape in shapes)
    padded = weights[0].new_zeros(len(weights), rows, columns)
    scales = torch.tensor([max(1, r / c) ** 0.5 for r, c in shapes], device=padded.device).view(-1, 1, 1)
    return padded, scales


def as_weight(matrix, weight):
    """The part of a padded MATRIX that holds WEIGHT, viewed in WEIGHT's shape."""
    rows, columns = weight.shape[0], weight[0].numel()
    part = matrix[:rows, :columns] if rows <= columns else matrix[:columns, :rows].mT
    return part.view(weight.shape)
