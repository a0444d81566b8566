"""tudui/runs.py: what a run writes (TensorBoard read back as TensorBoard reads it, metrics.jsonl, config.json,
checkpoints), its folder and lock, and why a crash, a kill or a full disk loses nothing."""
import fcntl
import io
import json
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from conftest import ROOT, parse, assert_every_final_file_loads, bad_input, cosine_lrs, run_script
from tudui import console, load_tudui, runs, settings
from tudui.cuda_graph import GraphedStep

OLD_CHECKPOINTS = ROOT / "tests" / "data"  # written by commit 516887d, before train.py was split into modules


def events(run_dir):
    accumulator = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def scalars(run_dir):
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_has_the_tutorials_tags_and_x_axes_and_per_class_accuracy_lr_and_speed(finished_run):
    curves = scalars(finished_run.run_dir)
    assert [step for step, _ in curves["train_loss"]] == [2, 4, 6, 8]  # 4 steps per epoch, logged every 2
    assert [step for step, _ in curves["test_accuracy"]] == [step for step, _ in curves["test_loss"]] == [0, 1]
    assert {"lr", "train_accuracy", "images_per_s", "epoch_seconds", "per_class_accuracy/airplane",
            "per_class_accuracy/truck"} <= set(curves)


def test_lr_curve_is_the_learning_rate_each_logged_step_trained_with(cifar_dir, tmp_path):
    train.main(["--data-dir", str(cifar_dir), "--no-download", "--logdir", str(tmp_path), "--run-name", "run",
                "--device", "cpu", "--quiet", "--epochs", "2", "--log-every", "1", "--recipe", "tuned",
                "--batch-size", "64"])  # 200 images: 4 steps an epoch, 8 in all
    points = [(e.step, e.value) for e in events(tmp_path / "run").Scalars("lr")]
    expected = list(zip(range(1, 9), cosine_lrs(settings.RECIPES["tuned"]["lr"], 8)))  # logged at steps counted from 1
    assert [step for step, _ in points] == [step for step, _ in expected]
    assert [value for _, value in points] == pytest.approx([value for _, value in expected], rel=1e-6)


def test_confusion_matrix_prediction_grid_and_mistakes_are_logged_as_pictures_each_epoch(finished_run):
    accumulator = events(finished_run.run_dir)
    for tag in ("confusion_matrix", "test_predictions", "test_mistakes"):
        pictures = accumulator.Images(tag)
        assert [p.step for p in pictures] == [0, 1] and pictures[0].width > 300


def test_hparams_and_graph_live_in_the_run_folder_itself(finished_run):
    accumulator = events(finished_run.run_dir)
    assert accumulator.Tags()["graph"]
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(accumulator.PluginTagToContent("hparams"))
    assert [p.name for p in finished_run.run_dir.parent.iterdir()] == ["run"]
    assert not [p for p in (finished_run.run_dir).iterdir() if p.is_dir()]


def test_a_resumed_run_writes_its_graph_and_hparams_only_once(cifar_dir, tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    flags = ["--data-dir", str(cifar_dir), "--no-download", "--device", "cpu", "--quiet"]
    train.main(flags + ["--logdir", str(tmp_path), "--run-name", "run", "--epochs", "1"])
    train.main(flags + ["--resume", str(tmp_path / "run" / "last.pth"), "--epochs", "2"])
    graphs = hparams = 0
    for path in (tmp_path / "run").glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            graphs += bool(event.graph_def)
            hparams += sum(value.tag == "_hparams_/session_start_info" for value in event.summary.value)
    assert (graphs, hparams) == (1, 1)


def test_resumed_curves_continue_without_doubling_back(train_args, tmp_path):
    train.main(train_args + ["--epochs", "1"])
    train.main(["--resume", str(tmp_path / "logs" / "run" / "last.pth"), "--epochs", "2", "--quiet", "--device", "cpu"])
    curves = scalars(tmp_path / "logs" / "run")
    steps = [step for step, _ in curves["train_loss"]]
    assert steps == sorted(set(steps)) == list(range(1, 9))
    assert [step for step, _ in curves["test_accuracy"]] == [0, 1]


def test_config_json_holds_every_setting_and_metrics_jsonl_one_line_per_epoch(finished_run):
    config = json.loads((finished_run.run_dir / "config.json").read_text())
    lines = [json.loads(x) for x in (finished_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert set(config) == set(settings.FIELDS) and (config["lr"], config["epochs"]) == (0.01, 2)
    assert [r["epoch"] for r in lines] == [0, 1]
    assert {"test_accuracy", "test_loss", "train_accuracy", "per_class_accuracy", "lr", "images_per_s"} <= set(lines[0])


@pytest.mark.slow
@pytest.mark.parametrize("older", ["tudui_epoch_0.pth", "best.pth"])
def test_resuming_from_an_epoch_older_than_last_pth_in_its_folder_is_refused_and_changes_nothing(train_args, tmp_path,
                                                                                                 capsys, older):
    train.main(train_args + ["--epochs", "3", "--lr", "0.05"])
    run_dir = tmp_path / "logs" / "run"
    best = torch.load(run_dir / "best.pth", weights_only=True)
    if best["epoch"] == 2:  # make best.pth older than last.pth, as a run whose best epoch came first has it
        (run_dir / "best.pth").unlink()  # a hard link to last.pth: written through, it would change that too
        torch.save(torch.load(run_dir / "tudui_epoch_0.pth", weights_only=True), run_dir / "best.pth")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    epoch = torch.load(run_dir / older, weights_only=True)["epoch"]
    err = bad_input(capsys, ["--resume", str(run_dir / older), "--epochs", "3", "--device", "cpu"])
    assert (f"{run_dir / older} is epoch {epoch}, but {run_dir / 'last.pth'} is epoch 2: resuming it there would "
            f"overwrite the newer epochs; resume {run_dir / 'last.pth'}, or branch into a run of its own: --resume "
            f"{run_dir / older} --run-name NEW_NAME") in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


@pytest.mark.slow
def test_a_run_branched_from_an_older_epoch_writes_its_own_folder_and_leaves_the_original_intact(train_args, tmp_path):
    train.main(train_args + ["--epochs", "2"])
    run_dir = tmp_path / "logs" / "run"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    branch = train.main(["--resume", str(run_dir / "tudui_epoch_0.pth"), "--run-name", "branch", "--epochs", "3",
                         "--quiet", "--device", "cpu"])
    assert branch.run_dir == tmp_path / "logs" / "branch" and branch.history["epoch"] == [0, 1, 2]
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_a_metrics_line_torn_by_a_crash_is_dropped_when_the_run_resumes(train_args, tmp_path):
    train.main(train_args + ["--epochs", "1"])
    run_dir = tmp_path / "logs" / "run"
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 1, "step": 8, "sta')  # what a power cut mid-append can leave
    train.main(["--resume", str(run_dir / "last.pth"), "--epochs", "2", "--quiet", "--device", "cpu"])
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


@pytest.mark.slow
def test_a_real_tensorboard_server_serves_the_values_in_metrics_jsonl(finished_run):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(finished_run.run_dir.parent),
                               "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false",
                               "--reload_interval", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/data/plugin/scalars"
    try:
        deadline, tags = time.time() + 90, {}
        while "test_accuracy" not in tags.get("run", {}) and time.time() < deadline:
            try:
                tags = get_json(f"{base}/tags")
            except OSError:
                time.sleep(0.5)
        assert "test_accuracy" in tags["run"]
        metrics = [json.loads(x) for x in (finished_run.run_dir / "metrics.jsonl").read_text().splitlines()]
        for tag in ("test_accuracy", "test_loss", "train_accuracy"):
            served = get_json(f"{base}/scalars?run=run&tag={tag}")
            assert [step for _, step, _ in served] == [m["epoch"] for m in metrics]
            assert [value for _, _, value in served] == pytest.approx([m[tag] for m in metrics], rel=1e-6)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_runs_started_in_the_same_second_get_folders_of_their_own(train_args, tmp_path, monkeypatch):
    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 11, 29, 1, 2, 3)
    monkeypatch.setattr(runs, "datetime", FrozenClock)
    unnamed = train_args[:train_args.index("--run-name")] + train_args[train_args.index("--run-name") + 2:]
    results = [train.main(unnamed + ["--epochs", "1"]) for _ in range(2)]
    assert [run.run_dir.name for run in results] == ["20261129-010203", "20261129-010203-2"]


def test_ckpt_dir_takes_the_checkpoints_and_a_resumed_run_keeps_writing_there(train_args, tmp_path):
    ckpt_dir = tmp_path / "weights"
    train.main(train_args + ["--epochs", "1", "--ckpt-dir", str(ckpt_dir)])
    train.main(["--resume", str(ckpt_dir / "last.pth"), "--epochs", "2", "--quiet", "--device", "cpu"])
    run_dir = tmp_path / "logs" / "run"
    assert {p.name for p in ckpt_dir.glob("*.pth")} == {"tudui_epoch_0.pth", "tudui_epoch_1.pth", "last.pth", "best.pth"}
    assert not list(run_dir.glob("*.pth"))
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_new_run_never_writes_over_an_earlier_runs_checkpoints(train_args, tmp_path, capsys):
    train.main(train_args + ["--epochs", "1"])
    run_dir = tmp_path / "logs" / "run"
    before = {p.name: p.read_bytes() for p in run_dir.glob("*.pth")}
    err = bad_input(capsys, train_args + ["--epochs", "1", "--seed", "1"])
    assert f"continue it with --resume {run_dir / 'last.pth'}, or give this run another --run-name" in err
    assert {p.name: p.read_bytes() for p in run_dir.glob("*.pth")} == before


def test_the_checkpoint_to_resume_from_is_last_then_the_latest_epoch_then_best(tmp_path):
    assert runs.resumable_checkpoint(tmp_path) is None
    for name in ("best.pth", "tudui_epoch_2.pth", "tudui_epoch_10.pth", "last.pth"):
        (tmp_path / name).touch()
        assert runs.resumable_checkpoint(tmp_path) == tmp_path / name  # each outranks those before it (10 > 2)


def test_second_run_on_the_same_folder_is_refused(train_args, tmp_path, capsys):
    run_dir = tmp_path / "logs" / "run"
    run_dir.mkdir(parents=True)
    with open(run_dir / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running train.py holds it
        err = bad_input(capsys, train_args + ["--epochs", "1"])
    assert "another run is writing to" in err
    assert not list(run_dir.glob("*.pth"))


def test_second_run_on_the_same_checkpoint_folder_is_refused_and_frees_its_run_folder(train_args, tmp_path, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    with open(weights / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a run writing there with another --run-name holds it
        err = bad_input(capsys, train_args + ["--epochs", "1", "--ckpt-dir", str(weights)])
    assert f"another run is writing to {weights}; wait for it to finish or pick another --ckpt-dir" in err
    with open(tmp_path / "logs" / "run" / ".lock", "a") as run_lock:
        fcntl.flock(run_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the refused run let go of its own folder


def test_full_disk_is_one_clear_line_and_earlier_checkpoints_survive(train_args, tmp_path, monkeypatch, capsys):
    train.main(train_args + ["--epochs", "1"])
    run_dir = tmp_path / "logs" / "run"
    before = {p.name: p.read_bytes() for p in run_dir.glob("*.pth")}
    def disk_full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", disk_full)  # the moment a full disk reports the lost write
    err = bad_input(capsys, ["--resume", str(run_dir / "last.pth"), "--epochs", "2", "--device", "cpu", "--quiet"])
    monkeypatch.undo()
    assert "No space left on device" in err
    assert {p.name: p.read_bytes() for p in run_dir.glob("*.pth")} == before
    assert not list(run_dir.glob(".*.tmp"))


def test_full_disk_at_the_metrics_line_is_one_clear_line_after_the_epoch_is_saved(train_args, tmp_path, monkeypatch,
                                                                                    capsys):
    class FullDisk(io.StringIO):
        name = "metrics.jsonl"

        def write(self, text):
            raise OSError(28, "No space left on device")

    def open_full_metrics(path, mode="r", *args, **kwargs):
        return FullDisk() if str(path).endswith("metrics.jsonl") else open(path, mode, *args, **kwargs)
    monkeypatch.setattr(runs, "open", open_full_metrics, raising=False)
    err = bad_input(capsys, train_args + ["--epochs", "1"])
    assert "cannot write metrics.jsonl (No space left on device)" in err
    assert torch.load(tmp_path / "logs" / "run" / "last.pth", weights_only=True)["epoch"] == 0


@pytest.mark.slow
def test_kill_9_at_random_moments_and_the_same_command_again_give_the_uninterrupted_weights(cifar_dir, tmp_path):
    flags = ["--data-dir", str(cifar_dir), "--no-download", "--device", "cpu", "--run-name", "run", "--quiet",
             "--recipe", "tuned", "--lr", "0.01", "--batch-size", "64", "--epochs", "12"]

    def kill_driver(name, kills, first_save_seconds):
        result = run_script(ROOT / "tests" / "kill_driver.py", tmp_path / f"{name}-snapshots", kills, 0,
                            first_save_seconds, "--", *flags, "--logdir", tmp_path / name)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.splitlines()[-1])

    uninterrupted = kill_driver("straight", 0, 0)
    killed = kill_driver("killed", 16, uninterrupted["first_save_seconds"])  # kill times scaled to this machine
    assert killed["exit_code"] == 0 and killed["kills"] >= 12
    for snapshot in (tmp_path / "killed-snapshots").iterdir():  # the folder as each kill left it
        assert_every_final_file_loads(snapshot)
    straight = torch.load(tmp_path / "straight" / "run" / "last.pth", weights_only=True)
    resumed = torch.load(tmp_path / "killed" / "run" / "last.pth", weights_only=True)
    assert resumed["epoch"] == straight["epoch"] == 11
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])


class Killed(BaseException):
    """Stands for a kill -9: nothing after it runs (except the cleanup that a real kill would skip)."""


def test_epoch_saved_but_not_logged_before_a_kill_is_logged_on_resume(train_args, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    real_log_epoch_scalars = runs.log_epoch_scalars

    def killed_after_saving_epoch_1(writer, record, classes):
        if record["epoch"] == 1:
            raise Killed
        real_log_epoch_scalars(writer, record, classes)

    monkeypatch.setattr(runs, "log_epoch_scalars", killed_after_saving_epoch_1)
    with pytest.raises(Killed):
        train.main(train_args + ["--epochs", "3"])
    monkeypatch.setattr(runs, "log_epoch_scalars", real_log_epoch_scalars)
    run_dir = tmp_path / "logs" / "run"
    train.main(["--resume", str(run_dir / "last.pth"), "--quiet", "--device", "cpu"])

    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert epochs == [0, 1, 2]
    assert [e.step for e in events.Scalars("test_accuracy")] == [0, 1, 2]


def test_a_run_with_a_validation_split_logs_its_validation_curves(train_args, tmp_path):
    train.main(train_args + ["--epochs", "2", "--val-split", "50"])
    accumulator = events(tmp_path / "logs" / "run")
    for tag in ("val_accuracy", "val_loss", "test_accuracy", "test_loss"):
        assert [e.step for e in accumulator.Scalars(tag)] == [0, 1]


def test_a_run_removes_the_temporary_files_a_save_killed_midway_left(train_args, tmp_path):
    train.main(train_args + ["--epochs", "1"])
    run_dir = tmp_path / "logs" / "run"
    (run_dir / ".last.pth.99999.tmp").write_bytes(b"half a checkpoint")  # what kill -9 during a save leaves
    (run_dir / ".notes.tmp").write_text("not ours")  # no process id: not a name atomic_write gives
    train.main(["--resume", str(run_dir / "last.pth"), "--epochs", "2", "--quiet", "--device", "cpu"])
    assert sorted(p.name for p in run_dir.glob(".*.tmp")) == [".notes.tmp"]


@pytest.mark.slow
def test_a_full_disk_under_the_tensorboard_files_is_one_line_releases_the_lock_and_the_run_resumes_once_freed(
        train_args, tmp_path, capsys, small_disk):
    logs = small_disk("logs", 150_000)  # room for the run's folder, not for five epochs of TensorBoard pictures
    flags = train_args[:train_args.index("--logdir")] + train_args[train_args.index("--logdir") + 2:]
    argv = flags + ["--logdir", str(logs), "--ckpt-dir", str(tmp_path / "weights"), "--epochs", "5"]
    err = bad_input(capsys, argv)
    assert f"cannot write {logs / 'run'} (No space left on device)" in err
    saved = {p.name: p.read_bytes() for p in (tmp_path / "weights").glob("*.pth")}
    assert saved and all(torch.load(tmp_path / "weights" / name, weights_only=True) for name in saved)
    subprocess.run(["mount", "-o", "remount,size=20m", str(logs)], check=True)  # space freed: the same process
    result = train.main(["--resume", str(tmp_path / "weights" / "last.pth"), "--epochs", "5", "--quiet"])
    assert result.epoch == 4  # resumed: the failed run released its lock


def test_a_full_disk_under_the_checkpoints_is_one_line_and_leaves_the_saved_ones_whole(train_args, tmp_path, capsys,
                                                                                      finished_run,
                                                                                      small_disk):
    size = finished_run.last_path.stat().st_size
    weights = small_disk("weights", int(size * 2.5) // 4096 * 4096)  # two checkpoints fit, not a third
    err = bad_input(capsys, train_args + ["--ckpt-dir", str(weights), "--epochs", "3"])
    assert f"cannot write {weights}" in err and "(No space left on device)" in err
    assert_every_final_file_loads(weights)
    assert not list(weights.glob(".*.tmp"))


def test_an_epochs_checkpoint_is_written_once_and_last_and_best_pth_are_the_same_file(finished_run):
    ckpt_dir = finished_run.ckpt_dir
    best_epoch = torch.load(ckpt_dir / "best.pth", weights_only=True)["epoch"]
    assert os.stat(ckpt_dir / "last.pth").st_ino == os.stat(ckpt_dir / "tudui_epoch_1.pth").st_ino
    assert os.stat(ckpt_dir / "best.pth").st_ino == os.stat(ckpt_dir / f"tudui_epoch_{best_epoch}.pth").st_ino


def test_where_the_file_system_has_no_hard_links_last_pth_is_written_as_a_copy(train_args, tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError(1, "Operation not permitted")  # as on FAT or some network drives
    monkeypatch.setattr(os, "link", no_links)
    result = train.main(train_args + ["--epochs", "1"])
    last, epoch_file = result.ckpt_dir / "last.pth", result.ckpt_dir / "tudui_epoch_0.pth"
    assert os.stat(last).st_ino != os.stat(epoch_file).st_ino and last.read_bytes() == epoch_file.read_bytes()
    assert not list(result.ckpt_dir.glob(".*.tmp"))


def test_without_last_pth_a_later_epoch_file_still_refuses_an_older_resume(train_args, tmp_path, capsys):
    train.main(train_args + ["--epochs", "3"])
    run_dir = tmp_path / "logs" / "run"
    (run_dir / "last.pth").unlink()
    err = bad_input(capsys, ["--resume", str(run_dir / "tudui_epoch_0.pth"), "--epochs", "3", "--device", "cpu"])
    assert f"but {run_dir / 'tudui_epoch_2.pth'} is epoch 2: resuming it there would overwrite the newer epochs" in err


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_checkpoints_hold_a_plain_lr_whatever_optimizer_wrote_them(optimizer):
    """A graphed run keeps its lr in a device tensor for the fused SGD kernel; its checkpoints must still
    resume in a plain run (and the reverse), carrying the momentum buffers across."""
    args = parse(["--recipe", "tuned", "--optimizer", optimizer])
    model = train.build_model(10, torch.device("cpu"), seed=0)
    graphed = train.build_optimizer(model, args)
    GraphedStep(train.make_train_step(model, torch.nn.CrossEntropyLoss(), graphed, False), graphed, 2, torch.device("cpu"))
    assert all(isinstance(group["lr"], torch.Tensor) for group in graphed.param_groups)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    graphed.step()
    state = runs.optimizer_state(graphed)
    assert all(type(group["lr"]) is float and math.isclose(group["lr"], args.lr, rel_tol=1e-6)
               for group in state["param_groups"])

    plain = train.build_optimizer(model, args)
    runs.load_optimizer_state(plain, state)
    assert type(plain.param_groups[0]["lr"]) is float and not plain.param_groups[0]["fused"]
    for p in model.parameters():
        assert torch.equal(plain.state[p]["momentum_buffer"], graphed.state[p]["momentum_buffer"])


@pytest.mark.parametrize("name", ["tutorial_epoch_0_v516887d.pth", "tuned_epoch_0_v516887d.pth"])
def test_a_checkpoint_written_before_the_split_into_modules_loads_and_resumes(cifar_dir, tmp_path, name,
                                                                              tutorial_network):
    """Epoch 0 of a 2-epoch run (`--epochs 2`, and `--recipe tuned --batch-size 64` for the Muon one) on
    the tests' tiny CIFAR-10 folder, which conftest builds the same way every time."""
    run_dir = tmp_path / "logs" / "run"
    run_dir.mkdir(parents=True)
    shutil.copy(OLD_CHECKPOINTS / name, run_dir / "tudui_epoch_0.pth")
    saved = torch.load(run_dir / "tudui_epoch_0.pth", weights_only=True)
    net = load_tudui(run_dir / "tudui_epoch_0.pth")
    assert all(torch.equal(net.state_dict()[key], tensor) for key, tensor in saved["model"].items())
    train.main(["--resume", str(run_dir / "tudui_epoch_0.pth"), "--data-dir", str(cifar_dir), "--logdir",
                str(tmp_path / "logs"), "--run-name", "run", "--quiet"])
    resumed = torch.load(run_dir / "last.pth", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["step"] == 2 * saved["step"]
    this_call = ("data_dir", "logdir", "run_name", "resume", "device")
    kept = {k: v for k, v in saved["config"].items() if k not in this_call}
    assert {k: resumed["config"][k] for k in kept} == kept  # settings added since take their defaults


def test_an_old_muon_checkpoint_resumes_to_the_weights_the_old_code_reached(cifar_dir, tmp_path, tutorial_network):
    """Its epoch 1 as the old code trained it, on this project's AVX-512 CPU: another CPU's convolutions add
    in another order, hence the tolerance."""
    run_dir = tmp_path / "logs" / "run"
    run_dir.mkdir(parents=True)
    shutil.copy(OLD_CHECKPOINTS / "tuned_epoch_0_v516887d.pth", run_dir / "tudui_epoch_0.pth")
    train.main(["--resume", str(run_dir / "tudui_epoch_0.pth"), "--data-dir", str(cifar_dir), "--logdir",
                str(tmp_path / "logs"), "--run-name", "run", "--quiet"])
    resumed = torch.load(run_dir / "last.pth", weights_only=True)["model"]
    old_epoch_1 = torch.load(OLD_CHECKPOINTS / "tuned_epoch_1_weights_v516887d.pth", weights_only=True)
    for key, tensor in old_epoch_1.items():
        torch.testing.assert_close(resumed[key], tensor, rtol=1e-4, atol=1e-5)


# ------------------------------------------------- --resume auto: the same command starts, goes on, or is done

def test_resume_auto_starts_a_run_that_has_no_checkpoint_then_goes_on_then_has_nothing_to_train(train_args, tmp_path,
                                                                                               capsys):
    first = train.main(train_args + ["--epochs", "1", "--resume", "auto"])  # nothing saved yet: it starts
    assert first.epoch == 0
    second = train.main(train_args + ["--epochs", "2", "--resume", "auto"])
    assert second.epoch == 1 and second.history["epoch"] == [0, 1]
    capsys.readouterr()
    assert console.run_cli(lambda: train.main(train_args + ["--epochs", "2", "--resume", "auto"])) == 0
    assert "nothing to train" in capsys.readouterr().err


def test_resume_auto_takes_the_newest_epoch_file_that_loads_when_last_pth_is_gone_or_torn(train_args, tmp_path):
    run_dir = tmp_path / "logs" / "run"
    train.main(train_args + ["--epochs", "3"])
    (run_dir / "last.pth").write_bytes((run_dir / "last.pth").read_bytes()[:1000])  # torn, as no kill leaves it
    (run_dir / "tudui_epoch_2.pth").unlink()
    assert runs.auto_resume(settings.command_line_settings(train_args + ["--resume", "auto"])) == str(
        run_dir / "tudui_epoch_1.pth")


def test_resume_auto_without_a_run_name_is_one_line(capsys, cifar_dir):
    err = bad_input(capsys, ["--data-dir", str(cifar_dir), "--resume", "auto"])
    assert "--resume auto needs --run-name" in err


def test_resume_auto_prints_the_same_command_to_go_on_after_a_stop(train_args, tmp_path, monkeypatch, capsys):
    real_log_epoch = runs.RunFolder.log_epoch

    def then_sigterm(self, record, *args):
        real_log_epoch(self, record, *args)
        os.kill(os.getpid(), signal.SIGTERM)  # the scheduler's preemption, after epoch 0 is saved
    monkeypatch.setattr(runs.RunFolder, "log_epoch", then_sigterm)
    argv = train_args + ["--epochs", "3", "--resume", "auto"]
    assert console.run_cli(lambda: train.main(argv)) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"run the same command to go on: "
                                                                     f"{shlex.join(['python', 'train.py', *argv])}")
