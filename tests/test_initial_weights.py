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
