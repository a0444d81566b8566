"""train.py end to end: the tutorial's routine, its checkpoints and curves, resuming, and bad input."""
import json
import math
import platform
import time
from datetime import datetime
from pathlib import Path, PureWindowsPath

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from conftest import ROOT, bad_input, class_images, cosine_lrs, run_script, write_image_folder
from model import Tudui

TUNED_LR = train.RECIPES["tuned"]["lr"]


def scalars(run_dir):
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_help_shows_every_default():
    result = run_script(ROOT / "train.py", "--help")
    assert result.returncode == 0
    for text in ("--epochs", "default: 10", "--batch-size", "64 (tutorial)", "0.01 (tutorial)",
                 "default: ./data", "default: ./logs_train", "default: auto", "default: 100", "default: 0"):
        assert text in " ".join(result.stdout.split())


def test_defaults_are_the_tutorials_recipe():
    args, _ = train.parse_args([])
    assert (args.epochs, args.batch_size, args.lr, args.momentum, args.weight_decay) == (10, 64, 0.01, 0.0, 0.0)
    assert (args.dataset, args.data_dir, args.logdir, args.log_every) == ("cifar10", "./data", "./logs_train", 100)
    assert not args.augment and not args.normalize and args.label_smoothing == 0 and args.schedule == "constant"


def test_command_line_run_writes_checkpoints_and_curves(cifar_dir, tmp_path):
    result = run_script(ROOT / "train.py", "--data-dir", cifar_dir, "--no-download", "--epochs", "2",
                        "--logdir", tmp_path / "logs", "--run-name", "cli", "--log-every", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "logs" / "cli"
    assert {"tudui_epoch_0.pth", "tudui_epoch_1.pth", "last.pth", "best.pth"} <= {p.name for p in run_dir.iterdir()}
    assert "epoch 1: train loss" in result.stdout and "images/s" in result.stdout and "device cpu" in result.stdout
    assert "step 2, loss" in result.stdout


def test_checkpoint_is_a_weights_only_dict_with_everything_to_resume(train_args, tmp_path):
    train.main(train_args + ["--epochs", "1"])
    ckpt = torch.load(tmp_path / "logs" / "run" / "tudui_epoch_0.pth", weights_only=True)
    assert {"model", "optimizer", "epoch", "step", "config", "classes", "test_accuracy", "test_loss", "rng"} <= set(ckpt)
    assert ckpt["epoch"] == 0 and ckpt["step"] == math.ceil(200 / 64)
    assert ckpt["config"]["lr"] == 0.01 and ckpt["classes"][0] == "airplane"
    Tudui().load_state_dict(ckpt["model"])


def test_best_checkpoint_holds_the_highest_test_accuracy(train_args, tmp_path):
    train.main(train_args + ["--epochs", "3", "--lr", "0.05"])
    run_dir = tmp_path / "logs" / "run"
    accuracies = [torch.load(run_dir / f"tudui_epoch_{i}.pth", weights_only=True)["test_accuracy"] for i in range(3)]
    best = torch.load(run_dir / "best.pth", weights_only=True)
    last = torch.load(run_dir / "last.pth", weights_only=True)
    assert best["test_accuracy"] == max(accuracies) and best["epoch"] == accuracies.index(max(accuracies))
    assert last["epoch"] == 2


def test_tensorboard_has_the_tutorials_tags_with_the_tutorials_x_axes(train_args, tmp_path):
    train.main(train_args + ["--epochs", "2", "--log-every", "2"])
    curves = scalars(tmp_path / "logs" / "run")
    assert [step for step, _ in curves["train_loss"]] == [2, 4, 6, 8]  # 4 steps per epoch, logged every 2
    assert [step for step, _ in curves["test_accuracy"]] == [0, 1]
    assert [step for step, _ in curves["test_loss"]] == [0, 1]


def test_main_returns_the_final_metrics(train_args):
    metrics = train.main(train_args + ["--epochs", "1"])
    assert metrics["epoch"] == 0 and 0 <= metrics["test_accuracy"] <= 1 and metrics["test_loss"] > 0


def test_folder_dataset_takes_classes_from_folder_names(folder_dir, tmp_path):
    metrics = train.main(["--dataset", "folder", "--data-dir", str(folder_dir), "--epochs", "1", "--device", "cpu",
                          "--logdir", str(tmp_path), "--run-name", "f", "--quiet"])
    ckpt = torch.load(tmp_path / "f" / "last.pth", weights_only=True)
    assert ckpt["classes"] == ["cat", "dog", "ship"] and ckpt["model"]["model.8.bias"].shape == (3,)
    assert metrics["test_accuracy"] is not None


def test_folder_dataset_is_cached_after_first_decode(tmp_path, monkeypatch):
    import data
    folder = write_image_folder(tmp_path / "images")
    first = data.load_folder(folder, "train")
    assert (folder / ".tudui-cache" / "train.pt").exists()
    monkeypatch.setattr(data, "decode_image", None)  # the second load must not decode at all
    second = data.load_folder(folder, "train")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_a_cache_from_another_cache_format_is_decoded_again(tmp_path, monkeypatch):
    import data
    folder = write_image_folder(tmp_path / "images")
    _, labels, _ = data.load_folder(folder, "train")
    decoded = []
    monkeypatch.setattr(data, "decode_image", lambda path: decoded.append(path) or np.zeros((3, 32, 32), np.uint8))
    monkeypatch.setattr(data, "CACHE_FORMAT", data.CACHE_FORMAT + 1)
    data.load_folder(folder, "train")
    assert len(decoded) == len(labels)


def test_a_changed_image_is_decoded_again_instead_of_read_from_the_cache(tmp_path):
    from PIL import Image
    from data import load_folder
    folder = write_image_folder(tmp_path / "images")
    images, _, _ = load_folder(folder, "train")
    Image.new("RGB", (48, 48), (255, 0, 0)).save(sorted((folder / "train" / "cat").glob("*.png"))[0])  # same name
    reloaded, _, _ = load_folder(folder, "train")
    assert not torch.equal(images, reloaded)
    assert (reloaded == torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1)).all((1, 2, 3)).sum() == 1


def test_a_run_resumed_with_another_batch_size_continues_its_lr_schedule_from_the_same_epoch(train_args, tmp_path):
    train.main(train_args + ["--recipe", "tuned", "--epochs", "2"])  # 200 images at 64: 4 steps an epoch, step 4 saved
    run_dir = tmp_path / "logs" / "run"
    train.main(["--resume", str(run_dir / "tudui_epoch_0.pth"), "--epochs", "2", "--batch-size", "32"])  # 7 an epoch
    last_epoch = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last_epoch["epoch"] == 1 and last_epoch["lr"] == pytest.approx(cosine_lrs(TUNED_LR, 14)[-1], rel=1e-9)


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


def test_runs_started_in_the_same_second_get_folders_of_their_own(train_args, tmp_path, monkeypatch):
    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 11, 29, 1, 2, 3)
    monkeypatch.setattr(train, "datetime", FrozenClock)
    unnamed = train_args[:train_args.index("--run-name")] + train_args[train_args.index("--run-name") + 2:]
    runs = [train.main(unnamed + ["--epochs", "1"]) for _ in range(2)]
    assert [Path(run["run_dir"]).name for run in runs] == ["20261129-010203", "20261129-010203-2"]


def test_optimizer_flags_given_on_resume_override_the_checkpoints(train_args, tmp_path):
    train.main(train_args + ["--epochs", "1", "--momentum", "0.9", "--weight-decay", "5e-4"])
    last = tmp_path / "logs" / "run" / "last.pth"
    train.main(["--resume", str(last), "--epochs", "2", "--momentum", "0.5", "--weight-decay", "0", "--nesterov",
                "--quiet", "--device", "cpu"])
    group = torch.load(last, weights_only=True)["optimizer"]["param_groups"][0]
    assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.5, 0, True)


def test_ckpt_dir_takes_the_checkpoints_and_a_resumed_run_keeps_writing_there(train_args, tmp_path):
    ckpt_dir = tmp_path / "weights"
    train.main(train_args + ["--epochs", "1", "--ckpt-dir", str(ckpt_dir)])
    train.main(["--resume", str(ckpt_dir / "last.pth"), "--epochs", "2", "--quiet", "--device", "cpu"])
    run_dir = tmp_path / "logs" / "run"
    assert {p.name for p in ckpt_dir.glob("*.pth")} == {"tudui_epoch_0.pth", "tudui_epoch_1.pth", "last.pth", "best.pth"}
    assert not list(run_dir.glob("*.pth"))
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2


def test_amp_on_the_cpu_trains_in_bfloat16_close_to_fp32_with_fp32_weights(train_args, tmp_path):
    train.main(train_args + ["--epochs", "1", "--run-name", "fp32"])
    train.main(train_args + ["--epochs", "1", "--run-name", "amp", "--amp"])
    fp32, amp = (torch.load(tmp_path / "logs" / name / "last.pth", weights_only=True)["model"] for name in ("fp32", "amp"))
    assert all(tensor.dtype == torch.float32 for tensor in amp.values())
    assert not all(torch.equal(fp32[key], amp[key]) for key in fp32)  # bf16 rounding shows: autocast was on
    for key in fp32:
        torch.testing.assert_close(amp[key], fp32[key], rtol=0, atol=1e-4)  # seen: 1.4e-5


def test_resumed_curves_continue_without_doubling_back(train_args, tmp_path):
    train.main(train_args + ["--epochs", "1"])
    train.main(["--resume", str(tmp_path / "logs" / "run" / "last.pth"), "--epochs", "2", "--quiet", "--device", "cpu"])
    curves = scalars(tmp_path / "logs" / "run")
    steps = [step for step, _ in curves["train_loss"]]
    assert steps == sorted(set(steps)) == list(range(1, 9))
    assert [step for step, _ in curves["test_accuracy"]] == [0, 1]


def test_each_epoch_reshuffles_in_a_seeded_order():
    first = torch.randperm(100, generator=train.epoch_generator(0, 0))
    assert torch.equal(first, torch.randperm(100, generator=train.epoch_generator(0, 0)))
    assert not torch.equal(first, torch.randperm(100, generator=train.epoch_generator(0, 1)))


def test_uint8_to_input_equals_torchvision_to_tensor():
    from PIL import Image
    from torchvision.transforms.functional import to_tensor
    images, _ = class_images(4, 10, seed=0)
    expected = torch.stack([to_tensor(Image.fromarray(im.transpose(1, 2, 0))) for im in images])
    assert torch.equal(train.to_input(torch.from_numpy(images)), expected)


def test_test_loss_is_the_mean_per_sample_loss_whatever_the_batch_size(monkeypatch):
    images, labels = (torch.from_numpy(a) for a in class_images(30, 10, seed=1))
    net = Tudui()
    expected = torch.nn.functional.cross_entropy(net(train.to_input(images)), labels).item()
    for batch in (7, 500):
        monkeypatch.setattr(train, "EVAL_BATCH_SIZE", batch)
        result = train.test(net, images, labels, 10, {"mean": None}, torch.device("cpu"))
        assert result["test_loss"] == pytest.approx(expected, rel=1e-5)


def test_last_partial_batch_is_trained_on(train_args, tmp_path):
    train.main(train_args + ["--epochs", "1", "--batch-size", "150"])  # 200 images: 150 + 50
    assert torch.load(tmp_path / "logs" / "run" / "last.pth", weights_only=True)["step"] == 2


def test_metrics_jsonl_has_one_line_per_epoch(train_args, tmp_path):
    train.main(train_args + ["--epochs", "2"])
    lines = (tmp_path / "logs" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]


def test_resuming_from_an_earlier_epoch_drops_the_later_epochs_metrics_lines(train_args, tmp_path):
    train.main(train_args + ["--epochs", "2"])
    run_dir = tmp_path / "logs" / "run"
    train.main(["--resume", str(run_dir / "tudui_epoch_0.pth"), "--epochs", "2", "--quiet", "--device", "cpu"])
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]


def test_a_metrics_line_torn_by_a_crash_is_dropped_when_the_run_resumes(train_args, tmp_path):
    train.main(train_args + ["--epochs", "1"])
    run_dir = tmp_path / "logs" / "run"
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 1, "step": 8, "sta')  # what a power cut mid-append can leave
    train.main(["--resume", str(run_dir / "last.pth"), "--epochs", "2", "--quiet", "--device", "cpu"])
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]


def test_resuming_a_run_that_reached_its_epochs_trains_nothing_and_says_how_to_train_on(train_args, tmp_path, capsys):
    train.main(train_args + ["--epochs", "1"])
    last = tmp_path / "logs" / "run" / "last.pth"
    before = last.read_bytes()
    metrics = train.main(["--resume", str(last), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err
    assert "has already trained 1 epoch, and --epochs 1 is the total" in err and "give a larger --epochs" in err
    assert metrics["epoch"] == 0 and last.read_bytes() == before


def test_a_resumed_run_replaces_best_pth_only_with_a_better_epoch_than_before_the_resume(train_args, tmp_path):
    train.main(train_args + ["--epochs", "1"])
    run_dir = tmp_path / "logs" / "run"
    checkpoint = torch.load(run_dir / "last.pth", weights_only=True)
    checkpoint["best_accuracy"] = 1.0  # as if an earlier epoch had been perfect: nothing can beat it
    torch.save(checkpoint, run_dir / "last.pth")
    best_before = (run_dir / "best.pth").read_bytes()
    metrics = train.main(["--resume", str(run_dir / "last.pth"), "--epochs", "2", "--quiet", "--device", "cpu"])
    assert metrics["best_accuracy"] == 1.0
    assert (run_dir / "best.pth").read_bytes() == best_before


def test_each_epoch_records_when_it_started(train_args, tmp_path):
    before = time.time()
    train.main(train_args + ["--epochs", "2"])
    records = [json.loads(line) for line in (tmp_path / "logs" / "run" / "metrics.jsonl").read_text().splitlines()]
    first, second = (r["started_at"] for r in records)
    assert before < first < second - records[0]["train_seconds"] < time.time()


@pytest.mark.parametrize("flags, words", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--lr", "inf"], "--lr must be a positive number"),
    (["--lr", "1e300"], "--lr must be a positive number up to 3.4e+38"),  # beyond float32: a traceback in SGD
    (["--weight-decay", "nan"], "--weight-decay must be 0 or more"),  # used to train on to NaN weights
    (["--weight-decay", "1e300"], "--weight-decay must be 0 or more, up to 3.4e+38"),
    (["--seed", str(2**64)], "--seed must be 0 to 4294967295"),  # beyond what torch.manual_seed takes
    (["--seed", "-1"], "--seed must be 0 to 4294967295"),
    (["--translate", "17"], "--translate must be 0 to 16 pixels"),
    (["--momentum", "1"], "--momentum must be in [0, 1)"),
    (["--nesterov"], "--nesterov needs --momentum above 0"),
    (["--weight-decay", "-0.0001"], "--weight-decay must be 0 or more"),
    (["--muon-decay", "nan"], "--muon-decay must be 0 or more"),
    (["--muon-decay", "0.1"], "--muon-decay applies to --optimizer muon only"),  # the tutorial recipe's SGD
    (["--warmup", "1"], "--warmup must be a fraction in [0, 1)"),
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
    (["--log-every", "0"], "--log-every must be at least 1"),
    (["--tta"], "--tta applies to --evaluate only"),
    (["--resume", ""], "--resume needs a checkpoint path (got an empty one)"),  # say, an unset shell variable
    (["--evaluate", ""], "--evaluate needs a checkpoint path (got an empty one)"),
    (["--run-name", ""], "--run-name must name a folder inside --logdir"),
    (["--run-name", "../elsewhere"], "--run-name must name a folder inside --logdir"),
])
def test_bad_values_are_one_clear_line(capsys, train_args, flags, words):
    assert words in bad_input(capsys, train_args + flags)


@pytest.mark.parametrize("name, inside", [("run", True), ("runs/exp1", True), ("/tmp/run", False), ("C:run", False),
                                          ("\\run", False), ("C:\\run", False), ("..\\run", False)])
def test_a_run_name_must_stay_inside_logdir_under_windows_path_rules_too(monkeypatch, name, inside):
    monkeypatch.setattr(train, "Path", PureWindowsPath)
    assert train.names_a_subfolder(name) is inside


@pytest.mark.parametrize("flags, words", [
    (["--epochs", "abc"], "argument --epochs: invalid int value: 'abc'"),
    (["--recipe", "fast"], "argument --recipe: invalid choice: 'fast'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_flags_argparse_cannot_read_are_one_line_not_the_usage_block(capsys, flags, words):
    err = bad_input(capsys, flags)
    assert words in err and "--help" in err


def test_missing_dataset_with_no_download_is_one_clear_line(capsys, tmp_path):
    err = bad_input(capsys, ["--data-dir", str(tmp_path / "empty"), "--no-download", "--logdir", str(tmp_path)])
    assert "--no-download" in err and "CIFAR-10 is not in" in err


def test_a_cifar_folder_missing_some_batches_names_them(capsys, tmp_path):
    from conftest import write_cifar_batches
    root = write_cifar_batches(tmp_path / "data")
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()  # an interrupted extraction, say
    err = bad_input(capsys, ["--data-dir", str(root), "--no-download", "--logdir", str(tmp_path)])
    assert f"{root / 'cifar-10-batches-py'} lacks data_batch_3 and --no-download was given" in err


def test_failed_download_is_one_clear_line(capsys, tmp_path, monkeypatch):
    import torchvision
    from urllib.error import URLError

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    err = bad_input(capsys, ["--data-dir", str(tmp_path / "data"), "--logdir", str(tmp_path)])
    assert "could not download CIFAR-10" in err and "check the network" in err


def test_unreadable_data_folder_is_one_clear_line(capsys, tmp_path):
    err = bad_input(capsys, ["--dataset", "folder", "--data-dir", str(tmp_path / "nowhere"), "--logdir", str(tmp_path)])
    assert "does not exist" in err


def test_corrupt_cifar_batch_is_one_clear_line(capsys, tmp_path):
    from conftest import write_cifar_batches
    root = write_cifar_batches(tmp_path / "data")
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04garbage")
    err = bad_input(capsys, ["--data-dir", str(root), "--no-download", "--logdir", str(tmp_path)])
    assert "data_batch_3 is not a readable CIFAR-10 batch" in err


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.write_bytes(b"not a checkpoint"), lambda p: p.mkdir()])
def test_bad_resume_file_is_one_clear_line(capsys, train_args, tmp_path, make):
    path = tmp_path / "ckpt.pth"
    make(path)
    err = bad_input(capsys, train_args + ["--resume", str(path)])
    assert str(path) in err


def test_resuming_on_a_dataset_with_other_classes_is_one_clear_line(capsys, folder_dir, cifar_dir, tmp_path):
    train.main(["--dataset", "folder", "--data-dir", str(folder_dir), "--logdir", str(tmp_path), "--run-name", "run",
                "--device", "cpu", "--quiet", "--epochs", "1"])
    err = bad_input(capsys, ["--resume", str(tmp_path / "run" / "last.pth"), "--epochs", "2", "--dataset", "cifar10",
                             "--data-dir", str(cifar_dir), "--no-download"])
    assert "was trained on classes ['cat', 'dog', 'ship']" in err and "resume with the same --dataset" in err


def test_bad_input_on_the_command_line_prints_no_traceback(tmp_path):
    result = run_script(ROOT / "train.py", "--resume", tmp_path / "missing.pth")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: checkpoint {tmp_path / 'missing.pth'} does not exist; check the path"


@pytest.fixture
def cifar_train(cifar_dir):
    """The tiny CIFAR-10 training split: 200 images, so 4 steps of 64 (the last one of 8)."""
    from data import load_cifar10
    images, labels, _ = load_cifar10(cifar_dir, "train", download=False)
    return images, labels


def plain_epoch(images, labels, lrs, translate=None, normalize=False, label_smoothing=0.0, **sgd):
    """The textbook loop over epoch 0's order (seed 0): NCHW, mean loss, .item() per step, the lr of
    LRS set before each step. With TRANSLATE, each image of epoch 0's augmentation plan is flipped, then
    shifted through torch's reflect padding and a crop; with NORMALIZE, the mean and std of all training
    pixels are applied. Returns the network and the last step's loss."""
    torch.manual_seed(0)
    plain = Tudui()
    optimizer = torch.optim.SGD(plain.parameters(), lr=lrs[0], **sgd)
    generator = train.epoch_generator(0, 0)
    order = torch.randperm(len(labels), generator=generator)
    if translate is not None:
        flips, shifts = train.augment_plan(len(labels), generator, translate)
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
    """train.py's epoch 0 (channels_last, tensor batches, device-side loss buffer) as one epoch of four."""
    args, _ = train.parse_args(["--batch-size", "64", *flags])
    device = torch.device("cpu")
    fast = train.build_model(10, device, seed=0)
    data = {"train_x": images, "train_y": labels, "norm": None}
    step_fn = train.TrainStep(fast, train.build_optimizer(fast, args), torch.nn.CrossEntropyLoss(reduction="sum"),
                              data, args, graphed=False)
    losses, _, _ = train.train_one_epoch(step_fn, data, 0, 0, 4, args, device, train.Progress(4, 0, False),
                                         train.StopOnCtrlC())
    return fast, losses


def test_fast_epoch_matches_a_plain_eager_loop_within_float_tolerance(cifar_train):
    """Equal within float tolerance, not bit-equal, because channels_last convolutions sum in another order."""
    images, labels = cifar_train
    plain, last_loss = plain_epoch(images, labels, [0.01] * 4)
    fast, losses = fast_epoch(images, labels, [])
    assert losses[-1].item() == pytest.approx(last_loss, rel=1e-4)
    for key, tensor in plain.state_dict().items():
        torch.testing.assert_close(fast.state_dict()[key], tensor, rtol=1e-4, atol=1e-5)


def test_each_step_uses_the_scheduled_lr_and_the_flags_sgd_settings(cifar_train):
    images, labels = cifar_train
    plain, _ = plain_epoch(images, labels, cosine_lrs(0.05, 4), momentum=0.9, nesterov=True, weight_decay=0.05)
    fast, _ = fast_epoch(images, labels, ["--lr", "0.05", "--schedule", "cosine", "--momentum", "0.9", "--nesterov",
                                          "--weight-decay", "0.05"])
    for key, tensor in plain.state_dict().items():
        torch.testing.assert_close(fast.state_dict()[key], tensor, rtol=1e-4, atol=1e-5)


def test_tuned_recipe_trains_as_a_textbook_loop_with_flips_shifts_normalization_and_smoothing(train_args, tmp_path,
                                                                                               cifar_train):
    """With SGD, which the textbook loop has (Muon's update has a test of its own)."""
    images, labels = cifar_train
    train.main(train_args + ["--recipe", "tuned", "--optimizer", "sgd", "--epochs", "1"])  # batch 64: 4 steps
    plain, _ = plain_epoch(images, labels, cosine_lrs(TUNED_LR, 4), translate=2, normalize=True, label_smoothing=0.1,
                           momentum=0.9, nesterov=True, weight_decay=2e-3)
    trained = torch.load(tmp_path / "logs" / "run" / "last.pth", weights_only=True)["model"]
    for key, tensor in plain.state_dict().items():  # seen: 2.6e-5 apart (channels_last sums in another order)
        torch.testing.assert_close(trained[key], tensor, rtol=1e-4, atol=1e-4)


PAGE_FAULTS_PER_TUNED_STEP = """
import resource, statistics, torch, train
train.keep_freed_memory()
args, _ = train.parse_args(["--recipe", "tuned", "--device", "cpu"])
n = args.batch_size * 11
data = {"train_x": torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8), "train_y": torch.randint(0, 10, (n,)),
        "norm": None}
model = train.build_model(10, torch.device("cpu"), seed=0)
step = train.TrainStep(model, train.build_optimizer(model, args), torch.nn.CrossEntropyLoss(reduction="sum"), data,
                       args, graphed=False)
step.set_augmentation(*train.augment_plan(n, torch.Generator().manual_seed(0), args.translate))
batches = torch.arange(n).split(args.batch_size)
faults = []
for idx in batches:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(idx, args.batch_size, args.lr)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(statistics.median(faults[3:]))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's malloc's")
def test_a_cpu_step_reuses_the_memory_the_step_before_freed():
    """Seen here at batch 512 without keep_freed_memory: 46,568 to 55,887 page faults per step (181 to 218 MB
    of fresh pages); with glibc's bar at 32 MB, the setting before: 18,023 to 33,589; with it, 0.2 to 2,048.2.
    The median step, as the heap still grows by 4 to 32 MB now and then (up to 8,193 faults in one step)."""
    result = run_script("-c", PAGE_FAULTS_PER_TUNED_STEP)
    assert result.returncode == 0, result.stderr
    faults_per_step = float(result.stdout.split()[-1])
    assert faults_per_step < 8000, faults_per_step


def test_a_training_run_sets_up_the_memory_reuse(train_args, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "keep_freed_memory", lambda: calls.append("called"))
    train.main(train_args + ["--epochs", "1"])
    assert calls == ["called"]
