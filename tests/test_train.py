"""train.py end to end: the tutorial's routine, its checkpoints, the same updates as a textbook loop, resuming,
a diverged run, --evaluate, and its Python API (main, run, the result and the errors)."""
import json
import math
import re
import shutil
import time

import pytest
import torch

import predict
import train
from conftest import (CLASSES, ROOT, SHARED, bad_input, class_images, copy_of_the_project, cosine_lrs, needs_shared, parse,
                      run_in_copy, run_script, write_cifar_batches)
from model import Tudui
from tudui import batches, console, load_tudui, settings
from tudui.batches import TestBatches, TrainBatches
from tudui.distributed import World
from tudui.errors import CheckpointError, DataError, SettingsError, TuduiError
from tudui.pictures import MISTAKES_SHOWN

TUNED_LR = settings.RECIPES["tuned"]["lr"]


@pytest.mark.slow
def test_command_line_run_writes_checkpoints_and_curves_and_records_its_command(cifar_dir, tmp_path):
    result = run_script(ROOT / "train.py", "--data-dir", cifar_dir, "--no-download", "--epochs", "2",
                        "--logdir", tmp_path / "logs", "--run-name", "cli", "--log-every", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "logs" / "cli"
    assert {"tudui_epoch_0.pth", "tudui_epoch_1.pth", "last.pth", "best.pth"} <= {p.name for p in run_dir.iterdir()}
    assert "epoch 1: train loss" in result.stdout and "images/s" in result.stdout and "device cpu" in result.stdout
    assert "step 2, loss" in result.stdout
    made_by = torch.load(run_dir / "last.pth", weights_only=True)["provenance"]
    assert made_by["command"] == (f"python train.py --data-dir {cifar_dir} --no-download --epochs 2 --logdir "
                                  f"{tmp_path / 'logs'} --run-name cli --log-every 2")


def test_checkpoint_is_a_weights_only_dict_with_everything_to_resume(finished_run):
    ckpt = torch.load(finished_run.ckpt_dir / "tudui_epoch_0.pth", weights_only=True)
    assert {"model", "optimizer", "epoch", "step", "config", "classes", "test_accuracy", "test_loss", "rng"} <= set(ckpt)
    assert ckpt["epoch"] == 0 and ckpt["step"] == math.ceil(200 / 64)
    assert ckpt["config"]["lr"] == 0.01 and ckpt["classes"][0] == "airplane"
    Tudui().load_state_dict(ckpt["model"])


@pytest.mark.slow
def test_best_checkpoint_holds_the_highest_test_accuracy(train_args, tmp_path):
    train.main(train_args + ["--epochs", "3", "--lr", "0.05"])
    run_dir = tmp_path / "logs" / "run"
    accuracies = [torch.load(run_dir / f"tudui_epoch_{i}.pth", weights_only=True)["test_accuracy"] for i in range(3)]
    best = torch.load(run_dir / "best.pth", weights_only=True)
    last = torch.load(run_dir / "last.pth", weights_only=True)
    assert best["test_accuracy"] == max(accuracies) and best["epoch"] == accuracies.index(max(accuracies))
    assert last["epoch"] == 2


def test_each_epoch_records_when_it_started(train_args, tmp_path):
    before = time.time()
    train.main(train_args + ["--epochs", "2"])
    records = [json.loads(line) for line in (tmp_path / "logs" / "run" / "metrics.jsonl").read_text().splitlines()]
    first, second = (r["started_at"] for r in records)
    assert before < first < second - records[0]["train_seconds"] < time.time()


def test_last_partial_batch_is_trained_on(train_args, tmp_path):
    train.main(train_args + ["--epochs", "1", "--batch-size", "150"])  # 200 images: 150 + 50
    assert torch.load(tmp_path / "logs" / "run" / "last.pth", weights_only=True)["step"] == 2


def test_test_loss_is_the_mean_per_sample_loss_whatever_the_batch_size(monkeypatch):
    images, labels = (torch.from_numpy(a) for a in class_images(30, 10, seed=1))
    net = Tudui().eval()
    expected = torch.nn.functional.cross_entropy(net(batches.to_input(images)), labels).item()
    for batch in (7, 500):
        monkeypatch.setattr(batches, "TEST_BATCH_SIZE", batch)
        result = train.test(net, TestBatches(images, labels, None, World()), 10)
        assert result["loss"] == pytest.approx(expected, rel=1e-5)


def test_amp_on_the_cpu_trains_in_bfloat16_close_to_fp32_with_fp32_weights(train_args, tmp_path, tutorial_network):
    train.main(train_args + ["--epochs", "1", "--run-name", "fp32"])
    train.main(train_args + ["--epochs", "1", "--run-name", "amp", "--amp"])
    fp32, amp = (torch.load(tmp_path / "logs" / name / "last.pth", weights_only=True)["model"] for name in ("fp32", "amp"))
    assert all(tensor.dtype == torch.float32 for tensor in amp.values())
    assert not all(torch.equal(fp32[key], amp[key]) for key in fp32)  # bf16 rounding shows: autocast was on
    for key in fp32:
        torch.testing.assert_close(amp[key], fp32[key], rtol=0, atol=1e-4)  # seen: 1.4e-5


def scheduled_lrs(flags, steps=100):
    """The lr of each of STEPS steps under the scheduler train.py builds for FLAGS, as it steps it."""
    args = parse(flags + ["--epochs", "1"])
    optimizer = train.build_optimizer(train.build_model(10, torch.device("cpu"), 0), args)
    scheduler = train.build_scheduler(optimizer, args, steps_per_epoch=steps)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_cosine_schedule_decays_from_the_peak_to_zero():
    lrs = scheduled_lrs(["--lr", "0.1", "--schedule", "cosine"])
    assert lrs[0] == 0.1 and lrs == sorted(lrs, reverse=True) and lrs[-1] < 1e-4


def test_onecycle_warms_up_for_30_percent_then_anneals():
    lrs = scheduled_lrs(["--lr", "0.1", "--schedule", "onecycle"])
    assert lrs[0] == pytest.approx(0.1 / 25) and max(lrs) == lrs[30] == pytest.approx(0.1)
    assert lrs[-1] < 1e-3


def test_warmup_ramps_linearly_to_the_peak():
    lrs = scheduled_lrs(["--lr", "0.1", "--warmup", "0.1"])
    assert lrs[:10] == pytest.approx([0.01 * (i + 1) for i in range(10)]) and lrs[50] == 0.1


@pytest.fixture
def cifar_train(cifar_dir):
    """The tiny CIFAR-10 training split: 200 images, so 4 steps of 64 (the last one of 8)."""
    from tudui.datasets import load_split
    images, labels, _ = load_split("cifar10", cifar_dir, "train", download=False)
    return images, labels


def plain_epoch(images, labels, lrs, translate=None, normalize=False, label_smoothing=0.0, **sgd):
    """The textbook loop over epoch 0's order (seed 0): NCHW, mean loss, .item() per step, the lr of
    LRS set before each step. With TRANSLATE, each image of epoch 0's augmentation plan is flipped, then
    shifted through torch's reflect padding and a crop; with NORMALIZE, the mean and std of all training
    pixels are applied. Returns the network and the last step's loss."""
    torch.manual_seed(0)
    plain = train.Tudui()
    optimizer = torch.optim.SGD(plain.parameters(), lr=lrs[0], **sgd)
    generator = batches.epoch_generator(0, 0)
    order = torch.randperm(len(labels), generator=generator)
    if translate is not None:
        flips, shifts = batches.augment_plan(len(labels), generator, translate)
    pixels = images.double() / 255
    mean, std = pixels.mean((0, 2, 3)).float().view(1, 3, 1, 1), pixels.std((0, 2, 3)).float().view(1, 3, 1, 1)
    for step, i in enumerate(range(0, len(labels), 64)):
        optimizer.param_groups[0]["lr"] = lrs[step]
        idx = order[i:i + 64]
        x = images[idx].float() / 255
        if translate is not None:
            x = torch.stack([shifted(image.flip(2) if flips[j] else image, *shifts[j].tolist(), translate)
                             for image, j in zip(x, idx)])
        if normalize:
            x = (x - mean) / std
        loss = torch.nn.functional.cross_entropy(plain(x), labels[idx], label_smoothing=label_smoothing)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()
    return plain, loss.item()


def shifted(image, dy, dx, pad):
    """IMAGE moved down DY and right DX pixels, the uncovered strip mirrored in (RandomCrop with reflect padding)."""
    padded = torch.nn.functional.pad(image[None], (pad,) * 4, mode="reflect")[0]
    return padded[:, pad - dy:pad - dy + image.shape[1], pad - dx:pad - dx + image.shape[2]]


def fast_epoch(images, labels, flags):
    """train.py's epoch 0 (channels_last, tensor batches, device-side loss buffer) of a one-epoch run."""
    s = parse(["--batch-size", "64", "--epochs", "1", *flags])
    fast = train.build_model(10, torch.device("cpu"), seed=0)
    optimizer = train.build_optimizer(fast, s)
    step = train.make_train_step(fast, torch.nn.CrossEntropyLoss(reduction="sum"), optimizer, amp=False)
    loader = TrainBatches(images, labels, 64, None, s, World())
    scheduler = train.build_scheduler(optimizer, s, len(loader))
    losses, _, _ = train.train_one_epoch(fast, loader, step, optimizer, scheduler, 0, s, lambda *_: None,
                                         console.StopOnSignal())
    return fast, losses


def test_fast_epoch_matches_a_plain_eager_loop_within_float_tolerance(cifar_train, tutorial_network):
    """Equal within float tolerance, not bit-equal, because channels_last convolutions sum in another order:
    on the tutorial's network, where that stays small (a deep BatchNorm network magnifies it)."""
    images, labels = cifar_train
    plain, last_loss = plain_epoch(images, labels, [0.01] * 4)
    fast, losses = fast_epoch(images, labels, [])
    assert losses[-1].item() == pytest.approx(last_loss, rel=1e-4)
    for key, tensor in plain.state_dict().items():
        torch.testing.assert_close(fast.state_dict()[key], tensor, rtol=1e-4, atol=1e-5)


def test_each_step_uses_the_scheduled_lr_and_the_flags_sgd_settings(cifar_train, tutorial_network):
    images, labels = cifar_train
    plain, _ = plain_epoch(images, labels, cosine_lrs(0.05, 4), momentum=0.9, nesterov=True, weight_decay=0.05)
    fast, _ = fast_epoch(images, labels, ["--lr", "0.05", "--schedule", "cosine", "--momentum", "0.9", "--nesterov",
                                          "--weight-decay", "0.05"])
    for key, tensor in plain.state_dict().items():
        torch.testing.assert_close(fast.state_dict()[key], tensor, rtol=1e-4, atol=1e-5)


def test_tuned_recipe_trains_as_a_textbook_loop_with_flips_shifts_normalization_and_smoothing(train_args, tmp_path,
                                                                                               cifar_train,
                                                                                               tutorial_network):
    """With SGD, which the textbook loop has (Muon's update has a test of its own), on the tutorial's network."""
    images, labels = cifar_train
    train.main(train_args + ["--recipe", "tuned", "--optimizer", "sgd", "--epochs", "1"])  # batch 64: 4 steps
    plain, _ = plain_epoch(images, labels, cosine_lrs(TUNED_LR, 4), translate=2, normalize=True, label_smoothing=0.1,
                           momentum=0.9, nesterov=True, weight_decay=2e-3)
    trained = torch.load(tmp_path / "logs" / "run" / "last.pth", weights_only=True)["model"]
    for key, tensor in plain.state_dict().items():  # seen: 2.6e-5 apart (channels_last sums in another order)
        torch.testing.assert_close(trained[key], tensor, rtol=1e-4, atol=1e-4)


def test_normalization_constants_are_stored_and_applied_by_predict(cifar_dir, tmp_path):
    train.main(["--data-dir", str(cifar_dir), "--no-download", "--device", "cpu", "--quiet", "--epochs", "1",
                "--logdir", str(tmp_path), "--run-name", "r", "--recipe", "tuned", "--batch-size", "64"])
    checkpoint = torch.load(tmp_path / "r" / "last.pth", weights_only=True)
    from tudui.datasets import load_split
    images, _, _ = load_split("cifar10", cifar_dir, "train", download=False)
    mean, std = batches.channel_stats(images)
    assert checkpoint["preprocess"] == {"mean": mean, "std": std}

    net = load_tudui(tmp_path / "r" / "last.pth")
    plain = Tudui()
    plain.load_state_dict(checkpoint["model"])
    image = torch.from_numpy(class_images(1, 10, seed=9)[0][0])
    expected = plain.eval()(((image.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))[None])
    probabilities = predict.classify(net, image, torch.device("cpu"))
    torch.testing.assert_close(probabilities.view(-1), expected.softmax(1).view(-1))


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(train_args, tmp_path, optimizer):
    # Momentum buffers and augmentation must be restored too. (A decaying schedule depends on the total
    # epochs, so stretching a run from 2 to 3 epochs changes it: the constant one keeps this comparison fair.)
    recipe = ["--momentum", "0.9", "--weight-decay", "5e-4", "--augment", "--normalize", "--optimizer", optimizer]
    train.main(train_args + recipe + ["--epochs", "3", "--run-name", "straight"])
    train.main(train_args + recipe + ["--epochs", "2", "--run-name", "split"])
    split_dir = tmp_path / "logs" / "split"
    train.main(["--resume", str(split_dir / "last.pth"), "--epochs", "3", "--quiet", "--device", "cpu"])
    straight = torch.load(tmp_path / "logs" / "straight" / "last.pth", weights_only=True)
    resumed = torch.load(split_dir / "last.pth", weights_only=True)
    assert resumed["epoch"] == 2
    for key, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][key]), key


@pytest.mark.slow
def test_a_run_resumed_with_another_batch_size_continues_its_lr_schedule_from_the_same_epoch(train_args, tmp_path):
    train.main(train_args + ["--recipe", "tuned", "--epochs", "2"])  # 200 images at 64: 4 steps an epoch, step 4 saved
    run_dir = tmp_path / "logs" / "run"
    train.main(["--resume", str(run_dir / "tudui_epoch_0.pth"), "--epochs", "2", "--batch-size", "32",  # 7 an epoch
                "--run-name", "branch"])
    last_epoch = json.loads((tmp_path / "logs" / "branch" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last_epoch["epoch"] == 1 and last_epoch["lr"] == pytest.approx(cosine_lrs(TUNED_LR, 14)[-1], rel=1e-9)


def test_optimizer_flags_given_on_resume_override_the_checkpoints(train_args, tmp_path):
    train.main(train_args + ["--epochs", "1", "--momentum", "0.9", "--weight-decay", "5e-4"])
    last = tmp_path / "logs" / "run" / "last.pth"
    train.main(["--resume", str(last), "--epochs", "2", "--momentum", "0.5", "--weight-decay", "0", "--nesterov",
                "--quiet", "--device", "cpu"])
    group = torch.load(last, weights_only=True)["optimizer"]["param_groups"][0]
    assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.5, 0, True)


def test_resuming_a_run_that_reached_its_epochs_trains_nothing_and_says_how_to_train_on(train_args, tmp_path, capsys):
    train.main(train_args + ["--epochs", "1"])
    last = tmp_path / "logs" / "run" / "last.pth"
    before = last.read_bytes()
    metrics = train.main(["--resume", str(last), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err
    assert "has already trained 1 epoch, and --epochs 1 is the total" in err and "give a larger --epochs" in err
    assert metrics.epoch == 0 and last.read_bytes() == before


def test_a_resumed_run_replaces_best_pth_only_with_a_better_epoch_than_before_the_resume(train_args, tmp_path):
    train.main(train_args + ["--epochs", "1"])
    run_dir = tmp_path / "logs" / "run"
    checkpoint = torch.load(run_dir / "last.pth", weights_only=True)
    checkpoint["best_accuracy"] = 1.0  # as if an earlier epoch had been perfect: nothing can beat it
    torch.save(checkpoint, run_dir / "last.pth")
    best_before = (run_dir / "best.pth").read_bytes()
    metrics = train.main(["--resume", str(run_dir / "last.pth"), "--epochs", "2", "--quiet", "--device", "cpu"])
    assert metrics.best_accuracy == 1.0
    assert (run_dir / "best.pth").read_bytes() == best_before


def test_resuming_on_a_dataset_with_other_classes_is_one_clear_line(capsys, folder_dir, cifar_dir, tmp_path):
    train.main(["--dataset", "folder", "--data-dir", str(folder_dir), "--logdir", str(tmp_path), "--run-name", "run",
                "--device", "cpu", "--quiet", "--epochs", "1"])
    err = bad_input(capsys, ["--resume", str(tmp_path / "run" / "last.pth"), "--epochs", "2", "--dataset", "cifar10",
                             "--data-dir", str(cifar_dir), "--no-download"])
    assert "was trained on classes ['cat', 'dog', 'ship']" in err and "resume with the same --dataset" in err


def test_non_finite_loss_stops_and_keeps_the_good_checkpoints(train_args, tmp_path, capsys):
    train.main(train_args + ["--epochs", "1"])
    run_dir = tmp_path / "logs" / "run"
    before = {p.name: p.read_bytes() for p in run_dir.glob("*.pth")}
    err = bad_input(capsys, ["--resume", str(run_dir / "last.pth"), "--epochs", "2", "--lr", "1e30", "--device", "cpu"])
    assert "learning rate" in err
    # epoch 1 starts at step 5, whose loss is still finite; its update blows the weights up for step 6
    assert "the training loss became non-finite at step 6 (epoch 1)" in err
    assert {p.name: p.read_bytes() for p in run_dir.glob("*.pth")} == before


def test_weights_broken_by_the_last_step_of_an_epoch_stop_the_run_before_that_epoch_is_saved(train_args, tmp_path,
                                                                                             capsys):
    train.main(train_args + ["--epochs", "1"])
    run_dir = tmp_path / "logs" / "run"
    before = {p.name: p.read_bytes() for p in run_dir.glob("*.pth")}
    # one step per epoch: its loss is finite, its update is not
    err = bad_input(capsys, ["--resume", str(run_dir / "last.pth"), "--epochs", "2", "--batch-size", "100000", "--lr",
                             "1e30", "--device", "cpu"])
    assert "the weights became non-finite at step 5, the last (epoch 1)" in err
    assert {p.name: p.read_bytes() for p in run_dir.glob("*.pth")} == before


def test_evaluate_with_tta_scores_the_mean_of_the_image_and_mirror_probabilities(cifar_dir, untrained_weights):
    metrics = train.main(["--evaluate", str(untrained_weights), "--tta", "--data-dir", str(cifar_dir),
                          "--no-download", "--device", "cpu"])

    from tudui.datasets import load_split
    images, labels, _ = load_split("cifar10", cifar_dir, "test", download=False)
    net = load_tudui(untrained_weights)
    x = images.float() / 255
    with torch.no_grad():
        probabilities = (net(x).softmax(1) + net(x.flip(3)).softmax(1)) / 2
    expected_loss = torch.nn.functional.nll_loss(probabilities.log(), labels).item()
    expected_accuracy = (probabilities.argmax(1) == labels).double().mean().item()
    assert metrics.test_loss == pytest.approx(expected_loss, rel=1e-5)
    assert metrics.test_accuracy == pytest.approx(expected_accuracy)


def test_the_test_pass_gives_each_images_predicted_class_and_its_probability(cifar_dir, untrained_weights):
    from tudui.datasets import load_split
    images, labels, _ = load_split("cifar10", cifar_dir, "test", download=False)
    net = load_tudui(untrained_weights)
    result = train.test(net, TestBatches(images, labels, None, World()), 10)
    assert not net.training  # as it was
    with torch.no_grad():
        probabilities = net(images.float() / 255).softmax(1)
    assert torch.equal(result["predicted"], probabilities.argmax(1))
    assert torch.allclose(result["confidence"], probabilities.amax(1))


def test_evaluate_with_mistakes_draws_the_most_confident_mistakes_as_a_png(cifar_dir, untrained_weights, tmp_path,
                                                                           capsys):
    train.main(["--evaluate", str(untrained_weights), "--data-dir", str(cifar_dir), "--no-download", "--device", "cpu",
                "--mistakes", str(tmp_path / "mistakes.png")])
    assert (tmp_path / "mistakes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.splitlines()[-1] == (f"the {MISTAKES_SHOWN} test images it got most confidently "
                                                        f"wrong, drawn in {tmp_path / 'mistakes.png'}")


def test_evaluate_prints_per_class_accuracy_and_confusion_matrix(folder_dir, tmp_path, capsys):
    torch.save(Tudui(num_classes=3).state_dict(), tmp_path / "three.pth")
    metrics = train.main(["--evaluate", str(tmp_path / "three.pth"), "--dataset", "folder",
                          "--data-dir", str(folder_dir), "--device", "cpu"])
    out = capsys.readouterr().out
    assert "confusion matrix" in out and set(metrics.per_class_accuracy) == {"0", "1", "2"}
    rows = [line for line in out.splitlines() if line.split() and line.split()[0] in {"0", "1", "2"}]
    assert sum(int(v) for row in rows[-3:] for v in row.split()[1:]) == 18  # every test image counted once


def test_evaluating_on_a_dataset_with_another_class_count_is_one_line(tmp_path, cifar_dir, capsys):
    torch.save(Tudui(num_classes=4).state_dict(), tmp_path / "four.pth")
    err = bad_input(capsys, ["--evaluate", str(tmp_path / "four.pth"), "--data-dir", str(cifar_dir), "--no-download"])
    assert err == (f"error: {tmp_path / 'four.pth'} predicts 4 classes but the dataset has 10; "
                   "evaluate it on the dataset it was trained for")


def test_evaluating_a_folder_with_some_of_the_classes_labels_them_in_the_checkpoints_order(folder_dir, tmp_path):
    train.main(["--dataset", "folder", "--data-dir", str(folder_dir), "--epochs", "1", "--device", "cpu",
                "--logdir", str(tmp_path), "--run-name", "r", "--quiet"])
    evaluate = ["--evaluate", str(tmp_path / "r" / "last.pth"), "--dataset", "folder", "--device", "cpu"]
    full = train.main(evaluate + ["--data-dir", str(folder_dir)])
    for name in ("dog", "ship"):  # the first class, cat, is missing: sorted folder order would shift the labels
        shutil.copytree(folder_dir / "test" / name, tmp_path / "part" / "test" / name)
    part = train.main(evaluate + ["--data-dir", str(tmp_path / "part")])
    assert [part.per_class_accuracy[c] for c in ("dog", "ship")] == [full.per_class_accuracy[c]
                                                                        for c in ("dog", "ship")]


def test_evaluating_on_classes_named_otherwise_says_how_they_are_matched(folder_dir, tmp_path, capsys):
    train.main(["--dataset", "folder", "--data-dir", str(folder_dir), "--epochs", "1", "--device", "cpu",
                "--logdir", str(tmp_path), "--run-name", "r", "--quiet"])
    evaluate = ["--evaluate", str(tmp_path / "r" / "last.pth"), "--dataset", "folder", "--device", "cpu"]
    capsys.readouterr()
    train.main(evaluate + ["--data-dir", str(folder_dir)])
    assert capsys.readouterr().err == ""
    for old, new in (("cat", "x"), ("dog", "y"), ("ship", "z")):
        shutil.copytree(folder_dir / "test" / old, tmp_path / "renamed" / "test" / new)
    train.main(evaluate + ["--data-dir", str(tmp_path / "renamed")])
    assert capsys.readouterr().err == (f"note: the test classes (x, y, z) are not the class names of "
                                       f"{tmp_path / 'r' / 'last.pth'} (cat, dog, ship); test class i in this "
                                       "order is scored as its class i\n")


@pytest.mark.slow
@needs_shared("cifar10-jpg.tar.xz")
def test_tutorial_checkpoint_scores_about_61_percent_on_the_real_test_images(real_cifar):
    metrics = train.main(["--evaluate", str(SHARED / "tutorial" / "tudui_29_gpu.pth"), "--dataset", "folder",
                          "--data-dir", str(real_cifar), "--device", "cpu"])
    assert 0.60 <= metrics.test_accuracy <= 0.625


@pytest.mark.slow
def test_main_called_from_python_with_a_kernels_command_line_trains_on_the_defaults(cifar_dir, tmp_path, monkeypatch):
    """A Jupyter kernel's own sys.argv must not reach argparse (pytorch/examples issue 369)."""
    shutil.copytree(cifar_dir / "cifar-10-batches-py", tmp_path / "data" / "cifar-10-batches-py")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["ipykernel_launcher.py", "-f", "/root/.local/share/jupyter/runtime/kernel-1.json"])
    result = train.main()
    assert result.history["epoch"] == list(range(10))
    config = json.loads((result.run_dir / "config.json").read_text())
    assert (config["epochs"], config["batch_size"], config["lr"], config["data_dir"]) == (10, 64, 0.01, "./data")


@pytest.mark.slow
def test_the_keyword_form_is_the_command_line_under_the_flags_own_names(cifar_dir, tmp_path):
    by_flags = train.main(["--data-dir", str(cifar_dir), "--no-download", "--logdir", str(tmp_path), "--run-name",
                           "flags", "--epochs", "2", "--recipe", "tuned", "--batch-size", "64", "--no-augment"])
    by_keywords = train.run(data_dir=cifar_dir, no_download=True, logdir=tmp_path, run_name="keywords", epochs=2,
                            recipe="tuned", batch_size=64, augment=False)
    flags, keywords = (torch.load(r.last_path, weights_only=True) for r in (by_flags, by_keywords))
    assert {k: v for k, v in flags["config"].items() if k != "run_name"} == {
        k: v for k, v in keywords["config"].items() if k != "run_name"}
    assert all(torch.equal(flags["model"][key], keywords["model"][key]) for key in flags["model"])


def test_the_keyword_form_goes_through_the_flags_checks():
    with pytest.raises(SettingsError, match=r"^--epochs must be at least 1 \(got 0\)$"):
        train.run(epochs=0)


def test_an_unknown_keyword_is_an_error_that_names_the_valid_ones():
    with pytest.raises(SettingsError, match="'epoch' is not a setting of train.run; the settings are: recipe, epochs"):
        train.run(epoch=3)


@pytest.mark.parametrize("argv, kind, says", [
    (["--epochs", "abc"], SettingsError, "argument --epochs: invalid int value: 'abc'"),
    (["--lr", "-1"], SettingsError, "--lr must be a positive number"),
    (["--data-dir", "/nonexistent", "--no-download"], DataError, "CIFAR-10 is not in /nonexistent"),
    (["--resume", "/nonexistent.pth"], CheckpointError, "checkpoint /nonexistent.pth does not exist"),
])
def test_bad_input_from_python_raises_its_kinds_error_with_the_command_lines_message(argv, kind, says):
    with pytest.raises(kind, match=re.escape(says)) as raised:
        train.main(argv)
    assert isinstance(raised.value, TuduiError) and len(str(raised.value).splitlines()) == 1


def test_the_result_holds_the_per_epoch_history_and_the_checkpoints_paths(finished_run):
    records = [json.loads(line) for line in (finished_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert finished_run.history["epoch"] == [0, 1]
    assert finished_run.history["test_accuracy"] == [r["test_accuracy"] for r in records]
    assert finished_run.test_accuracy == records[-1]["test_accuracy"] and finished_run.epoch == 1
    assert finished_run.last_path == finished_run.run_dir / "last.pth" and finished_run.best_path.exists()
    assert torch.load(finished_run.last_path, weights_only=True)["epoch"] == 1


def test_evaluate_from_python_returns_the_confusion_matrix_and_the_class_names(cifar_dir, untrained_weights):
    evaluation = train.run(evaluate=untrained_weights, data_dir=cifar_dir, no_download=True, device="cpu")
    assert evaluation.classes == list(CLASSES) and evaluation.confusion.shape == (10, 10)
    assert evaluation.confusion.sum() == 100 and evaluation.test_accuracy == evaluation.confusion.trace() / 100


def test_with_a_validation_split_each_epoch_reports_validation_and_still_scores_the_test_set(train_args):
    result = train.main(train_args + ["--epochs", "2", "--val-split", "50"])
    history = result.history
    assert len(history["val_accuracy"]) == len(history["test_accuracy"]) == 2
    assert all(loss > 0 for loss in history["val_loss"]) and all(loss > 0 for loss in history["test_loss"])
    assert torch.load(result.last_path, weights_only=True)["step"] == 2 * 3  # 150 images trained on: 3 steps of 64


@pytest.mark.slow
def test_with_a_validation_split_best_pth_is_the_best_validation_epoch_not_the_best_test_epoch(train_args, tmp_path):
    result = train.main(train_args + ["--epochs", "4", "--lr", "0.05", "--val-split", "50"])
    history = result.history
    best = torch.load(result.best_path, weights_only=True)
    assert best["epoch"] == history["val_accuracy"].index(max(history["val_accuracy"]))
    assert best["best_accuracy"] == max(history["val_accuracy"]) == result.best_accuracy


@pytest.mark.slow
def test_a_run_with_a_validation_split_resumes_bit_identical_to_an_uninterrupted_one(train_args, tmp_path):
    flags = ["--val-split", "50", "--momentum", "0.9", "--augment", "--normalize"]
    straight = train.main(train_args + flags + ["--epochs", "3", "--run-name", "straight"])
    split = train.main(train_args + flags + ["--epochs", "2", "--run-name", "split"])
    resumed = train.main(["--resume", str(split.last_path), "--epochs", "3", "--quiet", "--device", "cpu"])
    assert resumed.history["val_accuracy"] == straight.history["val_accuracy"]
    a, b = (torch.load(r.last_path, weights_only=True)["model"] for r in (straight, resumed))
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_evaluate_scores_the_images_its_run_held_out_as_the_run_did(train_args, cifar_dir, tmp_path, capsys):
    result = train.main(train_args + ["--epochs", "1", "--val-split", "50", "--seed", "3"])
    capsys.readouterr()
    evaluation = train.main(["--evaluate", str(result.last_path), "--data-dir", str(cifar_dir), "--device", "cpu"])
    assert evaluation.val_images == 50 and evaluation.val_accuracy == result.history["val_accuracy"][-1]
    assert evaluation.val_loss == pytest.approx(result.history["val_loss"][-1], rel=1e-6)
    assert "on the 50 training images its run held out (--val-split)" in capsys.readouterr().out


DRY_RUN_LINES = ("data: ", "device: cpu", "folders: ", "training: 2 steps", "test: one batch of 100 images",
                 "everything is in place; start the run with: ")


def test_a_dry_run_checks_each_part_in_a_line_names_the_real_command_and_writes_nothing(cifar_dir, tmp_path, capsys):
    argv = ["--data-dir", str(cifar_dir), "--no-download", "--device", "cpu", "--logdir", str(tmp_path / "logs"),
            "--recipe", "tuned", "--batch-size", "64", "--dry-run"]
    assert train.main(argv) is None
    lines = capsys.readouterr().out.splitlines()
    assert [line[:len(start)] for line, start in zip(lines, DRY_RUN_LINES)] == list(DRY_RUN_LINES)
    assert "training images per class: airplane 20, automobile 20" in lines[0]
    assert lines[-1].endswith(f"python train.py --data-dir {cifar_dir} --no-download --device cpu --logdir "
                              f"{tmp_path / 'logs'} --recipe tuned --batch-size 64")
    assert sorted(p.name for p in tmp_path.iterdir()) == [] and list((cifar_dir / "cifar-10-batches-py").iterdir())


def test_a_dry_run_from_python_returns_nothing_and_names_the_keyword_call(cifar_dir, tmp_path, capsys):
    assert train.run(data_dir=cifar_dir, logdir=tmp_path / "logs", epochs=2, dry_run=True) is None
    assert capsys.readouterr().out.splitlines()[-1].endswith(
        f"train.run(data_dir={cifar_dir!r}, logdir={tmp_path / 'logs'!r}, epochs=2)")
    assert not (tmp_path / "logs").exists()


def a_folder_holding_a_run(tmp_path):
    train.main(["--data-dir", str(tmp_path.parent / "cifar"), "--logdir", str(tmp_path / "logs"), "--run-name", "run",
                "--device", "cpu", "--quiet", "--epochs", "1"])


def hold_the_run_lock(tmp_path):
    import fcntl
    (tmp_path / "logs" / "run").mkdir(parents=True)
    held = open(tmp_path / "logs" / "run" / ".lock", "a")
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running train.py holds it
    return held


@pytest.mark.parametrize("flags, prepare, says", [
    (["--data-dir", "{tmp}/nowhere"], None, "CIFAR-10 is not in {tmp}/nowhere/cifar-10-batches-py and --dry-run "
                                           "downloads nothing"),
    ([], lambda tmp: (tmp.parent / "cifar" / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"\x80\x04junk"),
     "cifar-10-batches-py fails torchvision's md5 check"),
    (["--device", "cuda"], "no cuda", "--device cuda is not available on this machine"),
    (["--logdir", "{tmp}/a_file/logs"], lambda tmp: (tmp / "a_file").write_text(""), "cannot write in {tmp}/a_file"),
    (["--ckpt-dir", "{tmp}/a_file/weights"], lambda tmp: (tmp / "a_file").write_text(""),
     "choose another --ckpt-dir"),
    ([], a_folder_holding_a_run, "{tmp}/logs/run already holds the checkpoints of an earlier run"),
    ([], hold_the_run_lock, "another run is writing to {tmp}/logs/run"),
    (["--lr", "1e30"], None, "the training loss became non-finite at step 2"),
])
def test_a_dry_run_fails_on_each_part_with_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, flags, prepare,
                                                                        says):
    work = tmp_path / "work"
    work.mkdir()
    write_cifar_batches(tmp_path / "cifar")
    if prepare == "no cuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    elif prepare:
        held = prepare(work)  # noqa: F841  (a lock must stay open to be held)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    argv = ["--data-dir", str(tmp_path / "cifar"), "--logdir", str(work / "logs"), "--run-name", "run", "--device",
            "cpu", "--dry-run"] + [flag.replace("{tmp}", str(work)) for flag in flags]
    err = bad_input(capsys, argv)
    assert says.replace("{tmp}", str(work)) in err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


# ------------------------------------------------------- what a learner changes in train.py is what trains

SGD_LINE = ("    return torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, nesterov=s.nesterov,\n"
            "                           weight_decay=s.weight_decay)")
SCHEDULER_LINE = "    return LambdaLR(optimizer, lr_schedule(s, total_steps=steps_per_epoch * s.epochs))"
TRANSFORM_LINE = "train_transform = None"

STRAIGHT_AND_RESUMED = """import json, sys
import train
common = json.loads(sys.argv[1])
train.main(common + ["--epochs", "3", "--run-name", "straight"])
split = train.main(common + ["--epochs", "2", "--run-name", "split"])
train.main(["--resume", str(split.last_path), "--epochs", "3", "--quiet", "--device", "cpu"])
"""


def straight_and_resumed(project, cifar_dir, *flags):
    """3 epochs straight, and 2 then resumed to 3, in PROJECT; their last.pth and metrics.jsonl lines."""
    common = ["--data-dir", str(cifar_dir), "--no-download", "--device", "cpu", "--quiet", "--logdir",
              str(project / "logs"), *flags]
    done = run_in_copy(project, STRAIGHT_AND_RESUMED, json.dumps(common))
    assert done.returncode == 0, done.stderr[-3000:]
    return [(torch.load(project / "logs" / run / "last.pth", weights_only=True),
             [json.loads(line) for line in (project / "logs" / run / "metrics.jsonl").read_text().splitlines()])
            for run in ("straight", "split")]


@pytest.mark.slow
def test_an_adam_built_in_train_py_trains_at_its_own_lr_and_its_checkpoint_says_adam(tmp_path, cifar_dir, capsys):
    project = copy_of_the_project(tmp_path, train_edits=[(SGD_LINE, "    return torch.optim.Adam(model.parameters(), "
                                                                    "lr=1e-3)")])
    done = run_in_copy(project, "import sys, train\ntrain.main(sys.argv[1:])", "--data-dir", cifar_dir,
                       "--no-download", "--device", "cpu", "--epochs", "1", "--log-every", "1", "--logdir",
                       tmp_path / "logs", "--run-name", "adam")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Adam, lr 0.001, LambdaLR" in done.stdout and "lr 0.001, " in done.stdout.splitlines()[-1]
    checkpoint = torch.load(tmp_path / "logs" / "adam" / "last.pth", weights_only=True)
    assert checkpoint["optimizer_class"] == "Adam" and checkpoint["metrics"]["lr"] == 1e-3
    assert [group["lr"] for group in checkpoint["optimizer"]["param_groups"]] == [1e-3]
    assert "exp_avg_sq" in next(iter(checkpoint["optimizer"]["state"].values()))  # Adam's own state
    err = bad_input(capsys, ["--resume", str(tmp_path / "logs" / "adam" / "last.pth"), "--epochs", "2"])
    assert "was trained with the optimizer Adam, but train.py now builds SGD" in err


@pytest.mark.slow
def test_a_step_lr_built_in_train_py_steps_and_a_resumed_run_continues_it_bit_exactly(tmp_path, cifar_dir):
    project = copy_of_the_project(tmp_path, train_edits=[(SCHEDULER_LINE, "    return torch.optim.lr_scheduler.StepLR("
                                                                          "optimizer, step_size=3, gamma=0.5)")])
    (straight, straight_log), (resumed, resumed_log) = straight_and_resumed(project, cifar_dir, "--batch-size", "64")
    # 200 images: 4 steps an epoch; each epoch records the lr of its last step, halved every 3 steps
    assert [record["lr"] for record in straight_log] == [0.01 / 2, 0.01 / 4, 0.01 / 8]
    assert [record["lr"] for record in resumed_log] == [record["lr"] for record in straight_log]
    assert straight["scheduler_class"] == "StepLR" and resumed["scheduler"]["last_epoch"] == 12
    assert all(torch.equal(straight["model"][key], resumed["model"][key]) for key in straight["model"])


TRANSFORM_PROBE = '''import torch
from torchvision.transforms import v2

flip = v2.RandomHorizontalFlip()
seen = []  # (image given, image returned) of every call


def train_transform(image):
    out = flip(image)
    seen.append((image.clone(), out))
    return out
'''

PROBED_RUN = """import json, sys, torch, probe, train
inputs = []
torch.nn.modules.module.register_module_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone())
                                                          if module.training and args[0].shape[0] == 64 else None)
result = train.main(sys.argv[1:])
first = [out for _, out in probe.seen[:64]]
flipped = [not torch.equal(given, out) for given, out in probe.seen]
mean, std = (torch.tensor(result_value).view(1, 3, 1, 1) for result_value in
             torch.load(result.last_path, weights_only=True)["preprocess"].values())
expected = ((torch.stack(first).float() / 255 - mean) / std)
print(json.dumps({"calls": len(probe.seen), "dtype": str(probe.seen[0][0].dtype), "shape": list(probe.seen[0][0].shape),
                  "first_batch_flipped": sum(flipped[:64]), "min_input": inputs[0].min().item(),
                  "normalized_after": torch.allclose(inputs[0], expected, atol=1e-6)}))
"""


@pytest.mark.slow
def test_a_per_image_transform_in_train_py_draws_for_each_image_before_normalization(tmp_path, cifar_dir):
    project = copy_of_the_project(tmp_path, train_edits=[(TRANSFORM_LINE, "from probe import train_transform")])
    (project / "probe.py").write_text(TRANSFORM_PROBE)
    done = run_in_copy(project, PROBED_RUN, "--data-dir", cifar_dir, "--no-download", "--device", "cpu", "--quiet",
                       "--epochs", "1", "--batch-size", "64", "--normalize", "--logdir", tmp_path / "logs")
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["calls"] == 200 and seen["dtype"] == "torch.uint8" and seen["shape"] == [3, 32, 32]
    assert 10 < seen["first_batch_flipped"] < 54  # each image drew its own flip: not all or none of a batch
    assert seen["min_input"] < 0 and seen["normalized_after"]  # normalized after the transform, negatives kept


@pytest.mark.slow
def test_a_run_with_a_transform_in_train_py_resumes_bit_exactly(tmp_path, cifar_dir):
    project = copy_of_the_project(tmp_path, train_edits=[(TRANSFORM_LINE, "from probe import train_transform")])
    jitter = "v2.Compose([v2.RandomHorizontalFlip(), v2.ColorJitter(brightness=0.5)])"
    (project / "probe.py").write_text(TRANSFORM_PROBE.replace("v2.RandomHorizontalFlip()", jitter))
    (straight, _), (resumed, _) = straight_and_resumed(project, cifar_dir, "--batch-size", "64", "--normalize")
    assert all(torch.equal(straight["model"][key], resumed["model"][key]) for key in straight["model"])


@pytest.mark.slow
def test_save_every_keeps_every_nth_epoch_file_and_the_last_and_always_last_and_best(train_args, tmp_path):
    result = train.main(train_args + ["--epochs", "5", "--save-every", "2"])
    assert sorted(p.name for p in result.ckpt_dir.glob("*.pth")) == ["best.pth", "last.pth", "tudui_epoch_1.pth",
                                                                     "tudui_epoch_3.pth", "tudui_epoch_4.pth"]
    assert torch.load(result.last_path, weights_only=True)["epoch"] == 4


@pytest.mark.slow
def test_a_run_saving_every_second_epoch_resumes_bit_exactly_and_still_refuses_a_stale_resume(train_args, tmp_path,
                                                                                               capsys):
    flags = ["--momentum", "0.9", "--save-every", "2"]
    straight = train.main(train_args + flags + ["--epochs", "4", "--run-name", "straight"])
    split = train.main(train_args + flags + ["--epochs", "3", "--run-name", "split"])  # epoch files 1 and 2
    err = bad_input(capsys, ["--resume", str(split.ckpt_dir / "tudui_epoch_1.pth"), "--epochs", "4"])
    assert "is epoch 1, but" in err and "last.pth is epoch 2" in err
    resumed = train.main(["--resume", str(split.last_path), "--epochs", "4", "--quiet", "--device", "cpu"])
    a, b = (torch.load(r.last_path, weights_only=True)["model"] for r in (straight, resumed))
    assert all(torch.equal(a[key], b[key]) for key in a)
