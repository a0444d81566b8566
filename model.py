"""The tutorial's Tudui CIFAR-10 network; nothing else.

    from model import Tudui
    from tudui import load_tudui      # any Tudui checkpoint, loaded safely

Importing this module runs nothing. `python model.py` pushes a batch of ones through the network.
"""
import torch
from torch import nn


class Tudui(nn.Module):
    """The tutorial's network, layer for layer. It has no activation functions: that is the tutorial's
    design (max-pooling is its only non-linearity), kept so its trained weights load unchanged."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(3, 32, 5, 1, 2),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 5, 1, 2),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, 1, 2),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 64),
            nn.Linear(64, num_classes),
        )

    def forward(self, x):
        return self.model(x)


if __name__ == "__main__":
    tudui = Tudui()
    print(tudui(torch.ones((64, 3, 32, 32))).shape)
