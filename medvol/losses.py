"""Training losses by name: ``create_loss("dice_ce", class_weights=[0.2, 1, 1])``.

====================  ==========================  ====================================  =====================
name                  for                         logits                                target
====================  ==========================  ====================================  =====================
``cross_entropy``     classification              ``(B, K)``                            ``(B,)``/``(B, K)``
``bce_with_logits``   binary (or multi-label)     ``(B,)``, ``(B, 1)`` (or ``(B, K)``)  0/1, same shape
``dice_ce``           segmentation                ``(B, K, X, Y, Z)``, K ≥ 2            ``(B, 1, X, Y, Z)``
``deep_supervision``  a segmenter's extra heads   a tuple of the above, or one tensor   as its inner loss
====================  ==========================  ====================================  =====================

Targets of ``cross_entropy`` and ``dice_ce`` are integer class indices; ``cross_entropy``
also takes soft targets ``(B, K)`` (class probabilities, as MixUp and CutMix make).

Every loss checks shapes, integer labels and label range before computing, and
says what it expected; a tuple of outputs given to a plain loss is refused with
a pointer to ``deep_supervision``. Names and options are checked like models'
(see :func:`medvol.models.registry.build`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import monai.losses
import torch
from torch import nn
from torch.nn import functional as F

from medvol.errors import ConfigurationError
from medvol.models.registry import build


def create_loss(name: str, **options: Any) -> nn.Module:
    """Build a registered loss.

    Args:
        name: one of :func:`available_losses`.
        **options: keyword options of that loss's class (see its docstring).

    Raises:
        ConfigurationError: unknown name, unknown option or invalid option value.
    """
    return build("loss", _LOSSES, name, options)


def loss_factories() -> dict[str, Any]:
    """The registered losses by name."""
    return _LOSSES


def available_losses() -> list[str]:
    """The registered loss names."""
    return list(_LOSSES)


class _Loss(nn.Module):
    """Base of medvol's losses: their buffers (class weights) follow the logits' device.

    So a loss built on the CPU works on CUDA logits even when the caller forgot
    ``loss.to(device)``; the move happens once.
    """

    def _follow(self, logits: torch.Tensor) -> None:
        if any(buffer.device != logits.device for buffer in self.buffers()):
            self.to(logits.device)


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy for single-label classification (``torch.nn.CrossEntropyLoss``).

    Args:
        class_weights: one weight per class (K values); the batch loss is then the
            weighted mean ``Σ w[y_i]·ℓ_i / Σ w[y_i]``.
        label_smoothing: ε in [0, 1): the target puts ``1-ε`` on the true class and
            ``ε/K`` on every class.
    """

    def __init__(self, class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        _check_fraction("label_smoothing", label_smoothing)
        weight = _positive_tensor("class_weights", class_weights)
        self.loss = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch.

        Args:
            logits: ``(B, K)``.
            target: class indices ``(B,)`` or ``(B, 1)``, integers in ``[0, K)``; or soft
                targets ``(B, K)`` float, rows of class probabilities summing to 1 (MixUp,
                CutMix: ``augment.mix``). With soft targets and class weights the loss is
                ``mean_i Σ_c w_c·p_ic·(−log q_ic)`` (torch's definition).
        """
        _check_tensor(logits, "(B, K)")
        if logits.ndim != 2:
            raise ValueError(f"cross_entropy expects logits (B, K); got {tuple(logits.shape)}")
        if target.is_floating_point() and target.shape == logits.shape and logits.shape[1] > 1:
            _check_weights(self.loss.weight, logits.shape[1])
            _check_probabilities(target)
            self._follow(logits)
            soft: torch.Tensor = self.loss(logits, target.to(logits.dtype))
            return soft
        if target.ndim == 2 and target.shape[1] == 1:
            target = target[:, 0]
        if target.shape != logits.shape[:1]:
            raise ValueError(
                f"cross_entropy expects targets (B,) or (B, 1) for logits {tuple(logits.shape)}; "
                f"got {tuple(target.shape)}"
            )
        _check_weights(self.loss.weight, logits.shape[1])
        _check_labels(target, logits.shape[1], "cross_entropy")
        self._follow(logits)
        loss: torch.Tensor = self.loss(logits, target.long())
        return loss


class BCEWithLogitsLoss(_Loss):
    """Sigmoid binary cross-entropy (``torch.nn.BCEWithLogitsLoss``) for one logit per sample
    (or K independent labels).

    Args:
        pos_weight: weight of the positive term (one value, or K for multi-label);
            ``n_negative / n_positive`` balances a rare positive class.
    """

    def __init__(self, pos_weight: float | Sequence[float] | None = None) -> None:
        super().__init__()
        self.pos_weight: torch.Tensor | None
        self.register_buffer(
            "pos_weight",
            _positive_tensor(
                "pos_weight", [pos_weight] if isinstance(pos_weight, (int, float)) else pos_weight
            ),
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over all logits.

        Args:
            logits: ``(B,)``, ``(B, 1)`` or ``(B, K)``.
            target: values in [0, 1] of the same shape (``(B,)`` and ``(B, 1)`` are interchangeable).
        """
        _check_tensor(logits, "(B,) or (B, 1)")
        if logits.ndim == 2 and logits.shape[1] == 1 and target.shape == logits.shape[:1]:
            target = target[:, None]
        elif logits.ndim == 1 and target.shape == (logits.shape[0], 1):
            target = target[:, 0]
        if logits.ndim not in (1, 2) or target.shape != logits.shape:
            raise ValueError(
                f"bce_with_logits expects logits (B,), (B, 1) or (B, K) and targets of the same shape; "
                f"got logits {tuple(logits.shape)} and targets {tuple(target.shape)}"
            )
        if bool(((target < 0) | (target > 1)).any()):
            raise ValueError("bce_with_logits expects targets in [0, 1]")
        if self.pos_weight is not None and self.pos_weight.numel() not in (1, logits[0].numel()):
            raise ValueError(
                f"pos_weight has {self.pos_weight.numel()} values for {logits[0].numel()} logits per sample"
            )
        self._follow(logits)
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=self.pos_weight)


class DiceCELoss(_Loss):
    """Soft Dice + cross-entropy for segmentation: MONAI's ``DiceCELoss`` with softmax and one-hot labels.

    The Dice term is computed per sample and per class (``batch=False``) or over
    the whole batch per class (``batch=True``), then averaged, with MONAI's
    smoothing of 1e-5: a class absent from both the labels and the prediction
    scores a Dice of 1 (loss 0).

    Args:
        class_weights: one weight per class (K values), applied to the CE term and,
            as MONAI does, to the per-class Dice terms.
        label_smoothing: ε in [0, 1) for the CE term.
        include_background: count class 0 in the Dice term. Off by default, as in
            nnU-Net: the background Dice is near 1 from the start and adds nothing.
        batch: batch Dice (see above).
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the CE term.
    """

    def __init__(
        self,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        include_background: bool = False,
        batch: bool = False,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
    ) -> None:
        super().__init__()
        _check_fraction("label_smoothing", label_smoothing)
        if lambda_dice < 0 or lambda_ce < 0:
            raise ConfigurationError(f"lambda_dice and lambda_ce must be ≥ 0; got {lambda_dice}, {lambda_ce}")
        self.num_weights = None if class_weights is None else len(class_weights)
        self.loss = monai.losses.DiceCELoss(
            include_background=include_background,
            to_onehot_y=True,
            softmax=True,
            batch=batch,
            weight=_positive_tensor("class_weights", class_weights),
            lambda_dice=lambda_dice,
            lambda_ce=lambda_ce,
            label_smoothing=label_smoothing,
        )

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss.

        Args:
            logits: ``(B, K, X, Y, Z)``, K ≥ 2 (background included).
            labels: ``(B, 1, X, Y, Z)`` class indices in ``[0, K)`` (any integer
                dtype, or floats holding whole numbers).
        """
        _check_tensor(logits, "(B, K, X, Y, Z)")
        if logits.ndim != 5 or logits.shape[1] < 2:
            raise ValueError(
                f"dice_ce expects logits (B, K, X, Y, Z) with K ≥ 2 (background included); "
                f"got {tuple(logits.shape)}"
            )
        expected = (logits.shape[0], 1, *logits.shape[2:])
        if tuple(labels.shape) != expected:
            raise ValueError(
                f"dice_ce expects labels (B, 1, X, Y, Z) = {expected} for logits {tuple(logits.shape)}; "
                f"got {tuple(labels.shape)}"
            )
        if self.num_weights is not None and self.num_weights != logits.shape[1]:
            raise ValueError(f"class_weights has {self.num_weights} values for {logits.shape[1]} classes")
        _check_labels(labels, logits.shape[1], "dice_ce")
        self._follow(logits)
        loss: torch.Tensor = self.loss(logits, labels)
        return loss


def deep_supervision_weights(num_outputs: int) -> list[float]:
    """nnU-Net's deep-supervision weights ``1, 1/2, 1/4, …`` normalised to sum to 1.

    Example: ``deep_supervision_weights(3) == [4/7, 2/7, 1/7]``.
    """
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be ≥ 1; got {num_outputs}")
    raw = [0.5**index for index in range(num_outputs)]
    return [weight / sum(raw) for weight in raw]


class DeepSupervisionLoss(nn.Module):
    """A weighted sum of one loss over a model's outputs, finest first.

    Given a tuple ``(final, head_1, head_2, …)`` of logits (as medvol's
    ``dynunet(deep_supervision=True)`` returns in training mode), the loss is
    ``Σ w_i · loss(output_i, target_i)``. Each ``target_i`` is the target
    resampled (nearest neighbour: labels stay labels) to the grid of
    ``output_i`` when the grids differ, so heads at their native resolution work
    as well as heads upsampled to full size; logits are never resampled. Given
    one tensor (the model in eval mode), it is just ``loss(output, target)``, so
    the same loss object serves training and validation.

    Args:
        loss: the loss of each output, e.g. :class:`DiceCELoss`.
        weights: one weight per output, normalised to sum to 1; default
            :func:`deep_supervision_weights` for the number of outputs.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if weights is not None and (len(weights) == 0 or min(weights) < 0 or sum(weights) <= 0):
            raise ConfigurationError(f"weights must be non-negative with a positive sum; got {weights!r}")
        self.loss = loss
        self.weights = None if weights is None else [float(weight) / sum(weights) for weight in weights]

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Weighted loss.

        Args:
            outputs: a tuple/list of logits ``(B, K, X_i, Y_i, Z_i)``, or one tensor ``(B, K, X, Y, Z)``.
            target: the target at full resolution, as the inner loss expects it
                (e.g. labels ``(B, 1, X, Y, Z)``).
        """
        if isinstance(outputs, torch.Tensor):
            if outputs.ndim == target.ndim + 1:
                raise ValueError(
                    f"got one stacked tensor {tuple(outputs.shape)}, as MONAI's DynUNet returns in training; "
                    "pass torch.unbind(outputs, dim=1) or use medvol's dynunet, which returns a tuple"
                )
            loss: torch.Tensor = self.loss(outputs, target)
            return loss
        weights = self.weights or deep_supervision_weights(len(outputs))
        if len(weights) != len(outputs):
            raise ValueError(f"deep_supervision has {len(weights)} weights for {len(outputs)} outputs")
        terms = [
            weight * self.loss(output, _resample_target(target, output.shape[2:]))
            for weight, output in zip(weights, outputs, strict=True)
        ]
        return torch.stack(terms).sum()


def deep_supervision(
    loss: str = "dice_ce",
    loss_options: Mapping[str, Any] | None = None,
    weights: Sequence[float] | None = None,
) -> DeepSupervisionLoss:
    """:class:`DeepSupervisionLoss` around ``create_loss(loss, **loss_options)``."""
    if loss == "deep_supervision":
        raise ConfigurationError("deep_supervision cannot wrap itself")
    return DeepSupervisionLoss(create_loss(loss, **dict(loss_options or {})), weights)


_LOSSES: dict[str, Any] = {
    "cross_entropy": CrossEntropyLoss,
    "bce_with_logits": BCEWithLogitsLoss,
    "dice_ce": DiceCELoss,
    "deep_supervision": deep_supervision,
}


def _resample_target(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(target.shape[2:]) == tuple(size):
        return target
    if target.ndim != 2 + len(size):
        raise ValueError(f"cannot resample a target {tuple(target.shape)} to the grid {tuple(size)}")
    resized = F.interpolate(target.float(), size=tuple(size), mode="nearest")
    return resized.to(target.dtype)


def _check_tensor(logits: object, shape: str) -> None:
    if isinstance(logits, (tuple, list)):
        raise ValueError(
            f"got {len(logits)} outputs (a deep-supervision model in training mode?); wrap the loss: "
            "create_loss('deep_supervision', loss=..., loss_options=...)"
        )
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"expected logits as a tensor {shape}; got {type(logits).__name__}")


def _check_labels(labels: torch.Tensor, num_classes: int, loss: str) -> None:
    """Integer class indices in ``[0, num_classes)`` (floats allowed when they are whole numbers)."""
    if labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"{loss} expects integer class indices; got dtype {labels.dtype}")
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise ValueError(f"{loss} expects integer class indices; got fractional values")
    if labels.numel() == 0:
        return
    low, high = torch.aminmax(labels)
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"{loss}: labels must lie in [0, {num_classes}) for {num_classes} classes; "
            f"got values from {low.item():g} to {high.item():g}"
        )


def _check_probabilities(target: torch.Tensor) -> None:
    """Soft targets: values in [0, 1], each row summing to 1."""
    if bool(((target < 0) | (target > 1)).any()) or not torch.allclose(
        target.sum(1), torch.ones(len(target), dtype=target.dtype, device=target.device), atol=1e-4
    ):
        raise ValueError(
            "cross_entropy soft targets (B, K) must be probabilities in [0, 1] summing to 1 per row"
        )


def _check_weights(weight: torch.Tensor | None, num_classes: int) -> None:
    if weight is not None and weight.numel() != num_classes:
        raise ValueError(f"class_weights has {weight.numel()} values for {num_classes} classes")


def _check_fraction(key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigurationError(f"{key} must be in [0, 1); got {value!r}")


def _positive_tensor(key: str, values: Sequence[float] | None) -> torch.Tensor | None:
    if values is None:
        return None
    tensor = torch.as_tensor(list(values), dtype=torch.float32)
    if (
        tensor.ndim != 1
        or tensor.numel() == 0
        or bool((tensor <= 0).any())
        or not bool(tensor.isfinite().all())
    ):
        raise ConfigurationError(f"{key} must be positive finite numbers; got {values!r}")
    return tensor
