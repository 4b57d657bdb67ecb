"""Models by name: ``create_model("resnet18", num_classes=3)``.

The same small lookup (:func:`build`) serves the losses in ``medvol.losses``:
a name that is not registered, or an option the factory does not take, is a
:class:`ConfigurationError` that names it, suggests the closest known name and
lists what is accepted. Options are checked against the factory's signature
(:class:`OptionCheck`) *before* it is called, so a misspelt option never
surfaces as a ``TypeError`` from deep inside a network constructor;
``medvol.factories`` makes that check alone, without building anything, when a
config is loaded.

The model modules are imported on first use (they import
:class:`medvol.errors.ConfigurationError`, not this module).
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from medvol.errors import ConfigurationError

T = TypeVar("T")


def create_model(name: str, **options: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: one of :func:`available_models`, e.g. ``"resnet18"`` or ``"dynunet"``.
        **options: keyword options of that model (see its factory's docstring),
            e.g. ``in_channels``, ``num_classes``, ``norm``.

    Returns:
        The model, in training mode, on the CPU.

    Raises:
        ConfigurationError: unknown name, unknown option or invalid option value.
    """
    return build("model", model_factories(), name, options)


def available_models() -> list[str]:
    """The registered model names: the ResNets by depth, then the segmenters."""
    return list(model_factories())


def build(kind: str, factories: Mapping[str, Callable[..., T]], name: str, options: Mapping[str, Any]) -> T:
    """Call ``factories[name](**options)`` after checking the name and the option names.

    Args:
        kind: what is being built, for messages ("model", "loss").
        factories: registered names and their factories (functions or classes).
        name: the requested name.
        options: keyword options for the factory.

    Raises:
        ConfigurationError: the name is not registered, an option is not a keyword
            the factory takes, or a required option is missing.
    """
    check(kind, factories, name, options)
    return factories[name](**options)


@dataclass(frozen=True)
class OptionCheck:
    """The outcome of checking a name and option names against a factory's signature."""

    unknown_name: str | None  # the message for a name that is not registered
    accepted: list[str]  # keyword parameters of the factory
    unknown: dict[str, str | None]  # options it does not take, each with the closest accepted one
    missing: list[str]  # required parameters not given

    @classmethod
    def of(
        cls, kind: str, factories: Mapping[str, Callable[..., Any]], name: str, options: Mapping[str, Any]
    ) -> OptionCheck:
        if not isinstance(name, str) or name not in factories:
            known = sorted(factories)
            close = difflib.get_close_matches(str(name), known, n=1)
            problem = (
                f"unknown {kind} {name!r}{hint(close[0] if close else None)}; available: {', '.join(known)}"
            )
            return cls(problem, [], {}, [])
        parameters = inspect.signature(factories[name]).parameters
        accepted = [
            key
            for key, parameter in parameters.items()
            if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        ]
        unknown = {
            key: next(iter(difflib.get_close_matches(key, accepted, n=1)), None)
            for key in options
            if key not in accepted
        }
        missing = [
            key
            for key in accepted
            if parameters[key].default is inspect.Parameter.empty and key not in options
        ]
        return cls(None, accepted, unknown, missing)


def check(
    kind: str, factories: Mapping[str, Callable[..., Any]], name: str, options: Mapping[str, Any]
) -> None:
    check = OptionCheck.of(kind, factories, name, options)
    if check.unknown_name:
        raise ConfigurationError(check.unknown_name)
    if check.unknown:
        hints = [f"{key!r}{hint(close)}" for key, close in check.unknown.items()]
        raise ConfigurationError(
            f"{kind} {name!r} got unknown option(s) {', '.join(hints)}; "
            f"its options are: {', '.join(check.accepted) or 'none'}"
        )
    if check.missing:
        raise ConfigurationError(f"{kind} {name!r} needs the option(s) {', '.join(check.missing)}")


def hint(close: str | None) -> str:
    return f" (did you mean {close!r}?)" if close else ""


@functools.cache
def model_factories() -> dict[str, Callable[..., nn.Module]]:
    """The registered models by name."""
    import medvol.models.resnet as resnet
    import medvol.models.segmenters as segmenters

    table: dict[str, Callable[..., nn.Module]] = {
        f"resnet{depth}": functools.partial(resnet.ResNet3d, depth) for depth in resnet.DEPTHS
    }
    table.update(
        unet=segmenters.unet,
        residual_unet=segmenters.residual_unet,
        segresnet=segmenters.segresnet,
        dynunet=segmenters.dynunet,
    )
    return table
