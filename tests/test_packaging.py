"""How the project installs and starts: one top-level package, a `--help` that needs no torch."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Every command's --help in one interpreter; prints the heavy modules that got imported.
HELP_EVERY_COMMAND = """
import sys
import click
from click.testing import CliRunner
from harden.cli import cli

def paths(group, prefix):
    for name, command in group.commands.items():
        yield prefix + [name]
        if isinstance(command, click.Group):
            yield from paths(command, prefix + [name])

runner = CliRunner()
count = 0
for path in [[]] + list(paths(cli, [])):
    result = runner.invoke(cli, path + ["--help"])
    assert result.exit_code == 0 and "Usage" in result.output, (path, result.output)
    count += 1
heavy = ("torch", "numpy", "onnx", "onnxruntime", "matplotlib", "PIL", "safetensors", "polygraphy")
print(count, sorted({m.split(".")[0] for m in sys.modules} & set(heavy)))
"""


def test_help_of_every_command_leaves_torch_unimported():
    out = subprocess.run([sys.executable, "-c", HELP_EVERY_COMMAND], capture_output=True, text=True, check=True)
    count, heavy = out.stdout.strip().split(" ", 1)
    assert int(count) >= 12  # the group, its commands and `study`'s subcommands
    assert heavy == "[]", f"--help imported {heavy}: import them inside the command functions"


def test_wheel_installs_only_the_harden_package(tmp_path):
    """A non-editable install must not claim the top-level names `export` or `runtime`."""
    source = tmp_path / "source"  # a copy: setuptools leaves build/ behind, and stale files in it would ship
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for folder in ("harden", "export", "runtime"):
        shutil.copytree(ROOT / folder, source / folder, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w"]
    subprocess.run([*command, str(wheels)], check=True, capture_output=True)
    (wheel,) = wheels.glob("*.whl")
    assert wheel.name.startswith("harden_seg-")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"harden", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    for subpackage in ("export", "runtime"):
        assert f"harden/{subpackage}/__init__.py" in names
        assert f"harden/{subpackage}/engines.py" in names or f"harden/{subpackage}/onnx_export.py" in names
    assert "harden/py.typed" in names
    from harden.schemas import REPORT_SCHEMAS, SHARED

    for schema_file in [*REPORT_SCHEMAS.values(), SHARED]:  # published with the package, not only in the repo
        assert f"harden/schemas/{schema_file}" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "harden = harden.cli:main" in entry_points


def test_export_and_runtime_import_only_under_harden():
    code = (
        "import sys, harden.runtime.verify, harden.export.pipeline; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('export', 'runtime')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]"


def test_loading_a_trained_model_never_imports_the_training_loop():
    """export, verify, attack and eval load runs through harden.run; the training loop (with the
    adversarial methods and DDP) is imported only by `harden train`."""
    code = (
        "import sys, harden.runtime.verify, harden.runtime.report, harden.export.pipeline, harden.run, "
        "harden.cli.attack, harden.cli.verify, harden.cli.export, harden.cli.evaluate; "
        "print(sorted(m for m in sys.modules if m.startswith('harden.training')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]"


def test_help_lists_exactly_the_registered_attacks():
    from harden.attack_catalogue import ATTACK_SUMMARIES, PATCH_SUMMARIES
    from harden.attacks import ATTACKS, PATCH_ATTACKS

    assert list(ATTACK_SUMMARIES) == list(ATTACKS)
    assert set(PATCH_SUMMARIES) == set(PATCH_ATTACKS)
    assert all(entry.kind == "patch" for entry in PATCH_ATTACKS.values())
