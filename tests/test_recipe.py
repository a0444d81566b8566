"""--recipe tuned: the switch and its overrides, batch augmentation, the lr schedules, normalization
carried into evaluate and predict, test-time augmentation, and checkpoints that do not depend on how the
optimizer ran."""
import math

import pytest
import torch

import predict
import train
from conftest import bad_input, class_images
from model import Tudui, load_tudui


def test_tuned_recipe_sets_every_tuned_setting():
    args, _ = train.parse_args(["--recipe", "tuned"])
    assert {key: getattr(args, key) for key in train.RECIPES["tuned"]} == train.RECIPES["tuned"]


def test_explicit_flags_override_the_recipe_and_nothing_else():
    args, _ = train.parse_args(["--recipe", "tuned", "--lr", "0.02", "--batch-size", "64", "--no-augment"])
    assert (args.lr, args.batch_size, args.augment) == (0.02, 64, False)
    untouched = {k: v for k, v in train.RECIPES["tuned"].items() if k not in ("lr", "batch_size", "augment")}
    assert {key: getattr(args, key) for key in untouched} == untouched


@pytest.fixture(scope="module")
def tutorial_run_checkpoint(cifar_dir, tmp_path_factory):
    logdir = tmp_path_factory.mktemp("logs")
    train.main(["--data-dir", str(cifar_dir), "--no-download", "--logdir", str(logdir), "--run-name", "run",
                "--device", "cpu", "--quiet", "--epochs", "1"])
    return str(logdir / "run" / "last.pth")


def test_a_resumed_run_keeps_its_recipe(tutorial_run_checkpoint, capsys):
    err = bad_input(capsys, ["--resume", tutorial_run_checkpoint, "--recipe", "tuned"])
    assert "was trained with --recipe tutorial, and a resumed run keeps its recipe" in err


def test_a_resumed_run_keeps_its_input_normalization(tutorial_run_checkpoint, capsys):
    err = bad_input(capsys, ["--resume", tutorial_run_checkpoint, "--normalize"])
    assert "was trained without --normalize" in err


def test_a_resumed_run_takes_a_single_setting_from_a_flag(tutorial_run_checkpoint):
    args, _ = train.parse_args(["--resume", tutorial_run_checkpoint, "--lr", "0.02", "--recipe", "tutorial"])
    assert (args.recipe, args.lr, args.batch_size) == ("tutorial", 0.02, 64)


def test_a_resumed_run_keeps_its_optimizer(tutorial_run_checkpoint, capsys):
    err = bad_input(capsys, ["--resume", tutorial_run_checkpoint, "--optimizer", "muon"])
    assert "was trained with --optimizer sgd, and a resumed run keeps its optimizer" in err


def test_a_run_saved_before_the_optimizer_flag_resumes_with_sgd(tutorial_run_checkpoint, tmp_path, capsys):
    checkpoint = torch.load(tutorial_run_checkpoint, weights_only=True)
    del checkpoint["config"]["optimizer"]
    torch.save(checkpoint, tmp_path / "older.pth")
    assert train.parse_args(["--resume", str(tmp_path / "older.pth")])[0].optimizer == "sgd"
    assert "was trained with --optimizer sgd" in bad_input(capsys, ["--resume", str(tmp_path / "older.pth"),
                                                                    "--optimizer", "muon"])


def test_a_run_saved_before_the_muon_decay_flag_resumes_without_decay(tutorial_run_checkpoint, tmp_path):
    checkpoint = torch.load(tutorial_run_checkpoint, weights_only=True)
    checkpoint["config"].update(recipe="tuned", optimizer="muon")
    del checkpoint["config"]["muon_decay"]
    torch.save(checkpoint, tmp_path / "older.pth")
    assert train.parse_args(["--resume", str(tmp_path / "older.pth")])[0].muon_decay == 0.0


def test_tuned_recipe_with_sgd_drops_the_decay_meant_for_muons_weights():
    args, _ = train.parse_args(["--recipe", "tuned", "--optimizer", "sgd"])
    assert (args.optimizer, args.muon_decay, args.weight_decay) == ("sgd", 0.0, train.RECIPES["tuned"]["weight_decay"])


def test_both_recipes_name_the_same_settings():
    assert train.RECIPES["tutorial"].keys() == train.RECIPES["tuned"].keys()


def random_batch(n=8, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_augmented_batch_keeps_shape_and_dtype():
    images = random_batch()
    flips, shifts = train.augment_plan(len(images), torch.Generator().manual_seed(0), 4)
    out = train.augment_batch(images, flips, shifts)
    assert out.shape == images.shape and out.dtype == torch.uint8


def test_no_flip_and_no_shift_leaves_the_batch_unchanged():
    images = random_batch()
    out = train.augment_batch(images, torch.zeros(8, dtype=torch.bool), torch.zeros(8, 2, dtype=torch.int64))
    assert torch.equal(out, images)


def test_flip_mirrors_left_to_right():
    images = random_batch()
    out = train.augment_batch(images, torch.ones(8, dtype=torch.bool), torch.zeros(8, 2, dtype=torch.int64))
    assert torch.equal(out, images.flip(3))


def test_shift_moves_the_image_and_mirrors_it_into_the_gap():
    images = random_batch(1)
    out = train.augment_batch(images, torch.zeros(1, dtype=torch.bool), torch.tensor([[2, -1]]))
    assert torch.equal(out[0, :, 2:, :-1], images[0, :, :-2, 1:])
    assert torch.equal(out[0, :, :2, :-1], images[0, :, [2, 1], 1:])  # rows -2, -1 mirror rows 2, 1
    assert torch.equal(out[0, :, 2:, -1], images[0, :, :-2, -2])  # column 32 mirrors column 30


def test_augmentation_plan_is_determined_by_seed_and_epoch():
    first = train.augment_plan(1000, train.epoch_generator(3, 5), 2)
    again = train.augment_plan(1000, train.epoch_generator(3, 5), 2)
    other_epoch = train.augment_plan(1000, train.epoch_generator(3, 6), 2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], other_epoch[1])


@pytest.mark.parametrize("max_shift", [0, 2, 4])
def test_translate_bounds_the_shifts(max_shift):
    flips, shifts = train.augment_plan(5000, torch.Generator().manual_seed(0), max_shift)
    assert shifts.abs().max().item() == max_shift and 0.45 < flips.float().mean().item() < 0.55


def test_cosine_schedule_decays_from_the_peak_to_zero():
    args, _ = train.parse_args(["--lr", "0.1", "--schedule", "cosine"])
    lrs = [train.lr_at(step, 100, args) for step in range(100)]
    assert lrs[0] == 0.1 and lrs == sorted(lrs, reverse=True) and lrs[-1] < 1e-4


def test_onecycle_warms_up_for_30_percent_then_anneals():
    args, _ = train.parse_args(["--lr", "0.1", "--schedule", "onecycle"])
    lrs = [train.lr_at(step, 100, args) for step in range(100)]
    assert lrs[0] == pytest.approx(0.1 / 25) and max(lrs) == lrs[30] == pytest.approx(0.1)
    assert lrs[-1] < 1e-3


def test_warmup_ramps_linearly_to_the_peak():
    args, _ = train.parse_args(["--lr", "0.1", "--warmup", "0.1"])
    assert [train.lr_at(step, 100, args) for step in range(10)] == pytest.approx([0.01 * (i + 1) for i in range(10)])
    assert train.lr_at(50, 100, args) == 0.1


def test_normalization_constants_are_stored_and_applied_by_predict(cifar_dir, tmp_path):
    train.main(["--data-dir", str(cifar_dir), "--no-download", "--device", "cpu", "--quiet", "--epochs", "1",
                "--logdir", str(tmp_path), "--run-name", "r", "--recipe", "tuned", "--batch-size", "64"])
    checkpoint = torch.load(tmp_path / "r" / "last.pth", weights_only=True)
    from data import load_cifar10
    images, _, _ = load_cifar10(cifar_dir, "train", download=False)
    mean, std = train.channel_stats(images)
    assert checkpoint["preprocess"] == {"mean": mean, "std": std}

    net = load_tudui(tmp_path / "r" / "last.pth")
    image = torch.from_numpy(class_images(1, 10, seed=9)[0][0])
    expected = net(((image.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))[None])
    probabilities = predict.classify(net, image, torch.device("cpu"))
    torch.testing.assert_close(probabilities.view(-1), expected.softmax(1).view(-1))


def test_channel_stats_equal_the_mean_and_std_of_all_pixels():
    images = random_batch(50)
    pixels = images.double().div(255).transpose(0, 1).reshape(3, -1)
    mean, std = train.channel_stats(images)
    assert mean == pytest.approx(pixels.mean(1).tolist(), rel=1e-12)
    assert std == pytest.approx(pixels.std(1).tolist(), rel=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_checkpoints_hold_a_plain_lr_whatever_optimizer_wrote_them(optimizer):
    """A graphed run keeps its lr in a device tensor for the fused SGD kernel; its checkpoints must still
    resume in a plain run (and the reverse), carrying the momentum buffers across."""
    args, _ = train.parse_args(["--recipe", "tuned", "--optimizer", optimizer])
    model = train.build_model(10, torch.device("cpu"), seed=0)
    graphed = train.build_optimizer(model, args, graphed=True)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    graphed.step()
    state = train.optimizer_state(graphed)
    assert all(type(group["lr"]) is float and math.isclose(group["lr"], args.lr, rel_tol=1e-6)
               for group in state["param_groups"])

    plain = train.build_optimizer(model, args)
    train.load_optimizer_state(plain, state)
    assert type(plain.param_groups[0]["lr"]) is float and not plain.param_groups[0]["fused"]
    for p in model.parameters():
        assert torch.equal(plain.state[p]["momentum_buffer"], graphed.state[p]["momentum_buffer"])


def test_muon_steps_the_same_with_its_lr_in_a_tensor_as_a_cuda_graph_keeps_it():
    """The CUDA tests check graphed against eager on a GPU; this checks the tensor-lr arithmetic (the decay
    included) on any machine."""
    args, _ = train.parse_args(["--recipe", "tuned"])
    weights = []
    for graphed in (False, True):
        model = train.build_model(10, torch.device("cpu"), seed=0)
        optimizer = train.build_optimizer(model, args, graphed=graphed)
        for step in range(3):
            optimizer.zero_grad()
            images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(step))
            torch.nn.functional.cross_entropy(model(images), torch.arange(8)).backward()
            optimizer.step()
        weights.append(list(model.parameters()))
    for plain, graphed in zip(*weights):
        torch.testing.assert_close(graphed, plain, rtol=0, atol=0)


@pytest.fixture
def untrained_weights(tmp_path):
    """A state_dict file of a freshly initialised Tudui (seed 3)."""
    torch.manual_seed(3)
    torch.save(Tudui().state_dict(), tmp_path / "weights.pth")
    return tmp_path / "weights.pth"


def test_evaluate_with_tta_scores_the_mean_of_the_image_and_mirror_probabilities(cifar_dir, untrained_weights):
    metrics = train.main(["--evaluate", str(untrained_weights), "--tta", "--data-dir", str(cifar_dir),
                          "--no-download", "--device", "cpu"])

    from data import load_cifar10
    images, labels, _ = load_cifar10(cifar_dir, "test", download=False)
    net = load_tudui(untrained_weights)
    x = images.float() / 255
    with torch.no_grad():
        probabilities = (net(x).softmax(1) + net(x.flip(3)).softmax(1)) / 2
    expected_loss = torch.nn.functional.nll_loss(probabilities.log(), labels).item()
    expected_accuracy = (probabilities.argmax(1) == labels).double().mean().item()
    assert metrics["test_loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert metrics["test_accuracy"] == pytest.approx(expected_accuracy)


def test_predict_with_tta_gives_an_image_and_its_mirror_the_same_probabilities(untrained_weights):
    net = load_tudui(untrained_weights)
    image = random_batch(1)[0]
    cpu = torch.device("cpu")
    plain = [predict.classify(net, im, cpu) for im in (image, image.flip(2))]
    averaged = [predict.classify(net, im, cpu, tta=True) for im in (image, image.flip(2))]
    assert not torch.allclose(plain[0], plain[1])
    torch.testing.assert_close(averaged[0], averaged[1])
    torch.testing.assert_close(averaged[0], (plain[0] + plain[1]) / 2)


@pytest.mark.parametrize("shape", [(32, 75), (75, 32)])
def test_orthogonalize_keeps_the_singular_vectors_and_brings_singular_values_within_100x_near_1(shape):
    left, _ = torch.linalg.qr(torch.randn(shape[0], min(shape), generator=torch.Generator().manual_seed(0)))
    right, _ = torch.linalg.qr(torch.randn(shape[1], min(shape), generator=torch.Generator().manual_seed(1)))
    singular_values = torch.logspace(-1, 1, min(shape))  # a factor of 100 from the smallest to the largest
    result = train.orthogonalize(left @ torch.diag(singular_values) @ right.T)
    in_the_same_basis = left.T @ result @ right
    diagonal = in_the_same_basis.diagonal()
    assert ((diagonal > 0.6) & (diagonal < 1.3)).all()
    torch.testing.assert_close(in_the_same_basis, torch.diag(diagonal), atol=1e-4, rtol=0)


def test_orthogonalizing_weights_zero_padded_into_one_batch_gives_each_its_own_result():
    """Muon orthogonalizes all its weights as one padded batch (fewer GPU kernels): Tudui's four, and a
    tall one, which is padded transposed."""
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(shape, generator=generator)
               for shape in [(32, 3, 5, 5), (32, 32, 5, 5), (64, 32, 5, 5), (64, 1024), (100, 20)]]
    padded, _ = train.padded_matrices(weights)
    for weight, matrix in zip(weights, padded):
        train.as_weight(matrix, weight).copy_(weight)
    result = train.orthogonalize(padded)
    for weight, matrix in zip(weights, result):
        alone = train.orthogonalize(weight.flatten(1)).view_as(weight)
        torch.testing.assert_close(train.as_weight(matrix, weight), alone, atol=1e-6, rtol=0)
        assert matrix.count_nonzero() == weight.count_nonzero()  # the padding stayed zero


def test_muon_moves_hidden_weights_by_their_orthogonalized_gradient_and_the_rest_as_sgd():
    args = train.parse_args(["--recipe", "tuned", "--muon-decay", "0"])[0]  # the decay has a test of its own
    model = train.build_model(10, torch.device("cpu"), 0)
    sgd_twin = train.build_model(10, torch.device("cpu"), 0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    images, labels = torch.rand(8, 3, 32, 32), torch.arange(8)
    for net, optimizer in ((model, train.build_optimizer(model, args)),
                           (sgd_twin, torch.optim.SGD(sgd_twin.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                                                      weight_decay=2e-3))):
        torch.nn.functional.cross_entropy(net(images), labels).backward()
        optimizer.step()
    hidden = {"model.0.weight", "model.2.weight", "model.4.weight", "model.7.weight"}
    for (name, p), twin in zip(model.named_parameters(), sgd_twin.parameters()):
        if name in hidden:
            rows, columns = p.shape[0], p[0].numel()
            ratio = train.Muon.LR_RATIO
            step = args.lr * ratio * max(1, rows / columns) ** 0.5 * train.orthogonalize(twin.grad.flatten(1))
            torch.testing.assert_close(before[name] - p.detach(), step.view_as(p), atol=1e-6, rtol=1e-4)
        else:
            torch.testing.assert_close(p.detach(), twin.detach())


def test_muon_decay_shrinks_only_the_hidden_weights_by_muons_lr_times_the_rate_before_each_step():
    """Zero gradients: Muon's own step and the SGD part then move nothing, so only the decay shows."""
    args = train.parse_args(["--recipe", "tuned", "--weight-decay", "0", "--lr", "0.2", "--muon-decay", "0.5"])[0]
    model = train.build_model(10, torch.device("cpu"), 0)
    optimizer = train.build_optimizer(model, args)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    hidden = {"model.0.weight", "model.2.weight", "model.4.weight", "model.7.weight"}
    for name, p in model.named_parameters():
        factor = 1 - 0.2 * train.Muon.LR_RATIO * 0.5 if name in hidden else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor, msg=name)
