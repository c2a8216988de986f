"""harden: adversarially harden semantic-segmentation models and prove it survives deployment.

The package is the training side of the pipeline (docs/design.md §1): datasets (`harden.data`),
segmentation models with a common attention interface (`harden.models`), metrics
(`harden.metrics`) and training (`harden.training`). The command line is `harden.cli`.

Importing `harden` is cheap on purpose: it imports neither torch nor any optional backend.
"""

__version__ = "0.1.0"
DISTRIBUTION = "harden-seg"  # the name pip knows this project by; the import name and command are `harden`


def install_hint(extra: str) -> str:
    """How to install one of this project's optional extras, for error messages."""
    return f"pip install '{DISTRIBUTION}[{extra}]' (from a clone of the repository: pip install '.[{extra}]')"
