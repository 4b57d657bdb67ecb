"""3D segmentation networks from MONAI with medvol's options and defaults.

Every factory takes ``in_channels``, ``num_classes`` (K, background included),
a depth (``num_levels``: resolutions, the full one included), a width
(``base_filters``: channels at full resolution, doubled per level), ``norm``
(as for the ResNets: ``"batch"``, ``"instance"`` with learnable affine,
``"group"`` with ``gcd(base_filters, 8)`` groups (``residual_unet``: also
dividing ``num_classes``), ``"layer"`` = one group) and
``dropout``. Inputs are ``(B, C, X, Y, Z)``; outputs are logits
``(B, K, X, Y, Z)`` on the input grid.

=================  ==============================================  ==========================
name               wraps                                           input X, Y, Z divisible by
=================  ==============================================  ==========================
``unet``           ``monai.networks.nets.UNet``                    ``2**(num_levels-1)``
``residual_unet``  ``monai.networks.nets.UNet``, 2 residual units  ``2**(num_levels-1)``
``segresnet``      ``monai.networks.nets.SegResNet``               ``2**(num_levels-1)``
``dynunet``        ``monai.networks.nets.DynUNet`` (nnU-Net)       product of its strides
=================  ==============================================  ==========================

Deep supervision (``dynunet(deep_supervision=True)``): MONAI's ``DynUNet``
returns, in training mode, one tensor ``(B, 1 + heads, K, X, Y, Z)``: the
final logits then each head's logits, upsampled (nearest) to the full grid and
stacked on a new axis 1. medvol's contract is simpler to consume: in training
mode the model returns a **tuple** of ``1 + heads`` logits tensors
``(B, K, X, Y, Z)``, finest head first (native grids ``1, 1/2, 1/4, ...`` of
the input, all upsampled to full size), ready for
``create_loss("deep_supervision", ...)``; in eval mode it returns one tensor
``(B, K, X, Y, Z)``, as every other model does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.networks import nets

from medvol.errors import ConfigurationError
from medvol.models.resnet import check_norm

#: nnU-Net caps the channels of its 3D U-Nets at 320 = 10 × its base of 32
FILTER_CAP = 10


def monai_norm(norm: str, *channels: int) -> str | tuple[str, dict[str, Any]]:
    """medvol's ``norm`` name as MONAI's ``norm`` argument.

    MONAI takes one ``num_groups`` for the whole network, so for ``"group"`` it
    is the largest count up to 8 that divides every normalised channel count
    (all multiples of ``base_filters``, hence ``channels``).
    """
    check_norm(norm)
    if norm == "instance":
        return ("instance", {"affine": True})
    if norm == "group":
        return ("group", {"num_groups": math.gcd(8, *channels)})
    if norm == "layer":
        return ("group", {"num_groups": 1})
    return "batch"


def unet(
    in_channels: int = 1,
    num_classes: int = 2,
    num_levels: int = 5,
    base_filters: int = 16,
    norm: str = "instance",
    dropout: float = 0.0,
    num_res_units: int = 0,
) -> nets.UNet:
    """MONAI's ``UNet`` (Kerfoot et al.): channels ``base·2**i`` for ``i < num_levels``, strided-conv
    downsampling, transposed-conv upsampling, PReLU.

    The defaults (16, 32, 64, 128, 256 channels) are those of MONAI's 3D tutorials.
    ``num_res_units > 0`` makes every level a stack of residual units (see
    :func:`residual_unet`). Spatial size must be divisible by ``2**(num_levels-1)``.
    """
    _check_common(in_channels, num_classes, num_levels, base_filters, dropout)
    # with residual units MONAI also normalises the last upsampling's num_classes channels
    normalised = (base_filters, num_classes) if num_res_units > 0 else (base_filters,)
    return nets.UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=num_classes,
        channels=[base_filters * 2**i for i in range(num_levels)],
        strides=[2] * (num_levels - 1),
        num_res_units=num_res_units,
        norm=monai_norm(norm, *normalised),
        dropout=dropout,
    )


def residual_unet(
    in_channels: int = 1,
    num_classes: int = 2,
    num_levels: int = 5,
    base_filters: int = 16,
    norm: str = "instance",
    dropout: float = 0.0,
    num_res_units: int = 2,
) -> nets.UNet:
    """MONAI's ``UNet`` with ``num_res_units`` residual units per level (2 as in MONAI's tutorials).

    Otherwise as :func:`unet`.
    """
    if num_res_units < 1:
        raise ConfigurationError(f"residual_unet needs num_res_units >= 1; got {num_res_units!r}")
    return unet(in_channels, num_classes, num_levels, base_filters, norm, dropout, num_res_units)


def segresnet(
    in_channels: int = 1,
    num_classes: int = 2,
    num_levels: int = 4,
    base_filters: int = 16,
    norm: str = "group",
    dropout: float = 0.0,
) -> nets.SegResNet:
    """MONAI's ``SegResNet`` (Myronenko 2018, BraTS), without the VAE branch.

    Encoder blocks per level ``1, 2, 2, 4`` (``1, 2, …, 2, 4`` for other depths),
    one decoder block per level, trilinear upsampling. Note that MONAI applies
    ``dropout`` once, after the first convolution. Spatial size must be divisible
    by ``2**(num_levels-1)``.
    """
    _check_common(in_channels, num_classes, num_levels, base_filters, dropout)
    return nets.SegResNet(
        spatial_dims=3,
        init_filters=base_filters,
        in_channels=in_channels,
        out_channels=num_classes,
        dropout_prob=dropout or None,
        norm=monai_norm(norm, base_filters),
        blocks_down=(1, *[2] * (num_levels - 2), 4),
        blocks_up=(1,) * (num_levels - 1),
    )


class DynUNetSegmenter(nets.DynUNet):
    """MONAI's ``DynUNet`` with medvol's deep-supervision contract (see the module docs).

    ``forward(x)`` with ``x`` of shape ``(B, C, X, Y, Z)`` returns logits
    ``(B, K, X, Y, Z)``; in training mode with deep supervision, a tuple of
    ``1 + deep_supr_num`` such tensors (final output first, then heads from the
    finest to the coarsest). The state dict is MONAI's, unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out: torch.Tensor = super().forward(x)
        if self.training and self.deep_supervision:
            return tuple(torch.unbind(out, dim=1))
        return out


def dynunet(
    in_channels: int = 1,
    num_classes: int = 2,
    num_levels: int = 5,
    base_filters: int = 32,
    norm: str = "instance",
    dropout: float = 0.0,
    patch_size: Sequence[int] | None = None,
    deep_supervision: bool = False,
    deep_supervision_heads: int | None = None,
    residual: bool = False,
) -> DynUNetSegmenter:
    """MONAI's ``DynUNet``: the nnU-Net architecture (two conv-norm-LeakyReLU per level).

    Channels ``base·2**i`` capped at ``10·base`` (32 … 320 with the nnU-Net
    default base of 32); 3×3×3 kernels.

    Args:
        patch_size: the training patch ``(X, Y, Z)``. When given, an axis is
            halved at a level only while it is even and stays at least 4 voxels
            (the nnU-Net rule), so anisotropic patches such as ``(160, 160, 24)``
            get anisotropic strides and any input that is a multiple of the
            patch's downsampling works. When ``None``, every level halves every
            axis, and inputs must be divisible by ``2**(num_levels-1)``.
        deep_supervision: add supervision heads; in training mode the model then
            returns a tuple of full-size logits (see :class:`DynUNetSegmenter`).
        deep_supervision_heads: number of extra heads, 1 … ``num_levels-2``;
            default ``max(1, num_levels-3)`` (nnU-Net: every decoder level but the
            one just above the bottleneck).
        residual: residual blocks (MONAI's ``UnetResBlock``) instead of plain ones.
    """
    _check_common(in_channels, num_classes, num_levels, base_filters, dropout)
    strides = _strides(num_levels, patch_size)
    if deep_supervision_heads is None:
        deep_supervision_heads = max(1, num_levels - 3)
    if deep_supervision and not 1 <= deep_supervision_heads <= num_levels - 2:
        raise ConfigurationError(
            f"deep_supervision_heads must be in 1 … num_levels-2 = {num_levels - 2}; "
            f"got {deep_supervision_heads!r} (use more levels)"
        )
    return DynUNetSegmenter(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=num_classes,
        kernel_size=[3] * num_levels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=[min(base_filters * 2**i, FILTER_CAP * base_filters) for i in range(num_levels)],
        dropout=dropout or None,
        norm_name=monai_norm(norm, base_filters),
        deep_supervision=deep_supervision,
        deep_supr_num=deep_supervision_heads,
        res_block=residual,
    )


def _strides(num_levels: int, patch_size: Sequence[int] | None) -> list[tuple[int, int, int]]:
    """Per-level strides: ``(1, 1, 1)`` for the input level, then 2 along each axis that can be halved."""
    if patch_size is None:
        return [(1, 1, 1)] + [(2, 2, 2)] * (num_levels - 1)
    size = list(patch_size)
    if len(size) != 3 or min(size) < 1:
        raise ConfigurationError(f"patch_size must be three positive ints (X, Y, Z); got {patch_size!r}")
    strides = [(1, 1, 1)]
    for _ in range(num_levels - 1):
        stride = tuple(2 if edge % 2 == 0 and edge // 2 >= 4 else 1 for edge in size)
        if stride == (1, 1, 1):
            raise ConfigurationError(
                f"patch_size {tuple(patch_size)} is too small for num_levels={num_levels}: "
                f"a level must halve at least one axis and keep it at ≥ 4 voxels"
            )
        size = [edge // step for edge, step in zip(size, stride, strict=True)]
        strides.append((stride[0], stride[1], stride[2]))
    return strides


def _check_common(
    in_channels: int, num_classes: int, num_levels: int, base_filters: int, dropout: float
) -> None:
    for key, value, low in (
        ("in_channels", in_channels, 1),
        ("num_classes", num_classes, 2),
        ("num_levels", num_levels, 3),
        ("base_filters", base_filters, 1),
    ):
        if not isinstance(value, int) or value < low:
            raise ConfigurationError(f"{key} must be an int ≥ {low}; got {value!r}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigurationError(f"dropout must be in [0, 1); got {dropout!r}")
