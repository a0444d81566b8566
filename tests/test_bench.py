"""The benchmark scripts still run: those that import the project's code, and the GPU check's set-up."""
import importlib.util
import os
import runpy
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch

from conftest import CLASSES, ROOT, write_image_folder


def test_step_profile_times_and_profiles_train_steps_on_the_cpu(monkeypatch, capsys):
    import train
    monkeypatch.setattr("sys.argv", ["step_profile.py", "--device", "cpu", "--recipe", "tuned", "--steps", "1"])
    runpy.run_path(str(ROOT / "bench" / "step_profile.py"), run_name="__main__")
    out = capsys.readouterr().out
    batch_size = train.RECIPES["tuned"]["batch_size"]
    assert f"ms/step (batch {batch_size}, cpu), of which the optimizer step alone " in out
    assert "aten::convolution_backward" in out  # the profiler saw a backward pass
    assert "operators per step, views left out: " in out


def test_step_time_prints_the_ms_per_step_of_each_memory_format_and_precision(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["step_time.py", "--device", "cpu", "--batch-size", "4", "--steps", "2"])
    runpy.run_path(str(ROOT / "bench" / "step_time.py"), run_name="__main__")
    rows = [line.split("|")[1:4] for line in capsys.readouterr().out.splitlines()[2:]]
    assert [(layout.strip(), precision.strip()) for layout, precision, _ in rows] == [
        ("NCHW", "fp32"), ("NCHW", "bf16 autocast"), ("channels_last", "fp32"), ("channels_last", "bf16 autocast")]
    assert all(float(ms) > 0 for _, _, ms in rows)


def test_step_profile_counts_the_operators_that_compute_and_leaves_views_out():
    step_profile = runpy.run_path(str(ROOT / "bench" / "step_profile.py"))
    with step_profile["OperatorCount"]() as counter:
        x = torch.ones(4, 4)
        x.view(16).unsqueeze(0)[:, :8].t()  # views: nothing runs
        (x + 1).mul_(2)
    assert counter.count == 3


def load_variants():
    """bench/variants.py's globals, the dict its functions look names up in (so a test can patch them)."""
    spec = importlib.util.spec_from_file_location("variants", ROOT / "bench" / "variants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return vars(module)


def test_variant_adamw_trains_with_adamw_at_the_flags_lr_and_weight_decay(monkeypatch):
    import train
    load_variants()["apply"]("adamw", monkeypatch.setattr)
    args = train.parse_args(["--recipe", "tuned", "--lr", "0.002", "--weight-decay", "0.05"])[0]
    optimizer = train.build_optimizer(train.build_model(10, torch.device("cpu"), 0), args)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert (optimizer.defaults["lr"], optimizer.defaults["weight_decay"]) == (0.002, 0.05)


def test_variant_no_bias_decay_decays_every_weight_and_no_bias_with_the_recipes_other_settings(monkeypatch):
    import train
    load_variants()["apply"]("no-bias-decay", monkeypatch.setattr)
    args = train.parse_args(["--recipe", "tuned", "--optimizer", "sgd", "--weight-decay", "0.01"])[0]
    model = train.build_model(10, torch.device("cpu"), 0)
    optimizer = train.build_optimizer(model, args)
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert decay == {id(p): 0.01 if name.endswith("weight") else 0.0 for name, p in model.named_parameters()}
    assert all((g["lr"], g["momentum"], g["nesterov"]) == (train.RECIPES["tuned"]["lr"], 0.9, True)
               for g in optimizer.param_groups)


def test_variant_zero_last_starts_the_last_layer_at_zero_and_leaves_the_others(monkeypatch):
    import train
    default = train.build_model(10, torch.device("cpu"), 0)
    load_variants()["apply"]("zero-last", monkeypatch.setattr)
    changed = train.build_model(10, torch.device("cpu"), 0)
    assert not changed.model[-1].weight.any() and not changed.model[-1].bias.any()
    assert torch.equal(changed.model[0].weight, default.model[0].weight)


def test_variant_scaled_init_multiplies_every_weight_by_sqrt_3(monkeypatch):
    import train
    default = train.build_model(10, torch.device("cpu"), 0)
    load_variants()["apply"]("scaled-init", monkeypatch.setattr)
    changed = train.build_model(10, torch.device("cpu"), 0)
    for name, weight in changed.state_dict().items():
        factor = 3 ** 0.5 if name.endswith("weight") else 1.0
        torch.testing.assert_close(weight, default.state_dict()[name] * factor)


def test_variant_orthogonal_equalises_each_weights_singular_values_and_keeps_its_norm(monkeypatch):
    import train
    default = train.build_model(10, torch.device("cpu"), 0).state_dict()
    load_variants()["apply"]("orthogonal", monkeypatch.setattr)
    changed = train.build_model(10, torch.device("cpu"), 0).state_dict()
    for name, weight in changed.items():
        if name.endswith("bias"):
            assert torch.equal(weight, default[name])
            continue
        singular_values = torch.linalg.svdvals(weight.flatten(1))
        torch.testing.assert_close(singular_values, singular_values[:1].expand_as(singular_values))
        torch.testing.assert_close(weight.norm(), default[name].norm())


def test_variant_clean_last_drops_the_shifts_of_the_last_epoch_only(monkeypatch, train_args):
    load_variants()["apply"]("clean-last", monkeypatch.setattr)
    plans = augmentation_plans(monkeypatch, train_args)
    assert [bool(shifts.any()) for _, shifts in plans] == [True, True, False]
    assert plans[-1][0].any()  # still flipped


def augmentation_plans(monkeypatch, train_args):
    """The (flips, shifts) each epoch of a 3-epoch tuned run hands to the training step."""
    import train
    plans, set_augmentation = [], train.TrainStep.set_augmentation
    monkeypatch.setattr(train.TrainStep, "set_augmentation",
                        lambda step, flips, shifts: plans.append((flips, shifts)) or set_augmentation(step, flips, shifts))
    train.main([*train_args, "--recipe", "tuned", "--epochs", "3"])
    return plans


def test_variant_alt_flip_flips_each_epoch_the_images_the_epoch_before_did_not(monkeypatch, train_args, tmp_path):
    default = augmentation_plans(monkeypatch, [*train_args, "--logdir", str(tmp_path / "default")])
    load_variants()["apply"]("alt-flip", monkeypatch.setattr)
    alternating = augmentation_plans(monkeypatch, train_args)
    flips = [f for f, _ in alternating]
    assert torch.equal(flips[0], default[0][0])
    assert torch.equal(flips[1], ~flips[0]) and torch.equal(flips[2], flips[0])
    assert all(torch.equal(shifts, d) for (_, shifts), (_, d) in zip(alternating, default))


def test_variant_linear_decay_falls_linearly_from_the_peak_to_zero_after_the_warmup(monkeypatch):
    import train
    load_variants()["apply"]("linear-decay", monkeypatch.setattr)
    args = train.parse_args(["--recipe", "tuned", "--lr", "0.04", "--warmup", "0.1"])[0]
    lrs = [train.lr_at(step, 110, args) for step in range(110)]
    torch.testing.assert_close(lrs[:11], [0.04 * (step + 1) / 11 for step in range(11)])  # warm-up unchanged
    torch.testing.assert_close(lrs[11:], [0.04 * (1 - step / 99) for step in range(99)])


def test_variant_lookahead_pulls_the_weights_toward_the_slow_copy_by_the_decay():
    slow, params = [torch.tensor([0.0, 4.0])], [torch.tensor([2.0, 0.0])]
    load_variants()["pull_to_slow"](slow, params, 0.75)
    assert torch.equal(slow[0], torch.tensor([0.5, 3.0])) and torch.equal(params[0], slow[0])


def test_variant_lookahead_pulls_every_5_steps_by_the_schedule_and_fully_at_the_last(monkeypatch, train_args):
    import train
    variants, decays = load_variants(), []
    pull = variants["pull_to_slow"]
    monkeypatch.setitem(variants, "pull_to_slow", lambda slow, params, decay: decays.append(decay) or pull(slow, params, decay))
    variants["apply"]("lookahead", monkeypatch.setattr)
    total = train.main([*train_args, "--recipe", "tuned", "--epochs", "3"])["step"]
    assert decays == [0.95 ** 5 * (done / total) ** 3 for done in range(5, total, 5)] + [1.0]


def test_variants_joined_with_plus_are_all_applied_in_order_before_training(monkeypatch):
    import train
    variants, applied = load_variants(), []
    monkeypatch.setitem(variants, "apply", applied.append)
    monkeypatch.setattr(train, "main", lambda argv: ("trained with", applied.copy(), argv))
    result = variants["main"](["alt-flip+lookahead", "--", "--recipe", "tuned"])
    assert result == ("trained with", ["alt-flip", "lookahead"], ["--recipe", "tuned"])


@pytest.mark.parametrize("variant", ["adamw", "adamw+alt-flip"])
def test_variants_with_their_own_optimizer_train_without_a_cuda_graph(monkeypatch, variant):
    """Its optimizer takes the lr as a number, which a captured graph would replay unchanged."""
    import train
    variants = load_variants()
    monkeypatch.setitem(variants, "apply", lambda name: None)
    monkeypatch.setattr(train, "main", lambda argv: argv)
    assert variants["main"]([variant, "--", "--recipe", "tuned"]) == ["--recipe", "tuned", "--no-cuda-graph"]


@pytest.mark.parametrize("variant", ["alt-flip+sam", "lookahead+lookahead"])
def test_variants_refuses_an_unknown_or_repeated_part_of_a_joined_variant(capsys, variant):
    with pytest.raises(SystemExit) as exit_info:
        load_variants()["main"]([variant, "--", "--recipe", "tuned"])
    assert exit_info.value.code == 2
    assert "several joined with +, each once" in capsys.readouterr().err


def test_variants_names_the_choices_when_the_variant_is_unknown(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_variants()["main"](["sam", "--", "--recipe", "tuned"])
    assert exit_info.value.code == 2
    assert ("adamw, no-bias-decay, zero-last, scaled-init, orthogonal, clean-last, alt-flip, linear-decay, "
            "lookahead") in capsys.readouterr().err


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
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(archive), str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    log = (tmp_path / "out" / "log.txt").read_text()
    assert done.returncode == 0, done.stderr
    assert "wrote 20 training and 10 test images" in log
    # the CUDA tests, tuned alone, with --amp, its batch-128 settings alone, tuned over 3 seeds, compare,
    # 2 plain runs, the step time, 2 step profiles, import times, cProfile, 50 epochs
    assert log.count("=== skipped") == 14
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["log.txt"]
    assert log.rstrip().endswith("done")


def test_torchrun_exits_counts_the_runs_whose_processes_exit_with_a_failure(tmp_path, capsys):
    failing = tmp_path / "failing.py"
    failing.write_text("import sys\nsys.exit(3)\n")
    torchrun_exits = runpy.run_path(str(ROOT / "bench" / "torchrun_exits.py"))
    assert torchrun_exits["main"](["--runs", "2", "--script", str(failing)]) == 2
    out = capsys.readouterr().out
    assert "run 1 exited 1:" in out and "failing.py FAILED" in out
    assert out.rstrip().endswith("2 of 2 runs failed (runs [1, 2])")
