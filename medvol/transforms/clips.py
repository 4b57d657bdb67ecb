"""Clips as model inputs: fixed-length samples in time, resized and cropped frames, jitter.

A video (or DICOM cine loop) ``(C, X, Y, T)`` becomes model inputs
``(C, size X, size Y, frames)`` in these steps, each one function:

1. ``prepare_video``: check it is a clip (``meta["axes"] == "XYT"``), resize
   every frame to ``data.clip.resize`` (bilinear, anti-aliased; X and Y only,
   never along time), normalise (the run's normaliser), float32. Cached once
   per video.
2. ``clip_starts``: where clips start: ``random`` (training), ``centre``, or
   ``uniform`` (``count`` clips whose centres split the video into equal
   parts: evaluation and prediction, whose logits are averaged over them).
3. ``cut_clip``: the frames ``start, start + stride, ...`` (``frames`` of
   them), cropped to ``data.clip.size`` at a corner (padded with the clip's
   minimum where the frame is smaller).
4. ``jitter_clip`` (training): brightness, contrast and, for colour,
   saturation, one draw per clip (the same for every frame), on the
   normalised values as ``augment``'s brightness and contrast are; then
   playing the clip backwards with ``reverse_prob``, only when the config
   declares reversal label-preserving.

Geometry-based preprocessing (``medvol.transforms.preprocess``: reorientation,
resampling in mm) refuses clips, so nothing here or elsewhere moves voxels
along time. numpy and SciPy only, like ``medvol.transforms.inputs``, so a model
package classifies clips without torch; the training dataset is
``medvol.data.clips.ClipDataset``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import ndimage

from medvol.errors import MedvolError
from medvol.transforms.inputs import _integrated_gaussian, _linear_along
from medvol.volume import Volume

if TYPE_CHECKING:
    from medvol.config import ClipConfig
    from medvol.transforms.normalize import Normalizer

Sampling = Literal["random", "centre", "uniform"]


def require_clip(volume: Volume, span: int) -> None:
    """Raise ``MedvolError`` naming the file when ``volume`` is not a clip of at least ``span`` frames."""
    where = volume.meta.get("source_path")
    if volume.meta.get("axes") != "XYT":
        raise MedvolError(
            where,
            "is not a clip (a scan without frames in time); this model classifies clips (data.clip): "
            "give it videos or DICOM cine loops",
        )
    if volume.array.shape[3] < span:
        raise MedvolError(
            where, f"has {volume.array.shape[3]} frame(s), fewer than the {span} one clip of data.clip spans"
        )


def resize_frames(array: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Frames ``(C, X, Y, T)`` resized to ``size`` ``(X, Y)`` pixels, float32; time is untouched.

    Linear interpolation at pixel centres (``medvol.transforms.inputs``' rule),
    after a Gaussian of sigma ``(f - 1) / 2`` pixels along an axis that shrinks
    by ``f`` (normalised, edges extended, so a flat frame stays flat).
    ``None`` keeps the size.
    """
    image = array.astype(np.float32)
    if size is None or tuple(image.shape[1:3]) == tuple(size):
        return image
    for axis, target in ((1, size[0]), (2, size[1])):
        if target < image.shape[axis]:
            kernel = _integrated_gaussian((image.shape[axis] / target - 1) / 2)
            image = ndimage.correlate1d(image, kernel / kernel.sum(), axis=axis, mode="nearest")
    for axis, target in ((1, size[0]), (2, size[1])):
        image = _linear_along(image, axis, image.shape[axis], target)
    return np.ascontiguousarray(image, dtype=np.float32)


def prepare_video(volume: Volume, config: ClipConfig, normalizer: Normalizer) -> Volume:
    """A whole clip ``(C, X, Y, T)`` with frames resized and normalised, float32 (step 1 above).

    Raises:
        MedvolError: ``volume`` is not a clip, or is shorter than one clip's span.
    """
    require_clip(volume, config.span)
    resized = Volume(resize_frames(volume.array, config.resize), np.eye(4), dict(volume.meta))
    normalised = normalizer.transform(resized)
    return Volume(normalised.array.astype(np.float32, copy=False), resized.affine, resized.meta)


def clip_starts(
    length: int, span: int, how: Sampling, count: int = 1, rng: np.random.Generator | None = None
) -> list[int]:
    """First frames of the clips to take from a video of ``length`` frames, each spanning ``span``.

    ``random``: one start drawn uniformly from ``0 .. length - span`` (``rng``);
    ``centre``: ``(length - span) // 2``; ``uniform``: ``count`` starts, the
    k-th ``((2k + 1) × (length - span)) // (2 × count)``, so the clips' centres
    split the video into ``count`` equal parts (``count`` 1 is the centre).
    """
    last = length - span
    if last < 0:
        raise ValueError(f"a video of {length} frames is shorter than a clip's span of {span}")
    if how == "random":
        if rng is None:
            raise ValueError("random sampling needs a random generator")
        return [int(rng.integers(last + 1))]
    if how == "centre":
        return [last // 2]
    return [((2 * k + 1) * last) // (2 * count) for k in range(count)]


def frame_indices(start: int, frames: int, stride: int) -> np.ndarray:
    """The frames of one clip: ``start, start + stride, ...`` (``frames`` of them)."""
    return start + stride * np.arange(frames)


def cut_clip(
    video: np.ndarray,
    start: int,
    config: ClipConfig,
    corner: tuple[int, int] | None = None,
) -> np.ndarray:
    """One clip ``(C, size X, size Y, frames)`` of a prepared video ``(C, X, Y, T)`` (step 3 above).

    Args:
        corner: the crop's first pixel ``(x, y)`` in the frame padded to at
            least ``size`` (``crop_corners``); ``None``: the centre crop.
    """
    clip = video[..., frame_indices(start, config.frames, config.stride)]
    size = np.array(config.size)
    shape = np.array(clip.shape[1:3])
    before = np.maximum(0, (size - shape + 1) // 2)
    after = np.maximum(0, size - shape) - before
    if before.any() or after.any():
        pad = [(0, 0), (int(before[0]), int(after[0])), (int(before[1]), int(after[1])), (0, 0)]
        clip = np.pad(clip, pad, constant_values=float(clip.min()))
    if corner is None:
        corner = centre_corner(clip.shape[1:3], config.size)
    x, y = corner
    return np.ascontiguousarray(clip[:, x : x + size[0], y : y + size[1]])


def centre_corner(shape: Sequence[int], size: Sequence[int]) -> tuple[int, int]:
    """The corner of a centred ``size`` crop of a frame of ``shape`` (both ``(X, Y)``, shape ≥ size)."""
    return (int(shape[0] - size[0]) // 2, int(shape[1] - size[1]) // 2)


def random_corner(shape: Sequence[int], size: Sequence[int], rng: np.random.Generator) -> tuple[int, int]:
    """A corner drawn uniformly among the ``size`` crops of a frame of ``shape`` (padded to ≥ size)."""
    return (
        int(rng.integers(max(0, shape[0] - size[0]) + 1)),
        int(rng.integers(max(0, shape[1] - size[1]) + 1)),
    )


def jitter_clip(clip: np.ndarray, config: ClipConfig, rng: np.random.Generator) -> np.ndarray:
    """Training jitter of a clip ``(C, X, Y, T)``: one draw per clip, the same for every frame (step 4).

    Brightness multiplies by a factor in ``[1 - b, 1 + b]``; contrast scales
    the deviation from the clip's mean by ``[1 - c, 1 + c]``; saturation (3
    channels) scales each pixel's deviation from its channel mean by
    ``[1 - s, 1 + s]``; then, with ``reverse_prob`` (declared
    label-preserving), the frames play backwards. Every draw is made whatever
    is switched on, so a seed gives the same clips whichever stages are on.
    """
    factors = rng.uniform(-1.0, 1.0, size=3)
    reverse = rng.random() < config.reverse_prob
    out = clip.astype(np.float32, copy=True)
    out *= 1.0 + config.brightness * factors[0]
    mean = out.mean()
    out = mean + (out - mean) * (1.0 + config.contrast * factors[1])
    if out.shape[0] == 3 and config.saturation > 0:
        grey = out.mean(axis=0, keepdims=True)
        out = grey + (out - grey) * (1.0 + config.saturation * factors[2])
    if reverse:
        out = out[..., ::-1]
    return np.ascontiguousarray(out, dtype=np.float32)


def training_clip(video: np.ndarray, config: ClipConfig, rng: np.random.Generator) -> np.ndarray:
    """A training sample ``(C, size X, size Y, frames)`` of a prepared video: start (``config.sampling``),
    crop corner (``config.crop``) and jitter drawn from ``rng`` in that order."""
    start = clip_starts(video.shape[3], config.span, config.sampling, rng=rng)[0]
    padded = [max(n, s) for n, s in zip(video.shape[1:3], config.size, strict=True)]
    corner = random_corner(padded, config.size, rng) if config.crop == "random" else None
    return jitter_clip(cut_clip(video, start, config, corner), config, rng)


def evaluation_clips(video: np.ndarray, config: ClipConfig) -> np.ndarray:
    """``eval_clips`` uniform, centre-cropped clips of a prepared video: ``(K, C, size X, size Y, frames)``;
    a classifier averages its logits over the K."""
    starts = clip_starts(video.shape[3], config.span, "uniform", config.eval_clips)
    return np.stack([cut_clip(video, start, config) for start in starts])
