"""The `harden` command line: a click group of thin commands over library functions.

This package is the only place allowed to compose `harden`, `export` and `runtime` (DESIGN.md
§1); commands import heavy or optional modules inside the command function, so `harden --help`
stays fast and a missing optional backend only affects the command that needs it.

Exit codes: 0 success; 1 a gate, check or run failed; 2 bad input or usage.
"""

from __future__ import annotations

from typing import Any

import click

from harden import __version__
from harden.errors import InputError

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class BadInput(click.ClickException):
    exit_code = EXIT_BAD_INPUT


class Failed(click.ClickException):
    exit_code = EXIT_FAILED


class _HardenGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InputError as err:
            raise BadInput(str(err)) from err


@click.group(cls=_HardenGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="harden")
def cli() -> None:
    """Harden semantic-segmentation models against adversarial attacks, and prove the hardening
    survives deployment.

    \b
    Start here:
      harden demo                         # train with RAM → export fp32 + int8 → verify, ~5 min
      harden train --model segformer_tiny --data synthetic --epochs 30 --out runs/demo
      harden eval runs/demo --data synthetic
      harden attack runs/demo --attack sea --eps 4/255,8/255
      harden export runs/demo --out exports/demo
      harden verify exports/demo --twin graph --twin runs/demo
      harden study crf runs/demo          # experiments from the papers
      harden models                       # what can be trained

    Exit codes: 0 success, 1 a check or run failed, 2 bad input.
    """


def _register() -> None:
    from harden.cli import attack, attention_map, demo, erf, evaluate, export, models, study, train, verify

    cli.add_command(train.train_command)
    cli.add_command(evaluate.eval_command)
    cli.add_command(models.models_command)
    cli.add_command(attention_map.attention_map_command)
    cli.add_command(attack.attack_command)
    cli.add_command(export.export_command)
    cli.add_command(verify.verify_command)
    cli.add_command(demo.demo_command)
    cli.add_command(erf.erf_command)
    cli.add_command(study.study_group)


_register()


def main() -> None:
    cli()
