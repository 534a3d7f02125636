"""Models shared by the chapters.

Shapes: ``MLP`` takes ``[B, in_dim]``; ``CNN1D`` takes ``[B, length]`` or ``[B, 1, length]``;
``ResNetCifar`` takes ``[B, 3, 32, 32]``. All return logits ``[B, num_classes]``. Each exposes
``features(x) -> [B, D]`` and a linear ``classifier`` so that decoupled training can re-train the
classifier on frozen features.
"""

from __future__ import annotations

from torch import Tensor, nn

from softmax_repro.config import check_choice, check_int


class MLP(nn.Module):
    """``depth`` hidden ReLU layers of width ``hidden`` then a linear classifier."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int, depth: int = 2) -> None:
        super().__init__()
        check_int("in_dim", in_dim)
        check_int("hidden", hidden)
        check_int("num_classes", num_classes, 2)
        check_int("depth", depth)
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.body = nn.Sequential(nn.Flatten(), *layers)
        self.classifier = nn.Linear(width, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class CNN1D(nn.Module):
    """Three strided 1-D convolutions with global average pooling (for MNIST-1D, length 40)."""

    def __init__(self, num_classes: int, channels: int = 32) -> None:
        super().__init__()
        check_int("num_classes", num_classes, 2)
        check_int("channels", channels)
        c = channels
        self.body = nn.Sequential(
            nn.Conv1d(1, c, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv1d(c, c, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(c, c, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(c, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x if x.ndim == 3 else x[:, None, :])

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu()
        return (self.bn2(self.conv2(out)) + self.shortcut(x)).relu()


class ResNetCifar(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): 6n+2 layers, widths 16/32/64; depth 8, 20, 32, ..."""

    def __init__(self, depth: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        check_choice("depth", depth, (8, 14, 20, 32, 44, 56, 110))
        check_int("num_classes", num_classes, 2)
        n = (depth - 2) // 6
        layers: list[nn.Module] = [
            nn.Conv2d(3, 16, 3, 1, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        ]
        c_in = 16
        for stage, width in enumerate((16, 32, 64)):
            for block in range(n):
                layers.append(_BasicBlock(c_in, width, 2 if stage > 0 and block == 0 else 1))
                c_in = width
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(64, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class GapCNN(nn.Module):
    """A small 2-D CNN whose classifier sees globally average-pooled feature maps (for CAM).

    Input ``[B, in_channels, S, S]``; ``feature_maps(x)`` is ``[B, 2·width, S/2, S/2]`` (one 2×2 max
    pool); ``features(x)`` is its spatial mean ``[B, 2·width]``; logits are ``[B, num_classes]``.
    """

    def __init__(self, num_classes: int, width: int = 16, in_channels: int = 1) -> None:
        super().__init__()
        check_int("num_classes", num_classes, 2)
        check_int("width", width)
        check_int("in_channels", in_channels)
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
        )
        self.classifier = nn.Linear(2 * w, num_classes)

    def feature_maps(self, x: Tensor) -> Tensor:
        return self.body(x)

    def features(self, x: Tensor) -> Tensor:
        return self.feature_maps(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
