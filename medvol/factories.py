"""Models and losses by name, checked without building them (what ``medvol.config`` runs at load).

``factories(kind)`` gives the registered factories of ``"model"``
(``medvol.models.registry``) or ``"loss"`` (``medvol.losses``);
``check_options`` and ``option_problems`` apply the check those registries
make before building (``medvol.models.registry.OptionCheck``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def factories(kind: str) -> Mapping[str, Callable[..., Any]]:
    """The registered factories of ``kind``: ``"model"`` (this module) or ``"loss"`` (``medvol.losses``)."""
    if kind == "model":
        from medvol.models.registry import model_factories

        return model_factories()
    if kind == "loss":
        from medvol.losses import loss_factories

        return loss_factories()
    raise ValueError(f"kind must be 'model' or 'loss', got {kind!r}")


def check_options(kind: str, name: str, options: Mapping[str, Any]) -> None:
    """Check a model or loss name and its option names without building it.

    The same check as ``medvol.models.create_model`` and ``medvol.losses.create_loss``
    make before calling the factory; option values are not checked.

    Args:
        kind: ``"model"`` or ``"loss"``.
        name: the requested name.
        options: its keyword options.

    Raises:
        ConfigurationError: the name is not registered, an option is not a keyword
            the factory takes, or a required option is missing.
    """
    from medvol.models.registry import check

    check(kind, factories(kind), name, options)


def option_problems(kind: str, name: str, options: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """What :func:`check_options` would refuse, one entry per problem, for config messages.

    Returns:
        ``(where, problem)`` pairs, empty when the name and options are fine;
        ``where`` is ``("name",)`` for an unregistered name, ``("options", key)``
        for an option the factory does not take, ``("options",)`` for missing
        required options.
    """
    from medvol.models.registry import OptionCheck, hint

    check = OptionCheck.of(kind, factories(kind), name, options)
    if check.unknown_name:
        return [(("name",), check.unknown_name)]
    accepted = ", ".join(check.accepted) or "none"
    problems: list[tuple[tuple[str, ...], str]] = [
        (
            ("options", key),
            f"{kind} {name!r} has no option {key!r}{hint(close)}; its options are: {accepted}",
        )
        for key, close in check.unknown.items()
    ]
    if check.missing:
        problems.append((("options",), f"{kind} {name!r} needs the option(s) {', '.join(check.missing)}"))
    return problems
