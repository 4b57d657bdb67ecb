"""The training and validation dataset of clips (``data.clip``): videos prepared once, clips cut per sample.

The steps (resize, sampling in time, crop, jitter) are ``medvol.transforms.clips``,
shared with inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from medvol.data.dataset import _CasesWithTargets
from medvol.transforms.clips import (
    evaluation_clips,
    prepare_video,
    require_clip,
    resize_frames,
    training_clip,
)
from medvol.volume import Volume

if TYPE_CHECKING:
    from medvol.config import ClipConfig
    from medvol.data.cache import CacheEntry, VolumeCache
    from medvol.data.cases import Case
    from medvol.transforms import Normalizer

CLIP_CACHE_FORMAT = 2  # 2: frames resized with medvol.transforms.clips.resize_frames (numpy)


class ClipDataset(_CasesWithTargets):
    """Clips with class targets: whole videos prepared and cached once, clips cut per sample.

    Training samples (``augment=True``) are ``training_clip``; validation
    samples the centre clip. ``image`` ``(C, size X, size Y, frames)`` float32,
    ``label`` a () int64 tensor. Reseeding as ``medvol.data.dataset``'s datasets.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        targets: Sequence[int],
        config: ClipConfig,
        normalizer: Normalizer,
        cache: VolumeCache,
        augment: bool,
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        super().__init__(cases, targets, normalizer, cache, None, seed, rank)
        self.config = config
        self.augment = augment
        self.cache_config = {
            "format": CLIP_CACHE_FORMAT,
            "kind": "clip",
            "resize": config.resize,
            "normalize": normalizer.to_dict(),
        }

    def entry(self, index: int) -> CacheEntry:
        """The prepared video from the cache: ``image`` ``(C, X, Y, T)`` float32."""
        from medvol.data.cases import load_images

        case = self.cases[index]

        def build() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
            video = prepare_video(load_images(case), self.config, self.normalizer)
            return {"image": video.array}, {"case_id": case.case_id}

        return self.cache.get_or_build(case.images, self.cache_config, build)

    def __getitem__(self, index: int) -> dict[str, Any]:
        video = np.asarray(self.entry(index).arrays["image"])
        if self.augment:
            clip = training_clip(video, self.config, self.rng)
        else:
            clip = evaluation_clips(video, self.config.model_copy(update={"eval_clips": 1}))[0]
        return self.sample(index, clip)


def fit_clip_normalizer(normalizer: Normalizer, cases: Sequence[Case], config: ClipConfig) -> Normalizer:
    """Fit on the training videos only, with their frames resized (no mask)."""
    from medvol.data.cases import load_images

    if not normalizer.needs_fit():
        return normalizer
    videos = []
    for case in cases:
        video = load_images(case)
        require_clip(video, config.span)
        videos.append(Volume(resize_frames(video.array, config.resize), np.eye(4), video.meta))
    return normalizer.fit(videos, None)
