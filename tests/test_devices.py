"""tudui/devices.py: a CPU step reuses the memory the step before freed; --deterministic's settings."""

import io
import platform

import pytest
import torch

import train
from conftest import run_script
from tudui import devices

PAGE_FAULTS_PER_TUNED_STEP = """
import resource, statistics, torch, train
from tudui import batches, devices, settings
from tudui.distributed import World
devices.keep_freed_memory()
s = settings.resolve(settings.command_line_settings(["--recipe", "tuned", "--device", "cpu"]))
n = s.batch_size * 11
loader = batches.TrainBatches(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (n,)),
                              s.batch_size, None, s, World())
model = train.build_model(10, torch.device("cpu"), seed=0)
step = train.make_train_step(model, torch.nn.CrossEntropyLoss(reduction="sum"), train.build_optimizer(model, s), False)
batches_of_epoch, faults = iter(loader), []
for _ in range(len(loader)):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(*next(batches_of_epoch))  # the batch drawn, augmented and converted, then the step
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(statistics.median(faults[3:]))
"""


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's malloc's")
def test_a_cpu_step_reuses_the_memory_the_step_before_freed():
    """Seen here at batch 512 without keep_freed_memory: 46,568 to 55,887 page faults per step (181 to 218 MB
    of fresh pages); with glibc's bar at 32 MB, the setting before: 18,023 to 33,589; with it, 0.2 to 2,048.2.
    The median step, as the heap still grows by 4 to 32 MB now and then (up to 8,193 faults in one step)."""
    result = run_script("-c", PAGE_FAULTS_PER_TUNED_STEP)
    assert result.returncode == 0, result.stderr
    faults_per_step = float(result.stdout.split()[-1])
    assert faults_per_step < 8000, faults_per_step


def test_the_command_line_sets_up_the_memory_reuse_and_train_main_leaves_a_notebooks_process_alone(
        train_args, monkeypatch):
    import runpy
    calls = []
    monkeypatch.setattr(devices, "keep_freed_memory", lambda: calls.append("called"))
    monkeypatch.setattr(train, "keep_freed_memory", lambda: calls.append("called"))
    train.main(train_args + ["--epochs", "1", "--run-name", "from-python"])
    assert calls == []
    monkeypatch.setattr("sys.argv", ["train.py", *train_args, "--epochs", "1", "--run-name", "from-the-shell"])
    with pytest.raises(SystemExit) as ended:
        runpy.run_path(str(train.__file__), run_name="__main__")
    assert ended.value.code == 0 and calls == ["called"]


@pytest.mark.slow
def test_deterministic_changes_nothing_on_the_cpu_whose_runs_are_bit_exact_already(train_args, tmp_path, capsys):
    plain = train.main(train_args + ["--epochs", "2", "--run-name", "plain", "--recipe", "tuned", "--batch-size", "64"])
    capsys.readouterr()
    loud = [arg for arg in train_args if arg != "--quiet"]
    strict = train.main(loud + ["--epochs", "2", "--run-name", "strict", "--recipe", "tuned", "--batch-size", "64",
                                "--deterministic"])
    assert "--deterministic: nothing to change on the CPU" in capsys.readouterr().out
    a, b = (torch.load(r.last_path, weights_only=True)["model"] for r in (plain, strict))
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not torch.are_deterministic_algorithms_enabled()


def test_on_a_gpu_deterministic_turns_on_deterministic_algorithms_and_off_tf32_and_benchmark_until_the_run_ends():
    """Only torch's flags are set, so this runs without a GPU; tests/test_cuda.py trains with them."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32)
    with devices.device_settings(torch.device("cuda"), deterministic=True):
        assert (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32) == (False, True, False, False)
        assert torch.are_deterministic_algorithms_enabled()
    assert (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32) == before
    assert not torch.are_deterministic_algorithms_enabled()
    with devices.device_settings(torch.device("cuda")):
        assert cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()  # cuDNN picks the fastest
    assert cudnn.benchmark == before[0]


@pytest.mark.parametrize("native, warned", [(False, True), (True, False), (None, False)])
def test_amp_on_a_cpu_without_native_bfloat16_says_at_the_start_what_it_costs(train_args, capsys, monkeypatch, native,
                                                                               warned):
    monkeypatch.setattr(devices, "native_bfloat16", lambda: native)
    train.main(train_args + ["--epochs", "1", "--amp"])
    err = capsys.readouterr().err
    assert ("--amp: this CPU has no native bfloat16 (no AVX-512 BF16 or AMX), where bf16 autocast ran over 10x slower "
            "than fp32" in err) is warned


@pytest.mark.parametrize("cpuinfo, native", [("flags\t: fpu avx2 avx512_bf16\n", True), ("flags\t: fpu amx_bf16\n", True),
                                             ("flags\t: fpu avx2 avx512f\n", False), (None, None)])
def test_native_bfloat16_is_read_from_the_cpus_flags_and_unknown_without_them(monkeypatch, cpuinfo, native):
    def fake_open(path):
        if cpuinfo is None:
            raise FileNotFoundError(path)
        return io.StringIO("processor\t: 0\n" + cpuinfo)
    monkeypatch.setattr(devices, "open", fake_open, raising=False)
    assert devices.native_bfloat16() is native
