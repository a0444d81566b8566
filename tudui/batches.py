"""The data as a run uses it: the splits as uint8 tensors on the device (--val-split's held out), the input
normalization, and the batches train.py loops over, in a seeded order and augmented on the device. Not
torch's DataLoader: CIFAR-10 fits on the device whole, and a batch is a slice of a permutation of it (as in
airbench), with no worker processes. `images.float() / 255` is numerically the tutorial's ToTensor.
"""
import copy
import hashlib
from dataclasses import dataclass

import torch

from tudui.checkpoints import TUTORIAL_PREPROCESS
from tudui.datasets import dataset_tensors
from tudui.errors import SettingsError

TEST_BATCH_SIZE = 500  # testing needs no gradients, so bigger batches just mean fewer steps


@dataclass
class Data:
    """A run's images (uint8) and labels on its device (VAL_X and VAL_Y None without --val-split), a new run's
    input normalization, and the images --skip-bad-images SKIPPED."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_x: torch.Tensor | None
    val_y: torch.Tensor | None
    classes: list
    preprocess: dict
    skipped: list


def on_device(train_set, test_set, settings, device):
    """The datasets train.py made (CIFAR10, ImageFolder, or any of (image, label) pairs) as Data on DEVICE."""
    skipped = [] if settings.skip_bad_images else None
    (train_x, train_y, classes), (test_x, test_y, _) = (dataset_tensors(dataset, not settings.dry_run, skipped)
                                                        for dataset in (train_set, test_set))
    val_x = val_y = None
    if settings.val_split:
        train_x, train_y, val_x, val_y = hold_out(train_x, train_y, settings.val_split, settings.seed)
    preprocess = dict(TUTORIAL_PREPROCESS)
    if settings.normalize:  # of the images trained on: the validation images are as unseen as the test set
        preprocess["mean"], preprocess["std"] = channel_stats(train_x)
    on_device = [t if t is None else t.to(device) for t in (train_x, train_y, test_x, test_y, val_x, val_y)]
    return Data(*on_device, classes, preprocess, skipped or [])


class TrainBatches:
    """`for imgs, targets, scale in batches`: one epoch's (set_epoch) training images as the network's input.
    The order and --augment's flips and shifts come from (seed, epoch) alone, so a resumed run and every
    torchrun rank draw what one uninterrupted process would; TRANSFORM is called on each uint8 image with
    torch's generators seeded from (seed, epoch, step, rank). SCALE makes a batch's summed loss its mean over
    the global batch (each torchrun rank takes its share, and DDP averages the gradients)."""

    def __init__(self, images, labels, batch_size, norm, settings, world, transform=None):
        self.images, self.labels, self.batch_size, self.norm, self.world = images, labels, batch_size, norm, world
        self.seed, self.shuffle, self.transform = settings.seed, settings.shuffle, transform
        self.augment, self.translate = settings.augment, settings.translate
        self.epoch, self.max_steps = 0, None

    def set_epoch(self, epoch):
        self.epoch = epoch

    def first_steps(self, steps):
        """These batches, up to STEPS of each epoch (--dry-run's)."""
        limited = copy.copy(self)
        limited.max_steps = steps
        return limited

    def __len__(self):
        return len(self.batch_sizes())

    def batch_sizes(self):
        n = len(self.labels)
        return [min(self.batch_size, n - start) for start in range(0, n, self.batch_size)][:self.max_steps]

    def __iter__(self):
        n, device = len(self.labels), self.labels.device
        generator = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        order = order.to(device, non_blocking=True)
        if self.augment:
            flips, shifts = (t.to(device) for t in augment_plan(n, generator, self.translate))
        for step, (start, size) in enumerate(zip(range(0, n, self.batch_size), self.batch_sizes())):
            idx = self.world.share_of_batch(order[start:start + size])
            batch = self.images[idx]
            if self.augment:
                batch = augment_batch(batch, flips[idx], shifts[idx])
            if self.transform is not None:
                batch = each_image(self.transform, batch, (self.seed, self.epoch, step, self.world.rank))
            yield to_input(batch, self.norm), self.labels[idx], self.world.size / size


class TestBatches:
    """`for imgs, targets in batches`: IMAGES in order as the network's input (under torchrun, this rank's share)."""
    __test__ = False  # a name pytest would otherwise collect

    def __init__(self, images, labels, norm, world):
        share = world.share_of(len(labels))
        self.images, self.labels, self.total = images[share], labels[share], len(labels)
        self.norm, self.world = norm, world

    def first_batch(self):
        """The first TEST_BATCH_SIZE images alone (--dry-run's test)."""
        return TestBatches(self.images[:TEST_BATCH_SIZE], self.labels[:TEST_BATCH_SIZE], self.norm, self.world)

    def __iter__(self):
        for start in range(0, len(self.labels), TEST_BATCH_SIZE):
            batch = slice(start, start + TEST_BATCH_SIZE)
            yield to_input(self.images[batch], self.norm), self.labels[batch]


def epoch_generator(seed, epoch):
    """Each epoch's randomness (order, augmentation) depends only on (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def each_image(transform, batch, draw):
    """TRANSFORM on each image of BATCH on its own, so that each draws its own randomness (a v2 transform given
    a batch draws once), torch's generators seeded from DRAW and put back afterwards."""
    on_cpu = batch.device.type == "cpu"
    with torch.random.fork_rng(devices=[] if on_cpu else [batch.device], device_type="cuda" if on_cpu else
                               batch.device.type):
        torch.manual_seed(int.from_bytes(hashlib.sha256(repr(draw).encode()).digest()[:8], "little"))
        changed = [transform(image) for image in batch]
    if any(image.shape != batch.shape[1:] for image in changed):
        raise SettingsError(f"train.py's transform changed an image's shape from {tuple(batch.shape[1:])} to "
                            f"{tuple(next(i.shape for i in changed if i.shape != batch.shape[1:]))}; it must keep "
                            "the shape (crop with padding, as v2.RandomCrop(32, padding=4) does)")
    return torch.stack(changed)


def hold_out(images, labels, size, seed):
    """(training images, labels, validation images, labels): SIZE held out, drawn by the seed alone (as epoch
    -1's order), so every epoch, resume, --evaluate and torchrun rank holds out the same; order kept."""
    if size >= len(labels):
        raise SettingsError(f"--val-split {size} would hold out every training image; the training split has "
                            f"{len(labels)}, so hold out fewer")
    order = torch.randperm(len(labels), generator=epoch_generator(seed, -1))
    kept, held = order[size:].sort().values, order[:size].sort().values
    return images[kept], labels[kept], images[held], labels[held]


def channel_stats(images):
    """Per-channel mean and std of uint8 images on ToTensor's 0-1 scale, exactly, from each channel's histogram."""
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for channel in images.transpose(0, 1):
        counts = torch.bincount(channel.reshape(-1), minlength=256).double()
        mean = (counts * values).sum() / counts.sum()
        means.append(mean.item())
        stds.append(((counts * (values - mean) ** 2).sum() / (counts.sum() - 1)).sqrt().item())
    return means, stds


def normalizer(preprocess, device):
    """PREPROCESS's (mean, std) on DEVICE, made once so that no step copies from the host; None for x / 255."""
    if preprocess.get("mean") is None:
        return None
    return tuple(torch.tensor(preprocess[k], device=device).view(1, -1, 1, 1) for k in ("mean", "std"))


def to_input(images, norm=None):
    """uint8 (or 0-1 float) (B, 3, H, W) images as the network's float input: x / 255, then (x - mean) / std."""
    x = images.float().div_(255) if images.dtype == torch.uint8 else images.to(torch.float32, copy=True)
    if norm is not None:
        x = x.sub_(norm[0]).div_(norm[1])
    return x.contiguous(memory_format=torch.channels_last)


def augment_plan(n, generator, max_shift):
    """Per-image flip flags and (dy, dx) shifts in [-max_shift, max_shift] for one epoch."""
    flips = torch.rand(n, generator=generator) < 0.5
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
    return flips, shifts


def augment_batch(images, flips, shifts):
    """Flip and shift a uint8 batch on its device, gathering each image through shifted indices; the strip
    uncovered at the edge mirrors the image (torchvision's padding_mode="reflect"), never a constant colour."""
    images = torch.where(flips.view(-1, 1, 1, 1), images.flip(3), images)
    b, c, h, w = images.shape

    def mirror(index, size):  # -1 -> 1, size -> size - 2 (for shifts below size)
        return (size - 1) - ((size - 1) - index.abs()).abs()
    rows = mirror(torch.arange(h, device=images.device) - shifts[:, 0:1], h).view(b, 1, h, 1)
    cols = mirror(torch.arange(w, device=images.device) - shifts[:, 1:2], w).view(b, 1, 1, w)
    batch = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    return images[batch, torch.arange(c, device=images.device).view(1, c, 1, 1), rows, cols]
