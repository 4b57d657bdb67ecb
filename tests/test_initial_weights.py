"""``model.init``: starting from a medvol checkpoint or a file in MedicalNet's published layout.

MedicalNet's weights cannot be downloaded here, so its layout is written by
another implementation of the same network: MONAI's ResNet with MedicalNet's
settings (7³ stem of stride 2, projection shortcuts without bias), saved as
MedicalNet saves (``{"state_dict": ...}`` from ``DataParallel``, so every
name starts with ``module.``, plus the segmentation head ``conv_seg``). If
the names are mapped right, medvol's ResNet computes what MONAI's computes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import resnet18

from medvol.engine.initial_weights import load_initial_weights
from medvol.errors import ConfigurationError, MedvolError
from medvol.models import create_model


def medicalnet_file(path: Path, in_channels: int = 1) -> tuple[Path, torch.nn.Module]:
    """A MedicalNet-layout resnet18 file (random weights, BatchNorm statistics set) and its MONAI twin."""
    torch.manual_seed(3)
    twin = resnet18(
        spatial_dims=3,
        n_input_channels=in_channels,
        num_classes=2,
        conv1_t_stride=2,
        shortcut_type="B",
        bias_downsample=False,
    )
    with torch.no_grad():  # non-trivial running statistics, so eval-mode BatchNorm is tested too
        for module in twin.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    state = {f"module.{name}": tensor for name, tensor in twin.state_dict().items()}
    state["module.conv_seg.0.weight"] = torch.zeros(32, 512, 3, 3, 3)  # MedicalNet's segmentation head
    torch.save({"state_dict": state}, path)
    return path, twin.eval()


def test_a_medicalnet_file_gives_the_same_network(tmp_path: Path) -> None:
    path, twin = medicalnet_file(tmp_path / "resnet_18.pth")
    model = create_model("resnet18", in_channels=1, num_classes=2, norm="batch")
    report = load_initial_weights(model, path)
    assert report.layout == "medicalnet" and report.loaded == len(model.state_dict())
    assert report.missing == [] and report.mismatched == [] and report.adapted == []
    assert report.unexpected == ["conv_seg.0.weight"]
    x = torch.randn(2, 1, 32, 40, 36)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), twin(x), rtol=1e-4, atol=1e-5)


def test_another_head_and_more_input_channels_are_reported(tmp_path: Path) -> None:
    path, _ = medicalnet_file(tmp_path / "resnet_18.pth")
    model = create_model("resnet18", in_channels=3, num_classes=5, norm="batch")
    report = load_initial_weights(model, path)
    assert report.adapted == ["stem.0.weight"]
    assert report.missing == ["fc.weight", "fc.bias"]  # kept random: 5 classes, not 2
    assert [m.split()[0] for m in report.mismatched] == ["fc.weight", "fc.bias"]
    # A scan copied into the three channels meets the same features as the one-channel network.
    one_channel = create_model("resnet18", in_channels=1, num_classes=2, norm="batch")
    load_initial_weights(one_channel, path)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            features(model.eval(), x.repeat(1, 3, 1, 1, 1)),
            features(one_channel.eval(), x),
            rtol=1e-4,
            atol=1e-5,
        )


def features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pooled features of a medvol ResNet ``(B, F)``, before its classifier."""
    return model.pool(model.stages(model.stem(x))).flatten(1)


def test_a_file_for_another_depth_is_refused(tmp_path: Path) -> None:
    path, _ = medicalnet_file(tmp_path / "resnet_18.pth")
    with pytest.raises(ConfigurationError, match=r"another depth or width.*of another shape"):
        load_initial_weights(create_model("resnet50", in_channels=1, num_classes=2), path)
    with pytest.raises(ConfigurationError, match="matches no tensor"):
        load_initial_weights(create_model("unet", in_channels=1, num_classes=2), path)


def test_a_medvol_checkpoint_fine_tunes_and_pickles_are_refused(tmp_path: Path) -> None:
    source = create_model("resnet10", in_channels=1, num_classes=2, widths=8)
    torch.save({"model": source.state_dict(), "progress": {"epoch": 3}}, tmp_path / "best.pt")
    model = create_model("resnet10", in_channels=1, num_classes=2, widths=8)
    report = load_initial_weights(model, tmp_path / "best.pt")
    assert report.layout == "medvol" and report.missing == [] and report.unexpected == []
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("ran code",))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(MedvolError, match=r"evil\.pt"):
        load_initial_weights(model, tmp_path / "evil.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "best.pt").read_bytes()[:500])
    with pytest.raises(MedvolError, match=r"cut\.pt"):
        load_initial_weights(model, tmp_path / "cut.pt")
    with pytest.raises(MedvolError, match="no such file"):
        load_initial_weights(model, tmp_path / "absent.pt")


def test_a_run_started_from_weights_records_them(tmp_path: Path) -> None:
    """``model.init`` in a config: the run starts from the file's weights and says so in environment.json."""
    import json

    import medvol
    from medvol import demo
    from medvol.config import load_config
    from medvol.engine.train import train
    from tests.shared_samples import write_config

    bundled = Path(medvol.__file__).parent / "samples" / "adrenalmnist3d.npz"
    # lr 1e-12: one epoch that moves no weight measurably, so the start is what is checked.
    config = demo.medmnist_classifier(bundled, epochs=1, output_dir=tmp_path / "runs", widths=4, lr=1e-12)
    torch.manual_seed(7)
    source = create_model(config["model"]["name"], **config["model"]["options"])
    torch.save({"model": source.state_dict()}, tmp_path / "pretrained.pt")
    config["model"]["init"] = str(tmp_path / "pretrained.pt")
    run_dir = train(load_config(write_config(tmp_path / "init.yaml", config)))
    record = json.loads((run_dir / "environment.json").read_text())["initial_weights"]
    assert (
        record["layout"] == "medvol"
        and record["loaded"] == len(source.state_dict())
        and not record["missing"]
    )
    trained = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    stem = trained["stem.0.weight"]
    torch.testing.assert_close(stem, source.state_dict()["stem.0.weight"], rtol=0, atol=1e-6)


# -- MedicalNet's published layout, written by hand from its architecture ---------------------------

MEDICALNET_WIDTHS = (64, 128, 256, 512)
#: stride and dilation of MedicalNet's layer1..layer4 (Chen et al., Med3D; output stride 8)
MEDICALNET_STAGES = ((1, 1), (2, 1), (1, 2), (1, 4))


def medicalnet_layout(blocks: tuple[int, ...], shortcut: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The tensors of a MedicalNet ``resnet_*.pth`` of basic blocks, as its files name them.

    ``module.`` prefix (saved from ``DataParallel``); ``conv1``/``bn1`` stem; ``layerN.B.conv1``,
    ``bn1``, ``conv2``, ``bn2``; ``downsample.0`` (1×1×1 conv) and ``downsample.1`` (BatchNorm)
    where a block changes the grid or width and ``shortcut`` is ``"B"`` (type ``"A"`` shortcuts
    have no parameters); the segmentation head ``conv_seg``. Random values, BatchNorm statistics
    away from their defaults.
    """
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def uniform(shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator)

    def conv(name: str, out: int, into: int, kernel: int) -> None:
        scale = (2.0 / (into * kernel**3)) ** 0.5
        state[f"{name}.weight"] = (
            torch.randn((out, into, kernel, kernel, kernel), generator=generator) * scale
        )

    def batchnorm(name: str, channels: int) -> None:
        state[f"{name}.weight"] = uniform((channels,), 0.5, 1.5)
        state[f"{name}.bias"] = uniform((channels,), -0.1, 0.1)
        state[f"{name}.running_mean"] = uniform((channels,), -0.2, 0.2)
        state[f"{name}.running_var"] = uniform((channels,), 0.5, 1.5)
        state[f"{name}.num_batches_tracked"] = torch.tensor(100)

    conv("conv1", 64, 1, 7)
    batchnorm("bn1", 64)
    inplanes = 64
    for layer, (planes, count) in enumerate(zip(MEDICALNET_WIDTHS, blocks, strict=True), start=1):
        for block in range(count):
            prefix = f"layer{layer}.{block}"
            conv(f"{prefix}.conv1", planes, inplanes, 3)
            batchnorm(f"{prefix}.bn1", planes)
            conv(f"{prefix}.conv2", planes, planes, 3)
            batchnorm(f"{prefix}.bn2", planes)
            if block == 0 and inplanes != planes and shortcut == "B":
                conv(f"{prefix}.downsample.0", planes, inplanes, 1)
                batchnorm(f"{prefix}.downsample.1", planes)
            inplanes = planes
    state["conv_seg.0.weight"] = torch.zeros(512, 32, 2, 2, 2)  # ConvTranspose3d
    state["conv_seg.0.bias"] = torch.zeros(32)
    batchnorm("conv_seg.1", 32)
    conv("conv_seg.3", 32, 32, 3)
    batchnorm("conv_seg.4", 32)
    conv("conv_seg.6", 2, 32, 1)
    return {f"module.{name}": tensor for name, tensor in state.items()}


def medicalnet_features(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """MedicalNet's encoder (eval mode) computed from its file's tensors: pooled features ``(B, 512)``."""
    w = {name.removeprefix("module."): tensor for name, tensor in state.items()}

    def bn(t: torch.Tensor, name: str) -> torch.Tensor:
        return F.batch_norm(
            t, w[f"{name}.running_mean"], w[f"{name}.running_var"], w[f"{name}.weight"], w[f"{name}.bias"]
        )

    x = F.max_pool3d(F.relu(bn(F.conv3d(x, w["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    for layer, (stride, dilation) in enumerate(MEDICALNET_STAGES, start=1):
        block = 0
        while f"layer{layer}.{block}.conv1.weight" in w:
            p, s = f"layer{layer}.{block}", stride if block == 0 else 1
            out = F.conv3d(x, w[f"{p}.conv1.weight"], stride=s, padding=dilation, dilation=dilation)
            out = F.relu(bn(out, f"{p}.bn1"))
            out = bn(F.conv3d(out, w[f"{p}.conv2.weight"], padding=dilation, dilation=dilation), f"{p}.bn2")
            shortcut = x
            if f"{p}.downsample.0.weight" in w:
                shortcut = bn(F.conv3d(x, w[f"{p}.downsample.0.weight"], stride=s), f"{p}.downsample.1")
            x, block = F.relu(out + shortcut), block + 1
    return x.mean(dim=(2, 3, 4))


def test_a_medicalnet_resnet10_file_gives_medicalnets_dilated_encoder(tmp_path: Path) -> None:
    """``dilated: true`` with MedicalNet's resnet_10.pth layout computes MedicalNet's features."""
    state = medicalnet_layout((1, 1, 1, 1), shortcut="B")
    torch.save({"state_dict": state}, tmp_path / "resnet_10.pth")
    model = create_model("resnet10", in_channels=1, num_classes=2, dilated=True)
    report = load_initial_weights(model, tmp_path / "resnet_10.pth")
    assert report.layout == "medicalnet" and report.missing == ["fc.weight", "fc.bias"]
    assert report.mismatched == [] and report.adapted == []
    assert sorted(report.unexpected) == sorted(k.removeprefix("module.") for k in state if "conv_seg" in k)
    x = torch.randn(2, 1, 40, 48, 36)
    with torch.no_grad():
        expected = medicalnet_features(state, x)
        torch.testing.assert_close(features(model.eval(), x), expected, rtol=1e-4, atol=1e-5)
        plain = create_model("resnet10", in_channels=1, num_classes=2)
        load_initial_weights(plain, tmp_path / "resnet_10.pth")
        assert not torch.allclose(features(plain.eval(), x), expected, atol=1e-2), "strides differ"


def test_a_medicalnet_resnet18_file_with_parameter_free_shortcuts_is_reported(tmp_path: Path) -> None:
    """resnet_18.pth (shortcut type A) into a 3-channel model: projections and head stay random."""
    torch.save({"state_dict": medicalnet_layout((2, 2, 2, 2), shortcut="A")}, tmp_path / "resnet_18.pth")
    model = create_model("resnet18", in_channels=3, num_classes=4, dilated=True)
    report = load_initial_weights(model, tmp_path / "resnet_18.pth")
    assert report.adapted == ["stem.0.weight"]
    shortcuts = {name for name in model.state_dict() if ".shortcut." in name}
    assert len(shortcuts) == 3 * 6 and set(report.missing) == shortcuts | {"fc.weight", "fc.bias"}
    assert report.loaded == len(model.state_dict()) - len(report.missing)
