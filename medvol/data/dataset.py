"""Torch datasets: cases in, ``Sample`` dicts out.

Segmentation: each case is loaded, preprocessed (``medvol.transforms``),
normalised with a normaliser fitted on the training fold, and stored in the
on-disk cache once (``medvol.data.cache``); every later epoch reads the
memory-mapped entry. Training samples are random patches (a third of them
centred on a labelled voxel, as nnU-Net does) passed through the augmenter;
validation samples are whole volumes.

Classification (MedMNIST): the arrays are small and already in memory.

Classification (scan files): each case is loaded, preprocessed, normalised
with a normaliser fitted on the training fold and cached like a segmentation
case; every sample is then centre-cropped and padded to the fixed input shape
(``crop_or_pad``, the same function inference uses). Targets are class indices.

A sample is a dict ``{"case_id": str, "image": (C, X, Y, Z) float32 tensor,
"label": (1, X, Y, Z) int64 tensor | () int64 tensor}``.

Randomness: ``set_epoch(epoch)`` and ``seed_worker`` (the DataLoader's
``worker_init_fn``) reseed the patch sampler and the augmenter from
``worker_seed(seed, rank, worker_id, epoch)``, so no two workers or ranks
repeat each other's draws and a resumed run draws what the original would have.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from medvol.augment import Augmenter, worker_seed
from medvol.config import FOREGROUND_FRACTION
from medvol.data.cache import CacheEntry, VolumeCache
from medvol.data.cases import Case, load_case, load_images
from medvol.errors import MedvolError
from medvol.transforms import Normalizer, PreprocessConfig, preprocess
from medvol.transforms.inputs import classifier_crop, medmnist_input, prepare_image

CACHE_FORMAT = 2  # bump when what a cache entry holds changes (2: foreground voxel indices)
KEEP_OPEN = 4096  # cache entries kept memory-mapped in the main process (3 maps each)


class _Reseedable(Dataset[dict[str, Any]]):
    """Reseeding for epochs, DataLoader workers and DDP ranks."""

    def __init__(self, augmenter: Augmenter | None, seed: int, rank: int) -> None:
        self.augmenter = augmenter
        self.seed = seed
        self.rank = rank
        self.epoch = 0
        self.rng = np.random.default_rng(worker_seed(seed, rank, 0, 0))

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch; workers started afterwards see the new epoch."""
        self.epoch = epoch
        self.reseed(worker_id=0)

    def reseed(self, worker_id: int) -> None:
        sequence = worker_seed(self.seed, self.rank, worker_id, self.epoch)
        self.rng = np.random.default_rng(sequence.spawn(1)[0])
        if self.augmenter is not None:
            self.augmenter.reseed(sequence)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders over medvol datasets."""
    info = get_worker_info()
    if info is not None and isinstance(info.dataset, _Reseedable):
        info.dataset.reseed(worker_id)
        torch.manual_seed(
            int(worker_seed(info.dataset.seed, info.dataset.rank, worker_id).generate_state(1)[0])
        )


class SegmentationDataset(_Reseedable):
    """Preprocessed, cached segmentation cases; patches for training, volumes for validation.

    Args:
        cases: usable cases with label maps.
        preprocess_config: the grid every case is put on.
        normalizer: fitted on the training fold (``fit_normalizer``).
        cache: where preprocessed cases are kept.
        patch_size: training patch ``(X, Y, Z)`` in voxels; ``None`` gives whole volumes.
        augmenter: applied to training patches.
        foreground_fraction: share of patches centred on a labelled voxel
            (``data.foreground_fraction``; see ``random_patch``).
    """

    def __init__(
        self,
        cases: Sequence[Case],
        preprocess_config: PreprocessConfig,
        normalizer: Normalizer,
        cache: VolumeCache,
        patch_size: tuple[int, int, int] | None = None,
        augmenter: Augmenter | None = None,
        seed: int = 0,
        rank: int = 0,
        foreground_fraction: float = FOREGROUND_FRACTION,
    ) -> None:
        super().__init__(augmenter, seed, rank)
        self.cases = list(cases)
        self.preprocess_config = preprocess_config
        self.normalizer = normalizer
        self.cache = cache
        self.patch_size = patch_size
        self.foreground_fraction = foreground_fraction
        self.cache_config = {
            "format": CACHE_FORMAT,
            "preprocess": preprocess_config.to_dict(),
            "normalize": normalizer.to_dict(),
        }
        self._open: dict[tuple[Path, ...], CacheEntry] = {}

    def __len__(self) -> int:
        return len(self.cases)

    def entry(self, index: int) -> CacheEntry:
        """The preprocessed, normalised case, from the cache (built on first use).

        Arrays: ``image`` ``(C, X, Y, Z)`` float32, ``label`` ``(1, X, Y, Z)`` and
        ``foreground`` ``(N, 3)`` int32, the indices of the labelled voxels.
        In the main process (``num_workers: 0``) up to ``KEEP_OPEN`` entries
        stay open (memory-mapped) between samples; in DataLoader workers each
        sample opens its entry and closes it, since kept maps would make every
        worker map the whole cache (measured in ``benchmarks/bench_pipeline.py``).
        """
        case = self.cases[index]
        sources = (*case.images, *([case.label] if case.label is not None else []))
        in_main_process = get_worker_info() is None
        if in_main_process and sources in self._open:
            return self._open[sources]

        def build() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
            image, label = load_case(case)
            image, label, record = prepare_image(image, label, self.preprocess_config, self.normalizer)
            arrays = {"image": image.array}
            if label is not None:
                arrays["label"] = label.array
                arrays["foreground"] = np.argwhere(label.array[0] > 0).astype(np.int32)
            return arrays, {"case_id": case.case_id, "record": record.to_dict()}

        entry = self.cache.get_or_build(sources, self.cache_config, build)
        if in_main_process:
            if len(self._open) >= KEEP_OPEN:
                del self._open[next(iter(self._open))]  # the oldest
            self._open[sources] = entry
        return entry

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entry(index)
        image, label = entry.arrays["image"], entry.arrays["label"]
        if self.patch_size is not None:
            foreground = entry.arrays.get("foreground")
            image, label = random_patch(
                image, label, self.patch_size, self.rng, foreground, self.foreground_fraction
            )
        sample = {"image": np.array(image, dtype=np.float32), "label": np.array(label)}
        if self.augmenter is not None:
            sample = self.augmenter(sample)
        return {
            "case_id": self.cases[index].case_id,
            "image": torch.from_numpy(np.ascontiguousarray(sample["image"], dtype=np.float32)),
            "label": torch.from_numpy(np.ascontiguousarray(sample["label"]).astype(np.int64)),
        }


def random_patch(
    image: np.ndarray,
    label: np.ndarray,
    size: tuple[int, int, int],
    rng: np.random.Generator,
    foreground: np.ndarray | None = None,
    foreground_fraction: float = FOREGROUND_FRACTION,
) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` patch of ``(C, X, Y, Z)`` arrays, padded where the volume is smaller.

    With probability ``foreground_fraction`` (default 1/3) the patch is centred
    on a labelled voxel drawn uniformly from all of them, moved only as far as
    needed to stay within the (padded) volume, so it always contains that voxel
    (rare foreground is seen often enough); otherwise its corner is uniform. A
    label map without foreground always gets a uniform corner.
    ``foreground`` ``(N, 3)``: the labelled voxels' indices, when known (else
    found from ``label``).
    """
    if foreground is None:
        foreground = np.argwhere(label[0] > 0)
    wanted, shape = np.array(size), np.array(image.shape[1:])
    before = np.maximum(0, (wanted - shape + 1) // 2)  # the volume is centred when smaller
    high = np.maximum(shape, wanted) - wanted
    if foreground.size and rng.random() < foreground_fraction:
        centre = foreground[rng.integers(len(foreground))] + before
        corner = np.clip(centre - wanted // 2, 0, high)
    else:
        corner = np.array([rng.integers(h + 1) for h in high])
    start = corner - before  # in the volume's own indices; may reach outside it
    low, stop = np.maximum(start, 0), np.minimum(start + wanted, shape)
    window = (slice(None), *(slice(a, b) for a, b in zip(low, stop, strict=True)))
    image_patch, label_patch = image[window], label[window]
    pad = [(0, 0)] + [
        (int(a - s), int(s + w - b)) for a, b, s, w in zip(low, stop, start, wanted, strict=True)
    ]
    if any(p != (0, 0) for p in pad):
        image_patch = np.pad(image_patch, pad, constant_values=float(image.min()))
        label_patch = np.pad(label_patch, pad)
    return image_patch, label_patch


class ArrayClassificationDataset(_Reseedable):
    """In-memory volumes with class targets (MedMNIST): uint8 ``(N, D, H, W)`` scaled to [0, 1]."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        augmenter: Augmenter | None = None,
        seed: int = 0,
        rank: int = 0,
        prefix: str = "case",
    ) -> None:
        super().__init__(augmenter, seed, rank)
        self.images = images
        self.labels = labels
        self.prefix = prefix

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = medmnist_input(self.images[index])
        if self.augmenter is not None:
            image = self.augmenter({"image": image})["image"]
        return {
            "case_id": f"{self.prefix}-{index:05d}",
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "label": torch.tensor(int(self.labels[index]), dtype=torch.int64),
        }


def class_index(case: Case, num_classes: int) -> int:
    """The case's class target as an index in ``[0, num_classes)``.

    Raises:
        MedvolError: no class, not an integer, or out of range (naming the case).
    """
    text = (case.target or "").strip()
    where = case.images[0] if case.images else None
    if not text:
        raise MedvolError(where, f"case {case.case_id} has no class (column 'class')")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value.is_integer():
        raise MedvolError(
            where, f"case {case.case_id}: class {text!r} is not an integer class index in [0, {num_classes})"
        )
    if not 0 <= value < num_classes:
        raise MedvolError(
            where,
            f"case {case.case_id}: class {int(value)} is outside [0, {num_classes}) "
            f"(data.num_classes is {num_classes})",
        )
    return int(value)


class _CasesWithTargets(_Reseedable):
    """Cases with class targets, each prepared whole into ``cache``: what the scan-file and clip
    classification datasets share. Samples: ``{"case_id", "image": float32 tensor, "label": () int64}``.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        targets: Sequence[int],
        normalizer: Normalizer,
        cache: VolumeCache,
        augmenter: Augmenter | None,
        seed: int,
        rank: int,
    ) -> None:
        super().__init__(augmenter, seed, rank)
        if len(cases) != len(targets):
            raise ValueError(f"{len(cases)} cases but {len(targets)} targets")
        self.cases = list(cases)
        self.targets = [int(t) for t in targets]
        self.normalizer = normalizer
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cases)

    def sample(self, index: int, image: np.ndarray) -> dict[str, Any]:
        """Case ``index``'s sample with ``image`` as its input."""
        return {
            "case_id": self.cases[index].case_id,
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "label": torch.tensor(self.targets[index], dtype=torch.int64),
        }


class FileClassificationDataset(_CasesWithTargets):
    """Scan files with class targets, preprocessed, normalised, cached and cut to one input shape.

    Args:
        cases: usable cases; ``targets`` their class indices (``class_index``).
        preprocess_config: the grid every case is put on.
        normalizer: fitted on the training fold without masks (``fit_normalizer``).
        cache: where preprocessed, normalised cases are kept (whole, before cropping).
        shape: the model's input ``(X, Y, Z)`` in voxels (``data.patch_size``).
        augmenter: applied to training samples.

    Samples: ``{"case_id", "image": (C, X, Y, Z) float32, "label": () int64}``.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        targets: Sequence[int],
        preprocess_config: PreprocessConfig,
        normalizer: Normalizer,
        cache: VolumeCache,
        shape: tuple[int, int, int],
        augmenter: Augmenter | None = None,
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        super().__init__(cases, targets, normalizer, cache, augmenter, seed, rank)
        self.preprocess_config = preprocess_config
        self.shape = shape
        self.cache_config = {
            "format": CACHE_FORMAT,
            "kind": "classification image",
            "preprocess": preprocess_config.to_dict(),
            "normalize": normalizer.to_dict(),
        }

    def entry(self, index: int) -> CacheEntry:
        """The preprocessed, normalised case from the cache: ``image`` ``(C, X, Y, Z)`` float32."""
        case = self.cases[index]

        def build() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
            image, _, record = prepare_image(load_images(case), None, self.preprocess_config, self.normalizer)
            arrays = {"image": image.array}
            meta = {"case_id": case.case_id, "record": record.to_dict(), "affine": image.affine.tolist()}
            return arrays, meta

        return self.cache.get_or_build(case.images, self.cache_config, build)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entry(index)
        image = classifier_crop(np.array(entry.arrays["image"], dtype=np.float32), self.shape)
        if self.augmenter is not None:
            image = self.augmenter({"image": image})["image"]
        return self.sample(index, image)


def fit_normalizer(
    normalizer: Normalizer,
    cases: Sequence[Case],
    preprocess_config: PreprocessConfig,
    use_labels: bool = True,
) -> Normalizer:
    """Fit on the training cases only, on their preprocessed grids (with label masks when
    ``use_labels`` and every case has a label map; classification passes ``use_labels=False``)."""
    if not normalizer.needs_fit():
        return normalizer
    images, masks = [], []
    for case in cases:
        image, label = load_case(case) if use_labels else (load_images(case), None)
        image, label, _ = preprocess(image, label, preprocess_config)
        images.append(image)
        masks.append(label)
    return normalizer.fit(images, masks if all(m is not None for m in masks) else None)
