"""model.py: the tutorial's network, unchanged."""

import pytest
import torch
from torch import nn

from conftest import ROOT, run_script
from model import Tudui

TUTORIAL_LAYERS = [
    (nn.Conv2d, dict(in_channels=3, out_channels=32, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))),
    (nn.MaxPool2d, dict(kernel_size=2)),
    (nn.Conv2d, dict(in_channels=32, out_channels=32, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))),
    (nn.MaxPool2d, dict(kernel_size=2)),
    (nn.Conv2d, dict(in_channels=32, out_channels=64, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))),
    (nn.MaxPool2d, dict(kernel_size=2)),
    (nn.Flatten, {}),
    (nn.Linear, dict(in_features=1024, out_features=64)),
    (nn.Linear, dict(in_features=64, out_features=10)),
]


def test_layers_are_exactly_the_tutorials_with_no_activations():
    layers = list(Tudui().model)
    assert len(layers) == len(TUTORIAL_LAYERS)
    for layer, (kind, settings) in zip(layers, TUTORIAL_LAYERS):
        assert type(layer) is kind
        for name, value in settings.items():
            assert getattr(layer, name) == value


def test_batch_of_64_images_gives_64_by_10_logits():
    assert Tudui()(torch.ones(64, 3, 32, 32)).shape == (64, 10)


def test_parameter_count_is_145578():
    assert sum(p.numel() for p in Tudui().parameters()) == 145_578


def test_state_dict_keys_match_the_tutorial():
    expected = [f"model.{i}.{kind}" for i in (0, 2, 4, 7, 8) for kind in ("weight", "bias")]
    assert list(Tudui().state_dict()) == expected


def test_num_classes_sets_the_output_width():
    assert Tudui(num_classes=3)(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.slow
def test_import_prints_nothing():
    result = run_script("-c", "import model")
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


@pytest.mark.slow
def test_running_model_py_prints_the_output_shape():
    result = run_script(ROOT / "model.py")
    assert result.returncode == 0 and result.stdout.strip() == "torch.Size([64, 10])"
