"""The course's small models: an MLP for flat features, a two-convolution CNN and an efficient student.

All are small enough to train on digits in seconds on a CPU. The first two are the models the
chapters compress: binarized (BinaryConnect), pruned (OBD, filter pruning), distilled; the third,
:class:`SeparableCNN` (depthwise-separable convolutions as in MobileNets, :cite:`howard2017mobilenets`),
is the student that distillation trains (chapter "Knowledge distillation").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP", "CourseCNN", "SeparableCNN"]


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


class SeparableCNN(nn.Module):
    """A small efficient student: a 3x3 stem then depthwise-separable blocks (MobileNets, Howard et al. 2017).

    A depthwise-separable convolution replaces a ``k x k`` convolution from ``C_in`` to ``C_out``
    channels (``k^2 C_in C_out`` weights per position) by a depthwise ``k x k`` convolution (one filter
    per channel, ``k^2 C_in``) and a pointwise 1x1 convolution (``C_in C_out``).

    Layout: ``stem`` (3x3 conv, ``channels[0]``) - bn - relu - maxpool2, then for each further width a
    block ``blockI`` = depthwise 3x3 - bn - relu - pointwise 1x1 - bn - relu - maxpool2, then average
    pooling ``pool`` to a ``pool_size x pool_size`` grid (``1``: global average pooling, as in MobileNets)
    and the classifier ``fc`` on the flattened grid. Accepts ``(n, H, W)`` or ``(n, C, H, W)``.

    Parameters
    ----------
    in_channels : int, default 1
    channels : tuple of int, default (8, 16)
        Widths of the stem and of each separable block.
    n_classes : int, default 10
    pool_size : int, default 1
        Side of the pooled grid fed to the classifier (``fc`` has ``channels[-1] * pool_size**2`` inputs).
        ``2`` keeps where on the image the last features fire, which helps small students on tiny
        images (and gives a FitNets hint on the last feature map something to pass on).
    """

    def __init__(
        self, in_channels: int = 1, channels: Sequence[int] = (8, 16), n_classes: int = 10, pool_size: int = 1
    ):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 1 or min(channels) < 1 or in_channels < 1 or n_classes < 2 or pool_size < 1:
            raise ValueError(
                f"need in_channels >= 1, channels of positive ints, n_classes >= 2 and "
                f"pool_size >= 1; got {in_channels}, {channels}, {n_classes}, {pool_size}"
            )
        self.in_channels = in_channels
        self.channels = channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        blocks = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False),  # depthwise
                    nn.BatchNorm2d(c_in),
                    nn.ReLU(),
                    nn.Conv2d(c_in, c_out, 1, bias=False),  # pointwise
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(),
                    nn.MaxPool2d(2),
                )
            )
        self.blocks = nn.Sequential(*blocks)
        self.pool_size = int(pool_size)
        self.pool = nn.AdaptiveAvgPool2d(self.pool_size)
        self.fc = nn.Linear(channels[-1] * self.pool_size**2, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (n, H, W) or (n, {self.in_channels}, H, W), got {tuple(x.shape)}")
        x = self.blocks(self.stem(x))
        return self.fc(self.pool(x).flatten(1))
