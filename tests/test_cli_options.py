"""The command line's shared shape: one name per concept across commands, old spellings kept as
hidden aliases that say what to write now, shared option types, and thin command functions."""

import ast
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from harden.cli import cli
from harden.cli._options import DEVICE, EPS_LIST, NAMES, RGB, Command

RETIRED = {"--report", "--attacks", "--force", "--json"}  # old spellings: hidden aliases for one release


def _commands(group: click.Group) -> list[click.Command]:
    found: list[click.Command] = []
    for command in group.commands.values():
        found += _commands(command) if isinstance(command, click.Group) else [command]
    return found


def _visible_options(command: click.Command) -> dict[str, click.Option]:
    return {name: p for p in command.params if isinstance(p, click.Option) and not p.hidden for name in p.opts}


def test_one_name_per_concept_across_commands() -> None:
    for command in _commands(cli):
        options = _visible_options(command)
        assert not RETIRED & set(options), f"harden {command.name} still shows {RETIRED & set(options)}"
        if "--device" in options:
            default = "cpu" if command.name in ("verify", "replay") else "auto"  # a release verdict: any CI machine
            assert options["--device"].type is DEVICE and options["--device"].default == default, command.name
        if "--batch-size" in options:
            assert options["--batch-size"].default == 8, command.name
        if "--attack" in options and command.name != "attack":
            assert options["--attack"].type is NAMES, command.name
        if "--eps" in options:
            assert options["--eps"].type is EPS_LIST, command.name
        for old, new in getattr(command, "renamed", {}).items():
            assert old in RETIRED and new in options, f"harden {command.name}: {old} → {new}"
    writers = {c.name for c in _commands(cli) if "--out" in _visible_options(c)}
    assert writers >= {"train", "export", "attack", "verify", "eval", "demo", "erf", "attention-map", "crf",
                       "transfer-scales"}  # fmt: skip


@click.command("probe", cls=Command, renamed={"--report": "--out", "--attacks": "--attack"})
@click.option("--out")
@click.option("--attack", type=NAMES, default="pgd")
@click.option("--eps", type=EPS_LIST, default="8/255")
@click.option("--device", type=DEVICE, default="auto")
@click.option("--mean", type=RGB, default=None)
def _probe(out: str | None, attack: tuple[str, ...], eps: tuple[float, ...], device: str, mean: object) -> None:
    click.echo(f"out={out} attack={','.join(attack)} eps={[round(e * 255) for e in eps]} device={device} mean={mean}")


def test_old_spellings_still_work_hidden_and_say_what_to_write() -> None:
    runner = CliRunner()
    result = runner.invoke(_probe, ["--report", "r1", "--attacks=fgsm,pgd"])
    assert result.exit_code == 0, result.output
    assert "out=r1 attack=fgsm,pgd" in result.stdout
    assert "--report is deprecated" in result.stderr and "write --out" in result.stderr
    assert "--attacks is deprecated" in result.stderr and "write --attack" in result.stderr
    help_text = runner.invoke(_probe, ["--help"]).output
    assert "--out" in help_text and "--report" not in help_text and "--attacks" not in help_text
    assert runner.invoke(_probe, ["--out", "r2"]).stderr == ""  # the new spelling says nothing


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--attack", "fgsm,,pgd, fgsm"], "attack=fgsm,pgd"),  # blanks and repeats dropped, order kept
        (["--eps", "8/255,4/255,4/255"], "eps=[4, 8]"),  # sorted, distinct
        (["--device", "CUDA:1"], "device=cuda:1"),
        (["--mean", "0.5,0.25,0"], "mean=(0.5, 0.25, 0.0)"),
    ],
)
def test_shared_option_types_parse(args: list[str], expected: str) -> None:
    result = CliRunner().invoke(_probe, args)
    assert result.exit_code == 0 and expected in result.stdout, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attack", " , "], "at least one"),
        (["--eps", "2"], "exceeds the box"),
        (["--eps", "x"], "not a number"),
        (["--device", "gpu"], "auto, cpu, cuda or cuda:N"),
        (["--mean", "0.5,0.5"], "3 numbers"),
    ],
)
def test_shared_option_types_refuse_bad_values_with_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(_probe, args)
    assert result.exit_code == 2 and message in result.output, result.output
    if args[0] == "--eps":  # and so does every command that takes the option, before loading anything
        result = CliRunner().invoke(cli, ["attack", "runs/none", *args])
        assert result.exit_code == 2 and message in result.output and "--eps" in result.output, result.output


def test_no_cli_function_is_longer_than_80_lines() -> None:
    """Commands parse, call one library function and render (README, Layout)."""
    for path in sorted(Path("harden/cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                assert length <= 80, f"{path}:{node.lineno} {node.name} is {length} lines"
