"""The course's small models: an MLP for flat features and a two-convolution CNN.

Both are small enough to train on digits in seconds on a CPU, and they are the models the
chapters compress: binarized (BinaryConnect), pruned (OBD, filter pruning), distilled.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP", "CourseCNN"]


class MLP(nn.Module):
    """A multilayer perceptron with ReLU hidden layers; flattens its input.

    Parameters
    ----------
    in_features : int, default 64
        Input size after flattening (64 for 8x8 digits, 784 for 28x28 images).
    hidden : sequence of int, default (128,)
        Widths of the hidden layers.
    n_classes : int, default 10
    """

    def __init__(self, in_features: int = 64, hidden: Sequence[int] = (128,), n_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)
        self.in_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], -1))


class CourseCNN(nn.Module):
    """conv1-bn1-relu-pool, conv2-bn2-relu-pool, fc: the course CNN (28x28 inputs by default).

    Parameters
    ----------
    in_channels : int, default 1
    channels : (int, int), default (16, 32)
        Filters in conv1 and conv2 (3x3, padding 1).
    n_classes : int, default 10
    image_size : int, default 28
        Input height and width; each max-pool halves it (floor).

    Notes
    -----
    Accepts ``(n, H, W)`` (adds the channel axis) or ``(n, C, H, W)`` input. The submodule names
    ``conv1, bn1, conv2, bn2, fc`` are what ``courselib.pruning.remove_filters`` refers to.
    """

    def __init__(
        self, in_channels: int = 1, channels: Sequence[int] = (16, 32), n_classes: int = 10, image_size: int = 28
    ):
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c2)
        side = (image_size // 2) // 2
        self.fc = nn.Linear(c2 * side * side, n_classes)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        x = self.pool(self.relu(self.bn2(self.conv2(x))))
        return self.fc(torch.flatten(x, 1))
