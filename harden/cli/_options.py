"""Option types and option sets shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from harden.data import DATA_SPEC_HELP


class SizeType(click.ParamType):
    """`HxW`, e.g. 128x256, as (height, width)."""

    name = "HxW"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            height, width = (int(v) for v in str(value).lower().split("x"))
        except ValueError:
            self.fail(f"{value!r} is not a size; write HEIGHTxWIDTH, e.g. 128x256", param, ctx)
        if height < 1 or width < 1:
            self.fail(f"sizes must be positive, got {value!r}", param, ctx)
        return height, width


class RangeType(click.ParamType):
    """`LOW,HIGH`, e.g. 0.5,2.0."""

    name = "LOW,HIGH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, float]:
        if isinstance(value, tuple):
            return value
        try:
            low, high = (float(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not a range; write LOW,HIGH, e.g. 0.5,2.0", param, ctx)
        return low, high


SIZE = SizeType()
RANGE = RangeType()


def data_option(default: str | None = "synthetic") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--data",
        default=default,
        show_default=default is not None,
        metavar="SPEC",
        help=f"Dataset: {DATA_SPEC_HELP}. File datasets use their original directory layout.",
    )


def device_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        show_default=True,
        help="Where to run; auto picks cuda when a GPU is visible.",
    )(fn)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        from harden.errors import InputError

        raise InputError("--device cuda, but torch sees no CUDA GPU; use --device cpu")
    return device


def progress_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--progress/--no-progress", default=True, show_default=True, help="Show progress bars (on a terminal)."
    )(fn)
