"""`harden verify` interrupted and resumed, and sharded across torchrun ranks: both must give
exactly the figures of one uninterrupted process."""

import json
import os
import subprocess
import sys

import pytest
import torch
from cli_helpers import DECIDED_BY_CONSTRUCTION
from cli_helpers import run_cli as _run

import harden.runtime.verify

# 4 images in batches of 2: two batches, so there is a batch to interrupt after and one per rank.
# the sampled gates cleared by construction: these tests are about resuming, not about the verdict
ARGS = ["--images", "4", "--batch-size", "2", "--iters", "2", "--queries", "5", "--divergence-steps", "2",
        "--eot", "2", "--draws", "2", "--eps", "8/255", "--attack", "fgsm,pgd", "--no-progress",
        *DECIDED_BY_CONSTRUCTION]  # fmt: skip


def _figures(report_dir):
    """What the verdict is made of (not the timings, paths or versions)."""
    report = json.loads((report_dir / "verify.json").read_text())
    for row in report["rows"]:
        row.pop("seconds", None)  # wall time differs from run to run
    # float32 logits differ in the last bits with the number of threads (torchrun runs 1 per rank)
    parity = report["parity"]
    for entry in [p for ps in parity["clean"].values() for p in ps] + list(parity["adversarial"].values()):
        entry["max_abs_diff"] = entry["max_abs_diff"] < 1e-5
    report["gates"] = [(gate["name"], gate["passed"]) for gate in report["gates"]]  # details print max |Δlogit|
    return {key: report[key] for key in ("verdict", "clean", "parity", "divergence", "rows", "worst_case", "gates")}


@pytest.fixture(scope="module")
def uninterrupted(ram_run, fp32_export, tmp_path_factory):
    report = tmp_path_factory.mktemp("verify") / "whole"
    result = _run("verify", fp32_export, "--twin", "graph", "--twin", ram_run, "--out", report, *ARGS)
    assert result.exit_code == 0, result.output
    assert not (report / "verify.state").exists()  # removed once the reports are written
    return _figures(report)


def test_interrupted_run_resumes_after_the_last_saved_batch(ram_run, fp32_export, tmp_path, monkeypatch, uninterrupted):
    report = tmp_path / "report"
    original = harden.runtime.verify._verify_batch
    calls = []

    def interrupted_after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt  # Ctrl-C (or a killed job) during the second batch
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(harden.runtime.verify, "_verify_batch", interrupted_after_one)
    aborted = _run("verify", fp32_export, "--twin", "graph", "--twin", ram_run, "--out", report, *ARGS)
    assert aborted.exit_code == 130 and "interrupted (Ctrl-C)" in aborted.output  # the shell's code for Ctrl-C
    assert (report / "verify.state").is_file() and not (report / "verify.json").exists()

    resumed_batches = []

    def counting(*args, **kwargs):
        resumed_batches.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(harden.runtime.verify, "_verify_batch", counting)
    result = _run("verify", fp32_export, "--twin", "graph", "--twin", ram_run, "--out", report, "--resume", *ARGS)
    assert result.exit_code == 0, result.output
    assert len(resumed_batches) == 1  # only the batch the interruption lost
    assert _figures(report) == uninterrupted
    assert not (report / "verify.state").exists()


def test_resume_refuses_another_run_and_a_corrupt_state(ram_run, fp32_export, tmp_path, monkeypatch):
    report = tmp_path / "report"
    original = harden.runtime.verify._verify_batch
    calls = []

    def after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(harden.runtime.verify, "_verify_batch", after_one)
    assert _run("verify", fp32_export, "--out", report, *ARGS).exit_code == 130  # Ctrl-C
    state = report / "verify.state"
    saved = state.read_bytes()

    other = _run("verify", fp32_export, "--out", report, "--resume", *ARGS, "--eps", "4/255")
    assert other.exit_code == 2 and "different verification" in other.output
    assert state.read_bytes() == saved  # nothing lost: the interrupted run can still be resumed

    listing = sorted(p.name for p in report.iterdir())
    assert ".harden.lock" not in listing  # the lock file goes with the command that held it
    state.write_bytes(saved[: len(saved) // 2])
    corrupt = _run("verify", fp32_export, "--out", report, "--resume", *ARGS)
    assert corrupt.exit_code == 2 and "is not a harden verify state" in corrupt.output, corrupt.output
    assert sorted(p.name for p in report.iterdir()) == listing  # a refused resume leaves nothing new

    import pickle

    state.write_bytes(pickle.dumps(ValueError("not tensors")))  # a pickle weights_only refuses
    pickled = _run("verify", fp32_export, "--out", report, "--resume", *ARGS)
    assert pickled.exit_code == 2 and "is not a harden verify state" in pickled.output, pickled.output
    assert "Weights only load failed" not in pickled.output  # harden's words, not PyTorch's internals
    assert sorted(p.name for p in report.iterdir()) == listing


@pytest.mark.skipif(os.environ.get("HARDEN_TEST_SEED", "0") != "0",
                    reason="the torchrun workers are other processes: HARDEN_TEST_SEED's offset of the synthetic data "
                    "(a monkeypatch in conftest) does not reach them, so they would verify other images")  # fmt: skip
def test_torchrun_shards_give_the_one_process_figures(ram_run, fp32_export, tmp_path, uninterrupted):
    report = tmp_path / "sharded"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29571",
               "-m", "harden", "verify", str(fp32_export), "--twin", "graph", "--twin", str(ram_run),
               "--out", str(report), *ARGS]  # fmt: skip
    # the workers at this process's thread count (conftest; HARDEN_TEST_THREADS): the same float arithmetic
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "in 2 shards" in done.stdout and done.stdout.count("verification PASSED") == 1
    assert _figures(report) == uninterrupted
    assert not list(report.glob("verify.state*"))


def test_shards_tile_the_batches_in_rank_order():
    from harden.distributed import Distributed

    for count in (0, 1, 5, 8):
        for world in (1, 2, 3):
            blocks = [Distributed(rank, world).shard(count) for rank in range(world)]
            assert [i for block in blocks for i in block] == list(range(count))
