"""The model registry: a plain dict filled by `@register_model` on plain factory functions.

A factory takes `num_classes` and keyword overrides and returns a `SegmentationModel`; its name
says the family and size (`segformer_tiny`, `segformer_b0`). A checkpoint stores the name and
the keyword arguments, which is all `create_model` needs to rebuild the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harden.errors import InputError
from harden.models.base import SegmentationModel

ModelFactory = Callable[..., SegmentationModel]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: ModelFactory
    family: str
    has_attention: bool
    tiny: bool
    description: str


_MODELS: dict[str, ModelEntry] = {}


def register_model(*, family: str, has_attention: bool, tiny: bool) -> Callable[[ModelFactory], ModelFactory]:
    """Register a factory under its function name. The first docstring line describes it."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        name = factory.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        doc = (factory.__doc__ or "").strip().splitlines()
        _MODELS[name] = ModelEntry(name, factory, family, has_attention, tiny, doc[0] if doc else "")
        return factory

    return decorator


def list_models(*, tiny: bool | None = None, has_attention: bool | None = None) -> list[str]:
    """Registered model names, optionally filtered."""
    return sorted(
        name
        for name, e in _MODELS.items()
        if (tiny is None or e.tiny == tiny) and (has_attention is None or e.has_attention == has_attention)
    )


def model_entry(name: str) -> ModelEntry:
    if name not in _MODELS:
        raise InputError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _MODELS[name]


def create_model(name: str, num_classes: int, **kwargs: Any) -> SegmentationModel:
    """Build a registered model. kwargs override the factory's defaults (e.g. `drop_path`).
    `hf:PATH` and `module:package.module:factory` build a user's model (`harden.models.external`)."""
    from harden.models.external import create_external, is_external

    if is_external(name):
        return create_external(name, num_classes, **kwargs)
    try:
        return model_entry(name).factory(num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise InputError(f"model {name!r} does not accept these options {sorted(kwargs)}: {err}") from err
