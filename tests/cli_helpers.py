"""The one way tests run the `harden` command line: in process through click's CliRunner, with
exceptions propagating (so a traceback fails the test instead of hiding in the output)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
from click.testing import CliRunner, Result

from harden.cli import cli
from harden.export.manifest import MANIFEST_FILE, FileRecord


def run_cli(*args: object) -> Result:
    """`harden ARGS...` (paths and numbers are turned into strings)."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_refused(result: Result, *words: str) -> None:
    """Bad input: exit 2, no traceback, and every one of `words` in the message."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output, (word, result.output)


# Gate values that every estimated gate clears by construction: each interval lies inside its
# figure's range (an agreement, a survival ratio ≥ 0; an mIoU difference ≤ 1), so a threshold at
# the range's edge passes whatever images the run draws. Tests whose subject is not the verdict on
# a sampled figure (reports, audits, checks, resume, CLI plumbing) pass these, so that no test's
# outcome is decided by sampling noise on a few images (issue 45; docs/verdicts.md §5). The exact
# gates (data, audits, engine arithmetic, sanity checks) still decide.
DECIDED_BY_CONSTRUCTION = ("--gate", "clean_agreement=0", "--gate", "clean_miou_delta=1",
                           "--gate", "adversarial_agreement=0", "--gate", "survival=0")  # fmt: skip


def resign(export: Path, out: Path, model: onnx.ModelProto) -> Path:
    """A copy of `export` in `out` whose fp32 file is `model`, re-hashed in the manifest: what a
    pipeline that rewrote the file and signed it again produces."""
    shutil.copytree(export, out)
    path = out / "model.fp32.onnx"
    onnx.save(model, str(path))
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    manifest["onnx"] = [FileRecord.of(path, out, e["precision"]).to_dict() if e["path"] == path.name else e
                        for e in manifest["onnx"]]  # fmt: skip
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    return out
