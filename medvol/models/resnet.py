"""3D ResNet classifiers (He et al. 2016) in plain torch: ``resnet10`` … ``resnet152``.

Why not ``monai.networks.nets.resnet``: in MONAI 1.6.1 its ``norm`` argument
reaches only the stem (``_make_layer`` builds every residual block and
shortcut with the default BatchNorm), and ``norm="instance"`` fails to build
(the weight initialisation calls ``constant_`` on the ``None`` weight of a
non-affine InstanceNorm). ``tests/test_models.py`` checks both, so we notice
when that changes. Here the chosen normalisation is used in the stem, in
every convolution of every block and in every projection shortcut.

Layout: stem (conv ``stem_kernel``³ with ``stem_stride``, norm, ReLU, optional
3×3×3 max-pool with stride 2), four stages at widths ``w, 2w, 4w, 8w`` (the
last three halve the grid), global average pooling, dropout, linear. Basic
blocks (two 3×3×3 convs) for depths 10/18/34; bottleneck blocks (1×1×1,
3×3×3, 1×1×1 with 4× expansion; stride on the 3×3×3 conv as in "ResNet v1.5")
for 50/101/152. Shortcuts that change shape are a strided 1×1×1 conv + norm.

Stems for the two usual input sizes:

- full CT/MR volumes: the defaults ``stem_kernel=7, stem_stride=2,
  stem_pool=True`` reduce the grid 4× before the first stage (ImageNet and
  MedicalNet layout);
- 28³ MedMNIST volumes: ``stem_kernel=3, stem_stride=1, stem_pool=False``
  keeps 28³ for the first stage (28 → 14 → 7 → 4 through the stages).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from medvol.errors import ConfigurationError

#: depth -> (block type, blocks per stage)
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

#: normalisations accepted by every medvol model
NORMS = ("batch", "instance", "group", "layer")

#: at most this many groups for ``norm="group"`` (8, as MONAI's SegResNet; fewer when
#: the channel count is not a multiple of 8)
MAX_GROUPS = 8


def check_norm(norm: str) -> None:
    """Raise a ConfigurationError unless ``norm`` is one of :data:`NORMS`."""
    if norm not in NORMS:
        raise ConfigurationError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")


def norm_layer(norm: str, channels: int) -> nn.Module:
    """A 3D normalisation layer for ``(B, channels, X, Y, Z)`` feature maps.

    Args:
        norm: ``"batch"`` (BatchNorm3d), ``"instance"`` (InstanceNorm3d with
            learnable affine, as nnU-Net), ``"group"`` (GroupNorm with
            ``gcd(channels, 8)`` groups) or ``"layer"`` (GroupNorm with one group:
            layer norm over channels and space).
        channels: number of feature channels.
    """
    check_norm(norm)
    if norm == "batch":
        return nn.BatchNorm3d(channels)
    if norm == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if norm == "group":
        return nn.GroupNorm(math.gcd(channels, MAX_GROUPS), channels)
    return nn.GroupNorm(1, channels)


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, dilation: int = 1) -> nn.Conv3d:
    return nn.Conv3d(
        in_channels,
        out_channels,
        kernel,
        stride=stride,
        padding=dilation * (kernel // 2),
        dilation=dilation,
        bias=False,
    )


class BasicBlock(nn.Module):
    """Two 3×3×3 convolutions with a residual connection (ResNet-10/18/34).

    Maps ``(B, in_channels, X, Y, Z)`` to ``(B, width, X/stride, Y/stride, Z/stride)``.
    """

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int, norm: str, dilation: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = _conv(in_channels, width, 3, stride, dilation)
        self.norm1 = norm_layer(norm, width)
        self.conv2 = _conv(width, out_channels, 3, dilation=dilation)
        self.norm2 = norm_layer(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1×1 reduce, 3×3×3 (strided), 1×1×1 expand ×4, with a residual connection (ResNet-50+).

    Maps ``(B, in_channels, X, Y, Z)`` to ``(B, 4·width, X/stride, Y/stride, Z/stride)``.
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, norm: str, dilation: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = _conv(in_channels, width, 1)
        self.norm1 = norm_layer(norm, width)
        self.conv2 = _conv(width, width, 3, stride, dilation)
        self.norm2 = norm_layer(norm, width)
        self.conv3 = _conv(width, out_channels, 1)
        self.norm3 = norm_layer(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.relu(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: str) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(_conv(in_channels, out_channels, 1, stride), norm_layer(norm, out_channels))


class ResNet3d(nn.Module):
    """A 3D ResNet classifier; build it by name with ``create_model("resnet18", ...)``.

    Args:
        depth: one of 10, 18, 34 (basic blocks), 50, 101, 152 (bottleneck blocks).
        in_channels: image channels C.
        num_classes: number of outputs K (use 2 with cross-entropy, or 1 with
            BCE-with-logits, for a binary task).
        stem_kernel: edge of the cubic stem convolution, in voxels (odd).
        stem_stride: stride of the stem convolution.
        stem_pool: add a 3×3×3 max-pool with stride 2 after the stem.
        widths: channels of the four stages, or the first one ``w`` (then
            ``w, 2w, 4w, 8w``); bottleneck stages output 4× these.
        dropout: probability of dropping a pooled feature before the final linear layer.
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"layer"``; used in the
            stem and in every block (see :func:`norm_layer`).
        dilated: MedicalNet's encoder (Chen et al., Med3D): the last two stages
            keep the grid (stride 1) and dilate their 3×3×3 convolutions by 2 and
            4, so the features are at 1/8 of the input (with the default stem)
            instead of 1/32. Use it with MedicalNet's weights (``model.init``),
            which were trained so.

    Input ``(B, C, X, Y, Z)``; output logits ``(B, K)``. Every stage after the
    first halves the grid (rounding up), so any input of at least one voxel per
    axis after the stem works.
    """

    def __init__(
        self,
        depth: int,
        in_channels: int = 1,
        num_classes: int = 2,
        stem_kernel: int = 7,
        stem_stride: int = 2,
        stem_pool: bool = True,
        widths: int | Sequence[int] = 64,
        dropout: float = 0.0,
        norm: str = "batch",
        dilated: bool = False,
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ConfigurationError(f"ResNet depth must be one of {sorted(DEPTHS)}; got {depth!r}")
        stage_widths = [widths * 2**i for i in range(4)] if isinstance(widths, int) else list(widths)
        if len(stage_widths) != 4 or min(stage_widths) < 1:
            raise ConfigurationError(f"widths must be a positive int or four positive ints; got {widths!r}")
        _check_positive(in_channels=in_channels, num_classes=num_classes, stem_stride=stem_stride)
        if stem_kernel < 1 or stem_kernel % 2 == 0:
            raise ConfigurationError(f"stem_kernel must be a positive odd int; got {stem_kernel!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigurationError(f"dropout must be in [0, 1); got {dropout!r}")
        check_norm(norm)

        self.in_channels = in_channels
        kind, blocks = DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        stem: list[nn.Module] = [
            _conv(in_channels, stage_widths[0], stem_kernel, stem_stride),
            norm_layer(norm, stage_widths[0]),
            nn.ReLU(inplace=True),
        ]
        if stem_pool:
            stem.append(nn.MaxPool3d(kernel_size=3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)

        stages: list[nn.Module] = []
        channels = stage_widths[0]
        for index, (width, count) in enumerate(zip(stage_widths, blocks, strict=True)):
            layers: list[nn.Module] = []
            dilation = 2 ** (index - 1) if dilated and index >= 2 else 1
            for position in range(count):
                stride = 2 if index > 0 and position == 0 and dilation == 1 else 1
                layers.append(block(channels, width, stride, norm, dilation))
                channels = width * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Kaiming-normal convolutions (fan-out, ReLU), norms at weight 1 and bias 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm3d, nn.InstanceNorm3d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits.

        Args:
            x: images ``(B, C, X, Y, Z)``.

        Returns:
            Logits ``(B, K)``.
        """
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected images of shape (B, {self.in_channels}, X, Y, Z); got {tuple(x.shape)}"
            )
        features = self.pool(self.stages(self.stem(x))).flatten(1)
        logits: torch.Tensor = self.fc(self.dropout(features))
        return logits


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{key} must be a positive int; got {value!r}")
