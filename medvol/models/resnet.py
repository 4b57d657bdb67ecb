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

Clips (``(C, X, Y, T)``: time on the last axis) use the same networks, as in
action recognition (Tran et al. 2018, "A closer look at spatiotemporal
convolutions"): ``stem_kernel`` and ``stem_stride`` take one value per axis,
e.g. ``[7, 7, 3]`` and ``[2, 2, 1]`` (the R3D stem: no temporal stride), and
``conv`` chooses how the 3×3×3 convolutions treat time:

- ``"3d"`` (default): full ``k×k×k`` kernels (R3D);
- ``"2+1d"``: each factorised into a spatial ``k×k×1`` convolution, norm,
  ReLU and a temporal ``1×1×k`` one, with the intermediate width chosen so
  the parameter count matches the 3D kernel's (R(2+1)D);
- ``"2d"``: spatial ``k×k×1`` kernels and no stride along time: each frame is
  seen on its own and global pooling averages them (the control without
  temporal context).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

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

#: how the k×k×k convolutions treat the last axis (time, for clips); see the module docstring
CONVS = ("3d", "2+1d", "2d")
Conv = Literal["3d", "2+1d", "2d"]
Triple = tuple[int, int, int]


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


def _conv(
    in_channels: int, out_channels: int, kernel: int | Triple, stride: int | Triple = 1, dilation: int = 1
) -> nn.Conv3d:
    kernel, stride = _triple(kernel), _triple(stride)
    padding = (dilation * (kernel[0] // 2), dilation * (kernel[1] // 2), dilation * (kernel[2] // 2))
    return nn.Conv3d(
        in_channels, out_channels, kernel, stride=stride, padding=padding, dilation=dilation, bias=False
    )


def _triple(value: int | Sequence[int]) -> Triple:
    x, y, t = (value, value, value) if isinstance(value, int) else value
    return (x, y, t)


def spatiotemporal_conv(
    conv: Conv,
    in_channels: int,
    out_channels: int,
    kernel: Triple,
    stride: Triple,
    norm: str,
    dilation: int = 1,
) -> nn.Module:
    """A ``kernel`` convolution of the kind ``conv`` (see the module docstring).

    ``"2+1d"``: spatial ``(kx, ky, 1)`` → norm → ReLU → temporal ``(1, 1, kt)``,
    with ``M = ⌊kt·kx·ky·Cin·Cout / (kx·ky·Cin + kt·Cout)⌋`` intermediate
    channels (R(2+1)D), strides split the same way. ``"2d"``: ``(kx, ky, 1)``
    without temporal stride. ``dilation`` (MedicalNet's dilated stages) is for ``"3d"`` only.
    """
    kx, ky, kt = kernel
    sx, sy, st = stride
    if conv == "3d" or kt == 1:
        return _conv(in_channels, out_channels, kernel, stride if conv != "2d" else (sx, sy, 1), dilation)
    if conv == "2d":
        return _conv(in_channels, out_channels, (kx, ky, 1), (sx, sy, 1))
    middle = max(
        1, (kt * kx * ky * in_channels * out_channels) // (kx * ky * in_channels + kt * out_channels)
    )
    return nn.Sequential(
        _conv(in_channels, middle, (kx, ky, 1), (sx, sy, 1)),
        norm_layer(norm, middle),
        nn.ReLU(inplace=True),
        _conv(middle, out_channels, (1, 1, kt), (1, 1, st)),
    )


class BasicBlock(nn.Module):
    """Two 3×3×3 convolutions with a residual connection (ResNet-10/18/34).

    Maps ``(B, in_channels, X, Y, Z)`` to ``(B, width, X/stride, Y/stride, Z/stride)``.
    """

    expansion = 1

    def __init__(
        self, in_channels: int, width: int, stride: int, norm: str, conv: Conv = "3d", dilation: int = 1
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = spatiotemporal_conv(conv, in_channels, width, (3, 3, 3), _triple(stride), norm, dilation)
        self.norm1 = norm_layer(norm, width)
        self.conv2 = spatiotemporal_conv(conv, width, out_channels, (3, 3, 3), (1, 1, 1), norm, dilation)
        self.norm2 = norm_layer(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out_channels, _time_stride(conv, stride), norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1×1 reduce, 3×3×3 (strided), 1×1×1 expand ×4, with a residual connection (ResNet-50+).

    Maps ``(B, in_channels, X, Y, Z)`` to ``(B, 4·width, X/stride, Y/stride, Z/stride)``.
    """

    expansion = 4

    def __init__(
        self, in_channels: int, width: int, stride: int, norm: str, conv: Conv = "3d", dilation: int = 1
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = _conv(in_channels, width, 1)
        self.norm1 = norm_layer(norm, width)
        self.conv2 = spatiotemporal_conv(conv, width, width, (3, 3, 3), _triple(stride), norm, dilation)
        self.norm2 = norm_layer(norm, width)
        self.conv3 = _conv(width, out_channels, 1)
        self.norm3 = norm_layer(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out_channels, _time_stride(conv, stride), norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.relu(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _time_stride(conv: Conv, stride: int) -> Triple:
    """A block's stride per axis: none along time for ``"2d"`` (every frame kept)."""
    return (stride, stride, 1) if conv == "2d" else (stride, stride, stride)


def _shortcut(in_channels: int, out_channels: int, stride: Triple, norm: str) -> nn.Module:
    if stride == (1, 1, 1) and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(_conv(in_channels, out_channels, 1, stride), norm_layer(norm, out_channels))


class ResNet3d(nn.Module):
    """A 3D ResNet classifier; build it by name with ``create_model("resnet18", ...)``.

    Args:
        depth: one of 10, 18, 34 (basic blocks), 50, 101, 152 (bottleneck blocks).
        in_channels: image channels C.
        num_classes: number of outputs K (use 2 with cross-entropy, or 1 with
            BCE-with-logits, for a binary task).
        stem_kernel: edge of the stem convolution in voxels (odd): one for every
            axis, or ``[kx, ky, kt]``.
        stem_stride: stride of the stem convolution: one, or ``[sx, sy, st]``.
        stem_pool: add a 3×3×3 max-pool with stride 2 after the stem.
        widths: channels of the four stages, or the first one ``w`` (then
            ``w, 2w, 4w, 8w``); bottleneck stages output 4× these.
        dropout: probability of dropping a pooled feature before the final linear layer.
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"layer"``; used in the
            stem and in every block (see :func:`norm_layer`).
        conv: ``"3d"``, ``"2+1d"`` or ``"2d"``: how the stem and the 3×3×3
            convolutions treat the last axis (time, for clips; see the module docstring).
        dilated: MedicalNet's encoder (Chen et al., Med3D): the last two stages
            keep the grid (stride 1) and dilate their 3×3×3 convolutions by 2 and
            4, so the features are at 1/8 of the input (with the default stem)
            instead of 1/32. Use it with MedicalNet's weights (``model.init``),
            which were trained so. ``conv: 3d`` only.

    Input ``(B, C, X, Y, Z)``; output logits ``(B, K)``. Every stage after the
    first halves the grid (rounding up), so any input of at least one voxel per
    axis after the stem works.
    """

    def __init__(
        self,
        depth: int,
        in_channels: int = 1,
        num_classes: int = 2,
        stem_kernel: int | Sequence[int] = 7,
        stem_stride: int | Sequence[int] = 2,
        stem_pool: bool = True,
        widths: int | Sequence[int] = 64,
        dropout: float = 0.0,
        norm: str = "batch",
        conv: Conv = "3d",
        dilated: bool = False,
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ConfigurationError(f"ResNet depth must be one of {sorted(DEPTHS)}; got {depth!r}")
        stage_widths = [widths * 2**i for i in range(4)] if isinstance(widths, int) else list(widths)
        if len(stage_widths) != 4 or min(stage_widths) < 1:
            raise ConfigurationError(f"widths must be a positive int or four positive ints; got {widths!r}")
        _check_positive(in_channels=in_channels, num_classes=num_classes)
        kernel, stem_strides = _axes("stem_kernel", stem_kernel, odd=True), _axes("stem_stride", stem_stride)
        if conv not in CONVS:
            raise ConfigurationError(f"conv must be one of {', '.join(CONVS)}; got {conv!r}")
        if dilated and conv != "3d":
            raise ConfigurationError(f"dilated (MedicalNet's encoder) needs conv: 3d; got {conv!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigurationError(f"dropout must be in [0, 1); got {dropout!r}")
        check_norm(norm)

        self.in_channels = in_channels
        kind, blocks = DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        stem: list[nn.Module] = [
            spatiotemporal_conv(conv, in_channels, stage_widths[0], kernel, stem_strides, norm),
            norm_layer(norm, stage_widths[0]),
            nn.ReLU(inplace=True),
        ]
        if stem_pool:
            pool = ((3, 3, 1), (2, 2, 1), (1, 1, 0)) if conv == "2d" else (3, 2, 1)
            stem.append(nn.MaxPool3d(kernel_size=pool[0], stride=pool[1], padding=pool[2]))
        self.stem = nn.Sequential(*stem)

        stages: list[nn.Module] = []
        channels = stage_widths[0]
        for index, (width, count) in enumerate(zip(stage_widths, blocks, strict=True)):
            layers: list[nn.Module] = []
            dilation = 2 ** (index - 1) if dilated and index >= 2 else 1
            for position in range(count):
                stride = 2 if index > 0 and position == 0 and dilation == 1 else 1
                layers.append(block(channels, width, stride, norm, conv, dilation))
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


def _axes(name: str, value: int | Sequence[int], odd: bool = False) -> Triple:
    """``value`` as one positive (odd) int per axis, or a ConfigurationError naming ``name``."""
    values = [value] * 3 if isinstance(value, int) else list(value)
    ok = len(values) == 3 and all(isinstance(v, int) and v >= 1 and (v % 2 == 1 or not odd) for v in values)
    if not ok:
        kind = "positive odd" if odd else "positive"
        raise ConfigurationError(f"{name} must be a {kind} int or three of them; got {value!r}")
    return _triple(values)


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{key} must be a positive int; got {value!r}")
