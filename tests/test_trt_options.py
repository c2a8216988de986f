"""TensorRT build options: parsed, checked and recorded without TensorRT (it cannot run here)."""

import json
from pathlib import Path

import pytest
from cli_helpers import run_cli as _run

import harden.export.tensorrt
from harden.errors import InputError
from harden.export.trt_options import TrtBuildOptions, TrtShapes, parse_bytes, shapes_from


def test_the_default_profile_is_the_run_size_not_a_fixed_one():
    shapes = shapes_from(None, (64, 128), None)
    assert shapes.profile(3) == ((1, 3, 64, 128), (1, 3, 64, 128), (8, 3, 64, 128))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("min=32x64,opt=64x128,max=128x256", ((32, 64), (64, 128), (128, 256))),
        ("min=32x64,max=128x256", ((32, 64), (64, 128), (128, 256))),  # opt: the run's size, inside the range
        ("min=128x256,max=256x512", ((128, 256), (128, 256), (256, 512))),  # ... clamped into it
        ("opt=96x96", ((96, 96), (96, 96), (96, 96))),
    ],
)
def test_shapes_fill_missing_keys(text, expected):
    assert shapes_from(text, (64, 128), (1, 2, 4)).sizes() == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("min=64x64,opt=32x32", "height must satisfy min ≤ opt ≤ max"),
        ("min=64,opt=64x64", "not KEY=HEIGHTxWIDTH"),
        ("min=64x64,min=32x32", "given twice"),
        ("best=64x64", "not KEY=HEIGHTxWIDTH"),
        ("opt=0x64", "both ≥ 1"),
    ],
)
def test_bad_shapes_are_refused_with_the_rule(text, message):
    with pytest.raises(InputError, match=message):
        shapes_from(text, (64, 128), None)


def test_batches_sizes_and_static_graphs():
    with pytest.raises(InputError, match="1 ≤ min ≤ opt ≤ max"):
        TrtShapes.at((64, 64), (2, 1, 8))
    assert parse_bytes("4GiB") == 4 << 30 and parse_bytes("512M") == 512 << 20 and parse_bytes("1.5g") == 3 << 29
    for bad in ("lots", "12 parsecs", "100"):
        with pytest.raises(InputError, match="--trt-workspace"):
            parse_bytes(bad)
    TrtShapes.at((64, 64)).check_static((64, 64))
    with pytest.raises(InputError, match="fixed size 64x64"):
        shapes_from("min=32x32,max=64x64", (64, 64), None).check_static((64, 64))


def test_help_lists_the_build_options():
    result = _run("export", "--help")
    for option in ("--trt-shapes", "--trt-batch", "--trt-workspace", "--trt-timing-cache", "min=HxW,opt=HxW,max=HxW"):
        assert option in result.output


def test_build_options_need_trt_and_are_checked_before_any_work(ram_run, tmp_path):
    out = tmp_path / "export"
    result = _run("export", ram_run, "--out", out, "--trt-shapes", "opt=64x64")
    assert result.exit_code == 2 and "--trt-shapes configure the TensorRT engine: add --trt" in result.output
    result = _run("export", ram_run, "--out", out, "--trt", "--trt-shapes", "min=64x64,max=32x32")
    assert result.exit_code == 2 and "min ≤ opt ≤ max" in result.output
    result = _run("export", ram_run, "--out", out, "--trt", "--trt-workspace", "huge")
    assert result.exit_code == 2 and "--trt-workspace" in result.output
    assert not out.exists()


def test_the_manifest_records_how_the_engine_was_built(ram_run, tmp_path, monkeypatch):
    """TensorRT is not installed here: its two entry points are replaced by a recorder, so the
    rest of the export (profile defaults, staging, manifest) runs for real."""
    built: list[TrtBuildOptions] = []

    def fake_build(onnx_path: Path, engine_path: Path, options: TrtBuildOptions) -> Path:
        built.append(options)
        engine_path.write_bytes(b"engine")
        options.cache_for(engine_path).write_bytes(b"cache")
        return engine_path

    monkeypatch.setattr(harden.export.tensorrt, "require_tensorrt", lambda: None)
    monkeypatch.setattr(harden.export.tensorrt, "build_engine", fake_build)
    out = tmp_path / "export"
    args = ["export", ram_run, "--out", out, "--trt", "--no-parity", "--trt-shapes", "min=32x32,max=128x128",
            "--trt-batch", "1", "2", "4", "--trt-workspace", "2GiB"]  # fmt: skip
    result = _run(*args)
    assert result.exit_code == 0, result.output
    (options,) = built
    assert options.shapes.sizes() == ((32, 32), (64, 64), (128, 128))  # opt: the run's 64×64
    manifest = json.loads((out / "manifest.json").read_text())
    (engine,) = manifest["engines"]
    assert engine["path"] == "model.fp32.engine"
    assert engine["build"] == {
        "shapes": {"min_size": [32, 32], "opt_size": [64, 64], "max_size": [128, 128],
                   "min_batch": 1, "opt_batch": 2, "max_batch": 4},
        "workspace_bytes": 2 << 30,
        "timing_cache": "model.fp32.engine.timing.cache",
    }  # fmt: skip
    assert (out / "model.fp32.engine.timing.cache").read_bytes() == b"cache"
    assert manifest["options"]["trt_shapes"] == "min=32x32,max=128x128"
