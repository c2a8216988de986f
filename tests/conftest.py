import json
import os
from pathlib import Path

import pytest
import torch

# Two cores on CI; torch's default thread pool is fine, but keep inter-op threads from
# oversubscribing when pytest and torch both run.
# HARDEN_TEST_THREADS sets the thread count instead, to show no outcome rests on the summation
# order a thread count picks (docs/benchmarks.md, "the suite under seeds and threads").
torch.set_num_threads(int(os.environ.get("HARDEN_TEST_THREADS", "0")) or min(2, os.cpu_count() or 1))

# Without a GPU, Triton kernels (the TensorRT plugins' kernels) run in Triton's interpreter on
# CPU tensors; the variable must be set before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The fast lane, `pytest -m "not slow"` (README "Development"), leaves out every test that trains,
# exports or verifies a model — those using the session's runs and exports below, and the modules
# whose tests build their own — and the few unit tests that take over a second on 2 cores
# (measured with --durations; docs/benchmarks.md has both lanes' times). CI runs everything.
SLOW_FIXTURES = frozenset({"demo", "trained_run", "ram_run", "fp32_export"})
SLOW_MODULES = frozenset(
    {
        "test_adversarial_training",
        "test_bring_your_own",
        "test_export_fuse",
        "test_export_onnx",
        "test_external_models",
        "test_faults",
        "test_multiscale_crf",
        "test_packaging",
        "test_training",
        "test_twin_conformance",
    }
)
SLOW_TESTS = frozenset(
    {
        "test_mas_rows_never_exceed_threshold",
        "test_custom_ops_pass_opcheck",
        "test_op_registration_passes_opcheck",
        "test_every_kernel_compiles_to_ptx_for_hopper",
        "test_a_rad_model_gets_eot_by_default_and_allow_random_is_not_sound",
        "test_attention_map_of_a_huge_image_is_refused_with_a_size_that_fits",
        "test_import_harden_is_cheap",
        "test_resume_keeps_the_saved_epoch_count_unless_epochs_is_given",
        "test_attention_map_draws_baseline_and_ram",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        name = getattr(item, "originalname", item.name)
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.path.stem in SLOW_MODULES or name in SLOW_TESTS or SLOW_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)


# HARDEN_TEST_SEED varies every test's random data (torch's, numpy's and Python's generators, and
# the synthetic street scenes of every dataset a test opens): run the suite under several seeds to
# show that no test's outcome rests on one lucky sample (docs/benchmarks.md, "the suite under
# seeds and threads"). 0, the default, is the data the tests were written with.
TEST_SEED = int(os.environ.get("HARDEN_TEST_SEED", "0"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    import random

    import numpy as np

    torch.manual_seed(TEST_SEED)
    np.random.seed(TEST_SEED)  # noqa: NPY002 — the global generator, for any test that draws from it
    random.seed(TEST_SEED)


@pytest.fixture(autouse=True, scope="session")
def _synthetic_data_seed():  # type: ignore[no-untyped-def]
    """Offset every synthetic dataset's seed by HARDEN_TEST_SEED (nothing changes at 0)."""
    if TEST_SEED == 0:
        yield
        return
    from harden.data.synthetic import SyntheticStreets

    original = SyntheticStreets.__init__

    def seeded(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        names = original.__code__.co_varnames[1 : original.__code__.co_argcount]
        bound = dict(zip(names, args, strict=False)) | kwargs
        bound["seed"] = bound.get("seed", 0) + 1_000 * TEST_SEED
        original(self, **bound)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SyntheticStreets, "__init__", seeded)
        yield


_checked_reports: dict[Path, int] = {}


@pytest.fixture(autouse=True)
def _reports_match_their_schemas(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Every harden report any test writes (verify.json, attack.json, eval.json, …) is validated
    against the JSON Schema it names (harden/schemas): a field renamed or retyped fails the test
    that wrote it, in teardown."""
    yield
    import harden.schemas

    invalid = []
    for path in tmp_path_factory.getbasetemp().rglob("*.json"):
        mtime = path.stat().st_mtime_ns
        if _checked_reports.get(path) == mtime:
            continue
        _checked_reports[path] = mtime
        try:
            report = json.loads(path.read_text())
        except (ValueError, OSError):  # a test's deliberately corrupt file
            continue
        if not (isinstance(report, dict) and str(report.get("schema", "")) in harden.schemas.REPORT_SCHEMAS):
            continue
        try:
            harden.schemas.validate(report)
        except Exception as err:  # jsonschema.ValidationError: name the file and the failing field
            invalid.append(f"{path}: {getattr(err, 'json_path', '')} {getattr(err, 'message', err)}")
        invalid += _typed_round_trip(report, path)
    assert not invalid, "reports that do not match their schema:\n" + "\n".join(invalid)


def _typed_round_trip(report: dict, path: Path) -> list[str]:  # type: ignore[type-arg]
    """A verify.json read back as a `VerifyReport` writes exactly the same JSON: nothing the
    renderers or readers need is dropped, nothing is invented."""
    from harden.runtime.report.record import SCHEMA, VerifyReport

    if report.get("schema") != SCHEMA:
        return []
    again = VerifyReport.from_dict(report, str(path)).to_dict()
    return [] if again == report else [f"{path}: VerifyReport does not round-trip ({_first_difference(report, again)})"]


def _first_difference(a: object, b: object, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key, ...) != b.get(key, ...):
                return _first_difference(a.get(key), b.get(key), f"{where}.{key}")
    return f"{where}: {a!r:.80} written, {b!r:.80} read back"


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """`harden demo --quick`, run once (tests/test_demo.py checks it; tests/test_replay.py replays
    its evidence): (its folder, the command's result)."""
    from click.testing import CliRunner

    from harden.cli import cli

    out = tmp_path_factory.mktemp("demo") / "demo"
    result = CliRunner().invoke(cli, ["demo", "--quick", "--out", str(out), "--no-progress"], catch_exceptions=False)
    return out, result


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A pspnet_tiny trained for a few seconds on 32×64 synthetic scenes (pAcc ≈ 0.6): something
    attacks can break. Session-scoped: trained once for all attack tests."""
    from click.testing import CliRunner

    from harden.cli import cli

    run_dir = tmp_path_factory.mktemp("runs") / "psp"
    args = ["train", "--model", "pspnet_tiny", "--epochs", "8", "--image-size", "32x64", "--train-images", "64"]
    args += ["--val-images", "8", "--batch-size", "8", "--no-progress", "--out", str(run_dir)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.fixture(scope="session")
def ram_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """segformer_tiny with MAS + RAD, trained for a few seconds on 64×64 scenes (export and verify
    tests). Session-scoped: trained once."""
    from click.testing import CliRunner

    from harden.cli import cli

    run_dir = tmp_path_factory.mktemp("runs") / "seg-ram"
    args = ["train", "--model", "segformer_tiny", "--ram", "--epochs", "2", "--image-size", "64x64"]
    args += ["--train-images", "16", "--val-images", "4", "--no-progress", "--out", str(run_dir)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.fixture(scope="session")
def fp32_export(ram_run, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """`harden export` of `ram_run` (model.fp32.onnx with MAS/RAD nodes, manifest): verify tests."""
    from click.testing import CliRunner

    from harden.cli import cli

    out = tmp_path_factory.mktemp("exports") / "fp32"
    result = CliRunner().invoke(cli, ["export", str(ram_run), "--out", str(out), "--parity-images", "2"])
    assert result.exit_code == 0, result.output
    return out
