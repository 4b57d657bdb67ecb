"""Networks by name: ``create_model(name, **options)``; see :func:`available_models`.

- ``resnet10`` … ``resnet152``: 3D ResNet classifiers, logits ``(B, K)``
  (:mod:`medvol.models.resnet`).
- ``unet``, ``residual_unet``, ``segresnet``, ``dynunet``: MONAI segmenters,
  logits ``(B, K, X, Y, Z)`` (:mod:`medvol.models.segmenters`).
"""

from __future__ import annotations

from medvol.errors import ConfigurationError
from medvol.models.registry import available_models, create_model

__all__ = ["ConfigurationError", "available_models", "create_model"]
