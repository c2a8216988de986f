"""The typed manifest: a tampered or malformed manifest.json is refused at once with exit 2,
naming the field, never a traceback; a file entry pointing outside the export is never followed."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from harden.cli import cli
from harden.errors import InputError
from harden.export.arithmetic import ArithmeticComparison, ArithmeticVerdict
from harden.export.manifest import (
    MANIFEST_FILE,
    CalibrationRecipe,
    Checkpoint,
    ExportManifest,
    FileRecord,
    RecordedParity,
    read_manifest,
)
from harden.export.options import ExportOptions
from harden.ram.config import RAMConfig


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(manifest: dict[str, Any]) -> None:
        manifest[key] = value

    return change


def _first_onnx(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(manifest: dict[str, Any]) -> None:
        manifest["onnx"][0][key] = value

    return change


def _drop_sha(manifest: dict[str, Any]) -> None:
    del manifest["onnx"][0]["sha256"]


CASES = [
    ("onnx-a-string", _set("onnx", "model.fp32.onnx"), "'onnx' must be a list"),
    ("entry-an-int", _set("onnx", [3]), "onnx[0] must be an object"),
    ("entry-without-sha", _drop_sha, "onnx[0]: path, sha256 and precision must be strings"),
    ("path-an-int", _first_onnx("path", 7), "onnx[0]: path, sha256 and precision must be strings"),
    ("path-outside", _first_onnx("path", "../model.fp32.onnx"), "not a file name inside the export directory"),
    ("absolute-path", _first_onnx("path", "/etc/passwd"), "not a file name inside the export directory"),
    ("classes-huge", _set("num_classes", 10**9), "'num_classes' must be an integer between 2 and 100000"),
    ("classes-a-string", _set("num_classes", "19"), "'num_classes' must be an integer"),
    ("names-mismatch", _set("class_names", ["a"]), "'class_names' must be a list of"),
    ("no-checkpoint-hash", _set("checkpoint", {}), "checkpoint.sha256"),
    ("format-unknown", _set("format", "harden-export-manifest-v99"), "not a harden-export-manifest-v1 manifest"),
]


@pytest.mark.parametrize(("change", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_malformed_manifest_exits_2_naming_the_field(fp32_export, tmp_path, change, message) -> None:  # type: ignore[no-untyped-def]
    export = tmp_path / "export"
    shutil.copytree(fp32_export, export, ignore=shutil.ignore_patterns("verify"))
    manifest = json.loads((export / MANIFEST_FILE).read_text())
    change(manifest)
    (export / MANIFEST_FILE).write_text(json.dumps(manifest))
    before = {p.name: p.read_bytes() for p in export.iterdir() if p.is_file()}
    result = CliRunner().invoke(cli, ["verify", str(export), "--images", "1", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in export.iterdir() if p.is_file()} == before  # nothing written


def test_a_faithful_manifest_reads_typed(fp32_export) -> None:  # type: ignore[no-untyped-def]
    manifest = ExportManifest.read(fp32_export)
    assert manifest.precision == "fp32" and manifest.record("model.fp32.onnx") is not None
    assert len(manifest.class_names) == manifest.num_classes and len(manifest.checkpoint_sha256) == 64
    assert manifest.harden_nodes  # the RAM export records its MAS/RAD nodes


def test_a_faithful_manifest_round_trips(fp32_export) -> None:  # type: ignore[no-untyped-def]
    raw = read_manifest(fp32_export)
    manifest = ExportManifest.read(fp32_export)
    assert manifest.to_dict() == raw  # nothing read is dropped, nothing written is invented
    assert ExportManifest.from_dict(manifest.to_dict(), manifest.source or Path()) == manifest


def _every_part() -> ExportManifest:
    """A manifest with every optional part present: int8 with its recipe, an engine, parity and
    arithmetic — built in Python, no export needed."""
    recipe = CalibrationRecipe("synthetic", "train", 32, 0, (64, 128), False, 19, True, "reduced")
    comparison = ArithmeticComparison(8, 0.01, 0.9995, 0.41, 0.4101)
    verdict = ArithmeticVerdict("onnxruntime", "int8", "x86", comparison, 0.999, 12, 0, True, None, None)
    int8 = FileRecord("model.int8.onnx", "b" * 64, "int8", 2048, quantized_ops=["Conv"], int8_weights="reduced",
                      int8_weight_bits=7, calibration=recipe)  # fmt: skip
    engine = FileRecord("model.int8.engine", "c" * 64, "int8", 4096, build={"workspace_bytes": None})
    return ExportManifest(
        run_dir="runs/x", model="segformer_tiny", num_classes=19, class_names=[f"c{i}" for i in range(19)],
        ram=RAMConfig(threshold=0.25), rad_seed_input=True, checkpoint=Checkpoint("runs/x/model.safetensors", "a" * 64),
        opset=18, ir_version=10, inputs={"image": ["batch", 3, "height", "width"], "rad_seed": []},
        outputs={"logits": ["batch", 19, "height", "width"]}, static_size_reason=None, harden_nodes={"Mas": 2},
        precision="int8", onnx=[FileRecord("model.fp32.onnx", "d" * 64, "fp32", 1024), int8], engines=[engine],
        options=ExportOptions(precision="int8", trt=True, image_size=(64, 128), trt_batch=(1, 2, 4)),
        versions={"harden": "0.1", "tensorrt": None},
        parity={"int8": RecordedParity(True, [], 8, 0.998, 0.001, 0.2)}, engine_arithmetic={"int8": verdict},
    )  # fmt: skip


def test_every_part_of_the_manifest_round_trips_typed() -> None:
    manifest = _every_part()
    written = json.loads(json.dumps(manifest.to_dict()))  # through JSON, as on disk
    again = ExportManifest.from_dict(written, Path("manifest.json"))
    assert again == manifest and again.to_dict() == written
    assert again.calibration() == manifest.calibration() and again.recorded_agreement("int8") == 0.998
    assert again.options.trt_batch == (1, 2, 4) and isinstance(again.ram, RAMConfig)


def test_the_written_keys_are_the_record_fields() -> None:
    """A field added to the class and not to the JSON (or the other way round) fails here."""
    manifest = _every_part()
    assert set(manifest.to_dict()) == {f.name for f in dataclasses.fields(ExportManifest)} - {"source"} | {"format"}
    assert set(manifest.onnx[1].to_dict()) | {"kept_fp32", "build"} == {f.name for f in dataclasses.fields(FileRecord)}
    assert set(CalibrationRecipe("d", "s", 1, 0, (1, 1), False, 2, False, "full").to_dict()) == {
        f.name for f in dataclasses.fields(CalibrationRecipe)
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("options"), "field 'options' must be an object"),
        (lambda m: m.update(ram={"mas": True, "bogus": 1}), "field 'ram' is not a RAM configuration"),
        (lambda m: m.update(parity={"int8": {"argmax_agreement": 2}}), "parity.int8"),
        (lambda m: m["onnx"][1]["calibration"].update(image_size=[64]), "'image_size' must be [height, width]"),
        (lambda m: m.update(opset="18"), "field 'opset' must be an integer"),
        (lambda m: m["options"].update(trt=False), "options: malformed export options (--trt-batch configure"),
    ],
    ids=["no-options", "ram-unknown", "parity-malformed", "recipe-size", "opset-a-string", "options-contradict"],
)
def test_a_malformed_part_names_itself(change: Callable[[dict[str, Any]], None], message: str) -> None:
    written = _every_part().to_dict()
    change(written)
    with pytest.raises(InputError, match=re.escape(message)):
        ExportManifest.from_dict(written, Path("manifest.json"))
