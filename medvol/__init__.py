"""medvol: 3D medical image classification and segmentation with correct geometry.

The public API, for scripts and notebooks (``import medvol``):

Scans
    ``load``, ``load_all``, ``save``, ``Volume``, ``MedvolError``;
    ``load_medmnist`` (MedMNIST 3D ``.npz`` files with their official split);
    ``sample`` (paths of the samples bundled with medvol).
Clips
    ``write_clip_file`` (generated clips whose class only the order of the
    frames shows, as a MedMNIST-style ``.npz`` with time last).
Datasets
    ``validate`` (discover and check every case of a folder or manifest),
    ``write_manifest``.
Preprocessing and augmentation
    ``preprocess``, ``invert``, ``PreprocessConfig``;
    ``build_augmenter``, ``augment_config_from_dict``, ``AugmentConfig``;
    ``synthesize_cases``, ``labels_to_image``, ``SynthesisConfig``.
Training
    ``load_config`` (YAML), ``parse_config`` (a dict), ``train``.
Inference and evaluation
    ``load_trained``, ``segment``, ``classify``;
    ``predict_folder`` (batch prediction over a folder, ``medvol predict``)
    with ``PredictOptions``; ``evaluate_run`` and ``format_evaluation``;
    ``write_report``.
Published tables
    ``load_study``, ``available_studies``, ``reproduce_study``.

Names are imported lazily (PEP 562) so that ``medvol --help`` and
``import medvol.cli`` stay instant: ``import medvol`` loads none of torch,
SimpleITK or nibabel; ``medvol.train`` pulls in torch on first use.

Two functions are exported under names that say more than their own:
``medvol.prediction.predict`` is ``predict_folder`` and
``medvol.reproduce.reproduce`` is ``reproduce_study`` (a submodule of that
name would shadow it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medvol.version import __version__

if TYPE_CHECKING:
    from medvol.augment import (
        AugmentConfig,
        SynthesisConfig,
        augment_config_from_dict,
        build_augmenter,
        labels_to_image,
        synthesize_cases,
    )
    from medvol.config import load_config, parse_config
    from medvol.data import validate, write_manifest
    from medvol.demo import sample
    from medvol.engine.inference import classify, load_trained, segment
    from medvol.engine.train import train
    from medvol.errors import MedvolError
    from medvol.evaluation import evaluate_run
    from medvol.evaluation import format_summary as format_evaluation
    from medvol.io import load, load_all, save
    from medvol.io.medmnist import load_medmnist
    from medvol.prediction import Options as PredictOptions
    from medvol.prediction import predict as predict_folder
    from medvol.report import write_report
    from medvol.reproduce import available_studies, load_study
    from medvol.reproduce import reproduce as reproduce_study
    from medvol.synthetic_clips import write_clip_file
    from medvol.transforms import PreprocessConfig, invert, preprocess
    from medvol.volume import Volume

# Exported name -> (module, name in that module).
_LAZY: dict[str, tuple[str, str]] = {
    "MedvolError": ("medvol.errors", "MedvolError"),
    "Volume": ("medvol.volume", "Volume"),
    "load": ("medvol.io", "load"),
    "load_all": ("medvol.io", "load_all"),
    "save": ("medvol.io", "save"),
    "load_medmnist": ("medvol.io.medmnist", "load_medmnist"),
    "sample": ("medvol.demo", "sample"),
    "validate": ("medvol.data", "validate"),
    "write_manifest": ("medvol.data", "write_manifest"),
    "preprocess": ("medvol.transforms", "preprocess"),
    "invert": ("medvol.transforms", "invert"),
    "PreprocessConfig": ("medvol.transforms", "PreprocessConfig"),
    "build_augmenter": ("medvol.augment", "build_augmenter"),
    "augment_config_from_dict": ("medvol.augment", "augment_config_from_dict"),
    "AugmentConfig": ("medvol.augment", "AugmentConfig"),
    "synthesize_cases": ("medvol.augment", "synthesize_cases"),
    "labels_to_image": ("medvol.augment", "labels_to_image"),
    "SynthesisConfig": ("medvol.augment", "SynthesisConfig"),
    "load_config": ("medvol.config", "load_config"),
    "parse_config": ("medvol.config", "parse_config"),
    "train": ("medvol.engine.train", "train"),
    "load_trained": ("medvol.engine.inference", "load_trained"),
    "segment": ("medvol.engine.inference", "segment"),
    "classify": ("medvol.engine.inference", "classify"),
    "predict_folder": ("medvol.prediction", "predict"),
    "PredictOptions": ("medvol.prediction", "Options"),
    "evaluate_run": ("medvol.evaluation", "evaluate_run"),
    "format_evaluation": ("medvol.evaluation", "format_summary"),
    "write_report": ("medvol.report", "write_report"),
    "load_study": ("medvol.reproduce", "load_study"),
    "available_studies": ("medvol.reproduce", "available_studies"),
    "reproduce_study": ("medvol.reproduce", "reproduce"),
    "write_clip_file": ("medvol.synthetic_clips", "write_clip_file"),
}

__all__ = [
    "AugmentConfig",
    "MedvolError",
    "PredictOptions",
    "PreprocessConfig",
    "SynthesisConfig",
    "Volume",
    "__version__",
    "augment_config_from_dict",
    "available_studies",
    "build_augmenter",
    "classify",
    "evaluate_run",
    "format_evaluation",
    "invert",
    "labels_to_image",
    "load",
    "load_all",
    "load_config",
    "load_medmnist",
    "load_study",
    "load_trained",
    "parse_config",
    "predict_folder",
    "preprocess",
    "reproduce_study",
    "sample",
    "save",
    "segment",
    "synthesize_cases",
    "train",
    "validate",
    "write_clip_file",
    "write_manifest",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'medvol' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
