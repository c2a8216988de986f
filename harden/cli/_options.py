"""Option types and option sets shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from harden.data_spec import DATA_SPEC_HELP, MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE
from harden.errors import InputError

if TYPE_CHECKING:
    from harden.models.crf import CRFConfig


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
        if min(height, width) < MIN_IMAGE_SIDE:
            self.fail(f"{value!r}: each side must be at least {MIN_IMAGE_SIDE} pixels", param, ctx)
        if height * width > MAX_IMAGE_PIXELS:
            self.fail(f"{value!r} is {height * width / 1e6:.0f} MP; the limit is {MAX_IMAGE_PIXELS / 1e6:.0f} MP",
                      param, ctx)  # fmt: skip
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


class NameListType(click.ParamType):
    """`A,B,C` → ("A", "B", "C"): attack names and the like (at least one; blanks dropped)."""

    name = "NAME[,NAME...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        names = tuple(dict.fromkeys(n.strip() for n in str(value).split(",") if n.strip()))
        if not names:
            self.fail("name at least one, e.g. pgd or fgsm,pgd", param, ctx)
        return names


class EpsType(click.ParamType):
    """`8/255` or `0.03` → an ε (or step) on [0, 1] pixels, ≥ 0."""

    name = "EPS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        from harden.attacks.threat import parse_eps  # imports torch: only when the command runs

        try:
            return parse_eps(str(value))
        except InputError as err:
            self.fail(str(err), param, ctx)


class EpsListType(click.ParamType):
    """`4/255,8/255` → the L∞ radii as sorted, distinct floats, each in [0, 1]."""

    name = "EPS[,EPS...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, ...]:
        if isinstance(value, tuple):
            return value
        from harden.attacks.threat import ThreatModel, parse_eps  # imports torch: only when the command runs

        try:
            values = tuple(sorted({parse_eps(e) for e in str(value).split(",") if e.strip()}))
            for eps in values:
                ThreatModel(eps)  # refuses an ε above the box
        except InputError as err:
            self.fail(str(err), param, ctx)
        if not values:
            self.fail("give at least one ε, e.g. 4/255", param, ctx)
        return values


class FloatListType(click.ParamType):
    """`A,B,C` → `count` floats (R,G,B channel statistics)."""

    def __init__(self, name: str, example: str) -> None:
        self.name, self.example, self.count = name, example, len(name.split(","))

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, ...]:
        if isinstance(value, tuple):
            return value
        try:
            values = tuple(float(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r}: write {self.count} numbers, e.g. {self.example}", param, ctx)
        if len(values) != self.count:
            self.fail(f"{value!r}: write {self.count} numbers, e.g. {self.example}; got {len(values)}", param, ctx)
        return values


class DeviceType(click.ParamType):
    """`auto`, `cpu`, `cuda` or `cuda:N`; checked against the machine by `resolve_device`."""

    name = "auto|cpu|cuda|cuda:N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower()
        if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
            return text
        self.fail(f"{value!r}: use auto, cpu, cuda or cuda:N", param, ctx)


class ImagesType(click.ParamType):
    """A number of images (≥ 1), or `auto` (None): as many as the decision needs."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return None
        if text.isdigit() and int(text) >= 1:
            return int(text)
        self.fail(f"{value!r}: write a number of images (≥ 1) or 'auto'", param, ctx)


SIZE = SizeType()
IMAGES = ImagesType()
RANGE = RangeType()
NAMES = NameListType()
EPS = EpsType()
EPS_LIST = EpsListType()
RGB = FloatListType("R,G,B", "0.485,0.456,0.406")
DEVICE = DeviceType()


class Command(click.Command):
    """A command that still accepts the old spellings of renamed options for one release.

    `renamed` maps an old option name to its new one (`{"--report": "--out"}`): the old name is
    hidden from --help, rewritten before parsing, and a deprecation message says what to write.
    """

    def __init__(self, *args: Any, renamed: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.renamed = renamed or {}

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, [self._rename(arg) for arg in args])

    def _rename(self, arg: str) -> str:
        name, equals, value = arg.partition("=")
        if name not in self.renamed:
            return arg
        new = self.renamed[name]
        click.echo(f"harden {self.name}: {name} is deprecated and goes in the next release; write {new}", err=True)
        return new + equals + value


def data_option(default: str | None = "synthetic") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--data",
        default=default,
        show_default=default is not None,
        metavar="SPEC",
        help=f"Dataset: {DATA_SPEC_HELP}. File datasets use their original directory layout.",
    )


def device_option(fn: Callable[..., Any] | None = None, *, default: str = "auto", extra_help: str = "") -> Any:
    """--device auto|cpu|cuda|cuda:N, resolved by `resolve_device`; `extra_help` adds to the common text."""
    option = click.option(
        "--device",
        type=DEVICE,
        metavar=DEVICE.name,
        default=default,
        show_default=True,
        help="Where to run: cpu, cuda (under torchrun: cuda:LOCAL_RANK), cuda:N, or auto (cuda when a GPU is "
        "visible)." + (" " + extra_help if extra_help else ""),
    )
    return option(fn) if fn is not None else option


def resolve_device(device: str) -> str:
    """A `--device` value → the torch device string it means here ("cpu", "cuda:0", ...)."""
    from harden.devices import local_rank_from_environment
    from harden.devices import resolve_device as resolve

    return str(resolve(device, local_rank=local_rank_from_environment()))


def out_option(help: str, *, file: bool = False, required: bool = False) -> Callable[[Callable[..., Any]], Any]:
    """--out: where a command writes (a directory; a file for commands that write one PNG)."""
    path = click.Path(dir_okay=False, path_type=Path) if file else click.Path(file_okay=False, path_type=Path)
    return click.option("--out", type=path, default=None, required=required, help=help)


def progress_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--progress/--no-progress", default=True, show_default=True, help="Show progress bars (on a terminal)."
    )(fn)


class PointType(click.ParamType):
    """`Y,X` pixel coordinates."""

    name = "Y,X"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            y, x = (int(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not Y,X pixel coordinates, e.g. 64,200", param, ctx)
        return y, x


POINT = PointType()


def ram_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--ram and its settings (RAM paper §4; defaults from its §5): see `ram_settings`."""
    options = [
        click.option(
            "--ram",
            is_flag=True,
            help="Insert the Robust Attention Mechanism (MAS + RAD) into every attention layer.",
        ),
        click.option("--mas/--no-mas", default=None, help="With --ram: Max Attention Suppression. [default: mas]"),
        click.option(
            "--mas-threshold",
            type=float,
            default=None,
            help="With --ram: MAS bound T on every attention weight, in (1/keys, 1). [default: 0.3]",
        ),
        click.option("--rad/--no-rad", default=None, help="With --ram: Random Attention Dropout. [default: rad]"),
        click.option(
            "--rad-p",
            type=float,
            default=None,
            help="With --ram: RAD drop probability in [0, 1); RAD stays on at evaluation. [default: 0.5]",
        ),
        click.option(
            "--attn-temperature",
            type=float,
            default=None,
            help="Comparison (Gu et al.): divide attention logits by this temperature.",
        ),
        click.option(
            "--attn-learnable",
            is_flag=True,
            help="Comparison (Mao et al.): multiply attention logits by a learnable scalar per layer.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def ram_settings(
    ram: bool,
    mas: bool | None,
    mas_threshold: float | None,
    rad: bool | None,
    rad_p: float | None,
    attn_temperature: float | None,
    attn_learnable: bool,
) -> dict[str, Any] | None:
    """The RAMConfig (as a dict) the options ask for, or None for a plain model."""
    from harden.ram import RAMConfig

    if not ram and (mas_threshold is not None or rad_p is not None or mas is not None or rad is not None):
        raise InputError("--mas/--no-mas, --rad/--no-rad, --mas-threshold and --rad-p configure RAM; add --ram")
    if not (ram or attn_temperature is not None or attn_learnable):
        return None
    config = RAMConfig(
        mas=ram and mas is not False,
        threshold=0.3 if mas_threshold is None else mas_threshold,
        rad=ram and rad is not False,
        drop_p=0.5 if rad_p is None else rad_p,
        temperature=attn_temperature,
        learnable=attn_learnable,
    )
    return config.to_dict()


class ScalesType(click.ParamType):
    """`0.5,0.75,1` → (0.5, 0.75, 1.0): input scales of a multiscale model (Arnab et al. §6)."""

    name = "S[,S...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, ...]:
        if isinstance(value, tuple):
            return value
        try:
            scales = tuple(float(s) for s in str(value).split(",") if s.strip())
        except ValueError:
            self.fail(f"{value!r}: write comma-separated factors, e.g. 0.5,0.75,1", param, ctx)
        from harden.models.multiscale import check_scales

        try:
            check_scales(scales, "max")
        except InputError as err:
            self.fail(str(err), param, ctx)
        return scales


SCALES = ScalesType()


def inference_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--scales/--fusion (multiscale, Arnab et al. §6; `SCALES`) and --crf with its settings
    (§7; `crf_settings`)."""
    options = [
        click.option(
            "--scales",
            type=SCALES,
            default=None,
            help="Run the network at these input scales and fuse the logits, e.g. 0.5,0.75,1 "
            "(DeepLab v2). [default: one scale]",
        ),
        click.option(
            "--fusion",
            type=click.Choice(["max", "mean"]),
            default="max",
            show_default=True,
            help="With --scales: per-pixel max (DeepLab v2) or mean of the scales' logits.",
        ),
        click.option("--crf", is_flag=True, help="Append a mean-field dense CRF (CRF-as-RNN) to the model."),
    ]
    for option in reversed(options):
        command = option(command)
    return crf_options(command)


def crf_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The mean-field CRF's settings (`harden.models.crf.CRFConfig`; these are its defaults)."""
    options = [
        click.option("--crf-iterations", type=int, default=5, show_default=True, help="CRF: mean-field steps."),
        click.option(
            "--crf-window",
            type=int,
            default=11,
            show_default=True,
            help="CRF: odd side of the neighbourhood the kernels are truncated to (pixels).",
        ),
        click.option(
            "--crf-spatial-sigma",
            type=float,
            default=3.0,
            show_default=True,
            help="CRF: θγ, spatial kernel bandwidth (pixels).",
        ),
        click.option(
            "--crf-bilateral-sigma",
            type=float,
            default=8.0,
            show_default=True,
            help="CRF: θα, bilateral kernel spatial bandwidth (pixels).",
        ),
        click.option(
            "--crf-color-sigma",
            type=float,
            default=0.05,
            show_default=True,
            help="CRF: θβ, bilateral kernel colour bandwidth on [0, 1] pixels.",
        ),
        click.option(
            "--crf-weights",
            "crf_weights",
            type=RANGE,
            default="3,5",
            show_default=True,
            metavar="WS,WB",
            help="CRF: spatial and bilateral kernel weights.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def crf_settings(
    crf_iterations: int,
    crf_window: int,
    crf_spatial_sigma: float,
    crf_bilateral_sigma: float,
    crf_color_sigma: float,
    crf_weights: tuple[float, float],
) -> CRFConfig:
    """The CRFConfig of `crf_options`; InputError (exit 2) for a setting out of range."""
    from harden.models.crf import CRFConfig

    return CRFConfig(
        iterations=crf_iterations,
        window=crf_window,
        spatial_sigma=crf_spatial_sigma,
        bilateral_sigma=crf_bilateral_sigma,
        color_sigma=crf_color_sigma,
        spatial_weight=crf_weights[0],
        bilateral_weight=crf_weights[1],
    )


def randomness_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--eot and --draws: how a randomised (RAD) model is attacked and predicted (docs/design.md §6;
    the defaults are `harden.attacks.base.eot_default` and `draws_default`)."""
    options = [
        click.option("--eot", type=click.IntRange(min=1), default=None,
                     help="EOT draws per gradient for a randomised (RAD) model. [default: 8 if randomised, else 1]"),
        click.option("--draws", type=click.IntRange(min=1), default=None,
                     help="Evaluation draws of a randomised model; the worst counts. [default: 3 if randomised, "
                     "else 1]"),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


def command_line() -> str:
    """The command line of this process, as reports record it ("harden verify ...")."""
    import shlex
    import sys

    return "harden " + shlex.join(sys.argv[1:])
