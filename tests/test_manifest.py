"""The typed manifest: a tampered or malformed manifest.json is refused at once with exit 2,
naming the field, never a traceback; a file entry pointing outside the export is never followed."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner

from harden.cli import cli
from harden.export.manifest import MANIFEST_FILE, Manifest


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
    manifest = Manifest.read(fp32_export)
    assert manifest.precision == "fp32" and manifest.record("model.fp32.onnx") is not None
    assert len(manifest.class_names) == manifest.num_classes and len(manifest.checkpoint_sha256) == 64
    assert manifest.harden_nodes  # the RAM export records its MAS/RAD nodes
