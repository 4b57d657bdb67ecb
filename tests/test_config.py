"""Experiment configs: YAML to typed sections, overrides, and errors users can act on."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import yaml

from medvol.augment import AugmentConfig
from medvol.config import ExperimentConfig, dump_config, load_config, parse_config
from medvol.errors import ConfigurationError, MedvolError
from medvol.factories import check_options, option_problems
from medvol.transforms import CTWindow, PreprocessConfig, ZScore

MINIMAL = {
    "data": {"task": "medmnist-classification", "root": "data.npz"},
    "model": {"name": "resnet18", "options": {"num_classes": 2}},
    "loss": {"name": "cross_entropy"},
}


def write_yaml(path: Path, data: dict) -> Path:  # type: ignore[type-arg]
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_and_overrides(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "exp.yaml", MINIMAL)
    config = load_config(path, ["train.epochs=7", "optimizer.lr=0.01", "schedule.milestones=[3, 5]"])
    assert config.train.epochs == 7
    assert config.optimizer.lr == 0.01
    assert config.schedule.milestones == [3, 5]
    assert config.data.split.seed == 12345  # nnU-Net's split seed by default
    again = parse_config(yaml.safe_load(dump_config(config)))
    assert again == config  # the saved config reproduces the run's config


def test_unknown_key_names_it_and_suggests(tmp_path: Path) -> None:
    data = {**MINIMAL, "train": {"epoch": 3}}
    with pytest.raises(MedvolError, match=r"unknown key train\.epoch \(did you mean train\.epochs\?\)"):
        load_config(write_yaml(tmp_path / "exp.yaml", data))
    with pytest.raises(MedvolError, match="unknown key optimiser"):
        parse_config({**MINIMAL, "optimiser": {}})


def test_wrong_types_and_values_are_explained(tmp_path: Path) -> None:
    with pytest.raises(MedvolError, match=r"train\.epochs: Input should be greater than or equal to 1"):
        parse_config({**MINIMAL, "train": {"epochs": 0}})
    with pytest.raises(MedvolError, match=r"optimizer\.name: Input should be 'adam', 'adamw' or 'sgd'"):
        parse_config({**MINIMAL, "optimizer": {"name": "lion"}})
    with pytest.raises(MedvolError, match="spacing"):
        parse_config({**MINIMAL, "preprocess": {"spacing": [1, 1, 1]}})


def test_bad_files_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("data: [unclosed")
    with pytest.raises(MedvolError, match=r"broken\.yaml: cannot read the config"):
        load_config(tmp_path / "broken.yaml")
    with pytest.raises(MedvolError, match="key=value"):
        load_config(write_yaml(tmp_path / "exp.yaml", MINIMAL), ["train.epochs"])


SEGMENTER = {
    "data": {"task": "segmentation", "root": "cases", "classes": [0, 1, 2], "num_classes": 3},
    "model": {"name": "unet", "options": {"num_classes": 3}},
    "loss": {"name": "dice_ce"},
}


def test_typed_sections_round_trip_with_the_keys_written(tmp_path: Path) -> None:
    written = {
        **SEGMENTER,
        "preprocess": {"orientation": "RAS", "spacing_mm": [1, 1, 1.5], "crop": "foreground"},
        "normalize": {"type": "ZScore", "params": {"per_scan": True}},
        "augment": {"rotate_deg": 15, "flip_axes": [0], "gamma_range": [0.8, 1.2]},
    }
    config = load_config(write_yaml(tmp_path / "exp.yaml", written))
    assert config.preprocess == PreprocessConfig(spacing_mm=(1.0, 1.0, 1.5), crop="foreground")
    assert config.augment == AugmentConfig(rotate_deg=15.0, flip_axes=(0,), gamma_range=(0.8, 1.2))
    normalizer = config.normalizer()
    assert (
        isinstance(normalizer, ZScore) and normalizer.per_scan and normalizer.clip_percentiles == (0.5, 99.5)
    )
    saved = yaml.safe_load(dump_config(config))
    # the same keys as written (defaults spelt out are kept, none are added), as plain YAML values
    assert saved["preprocess"] == {"orientation": "RAS", "spacing_mm": [1.0, 1.0, 1.5], "crop": "foreground"}
    assert saved["normalize"] == {"type": "ZScore", "params": {"per_scan": True}}
    assert saved["augment"] == {"rotate_deg": 15.0, "flip_axes": [0], "gamma_range": [0.8, 1.2]}
    # a run folder's config.yaml reads back to an equal config, and dumps identically
    (tmp_path / "config.yaml").write_text(dump_config(config))
    again = load_config(tmp_path / "config.yaml")
    assert again == config
    assert dump_config(again) == dump_config(config)
    assert pickle.loads(pickle.dumps(config)) == config  # e.g. to DataLoader workers under spawn


def test_section_defaults_null_and_empty() -> None:
    config = parse_config(SEGMENTER)
    assert config.preprocess == PreprocessConfig()
    assert config.augment is None  # omitted: no augmentation
    assert config.normalize is None
    normalizer = config.normalizer()  # omitted: per-scan z-score, as before
    assert isinstance(normalizer, ZScore) and normalizer.per_scan
    assert parse_config({**SEGMENTER, "augment": None}).augment is None
    assert parse_config({**SEGMENTER, "augment": {}}).augment == AugmentConfig()  # {}: the defaults
    saved = yaml.safe_load(dump_config(parse_config({**SEGMENTER, "augment": {}})))
    assert (saved["preprocess"], saved["normalize"], saved["augment"]) == ({}, None, {})
    window = parse_config({**SEGMENTER, "normalize": {"type": "CTWindow"}}).normalizer()
    assert isinstance(window, CTWindow) and window.window_hu == (-1000.0, 1000.0)


def test_sections_built_in_python_dump_their_changed_keys() -> None:
    config = parse_config(SEGMENTER)
    built = ExperimentConfig(
        data=config.data,
        model=config.model,
        loss=config.loss,
        preprocess=PreprocessConfig(spacing_mm=(2.0, 2.0, 2.0)),
        augment=AugmentConfig(noise_prob=0.0),
    )
    saved = yaml.safe_load(dump_config(built))
    assert saved["preprocess"] == {"spacing_mm": [2.0, 2.0, 2.0]}
    assert saved["augment"] == {"noise_prob": 0.0}
    assert parse_config(saved) == built


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"normalize": {"type": "Zscore", "params": {}}},
            r"normalize\.type: unknown 'Zscore' \(did you mean ZScore\?\); one of CTWindow, ZScore, "
            r"PercentileClip",
        ),
        ({"normalize": {"params": {"per_scan": True}}}, r"normalize\.type: missing; one of CTWindow"),
        (
            {"normalize": {"type": "ZScore", "params": {"per_scn": False}}},
            r"unknown key normalize\.params\.per_scn \(did you mean normalize\.params\.per_scan\?\)",
        ),
        (
            {"normalize": {"type": "ZScore", "params": {"per_scan": "maybe"}}},
            r"normalize\.params\.per_scan: Input should be a valid boolean",
        ),
        (
            {"normalize": {"type": "PercentileClip", "params": {"lower": 99, "upper": 1}}},
            r"normalize: percentiles must satisfy 0 <= lower < upper <= 100",
        ),
        (
            {"preprocess": {"spacng_mm": [1, 1, 1]}},
            r"unknown key preprocess\.spacng_mm \(did you mean preprocess\.spacing_mm\?\)",
        ),
        (
            {"preprocess": {"crop": "box"}},
            r"preprocess\.crop: Input should be 'none', 'foreground' or 'bbox'",
        ),
        ({"preprocess": {"spacing_mm": "1mm"}}, r"preprocess\.spacing_mm: should be a list"),
        ({"preprocess": {"crop": "bbox"}}, r"preprocess: crop=\"bbox\" needs bbox_mm"),
        (
            {"augment": {"roate_deg": 10}},
            r"unknown key augment\.roate_deg \(did you mean augment\.rotate_deg\?\)",
        ),
        (
            {"augment": {"affine_prob": 1.5}},
            r"augment: .*affine_prob must be a probability in \[0, 1\], got 1\.5",
        ),
        ({"augment": {"noise_std": "high"}}, r"augment\.noise_std: Input should be a valid number"),
    ],
)
def test_bad_typed_sections_name_the_key(section: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(MedvolError, match=r"invalid config:\n(.*\n)*  " + message):
        parse_config({**SEGMENTER, **section})


def test_model_and_loss_options_are_checked_at_load(tmp_path: Path) -> None:
    model = {"name": "unet", "options": {"num_classes": 3, "base_filter": 8, "levels": 4}}
    with pytest.raises(MedvolError) as caught:
        load_config(write_yaml(tmp_path / "exp.yaml", {**SEGMENTER, "model": model}))
    text = str(caught.value)
    assert str(tmp_path / "exp.yaml") in text and "invalid config" in text
    assert re.search(
        r"model\.options\.base_filter: model 'unet' has no option 'base_filter' "
        r"\(did you mean 'base_filters'\?\); its options are: in_channels, num_classes",
        text,
    )
    assert "model.options.levels: model 'unet' has no option 'levels'" in text
    with pytest.raises(MedvolError, match=r"model\.name: unknown model 'unet3d' \(did you mean 'unet'\?\)"):
        parse_config({**SEGMENTER, "model": {"name": "unet3d"}})
    with pytest.raises(
        MedvolError, match=r"loss\.options\.lamda_ce: loss 'dice_ce' has no option 'lamda_ce'"
    ):
        parse_config({**SEGMENTER, "loss": {"name": "dice_ce", "options": {"lamda_ce": 0.5}}})
    inner = {"name": "deep_supervision", "options": {"loss": "dice_ce", "loss_options": {"batchh": True}}}
    with pytest.raises(
        MedvolError, match=r"loss\.options\.loss_options\.batchh: loss 'dice_ce' has no option"
    ):
        parse_config({**SEGMENTER, "loss": inner})
    # errors of several sections are reported together
    with pytest.raises(MedvolError, match=r"(?s)model\.options\.levels: .*unknown key train\.epoch "):
        parse_config({**SEGMENTER, "model": model, "train": {"epoch": 2}})


def test_class_counts_must_agree() -> None:
    mismatch = {**SEGMENTER, "model": {"name": "unet", "options": {"num_classes": 2}}}
    with pytest.raises(MedvolError, match=r"model\.options\.num_classes: is 2 but data\.num_classes is 3"):
        parse_config(mismatch)
    default = {**SEGMENTER, "model": {"name": "unet"}}  # the factory's default, 2 classes
    with pytest.raises(
        MedvolError, match=r"model\.options: model 'unet' outputs 2 classes unless num_classes"
    ):
        parse_config(default)
    classes = {**SEGMENTER, "data": {**SEGMENTER["data"], "classes": [0, 1]}}
    with pytest.raises(MedvolError, match=r"data\.classes: \[0, 1\] does not match data\.num_classes 3"):
        parse_config(classes)
    classifier = {**MINIMAL, "data": {**MINIMAL["data"], "classes": [0, 1, 2]}}
    assert parse_config(classifier).data.classes == [0, 1, 2]  # classes is a segmentation setting


def test_check_options_checks_names_without_building() -> None:
    check_options("model", "unet", {"num_classes": 3, "base_filters": 8})
    check_options("loss", "dice_ce", {"lambda_ce": 0.5})
    with pytest.raises(ConfigurationError, match=r"'base_filter' \(did you mean 'base_filters'\?\)"):
        check_options("model", "unet", {"base_filter": 8})
    with pytest.raises(ConfigurationError, match=r"unknown loss 'dice'"):
        check_options("loss", "dice", {})
    assert option_problems("model", "unet", {"levels": 3, "norm": "batch"}) == [
        (("options", "levels"), option_problems("model", "unet", {"levels": 3})[0][1])
    ]
    assert "has no option 'levels'" in option_problems("model", "unet", {"levels": 3})[0][1]
