"""Every example in every command's --help parses as written: the options exist, their values
are accepted by click's types and callbacks, and the paths they name are the kind the command
expects. (Running them end to end would train for minutes each; the attack lists of verify's
examples run end to end in test_verify.)"""

import shlex
from pathlib import Path

import click
import pytest

from harden.cli import cli


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found: list[tuple[tuple[str, ...], click.Command]] = []
    for name, command in group.commands.items():
        found.append(((*prefix, name), command))
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
    return found


def _examples(command: click.Command) -> list[str]:
    """The command lines under 'Examples:' in the command's help, continuations joined, comments cut."""
    lines = (command.help or "").splitlines()
    if not any(line.strip() == "Examples:" for line in lines):
        return []
    block = lines[[line.strip() for line in lines].index("Examples:") + 1 :]
    examples, current = [], ""
    for line in block:
        text = line.split("  #")[0].strip()
        if not text:
            if current:
                break
            continue
        if text == "\b":
            continue
        current += " " + text.rstrip("\\").strip()
        if not text.endswith("\\"):
            examples.append(current.strip())
            current = ""
    return examples


EXAMPLES = [(path, example) for path, command in _commands(cli) for example in _examples(command)]


def test_the_commands_that_users_start_with_have_examples() -> None:
    documented = {path for path, _ in EXAMPLES}
    for path in [("train",), ("export",), ("verify",), ("attack",)]:
        assert path in documented, f"harden {' '.join(path)} --help has no Examples: section"


@pytest.mark.parametrize(("path", "example"), EXAMPLES, ids=[e for _, e in EXAMPLES])
def test_help_example_parses_as_written(path: tuple[str, ...], example: str, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    tokens = shlex.split(example)
    start = tokens.index("harden") + 1  # `harden ...` or `torchrun ... -m harden ...`
    args = tokens[start:]
    assert tuple(args[: len(path)]) == path, f"an example under harden {' '.join(path)} runs another command"
    monkeypatch.chdir(tmp_path)
    for token in args:  # the paths the example names exist here, as the kind the command expects
        if "/" in token and not token.startswith("-") and ":" not in token:
            target = tmp_path / token
            if target.suffix in {".onnx", ".png", ".json", ".toml"}:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
            else:
                target.mkdir(parents=True, exist_ok=True)
        elif token.endswith(".onnx"):
            (tmp_path / token).touch()
    context = cli.make_context("harden", list(args), resilient_parsing=False)
    command: click.Command = cli
    remaining = args
    while isinstance(command, click.Group):
        name, sub, remaining = command.resolve_command(context, remaining)
        assert sub is not None, f"no command {name}"
        context = sub.make_context(name or "", list(remaining), parent=context)  # raises on any bad option
        command = sub
    assert command is dict(_commands(cli))[path]


@pytest.mark.parametrize(("path", "example"), EXAMPLES, ids=[e for _, e in EXAMPLES])
def test_help_example_uses_no_deprecated_spelling(path: tuple[str, ...], example: str) -> None:
    command = dict(_commands(cli))[path]
    hidden = {name for p in command.params if isinstance(p, click.Option) and p.hidden for name in p.opts}
    old = set(getattr(command, "renamed", {})) | hidden
    assert not old & {token.split("=")[0] for token in shlex.split(example)}, example
