import json
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from harden.cli import cli

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--image-size", "64x128", "--train-images", "8", "--val-images", "4", "--batch-size", "4", "--no-progress"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_help_explains_every_command():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("train", "eval", "models"):
        assert command in result.output
        sub = run(command, "--help")
        assert sub.exit_code == 0
        assert "Usage" in sub.output and len(sub.output) > 200


def test_models_lists_the_registry():
    result = run("models")
    assert result.exit_code == 0
    assert "segformer_tiny" in result.output and "pspnet_r50" in result.output


def test_train_then_eval(tmp_path):
    out = tmp_path / "run"
    result = run("train", "--model", "segmenter_tiny", "--epochs", "1", "--out", out, *SMALL)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["epochs"] == 1
    result = run("eval", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "mIoU" in result.output and "road" in result.output
    report = json.loads((out / "eval.json").read_text())
    assert report["images"] == 4
    assert 0 <= report["miou"] <= 1
    assert set(report["per_class_iou"]) >= {"road", "sky", "car"}
    from PIL import Image

    with Image.open(out / "examples.png") as panels:  # 4 titled rows of image | truth | prediction, 2.2 in each
        assert panels.size == (900, 4 * 220)


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--data", "cityscapes:/does/not/exist", "--out", "{tmp}/r"],
        ["train", "--data", "kitti", "--out", "{tmp}/r"],
        ["train", "--model", "nope", "--out", "{tmp}/r"],
        ["train", "--image-size", "big", "--out", "{tmp}/r"],
        ["train", "--epochs", "0", "--out", "{tmp}/r"],
        ["train", "--lr", "-1", "--out", "{tmp}/r"],
        ["train", "--scale-range", "2,1", "--out", "{tmp}/r"],
        ["train", "--resume", "--out", "{tmp}/r"],
        ["eval", "{tmp}/not-a-run"],
    ],
)
def test_bad_input_exits_2_with_a_message(tmp_path, args):
    result = run(*(a.format(tmp=tmp_path) for a in args))
    assert result.exit_code == 2, result.output
    assert "Error" in result.output
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_existing_run_without_resume_exits_2_and_keeps_the_run(tmp_path):
    out = tmp_path / "run"
    assert run("train", "--model", "pspnet_tiny", "--epochs", "1", "--out", out, *SMALL).exit_code == 0
    before = (out / "model.safetensors").read_bytes()
    result = run("train", "--model", "pspnet_tiny", "--epochs", "1", "--out", out, *SMALL)
    assert result.exit_code == 2
    assert "--resume" in result.output
    assert (out / "model.safetensors").read_bytes() == before


def test_resume_keeps_the_saved_epoch_count_unless_epochs_is_given(tmp_path):
    out = tmp_path / "run"
    assert run("train", "--model", "pspnet_tiny", "--epochs", "2", "--out", out, *SMALL).exit_code == 0
    result = run("train", "--out", out, "--resume", *SMALL)
    assert result.exit_code == 0, result.output
    assert "already trained 2 of 2 epochs" in result.output
    result = run("train", "--out", out, "--resume", "--epochs", "3", *SMALL)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["epochs"] == 3


@pytest.mark.parametrize("bad", [["--model", "nope"], ["--data", "voc:/does/not/exist"]])
def test_overwrite_with_bad_input_keeps_the_old_run(tmp_path, bad):
    out = tmp_path / "run"
    assert run("train", "--model", "pspnet_tiny", "--epochs", "1", "--out", out, *SMALL).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = run("train", "--out", out, "--overwrite", "--epochs", "1", *bad, *SMALL)
    assert result.exit_code == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_eval_with_corrupt_weights_exits_2(tmp_path):
    out = tmp_path / "run"
    assert run("train", "--model", "pspnet_tiny", "--epochs", "1", "--out", out, *SMALL).exit_code == 0
    (out / "model.safetensors").write_bytes(b"garbage")
    result = run("eval", out)
    assert result.exit_code == 2
    assert "model.safetensors" in result.output


def test_readme_commands_are_real():
    """Every `harden ...` command in the README's tour parses; `make` targets exist."""
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^\s*(harden [^\n#]+)", readme, flags=re.MULTILINE)
    assert len(commands) >= 3
    for command in commands:
        argv = command.split()[1:]
        sub = argv[0]
        assert sub in cli.commands, f"README mentions unknown command {command!r}"
        path = [sub]
        group = cli.commands[sub]
        if isinstance(group, click.Group):  # `harden study crf ...`: check the subcommand's options
            assert argv[1] in group.commands, f"README mentions unknown command {command!r}"
            path.append(argv[1])
        result = run(*path, "--help")
        assert result.exit_code == 0
        options = [a.split("=")[0] for a in argv if a.startswith("--")]
        for option in options:
            assert option in result.output, f"README uses {option} which `harden {' '.join(path)}` does not have"
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^\s*make (\w[\w-]*)", readme, flags=re.MULTILINE):
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE), f"README uses `make {target}`"


def test_import_harden_is_cheap():
    code = "import sys, harden; bad = [m for m in ('torch', 'tensorrt', 'onnxruntime') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code = "import sys, harden.models, torch; print(torch.cuda.is_initialized(), 'tensorrt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_console_script_and_module_entry_point_agree():
    out = subprocess.run([sys.executable, "-m", "harden", "--version"], capture_output=True, text=True, check=True)
    assert "harden" in out.stdout
