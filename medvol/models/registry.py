"""Models by name: ``create_model("resnet18", num_classes=3)``.

The same small lookup (:func:`build`) serves the losses in ``medvol.losses``:
a name that is not registered, or an option the factory does not take, is a
:class:`ConfigurationError` that names it, suggests the closest known name and
lists what is accepted. Options are checked against the factory's signature
*before* it is called, so a misspelt option never surfaces as a ``TypeError``
from deep inside a network constructor. :func:`check_options` makes that check
alone, without building anything (``medvol.config`` runs it when a config is
loaded).

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
    return build("model", _models(), name, options)


def available_models() -> list[str]:
    """The registered model names: the ResNets by depth, then the segmenters."""
    return list(_models())


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
    _check(kind, factories, name, options)
    return factories[name](**options)


def factories(kind: str) -> Mapping[str, Callable[..., Any]]:
    """The registered factories of ``kind``: ``"model"`` (this module) or ``"loss"`` (``medvol.losses``)."""
    if kind == "model":
        return _models()
    if kind == "loss":
        from medvol.losses import _LOSSES

        return _LOSSES
    raise ValueError(f"kind must be 'model' or 'loss', got {kind!r}")


def check_options(kind: str, name: str, options: Mapping[str, Any]) -> None:
    """Check a model or loss name and its option names without building it.

    The same check as :func:`create_model` and ``medvol.losses.create_loss``
    make before calling the factory; option values are not checked.

    Args:
        kind: ``"model"`` or ``"loss"``.
        name: the requested name.
        options: its keyword options.

    Raises:
        ConfigurationError: the name is not registered, an option is not a keyword
            the factory takes, or a required option is missing.
    """
    _check(kind, factories(kind), name, options)


def option_problems(kind: str, name: str, options: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """What :func:`check_options` would refuse, one entry per problem, for config messages.

    Returns:
        ``(where, problem)`` pairs, empty when the name and options are fine;
        ``where`` is ``("name",)`` for an unregistered name, ``("options", key)``
        for an option the factory does not take, ``("options",)`` for missing
        required options.
    """
    check = _Check.of(kind, factories(kind), name, options)
    if check.unknown_name:
        return [(("name",), check.unknown_name)]
    accepted = ", ".join(check.accepted) or "none"
    problems: list[tuple[tuple[str, ...], str]] = [
        (
            ("options", key),
            f"{kind} {name!r} has no option {key!r}{_hint(close)}; its options are: {accepted}",
        )
        for key, close in check.unknown.items()
    ]
    if check.missing:
        problems.append((("options",), f"{kind} {name!r} needs the option(s) {', '.join(check.missing)}"))
    return problems


@dataclass(frozen=True)
class _Check:
    """The outcome of checking a name and option names against a factory's signature."""

    unknown_name: str | None  # the message for a name that is not registered
    accepted: list[str]  # keyword parameters of the factory
    unknown: dict[str, str | None]  # options it does not take, each with the closest accepted one
    missing: list[str]  # required parameters not given

    @classmethod
    def of(
        cls, kind: str, factories: Mapping[str, Callable[..., Any]], name: str, options: Mapping[str, Any]
    ) -> _Check:
        if not isinstance(name, str) or name not in factories:
            known = sorted(factories)
            close = difflib.get_close_matches(str(name), known, n=1)
            problem = (
                f"unknown {kind} {name!r}{_hint(close[0] if close else None)}; available: {', '.join(known)}"
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


def _check(
    kind: str, factories: Mapping[str, Callable[..., Any]], name: str, options: Mapping[str, Any]
) -> None:
    check = _Check.of(kind, factories, name, options)
    if check.unknown_name:
        raise ConfigurationError(check.unknown_name)
    if check.unknown:
        hints = [f"{key!r}{_hint(close)}" for key, close in check.unknown.items()]
        raise ConfigurationError(
            f"{kind} {name!r} got unknown option(s) {', '.join(hints)}; "
            f"its options are: {', '.join(check.accepted) or 'none'}"
        )
    if check.missing:
        raise ConfigurationError(f"{kind} {name!r} needs the option(s) {', '.join(check.missing)}")


def _hint(close: str | None) -> str:
    return f" (did you mean {close!r}?)" if close else ""


@functools.cache
def _models() -> dict[str, Callable[..., nn.Module]]:
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
