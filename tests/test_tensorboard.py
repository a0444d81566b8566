"""What a user sees in TensorBoard: the tutorial's curves and more, read back the way TensorBoard reads them."""
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from conftest import cosine_lrs


@pytest.fixture(scope="module")
def finished_run(cifar_dir, tmp_path_factory):
    logdir = tmp_path_factory.mktemp("tb")
    train.main(["--data-dir", str(cifar_dir), "--no-download", "--logdir", str(logdir), "--run-name", "run",
                "--device", "cpu", "--quiet", "--epochs", "2", "--log-every", "2"])
    return logdir


def events(run_dir):
    accumulator = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_scalars_include_per_class_accuracy_lr_train_accuracy_speed_and_epoch_time(finished_run):
    tags = set(events(finished_run / "run").Tags()["scalars"])
    assert {"train_loss", "test_loss", "test_accuracy", "lr", "train_accuracy", "images_per_s",
            "epoch_seconds", "per_class_accuracy/airplane", "per_class_accuracy/truck"} <= tags


def test_lr_curve_is_the_learning_rate_each_logged_step_trained_with(cifar_dir, tmp_path):
    train.main(["--data-dir", str(cifar_dir), "--no-download", "--logdir", str(tmp_path), "--run-name", "run",
                "--device", "cpu", "--quiet", "--epochs", "2", "--log-every", "1", "--recipe", "tuned",
                "--batch-size", "64"])  # 200 images: 4 steps an epoch, 8 in all
    points = [(e.step, e.value) for e in events(tmp_path / "run").Scalars("lr")]
    expected = list(zip(range(1, 9), cosine_lrs(train.RECIPES["tuned"]["lr"], 8)))  # logged at steps counted from 1
    assert [step for step, _ in points] == [step for step, _ in expected]
    assert [value for _, value in points] == pytest.approx([value for _, value in expected], rel=1e-6)


def test_confusion_matrix_and_prediction_grid_are_logged_as_pictures_each_epoch(finished_run):
    accumulator = events(finished_run / "run")
    for tag in ("confusion_matrix", "test_predictions"):
        pictures = accumulator.Images(tag)
        assert [p.step for p in pictures] == [0, 1] and pictures[0].width > 300


def test_hparams_and_graph_live_in_the_run_folder_itself(finished_run):
    accumulator = events(finished_run / "run")
    assert accumulator.Tags()["graph"]
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(accumulator.PluginTagToContent("hparams"))
    assert [p.name for p in finished_run.iterdir()] == ["run"]
    assert not [p for p in (finished_run / "run").iterdir() if p.is_dir()]


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


def test_config_json_and_metrics_jsonl_are_written_for_notebooks(finished_run):
    config = json.loads((finished_run / "run" / "config.json").read_text())
    lines = [json.loads(x) for x in (finished_run / "run" / "metrics.jsonl").read_text().splitlines()]
    assert config["lr"] == 0.01 and [r["epoch"] for r in lines] == [0, 1]
    assert {"test_accuracy", "test_loss", "train_accuracy", "per_class_accuracy", "lr", "images_per_s"} <= set(lines[0])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def test_a_real_tensorboard_server_serves_the_values_in_metrics_jsonl(finished_run):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(finished_run),
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
        metrics = [json.loads(x) for x in (finished_run / "run" / "metrics.jsonl").read_text().splitlines()]
        for tag in ("test_accuracy", "test_loss", "train_accuracy"):
            served = get_json(f"{base}/scalars?run=run&tag={tag}")
            assert [step for _, step, _ in served] == [m["epoch"] for m in metrics]
            assert [value for _, _, value in served] == pytest.approx([m[tag] for m in metrics], rel=1e-6)
    finally:
        server.terminate()
        server.wait(timeout=30)
