"""Models: every registered network builds, runs, trains, and honours its options.

Tiny widths and inputs keep the whole file to a few seconds on a laptop CPU.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from monai.networks import nets
from torch import nn

from medvol.errors import MedvolError
from medvol.losses import create_loss
from medvol.models import ConfigurationError, available_models, create_model
from medvol.models.resnet import BasicBlock, Bottleneck

RESNETS = ["resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
SEGMENTERS = ["unet", "residual_unet", "segresnet", "dynunet"]
#: the MedMNIST stem: 28³ stays 28³ into the first stage
STEM_28 = {"stem_kernel": 3, "stem_stride": 1, "stem_pool": False}
TINY_RESNET = {"widths": 4, **STEM_28}
TINY_SEGMENTER = {"base_filters": 4, "num_levels": 3}
NORM_TYPES = (nn.BatchNorm3d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm)
#: medvol's norm names and the layer each puts in a network
NORMS = [
    ("batch", nn.BatchNorm3d),
    ("instance", nn.InstanceNorm3d),
    ("group", nn.GroupNorm),
    ("layer", nn.GroupNorm),
]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny networks gain nothing from threads, and on a busy 2-core machine the
    intra-op thread pool's spin-waiting made these tests up to 50× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _assert_every_parameter_has_a_finite_gradient(model: nn.Module) -> None:
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    broken = [name for name, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not broken, f"non-finite gradients: {broken}"


def _norms(module: nn.Module) -> Iterator[nn.Module]:
    return (m for m in module.modules() if isinstance(m, NORM_TYPES))


# --- registry ---------------------------------------------------------------------------------------------


def test_every_family_member_is_registered() -> None:
    assert available_models() == RESNETS + SEGMENTERS


def test_unknown_model_name_lists_names_and_suggests_the_closest() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet81' \(did you mean 'resnet18'\?\).*unet"):
        create_model("resnet81")


def test_unknown_option_is_named_with_a_suggestion_not_a_type_error() -> None:
    with pytest.raises(ConfigurationError, match=r"'widht' \(did you mean 'widths'\?\)") as caught:
        create_model("resnet18", widht=8)
    assert isinstance(caught.value, MedvolError)  # the CLI prints it as a user error
    with pytest.raises(ConfigurationError, match="'depth'"):
        create_model("resnet18", depth=50)  # fixed by the name


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("resnet18", {"norm": "batchnorm"}, "norm must be one of batch, instance, group, layer"),
        ("resnet18", {"dropout": 1.5}, "dropout"),
        ("resnet18", {"widths": [8, 16]}, "widths"),
        ("resnet18", {"stem_kernel": [7, 7, 2]}, "stem_kernel must be a positive odd int or three"),
        ("resnet18", {"stem_stride": [2, 0, 1]}, "stem_stride must be a positive int or three"),
        ("resnet18", {"conv": "(2+1)D"}, "conv must be one of 3d, 2\\+1d, 2d"),
        ("unet", {"num_classes": 1}, "num_classes"),
        ("dynunet", {"patch_size": (8, 8, 8), "num_levels": 4}, "too small"),
        ("dynunet", {"num_levels": 3, "deep_supervision": True, "deep_supervision_heads": 2}, "heads"),
    ],
)
def test_invalid_option_values_are_configuration_errors(name: str, options: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        create_model(name, **options)


# --- every model: shape and gradients -----------------------------------------------------------------------


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_gives_logits_and_a_gradient_to_every_parameter(name: str) -> None:
    model = create_model(name, in_channels=2, num_classes=3, **TINY_RESNET)
    logits = model(torch.randn(2, 2, 28, 28, 28))
    assert logits.shape == (2, 3)
    create_loss("cross_entropy")(logits, torch.tensor([0, 2])).backward()
    _assert_every_parameter_has_a_finite_gradient(model)


@pytest.mark.parametrize("name", SEGMENTERS)
def test_segmenter_gives_full_size_logits_and_a_gradient_to_every_parameter(name: str) -> None:
    model = create_model(name, in_channels=2, num_classes=3, **TINY_SEGMENTER)
    logits = model(torch.randn(2, 2, 32, 32, 32))
    assert logits.shape == (2, 3, 32, 32, 32)
    create_loss("dice_ce")(logits, torch.randint(0, 3, (2, 1, 32, 32, 32))).backward()
    _assert_every_parameter_has_a_finite_gradient(model)


def test_resnet_default_stem_handles_a_ct_sized_volume() -> None:
    model = create_model("resnet18", widths=4, num_classes=2)  # kernel 7, stride 2, max-pool
    assert model.stem(torch.randn(1, 1, 96, 96, 64)).shape == (1, 4, 24, 24, 16)
    assert model(torch.randn(1, 1, 96, 96, 64)).shape == (1, 2)


def test_resnet_rejects_images_without_channel_axis() -> None:
    model = create_model("resnet10", widths=4)
    with pytest.raises(ValueError, match=r"\(B, 1, X, Y, Z\)"):
        model(torch.randn(2, 28, 28, 28))


# --- deep supervision ---------------------------------------------------------------------------------------


def test_dynunet_deep_supervision_returns_full_size_heads_in_training_and_one_tensor_in_eval() -> None:
    model = create_model("dynunet", num_classes=3, base_filters=4, num_levels=4, deep_supervision=True)
    x = torch.randn(2, 1, 32, 32, 32)
    outputs = model(x)
    assert isinstance(outputs, tuple) and len(outputs) == 2  # final + max(1, 4 - 3) heads
    assert all(output.shape == (2, 3, 32, 32, 32) for output in outputs)

    loss = create_loss("deep_supervision", loss="dice_ce")
    loss(outputs, torch.randint(0, 3, (2, 1, 32, 32, 32))).backward()
    _assert_every_parameter_has_a_finite_gradient(model)  # the heads included
    assert any("deep_supervision_heads" in name for name, _ in model.named_parameters())

    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 3, 32, 32, 32)


def test_monai_dynunet_stacks_deep_supervision_outputs_on_a_new_axis() -> None:
    """MONAI 1.6.1 behaviour that medvol's dynunet unpacks into a tuple."""
    strides = [1, 2, 2, 2]
    model = nets.DynUNet(
        3, 1, 3, [3] * 4, strides, strides[1:], filters=[4, 8, 16, 32], deep_supervision=True
    )
    assert model(torch.randn(2, 1, 32, 32, 32)).shape == (2, 2, 3, 32, 32, 32)  # (B, 1 + heads, K, X, Y, Z)


# --- MONAI's ResNet: the behaviour that made us write our own ---------------------------------------------


def test_monai_resnet_applies_a_non_batch_norm_only_to_the_stem() -> None:
    """If this fails, MONAI fixed ``norm`` in its ResNet: revisit medvol.models.resnet."""
    model = nets.resnet18(
        spatial_dims=3, n_input_channels=1, num_classes=2, norm=("group", {"num_groups": 4})
    )
    assert isinstance(model.bn1, nn.GroupNorm)
    assert isinstance(model.layer1[0].bn1, nn.BatchNorm3d)
    assert isinstance(model.layer2[0].downsample[1], nn.BatchNorm3d)


def test_monai_resnet_with_instance_norm_fails_to_build() -> None:
    """If this fails, MONAI builds ``norm="instance"`` now: revisit medvol.models.resnet."""
    with pytest.raises(RuntimeError, match="NoneType"):  # constant_ on InstanceNorm3d's weight=None
        nets.resnet18(spatial_dims=3, n_input_channels=1, num_classes=2, norm="instance")


# --- options change the module ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("norm", "kind"),
    [
        ("batch", nn.BatchNorm3d),
        ("instance", nn.InstanceNorm3d),
        ("group", nn.GroupNorm),
        ("layer", nn.GroupNorm),
    ],
)
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_norm_is_used_in_the_stem_and_every_block(name: str, norm: str, kind: type) -> None:
    model = create_model(name, norm=norm, widths=8, **STEM_28)
    assert isinstance(model.stem[1], kind)
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert len(blocks) == {"resnet18": 8, "resnet50": 16}[name]
    for block in blocks:
        norms = [block.norm1, block.norm2, *([block.norm3] if isinstance(block, Bottleneck) else [])]
        if not isinstance(block.shortcut, nn.Identity):
            norms.append(block.shortcut[1])
        assert all(type(layer) is kind for layer in norms)
    assert {type(layer) for layer in _norms(model)} == {kind}
    if norm == "instance":
        assert all(layer.affine for layer in _norms(model))
    if norm == "group":
        assert {layer.num_groups for layer in _norms(model)} == {8}
    if norm == "layer":
        assert {layer.num_groups for layer in _norms(model)} == {1}


def test_resnet_stem_options_change_the_stem() -> None:
    x = torch.randn(1, 1, 28, 28, 28)
    pooled = create_model("resnet10", widths=4, stem_kernel=3, stem_stride=1, stem_pool=True)
    plain = create_model("resnet10", widths=4, stem_kernel=3, stem_stride=1, stem_pool=False)
    strided = create_model("resnet10", widths=4, stem_kernel=3, stem_stride=2, stem_pool=False)
    assert any(isinstance(m, nn.MaxPool3d) for m in pooled.modules())
    assert not any(isinstance(m, nn.MaxPool3d) for m in plain.modules())
    assert plain.stem(x).shape[2:] == (28, 28, 28)
    assert pooled.stem(x).shape[2:] == (14, 14, 14)
    assert strided.stem(x).shape[2:] == (14, 14, 14)
    assert create_model("resnet10", widths=4, stem_kernel=5).stem[0].kernel_size == (5, 5, 5)


# --- clips: time on the last axis ---------------------------------------------------------------------------


def clip_model(conv: str) -> nn.Module:
    """A small ResNet-10 for clips (B, 1, 16, 16, 8): the R3D stem, no temporal stride in it."""
    torch.manual_seed(0)
    options = {"widths": 4, "stem_kernel": [3, 3, 3], "stem_stride": [2, 2, 1], "stem_pool": False}
    return create_model("resnet10", conv=conv, **options).eval()


def test_clip_stem_strides_space_and_keeps_every_frame() -> None:
    model = clip_model("3d")
    assert model.stem(torch.randn(1, 1, 16, 16, 8)).shape[2:] == (8, 8, 8)


@pytest.mark.parametrize("conv", ["3d", "2+1d", "2d"])
def test_only_a_network_with_temporal_kernels_sees_the_order_of_frames(conv: str) -> None:
    clip = torch.randn(2, 1, 16, 16, 8)
    reversed_in_time = clip.flip(-1)
    with torch.no_grad():
        logits, reversed_logits = clip_model(conv)(clip), clip_model(conv)(reversed_in_time)
    same = torch.allclose(logits, reversed_logits, atol=1e-5)
    assert same == (conv == "2d"), (logits, reversed_logits)  # frames one by one, then averaged


def test_the_2plus1d_factorisation_keeps_the_3d_parameter_count() -> None:
    full, factorised = clip_model("3d"), clip_model("2+1d")
    assert any(
        isinstance(m, nn.Conv3d) and m.kernel_size == (1, 1, 3) for m in factorised.modules()
    ) and not any(isinstance(m, nn.Conv3d) and m.kernel_size == (3, 3, 1) for m in full.modules())
    count = [sum(p.numel() for p in m.parameters()) for m in (full, factorised)]
    assert abs(count[1] - count[0]) / count[0] < 0.05, count  # R(2+1)D's intermediate width rule


def test_the_3d_network_keeps_its_parameter_names() -> None:
    """Checkpoints of earlier medvol and MedicalNet's key mapping rely on these names."""
    names = list(create_model("resnet18", widths=4).state_dict())
    assert names[:3] == ["stem.0.weight", "stem.1.weight", "stem.1.bias"]
    assert "stages.1.0.conv1.weight" in names and "stages.1.0.shortcut.0.weight" in names


def test_resnet_width_channels_classes_and_dropout_options() -> None:
    model = create_model("resnet18", in_channels=3, num_classes=5, widths=4, dropout=0.3)
    assert model.stem[0].in_channels == 3
    assert model.fc.in_features == 32 and model.fc.out_features == 5
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.3]
    assert not any(isinstance(m, nn.Dropout) for m in create_model("resnet18", widths=4).modules())
    assert create_model("resnet50", widths=[2, 4, 6, 8]).fc.in_features == 32  # bottleneck: 4 × 8


def test_resnet_uses_kaiming_initialisation() -> None:
    conv = create_model("resnet18", widths=16).stages[1][0].conv1  # 16 → 32 channels, 3×3×3
    expected_std = (2 / (32 * 27)) ** 0.5  # kaiming normal, fan_out, ReLU gain
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.1)


@pytest.mark.parametrize(
    ("norm", "kind"),
    [
        ("batch", nn.BatchNorm3d),
        ("instance", nn.InstanceNorm3d),
        ("group", nn.GroupNorm),
        ("layer", nn.GroupNorm),
    ],
)
@pytest.mark.parametrize("name", SEGMENTERS)
def test_segmenter_norm_is_used_throughout(name: str, norm: str, kind: type) -> None:
    model = create_model(name, norm=norm, num_classes=4, **TINY_SEGMENTER)
    assert {type(layer) for layer in _norms(model)} == {kind}
    if norm == "instance":
        assert all(layer.affine for layer in _norms(model))
    if norm in ("group", "layer"):
        assert {layer.num_groups for layer in _norms(model)} == ({4} if norm == "group" else {1})


def test_residual_unet_group_count_also_divides_the_number_of_classes() -> None:
    model = create_model("residual_unet", norm="group", num_classes=2, **TINY_SEGMENTER)
    assert {layer.num_groups for layer in _norms(model)} == {2}
    assert create_model("residual_unet", norm="group", num_classes=3, **TINY_SEGMENTER)  # one group


@pytest.mark.parametrize("name", SEGMENTERS)
def test_segmenter_dropout_levels_and_filters_change_the_network(name: str) -> None:
    def dropout_rates(model: nn.Module) -> set[float]:
        return {m.p for m in model.modules() if isinstance(m, nn.Dropout | nn.Dropout3d) and m.p > 0}

    assert dropout_rates(create_model(name, **TINY_SEGMENTER)) == set()
    assert dropout_rates(create_model(name, dropout=0.2, **TINY_SEGMENTER)) == {0.2}

    def first_conv(model: nn.Module) -> nn.Conv3d:
        return next(m for m in model.modules() if isinstance(m, nn.Conv3d))

    def downsamplings(model: nn.Module) -> int:
        return sum(1 for m in model.modules() if isinstance(m, nn.Conv3d) and max(m.stride) == 2)

    assert first_conv(create_model(name, base_filters=6, num_levels=3)).out_channels == 6
    assert downsamplings(create_model(name, base_filters=4, num_levels=4)) > downsamplings(
        create_model(name, base_filters=4, num_levels=3)
    )


def test_residual_unet_adds_residual_units_to_the_unet() -> None:
    def residual_units(model: nn.Module) -> int:
        return sum(1 for m in model.modules() if type(m).__name__ == "ResidualUnit")

    assert residual_units(create_model("unet", **TINY_SEGMENTER)) == 0
    assert residual_units(create_model("residual_unet", **TINY_SEGMENTER)) > 0


def test_dynunet_patch_size_sets_anisotropic_strides() -> None:
    model = create_model("dynunet", base_filters=4, num_levels=4, patch_size=(32, 32, 8))
    assert [tuple(s) for s in model.strides] == [(1, 1, 1), (2, 2, 2), (2, 2, 1), (2, 2, 1)]
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32, 8)).shape == (1, 2, 32, 32, 8)
    assert not hasattr(create_model("dynunet", **TINY_SEGMENTER), "deep_supervision_heads")


# --- a few optimisation steps lower the loss --------------------------------------------------------------


def _blobs(count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise volumes, half with a bright cube; the cube mask is the segmentation label."""
    images = 0.3 * torch.randn(count, 1, size, size, size)
    labels = torch.zeros(count, 1, size, size, size, dtype=torch.long)
    for index in range(0, count, 2):
        start = 2 + index % (size - 8)
        labels[index, :, start : start + 5, start : start + 5, 3:8] = 1
    return images + labels.float(), labels


def _train(
    model: nn.Module, loss: nn.Module, images: torch.Tensor, target: torch.Tensor, steps: int
) -> list[float]:
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        optimiser.zero_grad()
        value = loss(model(images), target)
        value.backward()
        optimiser.step()
        losses.append(value.item())
    return losses


def test_adam_lowers_the_loss_of_a_resnet() -> None:
    images, labels = _blobs(6, 12)
    classes = labels.flatten(1).amax(dim=1)  # 1 where there is a cube
    model = create_model("resnet10", widths=4, **STEM_28)
    losses = _train(model, create_loss("cross_entropy"), images, classes, steps=10)
    assert losses[-1] < 0.5 * losses[0]


def test_adam_lowers_the_loss_of_a_segmenter() -> None:
    images, labels = _blobs(2, 12)
    model = create_model("unet", **TINY_SEGMENTER)
    losses = _train(model, create_loss("dice_ce"), images, labels, steps=10)
    assert losses[-1] < 0.8 * losses[0]
