"""Measure a recipe idea that needs a code change before it earns a flag: train.py with one variant
patched into it, everything else (data, loop, logging, checkpoints) unchanged.

    OMP_NUM_THREADS=1 python bench/variants.py VARIANT -- TRAIN_FLAGS
    OMP_NUM_THREADS=1 python bench/variants.py adamw -- --recipe tuned --lr 0.002 --weight-decay 0.05
    OMP_NUM_THREADS=1 python bench/variants.py alt-flip+lookahead -- --recipe tuned   # several at once

Variants (results in docs/experiments.md, "Tuned recipe"):
  adamw          AdamW (decoupled weight decay) instead of SGD, with --lr and --weight-decay
                 (trains without a CUDA graph: it would replay the lr it captured)
  no-bias-decay  weight decay on the weights only, not the biases (a common default elsewhere)
  zero-last      the last Linear layer starts at zero, so the first logits are all equal
  scaled-init    every weight x sqrt(3): unit-variance layers instead of PyTorch's default 1/3
  orthogonal     every weight orthogonal (all singular values equal), at the norm PyTorch's init gave it
  clean-last     the last epoch trains without shifts (flips kept), on images as the test set sees them
  alt-flip       each epoch flips exactly the images the epoch before did not (airbench's alternating
                 flip): epoch 0 draws its flips as usual, shifts are drawn as usual every epoch
  linear-decay   the learning rate falls linearly from its peak to 0 instead of along a cosine
  lookahead      airbench's Lookahead: every 5 steps the weights move to a slow copy that trails them,
                 which trails more as training ends; the last step ends on the slow copy
"""
import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train  # noqa: E402


def use_adamw(patch):
    def build_optimizer(model, args, graphed=False):
        return torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    patch(train, "build_optimizer", build_optimizer)


def no_bias_decay(patch):
    """Biases do not scale the output the way weights do, so decaying them only pulls them to 0."""
    build_optimizer = train.build_optimizer

    def build_optimizer_without_bias_decay(model, args, graphed=False):
        optimizer = build_optimizer(model, args, graphed)
        group = optimizer.param_groups[0]  # every parameter: the biases move to a group of their own
        biases = [p for p in group["params"] if p.dim() == 1]
        group["params"] = [p for p in group["params"] if p.dim() > 1]
        optimizer.add_param_group({"params": biases, "weight_decay": 0.0})  # the rest from the optimizer's defaults
        return optimizer
    patch(train, "build_optimizer", build_optimizer_without_bias_decay)


def change_init(patch, change):
    build_model = train.build_model

    def build_changed_model(num_classes, device, seed):
        model = build_model(num_classes, device, seed)
        with torch.no_grad():
            change(model)
        return model
    patch(train, "build_model", build_changed_model)


def zero_last(model):
    model.model[-1].weight.zero_()
    model.model[-1].bias.zero_()


def scale_weights(model):
    for layer in model.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            layer.weight.mul_(math.sqrt(3))


def orthogonal_weights(model):
    """Without activations the network is close to a deep linear one, whose learning orthogonal init
    speeds up (Saxe et al. 2014); the norm is kept, so the logits start at the scale the lr was tuned for."""
    for layer in model.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            orthogonal = torch.nn.init.orthogonal_(torch.empty(layer.weight.shape))
            layer.weight.copy_(orthogonal * (layer.weight.norm() / orthogonal.norm()))


def clean_last_epoch(patch):
    """The last epoch runs as with --translate 0: its order and flips are drawn as before, its shifts are zero."""
    train_one_epoch = train.train_one_epoch

    def train_epoch(step_fn, data, epoch, schedule_step, total_steps, args, *rest):
        if epoch == args.epochs - 1:
            args = argparse.Namespace(**{**vars(args), "translate": 0})
        return train_one_epoch(step_fn, data, epoch, schedule_step, total_steps, args, *rest)
    patch(train, "train_one_epoch", train_epoch)


def alternate_flips(patch):
    """Random flips show an image the same way in two epochs half of the time; alternating them shows
    each image both ways in every two epochs, which airbench found worth extra epochs in short runs."""
    train_one_epoch, augment_plan = train.train_one_epoch, train.augment_plan

    def train_epoch(step_fn, data, epoch, schedule_step, total_steps, args, *rest):
        n = len(data["train_y"])
        first_epoch = train.epoch_generator(args.seed, 0)
        torch.randperm(n, generator=first_epoch)  # drawn before the flips, as train_one_epoch does
        first_flips = augment_plan(n, first_epoch, args.translate)[0]

        def plan(n, generator, max_shift):
            shifts = augment_plan(n, generator, max_shift)[1]
            return first_flips ^ (epoch % 2 == 1), shifts
        patch(train, "augment_plan", plan)
        return train_one_epoch(step_fn, data, epoch, schedule_step, total_steps, args, *rest)
    patch(train, "train_one_epoch", train_epoch)


def linear_decay(patch):
    """The other common shape of decay to zero: against cosine, it spends less of the run near the peak lr
    and less near zero."""
    lr_at = train.lr_at

    def linear_lr_at(step, total_steps, args):
        warmup = int(args.warmup * total_steps)
        if args.schedule != "cosine" or step < warmup:
            return lr_at(step, total_steps, args)
        return args.lr * (1 - (step - warmup) / max(1, total_steps - warmup))
    patch(train, "lr_at", linear_lr_at)


def pull_to_slow(slow, params, decay):
    """slow <- decay * slow + (1 - decay) * params, then params <- slow."""
    with torch.no_grad():
        for slow_param, param in zip(slow, params):
            slow_param.lerp_(param, 1 - decay)
            param.copy_(slow_param)


def lookahead(patch):
    """A per-step average of the weights, as airbench94 does it: decay 0.95^5 x progress^3 every 5 steps,
    so it barely acts early on and averages over about the last 20 steps at the end. It counts the steps
    this process runs, so it is for whole runs, not --resume."""
    call = train.TrainStep.__call__

    def step_with_lookahead(step, idx, global_batch_size, lr):
        if not hasattr(step, "slow"):
            step.params = list(step.model.parameters())
            step.slow, step.done = [p.detach().clone() for p in step.params], 0
            step.total = math.ceil(len(step.labels) / step.args.batch_size) * step.args.epochs
        result = call(step, idx, global_batch_size, lr)
        step.done += 1
        if step.done == step.total:
            pull_to_slow(step.slow, step.params, 1.0)
        elif step.done % 5 == 0:
            pull_to_slow(step.slow, step.params, 0.95 ** 5 * (step.done / step.total) ** 3)
        return result
    patch(train.TrainStep, "__call__", step_with_lookahead)


VARIANTS = {
    "adamw": use_adamw,
    "no-bias-decay": no_bias_decay,
    "zero-last": lambda patch: change_init(patch, zero_last),
    "scaled-init": lambda patch: change_init(patch, scale_weights),
    "orthogonal": lambda patch: change_init(patch, orthogonal_weights),
    "clean-last": clean_last_epoch,
    "alt-flip": alternate_flips,
    "linear-decay": linear_decay,
    "lookahead": lookahead,
}

OWN_OPTIMIZERS = {"adamw"}


def apply(variant, patch=setattr):
    """Patch VARIANT into the train module; PATCH(module, name, value) does the patching (tests pass
    pytest's monkeypatch.setattr so that it is undone)."""
    VARIANTS[variant](patch)


def main(argv):
    """VARIANT may join several with "+", to see whether small gains add up."""
    names = argv[0].split("+") if argv else []
    if len(argv) < 2 or argv[1] != "--" or not set(names) <= VARIANTS.keys() or len(set(names)) < len(names):
        print(f"error: VARIANT must be one of {', '.join(VARIANTS)}, or several joined with +, each once; "
              "usage: variants.py VARIANT -- TRAIN_FLAGS", file=sys.stderr)
        raise SystemExit(2)
    for name in names:
        apply(name)
    # a CUDA graph replays the lr it was captured with unless the optimizer reads it from a device tensor,
    # as train.py's own optimizers do and these do not
    eager = ["--no-cuda-graph"] if set(names) & OWN_OPTIMIZERS else []
    return train.main(argv[2:] + eager)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
