"""The scripts of bench/, tools/ and experiments/ still run: those that import the project's code, and the GPU
check's set-up."""
import json
import os
import runpy
import shlex
import shutil
import subprocess
import sys
import tarfile

import pytest

from conftest import CLASSES, ROOT, write_image_folder

pytestmark = pytest.mark.slow  # every test here starts scripts, servers or kernels


def test_step_time_prints_the_ms_per_step_of_each_memory_format_and_precision(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["step_time.py", "--device", "cpu", "--batch-size", "4", "--steps", "2"])
    runpy.run_path(str(ROOT / "bench" / "step_time.py"), run_name="__main__")
    rows = [line.split("|")[1:4] for line in capsys.readouterr().out.splitlines()[2:]]
    assert [(layout.strip(), precision.strip()) for layout, precision, _ in rows] == [
        ("NCHW", "fp32"), ("NCHW", "bf16 autocast"), ("channels_last", "fp32"), ("channels_last", "bf16 autocast")]
    assert all(float(ms) > 0 for _, _, ms in rows)


@pytest.mark.skipif(not (shutil.which("tar") and shutil.which("xz")), reason="gpu_check.sh unpacks with tar and xz")
def test_gpu_check_prepares_the_data_then_skips_every_stage_its_budget_has_no_time_for(tmp_path):
    """The GPU check is run where GPU time is scarce: it must at least get this far on the CPU, and a
    budget that is spent must end it at once instead of running on past the device's command limit."""
    images = write_image_folder(tmp_path / "images", classes=CLASSES, train_per_class=2, test_per_class=1)
    archive = tmp_path / "images.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        for split in ("train", "test"):
            tar.add(images / split, arcname=split)
    env = dict(os.environ, PYTHON=sys.executable, DATA=str(tmp_path / "cifar"), PYDATA=str(tmp_path / "pydata"),
               BUDGET="1")
    done = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), str(archive), str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    log = (tmp_path / "out" / "log.txt").read_text()
    assert done.returncode == 0, done.stderr
    assert "wrote 20 training and 10 test images" in log
    # the CUDA tests, tuned alone, with --amp, with --deterministic, its batch-128 settings alone, tuned over
    # 3 seeds, compare, 2 plain runs, the step time, import times, cProfile, 50 epochs
    assert log.count("=== skipped") == 13
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["log.txt"]
    assert log.rstrip().endswith("done")


def test_recipe_search_reports_last_pth_best_pth_and_the_validation_accuracy_per_variant(cifar_dir, tmp_path,
                                                                                          monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["recipe_search.py", "--dataset", "cifar10", "--data-dir", str(cifar_dir),
                                     "--seeds", "0", "--epochs", "2", "--out", str(tmp_path / "out.jsonl"),
                                     "--variant", "val=--val-split 50 --device cpu", "--variant", "plain=--device cpu"])
    for name in ("PYTHONPATH", "TUDUI_ACCEPT_CIFAR_MD5"):  # set for its workers: put back after the test
        monkeypatch.setenv(name, os.environ.get(name, ""))
    runpy.run_path(str(ROOT / "experiments" / "recipe_search.py"), run_name="__main__")
    rows = {line.split("|")[1].strip(): line.split("|") for line in capsys.readouterr().out.splitlines()
            if line.startswith("| val ") or line.startswith("| plain ")}
    assert rows["plain"][7].strip() == "(no --val-split)" and rows["val"][7].strip().endswith("%")
    results = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    plain = next(r for r in results if r["variant"] == "plain")  # best.pth, chosen on the test set, beats last.pth
    assert len(results) == 2 and plain["best_test_accuracy"] >= plain["test_accuracy"] > 0


def script(folder, name):
    return runpy.run_path(str(ROOT / folder / f"{name}.py"), run_name=name)


def test_the_ladders_first_step_trains_as_the_video_did_and_its_last_is_the_tuned_recipe(cifar_dir):
    import dataclasses
    from conftest import parse
    ladder = script("experiments", "ladder")
    steps, data = ladder["ladder"](), ["--data-dir", str(cifar_dir)]
    first, last = (parse(data + shlex.split(ladder["flags"](step[1]))) for step in (steps[0], steps[-1]))
    assert first == parse(data + ["--no-shuffle"]) and not first.shuffle
    assert dataclasses.replace(last, recipe="tuned") == parse(data + ["--recipe", "tuned"]) != parse(data)


def test_each_step_of_the_ladder_keeps_every_change_before_it_but_those_it_makes():
    ladder = script("experiments", "ladder")
    steps = ladder["ladder"]()
    for (_, before, _), (_, after, _), (_, changes) in zip(steps[1:], steps[2:], ladder["STEPS"][2:]):
        assert {k: v for k, v in before.items() if k not in changes}.items() <= after.items()
        assert {k: v for k, v in changes.items() if v is not None}.items() <= after.items()


def test_the_ladders_relu_network_is_model_py_with_a_relu_after_each_hidden_layer():
    source = script("experiments", "ladder")["with_relu"]((ROOT / "model.py").read_text())
    namespace = {}
    exec(compile(source, "model.py", "exec"), namespace)
    layers = [type(m).__name__ for m in namespace["Tudui"]().model]
    assert layers == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d",
                      "Flatten", "Linear", "ReLU", "Linear"]


def test_the_shipped_weights_file_keeps_what_predicting_needs_and_drops_what_only_resuming_needs(finished_run):
    from tudui.checkpoints import read_checkpoint
    shipped = script("tools", "ship_weights")["shipped"](read_checkpoint(finished_run.last_path), "tiny test data")
    assert not {"optimizer", "rng", "format"} & set(shipped)
    assert {"model", "weights_sha256", "network", "classes", "preprocess", "config", "provenance", "test_accuracy"} \
        <= set(shipped) and shipped["trained_on"] == "tiny test data"
