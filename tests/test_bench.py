"""The benchmark scripts that reach into train.py's internals still run against them."""
import runpy

from conftest import ROOT


def test_step_profile_times_and_profiles_train_steps_on_the_cpu(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["step_profile.py", "--device", "cpu", "--recipe", "tuned", "--steps", "1"])
    runpy.run_path(str(ROOT / "bench" / "step_profile.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "ms/step (batch 128, cpu)" in out
    assert "aten::convolution_backward" in out  # the profiler saw a backward pass
