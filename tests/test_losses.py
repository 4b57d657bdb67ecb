"""Losses: values against hand computations, deep-supervision weighting, and clear errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn import functional as F

from medvol.errors import MedvolError
from medvol.losses import (
    DeepSupervisionLoss,
    DiceCELoss,
    available_losses,
    create_loss,
    deep_supervision_weights,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _labels(batch: int = 2, classes: int = 3, size: int = 8) -> torch.Tensor:
    return torch.randint(0, classes, (batch, 1, size, size, size))


def _confident(labels: torch.Tensor, classes: int, scale: float = 50.0) -> torch.Tensor:
    """Logits ``(B, K, X, Y, Z)`` that put (almost) all probability on ``labels``."""
    return scale * F.one_hot(labels[:, 0], classes).permute(0, 4, 1, 2, 3).float()


def _soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, first_class: int) -> torch.Tensor:
    """Mean over samples and classes ≥ first_class of 1 − (2|P∩G| + s) / (|P| + |G| + s), s = 1e-5."""
    probabilities = logits.softmax(dim=1)
    truth = F.one_hot(labels[:, 0], logits.shape[1]).permute(0, 4, 1, 2, 3).float()
    overlap = (probabilities * truth).sum(dim=(2, 3, 4))
    total = probabilities.sum(dim=(2, 3, 4)) + truth.sum(dim=(2, 3, 4))
    dice = (2 * overlap + 1e-5) / (total + 1e-5)
    return (1 - dice)[:, first_class:].mean()


# --- registry ---------------------------------------------------------------------------------------------


def test_losses_are_registered_and_names_checked() -> None:
    assert available_losses() == ["cross_entropy", "bce_with_logits", "dice_ce", "deep_supervision"]
    with pytest.raises(ValueError, match=r"unknown loss 'dice_cd' \(did you mean 'dice_ce'\?\)"):
        create_loss("dice_cd")
    with pytest.raises(MedvolError, match=r"'lamda_ce' \(did you mean 'lambda_ce'\?\)"):
        create_loss("deep_supervision", loss="dice_ce", loss_options={"lamda_ce": 1.0})
    with pytest.raises(MedvolError, match="label_smoothing"):
        create_loss("cross_entropy", label_smoothing=1.5)
    with pytest.raises(MedvolError, match="class_weights"):
        create_loss("dice_ce", class_weights=[1.0, -1.0])


# --- cross-entropy ----------------------------------------------------------------------------------------


def test_cross_entropy_label_smoothing_matches_the_hand_formula() -> None:
    logits, target, smoothing = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2]), 0.2
    log_p = logits.log_softmax(dim=1)
    expected = ((1 - smoothing) * -log_p[torch.arange(5), target] + smoothing * -log_p.mean(dim=1)).mean()
    loss = create_loss("cross_entropy", label_smoothing=smoothing)(logits, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_cross_entropy_class_weights_give_a_weighted_mean() -> None:
    logits, target, weights = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 2]), torch.tensor([1.0, 2.0, 5.0])
    nll = -logits.log_softmax(dim=1)[torch.arange(5), target]
    expected = (weights[target] * nll).sum() / weights[target].sum()
    loss = create_loss("cross_entropy", class_weights=[1.0, 2.0, 5.0])(logits, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_cross_entropy_accepts_b1_targets_and_refuses_bad_ones() -> None:
    loss, logits = create_loss("cross_entropy"), torch.randn(3, 2)
    assert loss(logits, torch.tensor([[0], [1], [1]])) == loss(logits, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match=r"targets \(B,\) or \(B, 1\)"):
        loss(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        loss(logits, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="fractional"):
        loss(logits, torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="logits \\(B, K\\)"):
        loss(torch.randn(3, 2, 4, 4, 4), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="class_weights has 3 values for 2 classes"):
        create_loss("cross_entropy", class_weights=[1, 1, 1])(logits, torch.tensor([0, 1, 1]))


# --- BCE with logits --------------------------------------------------------------------------------------


def test_bce_pos_weight_matches_the_hand_formula() -> None:
    logits, target = torch.randn(6, 1), torch.tensor([1, 0, 1, 1, 0, 0])
    y, p = target.float()[:, None], logits.sigmoid()
    expected = -(3.0 * y * p.log() + (1 - y) * (1 - p).log()).mean()
    loss = create_loss("bce_with_logits", pos_weight=3.0)
    assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss(logits[:, 0], target[:, None]).item() == pytest.approx(expected.item(), rel=1e-5)


def test_bce_refuses_mismatched_shapes_and_non_binary_targets() -> None:
    loss = create_loss("bce_with_logits")
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.randn(4, 2), torch.tensor([0, 1, 1, 0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        loss(torch.randn(4, 1), torch.tensor([0, 1, 2, 0]))


# --- Dice + CE --------------------------------------------------------------------------------------------


def test_dice_ce_of_a_perfect_prediction_is_near_zero() -> None:
    labels = _labels()
    logits = _confident(labels, 3)
    assert create_loss("dice_ce")(logits, labels).item() == pytest.approx(0.0, abs=1e-4)
    dice_only = create_loss("dice_ce", lambda_ce=0.0, include_background=True)
    assert dice_only(logits, labels).item() == pytest.approx(0.0, abs=1e-4)
    assert dice_only(_confident((labels + 1) % 3, 3), labels).item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("include_background", [False, True])
def test_dice_ce_is_soft_dice_plus_cross_entropy(include_background: bool) -> None:
    logits, labels = torch.randn(2, 3, 8, 8, 8), _labels()
    expected = _soft_dice_loss(logits, labels, 0 if include_background else 1) + F.cross_entropy(
        logits, labels[:, 0]
    )
    loss = create_loss("dice_ce", include_background=include_background)(logits, labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_dice_ce_accepts_integer_valued_float_labels() -> None:
    logits, labels = torch.randn(2, 3, 8, 8, 8), _labels()
    loss = create_loss("dice_ce")
    assert loss(logits, labels.float()).item() == pytest.approx(loss(logits, labels.to(torch.uint8)).item())


@pytest.mark.parametrize(
    ("logits_shape", "labels", "message"),
    [
        ((2, 3, 8, 8, 8), torch.zeros(2, 8, 8, 8, dtype=torch.long), r"labels \(B, 1, X, Y, Z\)"),
        ((2, 3, 8, 8, 8), torch.zeros(2, 1, 8, 8, 4, dtype=torch.long), r"labels \(B, 1, X, Y, Z\)"),
        ((2, 1, 8, 8, 8), torch.zeros(2, 1, 8, 8, 8, dtype=torch.long), "K ≥ 2"),
        ((2, 3, 8, 8, 8), torch.full((2, 1, 8, 8, 8), 3), r"labels must lie in \[0, 3\)"),
        ((2, 3, 8, 8, 8), torch.full((2, 1, 8, 8, 8), 0.5), "fractional"),
    ],
)
def test_dice_ce_explains_bad_shapes_and_labels(
    logits_shape: tuple, labels: torch.Tensor, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        create_loss("dice_ce")(torch.randn(logits_shape), labels)


def test_plain_loss_given_deep_supervision_outputs_points_to_the_wrapper() -> None:
    logits, labels = torch.randn(2, 3, 8, 8, 8), _labels()
    with pytest.raises(ValueError, match="deep_supervision"):
        create_loss("dice_ce")((logits, logits), labels)


# --- deep supervision -------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_deep_supervision_weights_halve_and_sum_to_one(count: int) -> None:
    weights = deep_supervision_weights(count)
    assert sum(weights) == pytest.approx(1.0)
    assert all(later == pytest.approx(earlier / 2) for earlier, later in itertools.pairwise(weights))
    if count == 3:
        assert weights == pytest.approx([4 / 7, 2 / 7, 1 / 7])


def test_deep_supervision_loss_is_the_weighted_sum_at_full_resolution() -> None:
    labels, inner = _labels(), DiceCELoss()
    outputs = tuple(torch.randn(2, 3, 8, 8, 8, requires_grad=True) for _ in range(3))
    expected = sum(w * inner(o, labels) for w, o in zip([4 / 7, 2 / 7, 1 / 7], outputs, strict=True))
    loss = create_loss("deep_supervision", loss="dice_ce")(outputs, labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in outputs)  # every head is trained


def test_deep_supervision_downsamples_the_labels_to_each_coarser_output() -> None:
    labels, inner = _labels(), DiceCELoss()
    full, half = torch.randn(2, 3, 8, 8, 8), torch.randn(2, 3, 4, 4, 4)
    expected = 2 / 3 * inner(full, labels) + 1 / 3 * inner(half, labels[:, :, ::2, ::2, ::2])
    assert DeepSupervisionLoss(inner)([full, half], labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_deep_supervision_weights_can_be_given_and_are_normalised() -> None:
    labels, inner = _labels(), DiceCELoss()
    a, b = torch.randn(2, 3, 8, 8, 8), torch.randn(2, 3, 8, 8, 8)
    loss = DeepSupervisionLoss(inner, weights=[3.0, 1.0])
    assert loss((a, b), labels).item() == pytest.approx(
        (0.75 * inner(a, labels) + 0.25 * inner(b, labels)).item()
    )
    with pytest.raises(ValueError, match="2 weights for 3 outputs"):
        loss((a, b, b), labels)


def test_deep_supervision_loss_in_eval_mode_is_the_inner_loss() -> None:
    logits, labels = torch.randn(2, 3, 8, 8, 8), _labels()
    loss = create_loss("deep_supervision", loss="dice_ce")
    assert loss(logits, labels).item() == pytest.approx(DiceCELoss()(logits, labels).item())
    with pytest.raises(ValueError, match=r"torch.unbind\(outputs, dim=1\)"):
        loss(torch.stack([logits, logits], dim=1), labels)  # MONAI's raw DynUNet training output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["cross_entropy", "dice_ce"])
def test_class_weights_follow_the_logits_to_the_gpu(name: str) -> None:
    loss = create_loss(name, class_weights=[1.0, 2.0, 3.0])  # built on the CPU, never moved
    if name == "cross_entropy":
        logits, target = torch.randn(4, 3, device="cuda"), torch.tensor([0, 1, 2, 1], device="cuda")
    else:
        logits, target = torch.randn(2, 3, 8, 8, 8, device="cuda"), _labels().cuda()
    value = loss(logits, target)
    assert value.device.type == "cuda"
    assert value.item() == pytest.approx(loss.cpu()(logits.cpu(), target.cpu()).item(), rel=1e-4)
