"""`harden models`: list the registry."""

from __future__ import annotations

import click


@click.command("models")
def models_command() -> None:
    """List the trainable models: name, family, attention, size, description.

    *_tiny models train on 2 CPU cores in minutes; the others follow the papers' layouts.
    """
    from harden.models import list_models, model_entry

    click.echo(f"{'name':<22} {'family':<10} {'attention':<10} description")
    for name in list_models():
        e = model_entry(name)
        click.echo(f"{name:<22} {e.family:<10} {'yes' if e.has_attention else 'no':<10} {e.description}")
