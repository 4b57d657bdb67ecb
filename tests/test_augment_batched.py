"""Batched augmentation: the same transforms as the per-sample path, drawn from the same distributions.

Agreement tolerances. Spatial: the batched grid and MONAI's grid are the same
float32 coordinates computed in another order, so they differ by a few ULPs
(~1e-6 voxel); a linear interpolation then differs by at most that times the
image's gradient. On smooth test images in [0, 1] (gradient < 1 per voxel) the
bound is 1e-5; labels (nearest) must agree exactly. Intensity: the same
formulas in float32, so 1e-5 relative.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter
from monai.transforms import AdjustContrast, Affine, RandBiasField, Resample, ScaleIntensityFixedMean
from monai.transforms.utils import create_grid
from scipy import ndimage

from medvol.augment import AugmentConfig, build_augmenter, worker_seed
from medvol.augment.batched import (
    BatchAugmenter,
    bias_field,
    contrast,
    elastic_displacement,
    gamma,
    gaussian_blur,
    resolve_where,
    sample_only_config,
    sampling_grid,
    spatial_matrix,
)
from medvol.errors import MedvolError

SHAPE = (28, 34, 22)  # a different size per axis, so that an axis mix-up cannot pass
SPATIAL_TOLERANCE = 1e-5
NOTHING = AugmentConfig(
    **{f.name: 0.0 for f in dataclasses.fields(AugmentConfig) if f.name.endswith("_prob")}
)
ADRENAL_RECIPE = dataclasses.replace(
    NOTHING, flip_axes=(0, 1, 2), flip_prob=0.5, affine_prob=0.8, rotate_deg=15.0, scale_range=0.1,
    translate_vox=2.0,
)  # fmt: skip


def blob(centre: tuple[float, float, float] = (11.0, 20.0, 8.0)) -> np.ndarray:
    """A smooth asymmetric blob ``(1, X, Y, Z)`` in [0, 1], off centre on every axis."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    a, b, c = centre
    return np.exp(-((x - a) ** 2 / 30 + (y - b) ** 2 / 18 + (z - c) ** 2 / 24))[None].astype(np.float32)


def labels(image: np.ndarray) -> np.ndarray:
    return (image > 0.3).astype(np.int64) + 4 * (image > 0.7)


def resample(image: np.ndarray, matrix: np.ndarray, mode: str) -> np.ndarray:
    """The batched path's resampling of one ``(C, X, Y, Z)`` volume by ``matrix``."""
    grid = sampling_grid(torch.tensor(matrix[None], dtype=torch.float32), SHAPE)
    volume = torch.tensor(image)[None].float()
    return F.grid_sample(volume, grid, mode, "zeros", align_corners=False)[0].numpy()


def random_params(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    return (
        rng.uniform(-0.5, 0.5, 3),
        rng.uniform(-0.1, 0.1, 6),
        rng.uniform(-3, 3, 3),
        rng.uniform(0.85, 1.15, 3),
    )


# -- the batched resampling is MONAI's resampling ------------------------------------------------


def test_affine_agrees_with_monai_for_the_same_parameters() -> None:
    image = blob()
    label = labels(image)
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(20):
        rotate, shear, translate, scale = random_params(rng)
        monai = Affine(
            rotate_params=rotate.tolist(),
            shear_params=shear.tolist(),
            translate_params=translate.tolist(),
            scale_params=scale.tolist(),
            padding_mode="zeros",
            image_only=True,
        )
        matrix = spatial_matrix(rotate, shear, translate, scale)
        expected = np.asarray(monai(torch.tensor(image), mode="bilinear"))
        worst = max(worst, float(np.abs(resample(image, matrix, "bilinear") - expected).max()))
        expected_label = np.asarray(monai(torch.tensor(label).float(), mode="nearest"))
        np.testing.assert_array_equal(resample(label, matrix, "nearest"), expected_label)
    assert worst < SPATIAL_TOLERANCE
    # The comparison can fail: another matrix gives another image.
    other = spatial_matrix(rotate + 0.05, shear, translate, scale)
    assert np.abs(resample(image, other, "bilinear") - expected).max() > 0.01


def test_flips_are_exact_and_compose_with_the_affine_in_one_resampling() -> None:
    image = blob()
    label = labels(image)
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])  # X and Z
    np.testing.assert_array_equal(resample(label, flip, "nearest"), label[:, ::-1, :, ::-1])
    assert np.abs(resample(image, flip, "bilinear") - image[:, ::-1, :, ::-1]).max() < SPATIAL_TOLERANCE
    # Per sample: flip, then MONAI's affine (two steps); batched: one resampling of flip @ affine.
    rotate, shear, translate, scale = random_params(np.random.default_rng(1))
    monai = Affine(
        rotate_params=rotate.tolist(),
        shear_params=shear.tolist(),
        translate_params=translate.tolist(),
        scale_params=scale.tolist(),
        padding_mode="zeros",
        image_only=True,
    )
    flipped = np.ascontiguousarray(image[:, ::-1, :, ::-1])
    two_steps = np.asarray(monai(torch.tensor(flipped), mode="bilinear"))
    one_step = resample(image, flip @ spatial_matrix(rotate, shear, translate, scale), "bilinear")
    assert np.abs(one_step - two_steps).max() < SPATIAL_TOLERANCE


def test_elastic_agrees_with_monai_for_the_same_offsets() -> None:
    """MONAI ``Rand3DElastic``: offsets smoothed by ``GaussianFilter(sigma, truncated=3)``, times the
    magnitude, added to the centred grid; here the same offsets through the batched functions."""
    image = blob()
    sigma, magnitude = 5.5, 120.0
    generator = torch.Generator().manual_seed(3)
    on = np.array([True])
    displacement = elastic_displacement(on, np.array([sigma]), np.array([magnitude]), SHAPE, "cpu", generator)
    offsets = torch.rand((1, 3, *SHAPE), generator=torch.Generator().manual_seed(3)) * 2 - 1
    grid = torch.as_tensor(create_grid(SHAPE, backend="torch"))
    grid[:3] += GaussianFilter(3, sigma, 3.0)(offsets)[0] * magnitude
    expected = np.asarray(Resample(mode="bilinear", padding_mode="zeros")(torch.tensor(image), grid))
    ours = sampling_grid(torch.eye(4)[None], SHAPE, displacement)
    out = F.grid_sample(torch.tensor(image)[None], ours, "bilinear", "zeros", align_corners=False)[0]
    assert float(displacement.abs().max()) > 0.5, "the displacement must be more than interpolation noise"
    assert np.abs(out.numpy() - expected).max() < SPATIAL_TOLERANCE


# -- conventions: an asymmetric object goes where the transform must put it ----------------------


def test_translation_rotation_and_flip_move_an_object_where_they_must() -> None:
    """Matrices map output to input (MONAI's convention): ``out(c) = in(A c + t)``, ``c`` the
    centred voxel index ``o − (n − 1)/2``. So a translation ``t`` moves the content by −t, a
    rotation of +90° about Z (``R`` maps the X axis onto Y) moves content at ``(a, b, z)`` to
    ``(b, −a, z)``, and a flip of Y moves it to ``(a, −b, z)``. An L of three voxels, values 1–3,
    is followed through each (nearest, so it lands on voxels exactly)."""
    centre = (np.array(SHAPE) - 1) / 2
    voxels = np.array([[19, 13, 5], [20, 13, 5], [19, 15, 5]])  # off centre on every axis
    label = np.zeros((1, *SHAPE), np.int64)
    for value, (x, y, z) in enumerate(voxels, start=1):
        label[0, x, y, z] = value
    zero, no_shear, one = np.zeros(3), np.zeros(6), np.ones(3)

    def where(matrix: np.ndarray) -> np.ndarray:
        out = resample(label, matrix, "nearest")[0]
        return np.array([np.argwhere(out == value)[0] for value in (1, 2, 3)])

    translate = np.array([3.0, -2.0, 1.0])
    np.testing.assert_array_equal(where(spatial_matrix(zero, no_shear, translate, one)), voxels - translate)
    a, b, z = (voxels - centre).T
    rotated = np.stack([b, -a, z], axis=1) + centre
    quarter_turn_z = spatial_matrix(np.array([0, 0, np.pi / 2]), no_shear, zero, one)
    np.testing.assert_array_equal(where(quarter_turn_z), rotated)
    flipped = np.stack([a, -b, z], axis=1) + centre
    np.testing.assert_array_equal(where(np.diag([1.0, -1.0, 1.0, 1.0])), flipped)


# -- intensity stages: the same formulas as the per-sample path ---------------------------------


def test_intensity_stages_agree_with_monai_and_scipy() -> None:
    rng = np.random.default_rng(2)
    image = rng.normal(size=(2, *SHAPE)).astype(np.float32)  # two channels
    batch = torch.tensor(image)[None]

    def close(ours: torch.Tensor, expected: np.ndarray) -> None:
        np.testing.assert_allclose(ours[0].numpy(), expected, rtol=1e-5, atol=1e-5)

    coeffs = rng.uniform(0.0, 0.3, 20)
    field = RandBiasField()._generate_random_field(SHAPE, 3, coeffs.tolist())
    close(bias_field(batch, coeffs[None]), image * np.exp(field))
    sigma = np.array([[0.6, 1.3, 0.9]])
    close(gaussian_blur(batch, sigma, 4.0), ndimage.gaussian_filter(image, (0, *sigma[0]), mode="nearest"))
    close(contrast(batch, torch.tensor(1.2)), np.asarray(ScaleIntensityFixedMean(factor=0.2)(image)))
    close(gamma(batch, torch.tensor(1.4)), np.asarray(AdjustContrast(1.4)(image)))


def test_per_sample_parameters_stay_with_their_sample() -> None:
    image = torch.stack([torch.full((1, *SHAPE), float(v)) for v in (1.0, 2.0, 3.0)])
    out = gamma(image + torch.rand(image.shape), torch.tensor([0.5, 1.0, 2.0]).view(-1, 1, 1, 1, 1))
    assert float(out[0].mean()) > float(image[0].mean()) + 0.5 - 0.1  # gamma < 1 brightens
    sharp = torch.zeros((2, 1, *SHAPE))
    sharp[:, :, 14, 17, 11] = 1.0
    blurred = gaussian_blur(sharp, np.array([[0.5] * 3, [2.0] * 3]), 4.0)
    assert float(blurred[0].max()) > 3 * float(blurred[1].max())


# -- the draws follow the config ----------------------------------------------------------------


def binomial_ok(count: int, n: int, p: float) -> bool:
    """``count`` within 5 standard deviations of ``n · p`` (a false alarm has probability < 1e-6)."""
    return abs(count - n * p) <= 5 * np.sqrt(n * p * (1 - p)) + 1


def test_spatial_draws_respect_the_config() -> None:
    config = dataclasses.replace(ADRENAL_RECIPE, flip_axes=(0, 2), shear_range=0.05, elastic_prob=0.3)
    n = 4000
    p = BatchAugmenter(config, seed=0).draw_spatial(n)
    assert not p["flip"][:, 1].any(), "flipped along an axis the config does not allow"
    for axis in (0, 2):
        assert binomial_ok(int(p["flip"][:, axis].sum()), n, 0.5)
    assert binomial_ok(int(p["affine"].sum()), n, 0.8)
    assert binomial_ok(int(p["elastic"].sum()), n, 0.3)
    for key, low, high in (
        ("rotate", -np.radians(15), np.radians(15)),
        ("scale", 0.9, 1.1),
        ("translate", -2.0, 2.0),
        ("shear", -0.05, 0.05),
        ("sigma", *config.elastic_sigma_vox),
        ("magnitude", *config.elastic_magnitude),
    ):
        values = p[key]
        assert values.min() >= low and values.max() <= high, key
        spread = (high - low) / 2  # uniform: reaches both ends of the range
        assert values.min() < low + 0.01 * spread and values.max() > high - 0.01 * spread, key


@pytest.mark.parametrize(
    ("stage", "prob", "factor_range"),
    [("brightness", 0.3, (0.75, 1.25)), ("contrast", 0.6, (0.8, 1.2))],
)
def test_intensity_draws_respect_the_config(
    stage: str, prob: float, factor_range: tuple[float, float]
) -> None:
    spread = factor_range[1] - 1.0
    config = dataclasses.replace(NOTHING, **{f"{stage}_prob": prob, f"{stage}_range": spread})
    n = 2000
    base = torch.rand((n, 1, 4, 4, 4)) + 1.0
    out, _ = BatchAugmenter(config, seed=1)(base)
    centred = base - base.mean(dim=(1, 2, 3, 4), keepdim=True)
    moved = out - out.mean(dim=(1, 2, 3, 4), keepdim=True) if stage == "contrast" else out
    reference = centred if stage == "contrast" else base
    factors = (moved.flatten(1) / reference.flatten(1)).median(1).values.numpy()
    changed = np.abs(factors - 1) > 1e-6
    assert binomial_ok(int(changed.sum()), n, prob)
    assert factors.min() >= factor_range[0] - 1e-4 and factors.max() <= factor_range[1] + 1e-4


# -- the batched augmenter as a whole ------------------------------------------------------------


def every_batched_stage() -> AugmentConfig:
    return dataclasses.replace(
        AugmentConfig(flip_axes=(0, 1, 2), shear_range=0.05, translate_vox=2.0, rician_prob=1.0),
        **{f"{s}_prob": 0.7 for s in ("flip", "affine", "elastic", "bias", "blur", "noise", "brightness")},
        **{f"{s}_prob": 0.7 for s in ("contrast", "gamma")},
    )


def batch_of(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([torch.tensor(blob((8.0 + i, 20.0 - i, 8.0 + i))) for i in range(n)])
    return images, torch.stack([torch.tensor(labels(image.numpy())).to(torch.uint8) for image in images])


def test_labels_keep_values_and_dtype_and_move_with_the_image() -> None:
    images, label_maps = batch_of()
    config = dataclasses.replace(every_batched_stage(), elastic_prob=1.0, affine_prob=1.0, rotate_deg=30.0)
    out, out_labels = BatchAugmenter(config, seed=2)(images, label_maps)
    assert out_labels is not None and out_labels.dtype == torch.uint8 and out_labels.shape == label_maps.shape
    assert set(torch.unique(out_labels).tolist()) <= {0, 1, 5}
    assert torch.isfinite(out).all() and out.shape == images.shape
    spatial_only, _ = BatchAugmenter(config.spatial_only(), seed=2)(images, label_maps)
    _, elsewhere = BatchAugmenter(config.spatial_only(), seed=3)(images, label_maps)
    assert elsewhere is not None
    for i in range(len(images)):
        moved, inside = out_labels[i, 0] > 0, spatial_only[i, 0] > 0.3
        assert dice(moved, inside) > 0.9, "the label must follow its own image"
        assert dice(elsewhere[i, 0] > 0, inside) < 0.8, "a label drawn with another seed does not"


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_inputs_are_not_changed_and_seeds_reproduce() -> None:
    images, label_maps = batch_of()
    kept, kept_labels = images.clone(), label_maps.clone()
    config = every_batched_stage()
    first = BatchAugmenter(config, worker_seed(4, 0, 0, 0))(images, label_maps)
    again = BatchAugmenter(config, worker_seed(4, 0, 0, 0))(images, label_maps)
    assert torch.equal(images, kept) and torch.equal(label_maps, kept_labels)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    for other in (worker_seed(4, 1, 0, 0), worker_seed(4, 0, 0, 1), worker_seed(5, 0, 0, 0)):
        assert not torch.allclose(BatchAugmenter(config, other)(images, label_maps)[0], first[0])
    augmenter = BatchAugmenter(config, worker_seed(4, 0, 0, 0))
    augmenter(images, label_maps)
    second = augmenter(images, label_maps)
    assert not torch.allclose(second[0], first[0]), "successive batches must make new draws"
    augmenter.reseed(worker_seed(4, 0, 0, 0))
    assert torch.equal(augmenter(images, label_maps)[0], first[0])


def test_nothing_drawn_leaves_the_batch_unchanged() -> None:
    images, label_maps = batch_of()
    out, out_labels = BatchAugmenter(NOTHING, seed=0)(images, label_maps)
    assert torch.equal(out, images) and out_labels is not None and torch.equal(out_labels, label_maps)


def test_batch_mode_leaves_only_the_k_space_artefacts_per_sample() -> None:
    assert sample_only_config(ADRENAL_RECIPE) is None
    part = sample_only_config(dataclasses.replace(AugmentConfig(), motion_prob=0.2, gibbs_prob=0.1))
    assert part is not None and (part.motion_prob, part.gibbs_prob) == (0.2, 0.1)
    assert all(
        getattr(part, f.name) == 0
        for f in dataclasses.fields(part)
        if f.name.endswith("_prob") and f.name not in ("motion_prob", "gibbs_prob")
    )
    with pytest.raises(MedvolError, match="where must be"):
        AugmentConfig(where="gpu")  # type: ignore[arg-type]


def test_auto_augments_per_batch_on_a_gpu_or_without_loader_workers() -> None:
    auto, cpu, cuda = AugmentConfig(), torch.device("cpu"), torch.device("cuda")
    assert auto.where == "auto"
    assert resolve_where(auto, cpu, num_workers=0) == "batch"
    assert resolve_where(auto, cpu, num_workers=2) == "sample"
    assert resolve_where(auto, cuda, num_workers=2) == "batch"
    for where in ("batch", "sample"):
        assert resolve_where(dataclasses.replace(auto, where=where), cpu, 2) == where


def test_batched_and_per_sample_paths_draw_alike_on_average() -> None:
    """The same config through both paths: the mean augmented image agrees (same distributions)."""
    image = blob()
    n = 160
    per_sample = build_augmenter(ADRENAL_RECIPE, seed=0)
    sample_mean = np.mean([per_sample({"image": image})["image"] for _ in range(n)], axis=0)
    batched, _ = BatchAugmenter(ADRENAL_RECIPE, seed=0)(torch.tensor(image)[None].repeat(n, 1, 1, 1, 1))
    batch_mean = batched.mean(0).numpy()
    assert np.abs(batch_mean - sample_mean).mean() < 0.1 * np.abs(sample_mean - image).mean() + 0.01


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batch_matches_cpu_batch() -> None:
    images, label_maps = batch_of()
    config = dataclasses.replace(ADRENAL_RECIPE, rotate_deg=30.0)
    cpu = BatchAugmenter(config, seed=7)(images, label_maps)
    gpu = BatchAugmenter(config, seed=7)(images.cuda(), label_maps.cuda())
    assert gpu[0].device.type == "cuda" and gpu[1] is not None and gpu[1].device.type == "cuda"
    assert float((gpu[0].cpu() - cpu[0]).abs().max()) < 1e-4
    assert cpu[1] is not None and float((gpu[1].cpu() != cpu[1]).float().mean()) < 1e-3
