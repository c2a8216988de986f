"""`--device`: resolved once (cuda:N, LOCAL_RANK under torchrun) and every twin placed there.

There is no GPU here: CUDA's availability is mocked for the resolution rules, and placement is
checked on PyTorch's "meta" device, where a tensor left behind on the CPU is visible."""

import pytest
import torch
from click.testing import CliRunner

from harden.cli import cli
from harden.devices import place, resolve_device, tensors_elsewhere
from harden.errors import InputError
from harden.runtime.engines import OnnxRuntimeEngine
from harden.runtime.twins import load_twins, open_deployment
from harden.runtime.verify import VerifyOptions, _Plan


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_cpu_and_refusals_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device("auto") == torch.device("cpu")
    with pytest.raises(InputError, match="torch sees no CUDA GPU"):
        resolve_device("cuda:0")
    with pytest.raises(InputError, match="use cpu, cuda"):
        resolve_device("tpu")


def test_cuda_means_this_process_gpu_under_torchrun(two_gpus):
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:1", local_rank=0) == torch.device("cuda", 1)  # an explicit index wins
    assert resolve_device("auto") == torch.device("cuda", 0)
    with pytest.raises(InputError, match=r"2 CUDA device\(s\), cuda:0..cuda:1"):
        resolve_device("cuda:2")
    with pytest.raises(InputError, match="2 CUDA device"):
        resolve_device("cuda", local_rank=2)  # more ranks than GPUs


def test_every_twin_and_the_plan_models_are_placed_with_nothing_left_behind(fp32_export, ram_run):
    deployment = open_deployment(fp32_export)
    twins = load_twins(["graph", str(ram_run)], deployment)
    meta = torch.device("meta")
    place(twins, meta)
    for name, twin in twins.items():
        assert tensors_elsewhere(twin, meta) == [], name
        assert any(True for _ in twin.buffers()) or any(True for _ in twin.parameters())
    with OnnxRuntimeEngine(deployment.artefact) as engine:
        source_only = load_twins([str(ram_run)], deployment)  # the plan builds the deployed graph's twin itself
        plan = _Plan.make(deployment, engine, place(source_only, meta), VerifyOptions(), meta)
    assert tensors_elsewhere(plan.reference, meta) == [] and tensors_elsewhere(plan.deployed_twin, meta) == []


def test_verify_refuses_a_device_this_machine_lacks(fp32_export, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(cli, ["verify", str(fp32_export), "--twin", "graph", "--device", "cuda:1",
                                      "--out", str(tmp_path / "r")])  # fmt: skip
    assert result.exit_code == 2 and "torch sees no CUDA GPU" in result.output
    assert not (tmp_path / "r").exists()
