"""model.py: the tutorial's network as shipped; and any network a user writes there works with all the rest."""
import json

import pytest
import torch
from torch import nn

from conftest import ROOT, copy_of_the_project, run_script
from model import Tudui
from tudui.checkpoints import TutorialTudui

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


def test_the_tutorials_network_has_exactly_its_layers_and_no_activations():
    """The tutorial's network, as the package keeps it for the tutorial's files (model.py is the user's)."""
    layers = list(TutorialTudui().model)
    assert len(layers) == len(TUTORIAL_LAYERS)
    for layer, (kind, settings) in zip(layers, TUTORIAL_LAYERS):
        assert type(layer) is kind
        for name, value in settings.items():
            assert getattr(layer, name) == value


def test_the_tutorials_network_has_145578_parameters_under_the_tutorials_keys():
    expected = [f"model.{i}.{kind}" for i in (0, 2, 4, 7, 8) for kind in ("weight", "bias")]
    assert list(TutorialTudui().state_dict()) == expected
    assert sum(p.numel() for p in TutorialTudui().parameters()) == 145_578


SHIPPED = pytest.mark.skipif(str(Tudui()).replace("Tudui(", "TutorialTudui(", 1) != str(TutorialTudui()),
                             reason="model.py holds another network than the tutorial's, as is the user's right")


@SHIPPED
def test_model_py_as_shipped_is_the_tutorials_network():
    assert str(Tudui()).replace("Tudui(", "TutorialTudui(", 1) == str(TutorialTudui())


def test_a_batch_of_64_images_gives_64_by_10_logits():
    assert Tudui()(torch.ones(64, 3, 32, 32)).shape == (64, 10)


def test_num_classes_sets_the_output_width():
    assert Tudui(num_classes=3)(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_importing_model_py_prints_nothing(capsys):
    import runpy
    runpy.run_path(str(ROOT / "model.py"), run_name="model")
    assert capsys.readouterr() == ("", "")


@SHIPPED
def test_running_model_py_as_shipped_prints_the_output_shape(capsys):
    import runpy
    runpy.run_path(str(ROOT / "model.py"), run_name="__main__")
    assert capsys.readouterr().out.strip() == "torch.Size([64, 10])"


# ---------------------------------------------------------------- model.py is the user's: any Tudui written there

TUTORIALS_OWN_MODEL_PY = '''import torch
from torch import nn


class Tudui(nn.Module):
    def __init__(self):
        super(Tudui, self).__init__()
        self.model = nn.Sequential(
            nn.Conv2d(3, 32, 5, 1, 2), nn.MaxPool2d(2), nn.Conv2d(32, 32, 5, 1, 2), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, 1, 2), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 4 * 4, 64), nn.Linear(64, 10))

    def forward(self, x):
        x = self.model(x)
        return x


if __name__ == '__main__':
    tudui = Tudui()
    input = torch.ones((64, 3, 32, 32))
    output = tudui(input)
    print(output.shape)
'''

RELU_BATCHNORM_DROPOUT_MODEL_PY = '''import torch
from torch import nn


class Tudui(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(3, 48, 3, 1, 1), nn.BatchNorm2d(48), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(48, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 4 * 4, 96), nn.ReLU(), nn.Linear(96, num_classes))

    def forward(self, x):
        return self.model(x)
'''


EACH_COMMAND = """import json, sys
import predict, train
from tudui.console import run_cli
for argv in json.loads(sys.argv[1]):
    entry = predict.main if argv[0] == "predict.py" else train.main
    print("exit code", run_cli(lambda: entry(argv[1:])), flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("model_source", [TUTORIALS_OWN_MODEL_PY, RELU_BATCHNORM_DROPOUT_MODEL_PY],
                         ids=["the tutorial's own model.py", "ReLU, BatchNorm and Dropout"])
def test_a_network_written_in_model_py_trains_resumes_bit_exactly_predicts_evaluates_and_dry_runs(
        tmp_path, cifar_dir, images, model_source):
    project = copy_of_the_project(tmp_path, model_source)
    # the tuned recipe (Muon, augmentation, normalization) with a constant lr: a decaying one depends on the
    # total epochs, which a run stretched on resume changes
    common = ["--data-dir", cifar_dir, "--no-download", "--device", "cpu", "--quiet", "--recipe", "tuned",
              "--schedule", "constant", "--lr", "0.02", "--batch-size", "64", "--logdir", tmp_path / "logs"]

    commands = [["train.py", *common, "--dry-run"], ["train.py", *common, "--epochs", "2", "--run-name", "straight"],
                ["train.py", *common, "--epochs", "1", "--run-name", "split"],
                ["train.py", "--resume", tmp_path / "logs" / "split" / "last.pth", "--epochs", "2", "--quiet"],
                ["predict.py", "--checkpoint", tmp_path / "logs" / "straight" / "best.pth", images / "RGB.png"],
                ["train.py", "--evaluate", tmp_path / "logs" / "straight" / "last.pth", "--data-dir", cifar_dir,
                 "--no-download", "--device", "cpu"]]
    (project / "each_command.py").write_text(EACH_COMMAND)  # in one process: the scripts' own entry points
    result = run_script("each_command.py", json.dumps([[str(arg) for arg in argv] for argv in commands]), cwd=project)
    assert result.returncode == 0 and result.stdout.count("exit code 0") == len(commands), result.stderr
    straight, resumed = (torch.load(tmp_path / "logs" / run / "last.pth", weights_only=True) for run in ("straight",
                                                                                                       "split"))
    assert straight["model"].keys() == resumed["model"].keys()
    assert all(torch.equal(straight["model"][key], resumed["model"][key]) for key in straight["model"])
    assert "ReLU" in straight["network"] or "Linear(in_features=64, out_features=10" in straight["network"]
    assert f"\n{images / 'RGB.png'}: " in result.stdout  # predict.py's line for the image
    assert f"accuracy {straight['test_accuracy']:.2%} on 100 images" in result.stdout  # --evaluate's


@pytest.mark.slow
def test_a_network_with_batchnorm_and_dropout_in_model_py_trains_under_torchrun(tmp_path, cifar_dir):
    project = copy_of_the_project(tmp_path, RELU_BATCHNORM_DROPOUT_MODEL_PY)
    result = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", project / "train.py",
                        "--data-dir", cifar_dir, "--no-download", "--device", "cpu", "--quiet", "--epochs", "1",
                        "--batch-size", "64", "--logdir", tmp_path / "logs", "--run-name", "ddp", cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BatchNorm2d" in torch.load(tmp_path / "logs" / "ddp" / "last.pth", weights_only=True)["network"]
