"""The CUDA fast path: a step replayed as a CUDA graph trains exactly as the eager step does.
Skipped on machines without a CUDA GPU (CI has none; run these on one: pytest tests/test_cuda.py)."""
import pytest
import torch

import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# 200 training images in batches of 64: three full batches (graphed after the eager warm-up) and one of 8
# (always eager), so three epochs cover warm-up, capture, replay and the eager tail. Every step feature is
# on (augmentation, normalization, Nesterov momentum, weight decay, label smoothing, a per-step lr).
TUNED = ["--recipe", "tuned", "--batch-size", "64", "--lr", "0.05", "--schedule", "onecycle", "--weight-decay", "5e-4",
         "--translate", "2", "--device", "cuda", "--quiet", "--log-every", "1"]


@pytest.fixture(autouse=True)
def exact_float32(monkeypatch):
    """TF32 convolutions (cuDNN's default on recent GPUs) round to 10 mantissa bits and cuDNN may pick
    another algorithm in each run; with both off, two runs that compute the same thing agree to fp32."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)


def run(cifar_dir, tmp_path, name, *extra):
    train.main(["--data-dir", str(cifar_dir), "--no-download", "--logdir", str(tmp_path), "--run-name", name,
                *TUNED, *extra])
    return torch.load(tmp_path / name / "last.pth", weights_only=True, map_location="cpu")


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_graphed_training_matches_eager_training(cifar_dir, tmp_path, optimizer):
    graphed = run(cifar_dir, tmp_path, "graphed", "--epochs", "3", "--optimizer", optimizer)
    eager = run(cifar_dir, tmp_path, "eager", "--epochs", "3", "--no-cuda-graph", "--optimizer", optimizer)
    for key, tensor in eager["model"].items():
        torch.testing.assert_close(graphed["model"][key], tensor, rtol=1e-4, atol=1e-5)
    assert graphed["metrics"]["train_loss_mean"] == pytest.approx(eager["metrics"]["train_loss_mean"], rel=1e-4)


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_graphed_run_resumes_to_the_uninterrupted_weights(cifar_dir, tmp_path, optimizer):
    # a decaying schedule depends on the total epochs
    constant = ["--schedule", "constant", "--lr", "0.01", "--optimizer", optimizer]
    straight = run(cifar_dir, tmp_path, "straight", "--epochs", "3", *constant)
    run(cifar_dir, tmp_path, "split", "--epochs", "2", *constant)
    train.main(["--resume", str(tmp_path / "split" / "last.pth"), "--epochs", "3", "--quiet"])
    resumed = torch.load(tmp_path / "split" / "last.pth", weights_only=True, map_location="cpu")
    for key, tensor in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], tensor, rtol=1e-4, atol=1e-5)


def test_graphed_checkpoint_resumes_on_the_cpu(cifar_dir, tmp_path):
    run(cifar_dir, tmp_path, "r", "--epochs", "1")
    metrics = train.main(["--resume", str(tmp_path / "r" / "last.pth"), "--epochs", "2", "--quiet", "--device", "cpu"])
    assert metrics.epoch == 1 and metrics.test_accuracy > 0.2


def test_amp_with_a_graph_learns(cifar_dir, tmp_path):
    checkpoint = run(cifar_dir, tmp_path, "amp", "--epochs", "3", "--amp")
    assert checkpoint["metrics"]["test_accuracy"] > 0.2  # 10 classes: chance is 0.1


def test_two_deterministic_runs_of_one_seed_give_equal_weights(cifar_dir, tmp_path, monkeypatch):
    for flag in ("allow_tf32", "deterministic"):  # the defaults, which --deterministic must change itself
        monkeypatch.setattr(torch.backends.cudnn, flag, flag == "allow_tf32")
    first = run(cifar_dir, tmp_path, "first", "--epochs", "3", "--deterministic")
    second = run(cifar_dir, tmp_path, "second", "--epochs", "3", "--deterministic")
    for key, tensor in first["model"].items():
        assert torch.equal(second["model"][key], tensor), key
