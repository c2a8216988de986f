"""Worst cases over attacks, the sanity checks, and `harden attack` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

from harden.attacks.checks import (
    accuracy_non_increasing_in_eps,
    gradients_are_usable,
    outputs_are_logits,
    white_box_beats_black_box,
)
from harden.attacks.evaluate import AttackRun, Evaluation, evaluate_robustness
from harden.attacks.worst_case import ImageCounts, worst_case
from harden.cli import cli
from harden.data import open_dataset
from harden.metrics import ConfusionMatrix
from harden.run import load_model


def run(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def counts_of(pred: list[list[int]], labels: list[list[int]], k: int = 3) -> ImageCounts:
    return ImageCounts.from_predictions(torch.tensor(pred)[:, None], torch.tensor(labels)[:, None], k)


def test_image_counts_agree_with_the_dataset_confusion_matrix() -> None:
    pred, labels = torch.randint(0, 4, (5, 6, 7)), torch.randint(0, 4, (5, 6, 7))
    labels[0, 0] = 255
    counts = ImageCounts.from_predictions(pred, labels, 4)
    matrix = ConfusionMatrix(4)
    matrix.update(pred, labels)
    assert counts.scores() == pytest.approx((matrix.miou(), matrix.pixel_accuracy()))


def test_worst_case_is_never_weaker_than_any_candidate_and_can_beat_them_all() -> None:
    labels = [[0, 0, 1, 1], [2, 2, 2, 2]]
    a = counts_of([[1, 1, 1, 1], [2, 2, 2, 2]], labels)  # breaks image 0 only
    b = counts_of([[0, 0, 1, 1], [0, 0, 0, 0]], labels)  # breaks image 1 only
    worst = worst_case([a, b])
    assert worst.pixel_accuracy == pytest.approx(0.25)  # image 0 from a (2/4 right), image 1 from b (0/4)
    assert list(worst.accuracy_choice) == [0, 1]
    assert worst.miou <= min(a.scores()[0], b.scores()[0])
    rng = np.random.default_rng(0)
    for _ in range(20):  # random candidates: the assignment never loses to a single attack
        cands = [
            ImageCounts.from_predictions(torch.from_numpy(rng.integers(0, 3, (6, 4, 4))), torch.from_numpy(labels), 3)
            for labels in [rng.integers(0, 3, (6, 4, 4))] * 3
        ]
        result = worst_case(cands)
        assert result.miou <= min(c.scores()[0] for c in cands) + 1e-12
        assert result.pixel_accuracy <= min(c.scores()[1] for c in cands) + 1e-12


def fake_evaluation(rows: list[tuple[str, str, float, list[list[int]]]]) -> Evaluation:
    """rows: (attack, kind, ε, predictions of two 4-pixel images) against fixed labels."""
    labels = [[0, 0, 1, 1], [1, 1, 0, 0]]
    runs = [AttackRun(a, e, kind, {f"{a}@0": counts_of(p, labels, 2)}) for a, kind, e, p in rows]
    return Evaluation(2, 2, 1, [counts_of(labels, labels, 2)], runs, {})


def test_monotonicity_check_flags_an_attack_that_gets_weaker_with_eps() -> None:
    good = fake_evaluation(
        [
            ("pgd", "white-box", 0.01, [[1, 0, 1, 1], [1, 1, 0, 0]]),
            ("pgd", "white-box", 0.02, [[1, 1, 1, 1], [1, 1, 0, 0]]),
        ]
    )
    bad = fake_evaluation(
        [
            ("pgd", "white-box", 0.01, [[1, 1, 1, 1], [1, 1, 0, 0]]),
            ("pgd", "white-box", 0.02, [[1, 0, 1, 1], [1, 1, 0, 0]]),
        ]
    )
    assert accuracy_non_increasing_in_eps(good).status == "pass"
    assert accuracy_non_increasing_in_eps(bad).status == "fail"


def test_black_box_beating_white_box_is_flagged_as_gradient_masking() -> None:
    weak_white = [[0, 1, 1, 1], [1, 1, 0, 0]]
    strong_black = [[1, 1, 0, 0], [0, 0, 1, 1]]
    masked = fake_evaluation([("pgd", "white-box", 0.03, weak_white), ("square", "black-box", 0.03, strong_black)])
    honest = fake_evaluation([("pgd", "white-box", 0.03, strong_black), ("square", "black-box", 0.03, weak_white)])
    assert white_box_beats_black_box(masked).status == "fail"
    assert white_box_beats_black_box(honest).status == "pass"


def test_probabilities_and_dead_gradients_are_flagged(trained_run: Path) -> None:
    model = load_model(trained_run)[0].eval()
    images = torch.rand(2, 3, 32, 64)

    class Softmaxed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return model(x).softmax(1)

    class Quantised(nn.Module):  # rounding the input to 8 levels kills every input gradient
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return model(torch.round(x * 7) / 7)

    assert outputs_are_logits(model, images).status == "pass"
    assert outputs_are_logits(Softmaxed(), images).status == "fail"
    dataset = open_dataset("synthetic", "val", size=(32, 64), num_images=2, seed=0)
    evaluation = evaluate_robustness(Quantised(), dataset, ["pgd"], [4 / 255], steps=2, progress=False)
    assert gradients_are_usable(evaluation).status == "fail"


def test_transfer_candidates_are_labelled_transfer(trained_run: Path) -> None:
    model = load_model(trained_run)[0]
    dataset = open_dataset("synthetic", "val", size=(32, 64), num_images=2, seed=0)
    evaluation = evaluate_robustness(model, dataset, ["fgsm"], [4 / 255], source=model, progress=False)
    kinds = {r.attack: r.kind for r in evaluation.runs}
    assert kinds == {"fgsm": "transfer", "noise": "black-box"}


SMALL = ["--images", "4", "--batch-size", "4", "--examples", "2", "--no-progress"]


def test_attack_command_writes_table_json_and_plots(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = run(
        "attack", trained_run, "--attack", "fgsm,pgd", "--eps", "4/255,8/255", "--iters", "5", "--out", out, *SMALL
    )
    assert result.exit_code == 0, result.output
    assert "worst case" in result.output and "evaluation is SOUND" in result.output
    summary = json.loads((out / "attack.json").read_text())
    assert summary["sound"] is True
    rows = {(r["attack"], r["eps_text"]): r for r in summary["rows"]}
    assert set(rows) >= {("fgsm", "4/255"), ("pgd", "8/255"), ("noise", "4/255"), ("worst case", "8/255")}
    assert rows[("pgd", "8/255")]["miou"] < summary["clean"]["miou"]
    assert rows[("worst case", "8/255")]["miou"] <= min(rows[(a, "8/255")]["miou"] for a in ("fgsm", "pgd", "noise"))
    assert {c["name"] for c in summary["checks"]} >= {"eps=0", "monotone", "unbounded", "gradients", "randomness"}
    for png in ("robustness.png", "examples.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--eps", "abc"], "not a number"),
        (["--eps", "8"], "8/255"),
        (["--attack", "pgd,nope"], "unknown attack"),
        (["--iters", "0"], "--iters"),
        (["--eot", "0"], "--eot"),
    ],
)
def test_bad_attack_options_exit_2(trained_run: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = run("attack", trained_run, "--out", tmp_path / "r", *SMALL, *args)
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "r").exists()


def test_a_rad_model_gets_eot_by_default_and_allow_random_is_not_sound(tmp_path: Path) -> None:
    run_dir = tmp_path / "rad"
    train = ["train", "--model", "segformer_tiny", "--ram", "--no-mas", "--epochs", "1", "--image-size", "32x64"]
    assert (
        run(
            *train, "--train-images", "4", "--val-images", "2", "--batch-size", "4", "--no-progress", "--out", run_dir
        ).exit_code
        == 0
    )
    small = ["--attack", "fgsm", "--eps", "8/255", "--iters", "2", "--images", "2", "--examples", "0", "--no-progress"]
    result = run("attack", run_dir, *small, "--eot", "2", "--draws", "2")
    summary = json.loads((run_dir / "attack" / "attack.json").read_text())
    assert summary["eot"] == 2 and summary["draws"] == 2
    assert {c["name"]: c["status"] for c in summary["checks"]}["randomness"] == "pass"
    result = run("attack", run_dir, *small, "--allow-random", "--out", tmp_path / "r2")
    assert result.exit_code == 1
    assert "randomised model" in result.output and "NOT SOUND" in result.output
