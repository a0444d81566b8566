"""tudui/muon.py: Muon orthogonalizes the hidden layers' steps and leaves the rest to SGD."""

import pytest
import torch

import train
from conftest import parse
from tudui import muon
from tudui.cuda_graph import GraphedStep


@pytest.mark.parametrize("shape", [(32, 75), (75, 32)])
def test_orthogonalize_keeps_the_singular_vectors_and_brings_singular_values_within_100x_near_1(shape):
    left, _ = torch.linalg.qr(torch.randn(shape[0], min(shape), generator=torch.Generator().manual_seed(0)))
    right, _ = torch.linalg.qr(torch.randn(shape[1], min(shape), generator=torch.Generator().manual_seed(1)))
    singular_values = torch.logspace(-1, 1, min(shape))  # a factor of 100 from the smallest to the largest
    result = muon.orthogonalize(left @ torch.diag(singular_values) @ right.T)
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
    padded, _ = muon.padded_matrices(weights)
    for weight, matrix in zip(weights, padded):
        muon.as_weight(matrix, weight).copy_(weight)
    result = muon.orthogonalize(padded)
    for weight, matrix in zip(weights, result):
        alone = muon.orthogonalize(weight.flatten(1)).view_as(weight)
        torch.testing.assert_close(muon.as_weight(matrix, weight), alone, atol=1e-6, rtol=0)
        assert matrix.count_nonzero() == weight.count_nonzero()  # the padding stayed zero


def test_muon_moves_hidden_weights_by_their_orthogonalized_gradient_and_the_rest_as_sgd(tutorial_network):
    args = parse(["--recipe", "tuned", "--muon-decay", "0"])  # the decay has a test of its own
    model = train.build_model(10, torch.device("cpu"), 0)
    sgd_twin = train.build_model(10, torch.device("cpu"), 0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    images, labels = torch.rand(8, 3, 32, 32), torch.arange(8)
    muon_optimizer = train.build_optimizer(model, args)
    for net, optimizer in ((model, muon_optimizer),
                           (sgd_twin, torch.optim.SGD(sgd_twin.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                                                      weight_decay=2e-3))):
        torch.nn.functional.cross_entropy(net(images), labels).backward()
        optimizer.step()
    hidden = {"model.0.weight", "model.2.weight", "model.4.weight", "model.7.weight"}
    for (name, p), twin in zip(model.named_parameters(), sgd_twin.parameters()):
        if name in hidden:
            rows, columns = p.shape[0], p[0].numel()
            ratio = muon_optimizer.defaults["lr_ratio"]
            step = args.lr * ratio * max(1, rows / columns) ** 0.5 * muon.orthogonalize(twin.grad.flatten(1))
            torch.testing.assert_close(before[name] - p.detach(), step.view_as(p), atol=1e-6, rtol=1e-4)
        else:
            torch.testing.assert_close(p.detach(), twin.detach())


def test_muon_decay_shrinks_only_the_hidden_weights_by_muons_lr_times_the_rate_before_each_step(tutorial_network):
    """Zero gradients: Muon's own step and the SGD part then move nothing, so only the decay shows."""
    args = parse(["--recipe", "tuned", "--weight-decay", "0", "--lr", "0.2", "--muon-decay", "0.5"])
    model = train.build_model(10, torch.device("cpu"), 0)
    optimizer = train.build_optimizer(model, args)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    hidden = {"model.0.weight", "model.2.weight", "model.4.weight", "model.7.weight"}
    for name, p in model.named_parameters():
        factor = 1 - 0.2 * optimizer.defaults["lr_ratio"] * 0.5 if name in hidden else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor, msg=name)


def test_muon_steps_the_same_with_its_lr_in_a_tensor_as_a_cuda_graph_keeps_it():
    """The CUDA tests check graphed against eager on a GPU; this checks the tensor-lr arithmetic (the decay
    included) on any machine."""
    args = parse(["--recipe", "tuned"])
    weights = []
    for graphed in (False, True):
        model = train.build_model(10, torch.device("cpu"), seed=0)
        optimizer = train.build_optimizer(model, args)
        if graphed:  # what a CUDA graph does to an optimizer: its lr becomes a 0-dim tensor
            GraphedStep(None, optimizer, 8, torch.device("cpu"))
            assert all(isinstance(group["lr"], torch.Tensor) for group in optimizer.param_groups)
        for step in range(3):
            optimizer.zero_grad()
            images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(step))
            torch.nn.functional.cross_entropy(model(images), torch.arange(8)).backward()
            optimizer.step()
        weights.append(list(model.parameters()))
    for plain, graphed in zip(*weights):
        torch.testing.assert_close(graphed, plain, rtol=0, atol=0)


def test_muon_takes_any_parameters_as_torch_optim_does_and_its_sgd_groups_step_as_sgd():
    torch.manual_seed(0)
    layer, twin = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)
    twin.load_state_dict(layer.state_dict())
    optimizer = muon.Muon([{"params": [layer.weight], "use_muon": True}, {"params": [layer.bias]}], lr=0.1,
                          momentum=0.9, nesterov=True, weight_decay=0.01)
    sgd = torch.optim.SGD([twin.bias], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    weight_before = layer.weight.detach().clone()
    for _ in range(3):
        for net, opt in ((layer, optimizer), (twin, sgd)):
            opt.zero_grad()
            net(torch.ones(2, 6)).sum().backward()  # the biases' gradient does not depend on the weights
            opt.step()
    torch.testing.assert_close(layer.bias, twin.bias)
    assert not torch.equal(layer.weight, weight_before)


def test_muon_returns_the_closures_loss_and_its_state_dict_round_trips():
    layer = torch.nn.Linear(6, 4)
    optimizer = muon.Muon([{"params": [layer.weight], "use_muon": True}, {"params": [layer.bias]}])

    def closure():
        optimizer.zero_grad()
        loss = layer(torch.ones(2, 6)).sum()
        loss.backward()
        return loss
    before_the_step = layer(torch.ones(2, 6)).sum().item()
    assert optimizer.step(closure).item() == before_the_step != layer(torch.ones(2, 6)).sum().item()
    copy = muon.Muon([{"params": [layer.weight], "use_muon": True}, {"params": [layer.bias]}])
    copy.load_state_dict(optimizer.state_dict())
    assert torch.equal(copy.state[layer.weight]["momentum_buffer"], optimizer.state[layer.weight]["momentum_buffer"])


@pytest.mark.parametrize("setting", [{"lr": -1.0}, {"momentum": 1.0}, {"muon_momentum": -0.1}, {"muon_decay": -1.0}])
def test_muon_refuses_settings_out_of_range(setting):
    with pytest.raises(ValueError, match="invalid Muon setting"):
        muon.Muon([torch.nn.Parameter(torch.zeros(3, 3))], **setting)
