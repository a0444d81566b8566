"""tudui/batches.py: the conversion to input, the normalization statistics, each epoch's seeded order and
augmentation, the validation split, and the batches a run loops over."""
import pytest
import torch

from conftest import class_images, random_batch
from tudui import batches
from tudui.distributed import World
from tudui.errors import SettingsError


def test_uint8_to_input_equals_torchvision_to_tensor():
    from PIL import Image
    from torchvision.transforms.functional import to_tensor
    images, _ = class_images(4, 10, seed=0)
    expected = torch.stack([to_tensor(Image.fromarray(im.transpose(1, 2, 0))) for im in images])
    assert torch.equal(batches.to_input(torch.from_numpy(images)), expected)


def test_channel_stats_equal_the_mean_and_std_of_all_pixels():
    images = random_batch(50)
    pixels = images.double().div(255).transpose(0, 1).reshape(3, -1)
    mean, std = batches.channel_stats(images)
    assert mean == pytest.approx(pixels.mean(1).tolist(), rel=1e-12)
    assert std == pytest.approx(pixels.std(1).tolist(), rel=1e-12)


@pytest.mark.parametrize("max_shift", [0, 2, 4])
def test_translate_bounds_the_shifts(max_shift):
    flips, shifts = batches.augment_plan(5000, torch.Generator().manual_seed(0), max_shift)
    assert shifts.abs().max().item() == max_shift and 0.45 < flips.float().mean().item() < 0.55


def test_augmented_batch_keeps_shape_and_dtype():
    images = random_batch()
    flips, shifts = batches.augment_plan(len(images), torch.Generator().manual_seed(0), 4)
    out = batches.augment_batch(images, flips, shifts)
    assert out.shape == images.shape and out.dtype == torch.uint8


def test_no_flip_and_no_shift_leaves_the_batch_unchanged():
    images = random_batch()
    out = batches.augment_batch(images, torch.zeros(8, dtype=torch.bool), torch.zeros(8, 2, dtype=torch.int64))
    assert torch.equal(out, images)


def test_flip_mirrors_left_to_right():
    images = random_batch()
    out = batches.augment_batch(images, torch.ones(8, dtype=torch.bool), torch.zeros(8, 2, dtype=torch.int64))
    assert torch.equal(out, images.flip(3))


def test_shift_moves_the_image_and_mirrors_it_into_the_gap():
    images = random_batch(1)
    out = batches.augment_batch(images, torch.zeros(1, dtype=torch.bool), torch.tensor([[2, -1]]))
    assert torch.equal(out[0, :, 2:, :-1], images[0, :, :-2, 1:])
    assert torch.equal(out[0, :, :2, :-1], images[0, :, [2, 1], 1:])  # rows -2, -1 mirror rows 2, 1
    assert torch.equal(out[0, :, 2:, -1], images[0, :, :-2, -2])  # column 32 mirrors column 30


def test_the_held_out_images_depend_on_the_seed_alone_and_are_not_trained_on():
    images, labels = torch.arange(100).view(100, 1), torch.arange(100)
    train_x, train_y, val_x, val_y = batches.hold_out(images, labels, 30, seed=7)
    assert len(val_y) == 30 and len(train_y) == 70 and not set(val_y.tolist()) & set(train_y.tolist())
    assert torch.equal(val_x.view(-1), val_y) and train_y.tolist() == sorted(train_y.tolist())
    assert torch.equal(batches.hold_out(images, labels, 30, seed=7)[3], val_y)
    assert not torch.equal(batches.hold_out(images, labels, 30, seed=8)[3], val_y)


def test_holding_out_every_training_image_is_refused():
    with pytest.raises(SettingsError, match="--val-split 100 would hold out every training image"):
        batches.hold_out(torch.zeros(100, 1), torch.zeros(100), 100, seed=0)




def tiny_settings(**changes):
    from tudui.settings import Settings
    return Settings(**{"seed": 0, "augment": False, "translate": 2, **changes})


def test_an_epoch_of_batches_holds_every_training_image_once_as_input_with_its_label():
    images, labels = random_batch(10), torch.arange(10)
    loader = batches.TrainBatches(images, labels, 4, None, tiny_settings(), World())
    seen = list(loader)
    assert [len(targets) for _, targets, _ in seen] == [4, 4, 2] == loader.batch_sizes() and len(loader) == 3
    order = torch.cat([targets for _, targets, _ in seen])
    assert sorted(order.tolist()) == list(range(10))
    assert torch.equal(torch.cat([imgs for imgs, _, _ in seen]), batches.to_input(images[order]))


def test_each_batch_scales_its_summed_loss_to_the_mean_over_the_batch():
    loader = batches.TrainBatches(random_batch(10), torch.arange(10), 4, None, tiny_settings(), World())
    assert [scale for _, _, scale in loader] == [1 / 4, 1 / 4, 1 / 2]


def test_the_order_is_drawn_from_the_seed_and_the_epoch_alone():
    def order(seed, epoch):
        loader = batches.TrainBatches(random_batch(10), torch.arange(10), 4, None, tiny_settings(seed=seed), World())
        loader.set_epoch(epoch)
        return torch.cat([targets for _, targets, _ in loader]).tolist()
    assert order(0, 0) == order(0, 0) and order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)


def test_without_shuffling_every_epoch_takes_the_images_in_the_datasets_order():
    loader = batches.TrainBatches(random_batch(10), torch.arange(10), 4, None, tiny_settings(shuffle=False), World())
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        assert torch.cat([targets for _, targets, _ in loader]).tolist() == list(range(10))


def test_under_torchrun_the_ranks_shares_make_up_each_batch_and_scale_it_by_the_world_size():
    def shares(rank):
        return list(batches.TrainBatches(random_batch(10), torch.arange(10), 4, None, tiny_settings(), World(rank, 2)))
    alone = list(batches.TrainBatches(random_batch(10), torch.arange(10), 4, None, tiny_settings(), World()))
    for whole, first, second in zip(alone, shares(0), shares(1)):
        assert torch.equal(torch.cat([first[1], second[1]]), whole[1])
        assert first[2] == second[2] == 2 * whole[2]


def test_augmented_batches_are_the_plans_flips_and_shifts_of_the_images():
    images, labels = random_batch(6), torch.arange(6)
    loader = batches.TrainBatches(images, labels, 6, None, tiny_settings(augment=True), World())
    generator = batches.epoch_generator(0, 0)
    order = torch.randperm(6, generator=generator)
    flips, shifts = batches.augment_plan(6, generator, 2)
    imgs, targets, _ = next(iter(loader))
    assert torch.equal(targets, order)
    assert torch.equal(imgs, batches.to_input(batches.augment_batch(images[order], flips[order], shifts[order])))


def test_the_first_steps_of_an_epoch_stop_after_that_many_batches():
    loader = batches.TrainBatches(random_batch(10), torch.arange(10), 4, None, tiny_settings(), World())
    assert len(list(loader.first_steps(2))) == len(loader.first_steps(2)) == 2 and len(loader) == 3


def test_test_batches_hold_the_images_in_order_and_each_rank_scores_its_share():
    images, labels = random_batch(1200), torch.arange(1200)
    alone = list(batches.TestBatches(images, labels, None, World()))
    assert [len(targets) for _, targets in alone] == [500, 500, 200]
    assert torch.equal(torch.cat([targets for _, targets in alone]), labels)
    shares = [torch.cat([t for _, t in batches.TestBatches(images, labels, None, World(rank, 2))]) for rank in (0, 1)]
    assert torch.equal(torch.cat(shares), labels)


def batches_with(transform, images, seed=0):
    from types import SimpleNamespace
    settings = SimpleNamespace(seed=seed, shuffle=False, augment=False, translate=0)
    return batches.TrainBatches(images, torch.zeros(len(images), dtype=torch.int64), len(images), None, settings,
                                World(), transform)


def test_a_v2_transform_given_a_whole_batch_draws_once_but_train_batches_draw_for_each_image():
    from torchvision.transforms import v2
    images = random_batch(64)
    flip = v2.RandomHorizontalFlip()
    whole = flip(images)
    assert torch.equal(whole, images) or torch.equal(whole, images.flip(3))  # one draw for all 64
    (out, _, _), = batches_with(flip, images)
    flipped = [torch.equal(o, batches.to_input(i.flip(2)[None])[0]) for o, i in zip(out, images)]
    assert 10 < sum(flipped) < 54


def test_a_transforms_draws_depend_on_seed_and_epoch_and_leave_torchs_generator_as_it_was():
    from torchvision.transforms import v2
    images, jitter = random_batch(16), v2.ColorJitter(brightness=0.5, contrast=0.5)
    first = batches_with(jitter, images)
    state = torch.get_rng_state()
    (a, _, _), = first
    assert torch.equal(torch.get_rng_state(), state)
    (again, _, _), = batches_with(jitter, images)
    other = batches_with(jitter, images)
    other.set_epoch(1)
    (b, _, _), = other
    assert torch.equal(a, again) and not torch.equal(a, b)


def test_a_transform_that_changes_an_images_shape_is_one_line():
    with pytest.raises(SettingsError, match=r"transform changed an image's shape from \(3, 32, 32\) to \(3, 28, 28\)"):
        next(iter(batches_with(lambda image: image[:, 2:30, 2:30], random_batch(4))))
