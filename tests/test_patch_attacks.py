"""Patch attacks (RAM paper §5.1, Appendix A): the patch mask, Algorithm 1's step, the Permute
and Strip targets, the metrics, and the attacks themselves on a small trained RAM model."""

import pytest
import torch

from harden.attacks import PATCH_ATTACKS, create_patch_attack
from harden.attacks.attention_reader import AttentionReader, key_grid
from harden.attacks.patch import LOCATIONS, PatchMask, patch_step
from harden.attacks.targets import accuracy_outside, permute_targets, strip_targets, targeted_miou
from harden.data import collate_pad, open_dataset
from harden.data.classes import IGNORE_INDEX
from harden.errors import InputError
from harden.models import create_model
from harden.ram import fixed_rad_seed
from harden.run import load_model


@pytest.mark.parametrize("location", LOCATIONS)
def test_patch_mask_covers_m_by_m_pixels_at_its_place(location):
    mask = PatchMask(5, location, seed=3)(4, 16, 24)
    assert mask.shape == (4, 1, 16, 24)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert (mask.flatten(1).sum(1) == 25).all()
    rows, cols = torch.nonzero(mask[0, 0], as_tuple=True)
    top, left = int(rows.min()), int(cols.min())
    expected = {"lower-right": (11, 19), "lower-left": (11, 0), "upper-right": (0, 19), "upper-left": (0, 0),
                "center": (5, 9)}  # fmt: skip
    if location in expected:
        assert (top, left) == expected[location]
        assert torch.equal(mask[0], mask[3])


def test_random_and_explicit_patch_places():
    first, again, other = (PatchMask(4, "random", seed=s)(8, 32, 32) for s in (1, 1, 2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert len({tuple(torch.nonzero(m[0])[0].tolist()) for m in first}) > 1  # a place per image
    explicit = PatchMask(4, "2,3")(1, 10, 10)
    assert explicit[0, 0, 2:6, 3:7].sum() == 16 and explicit.sum() == 16
    for bad in (lambda: PatchMask(4, "8,8")(1, 10, 10), lambda: PatchMask(11)(1, 10, 10),
                lambda: PatchMask(4, "middle"), lambda: PatchMask(0)):  # fmt: skip
        with pytest.raises(InputError):
            bad()


def test_patch_step_changes_only_the_patch_and_stays_in_the_box():
    images = torch.rand(2, 3, 12, 12)
    gradient = torch.randn(2, 3, 12, 12) * 100
    mask = PatchMask(4, "center")(2, 12, 12)
    stepped = patch_step(images, gradient, mask, gamma=1.0)
    assert torch.equal(stepped * (1 - mask), images * (1 - mask))
    assert stepped.min() >= 0 and stepped.max() <= 1
    assert not torch.equal(stepped * mask, images * mask)
    with pytest.raises(InputError):
        patch_step(images, gradient, mask, gamma=0.0)


def _labels():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[0, :4], labels[0, 4:], labels[0, 0, 0] = 1, 3, IGNORE_INDEX
    labels[1, :, :2], labels[1, :, 2:] = 5, 0
    return labels


def test_permute_maps_each_present_class_to_a_distinct_absent_class():
    labels = _labels()
    targets = permute_targets(labels, num_classes=7, seed=0)
    assert targets[0, 0, 0] == IGNORE_INDEX
    for n in range(2):
        present = set(labels[n][labels[n] != IGNORE_INDEX].unique().tolist())
        mapping = {}
        for c in present:
            values = set(targets[n][labels[n] == c].tolist())
            assert len(values) == 1 and not values & present  # one absent class per present class
            mapping[c] = values.pop()
        assert len(set(mapping.values())) == len(mapping)
    assert not torch.equal(targets, permute_targets(labels, num_classes=7, seed=1))


def test_strip_targets_are_horizontal_stripes_of_absent_classes():
    labels = _labels()
    targets = strip_targets(labels, num_classes=7, stripes=4, seed=0)
    for n in range(2):
        present = set(labels[n][labels[n] != IGNORE_INDEX].unique().tolist())
        for s in range(4):
            stripe = targets[n, 2 * s : 2 * s + 2]
            assert len(stripe.unique()) == 1 and int(stripe[0, 0]) not in present
    with pytest.raises(InputError):
        permute_targets(torch.arange(4).view(1, 2, 2), num_classes=4)  # every class present
    with pytest.raises(InputError):
        strip_targets(labels, num_classes=7, stripes=0)


def test_metrics_targeted_miou_and_accuracy_outside_the_patch():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 2:, 2:] = 1
    predictions = torch.zeros(1, 4, 4, dtype=torch.long)
    predictions[0, 2:, 2:] = 1  # wrong only under the patch
    predictions[0, 0, 0] = 1  # and one pixel outside
    assert accuracy_outside(predictions, labels, mask) == pytest.approx(11 / 12)  # eq. 21: H·W − m²
    assert targeted_miou(labels + 1, labels + 1, 3) == 1.0
    # class 1: IoU 5/16; class 0 is predicted but never the target: IoU 0; class 2 occurs nowhere
    assert targeted_miou(predictions, torch.ones_like(labels), 3) == pytest.approx((5 / 16 + 0) / 2)


def test_key_grid_finds_global_attention_only():
    assert key_grid(8, 64, 128) == (2, 4)
    assert key_grid(128, 64, 128) == (8, 16)
    assert key_grid(129, 64, 128) is None  # a class token
    assert key_grid(49, 64, 128) is None  # a 7×7 window of a wide image


@pytest.fixture(scope="module")
def attacked(ram_run):
    model, _ = load_model(ram_run)
    dataset = open_dataset("synthetic", "val", size=(64, 64), num_images=2, seed=0)
    images, labels = collate_pad([dataset[i] for i in range(2)])
    targets = permute_targets(labels, dataset.num_classes, seed=0)
    mask = PatchMask(24)(2, 64, 64)

    def targeted(x):
        with torch.no_grad(), fixed_rad_seed(model, 10_000):
            return targeted_miou(model(x).argmax(1), targets, dataset.num_classes)

    return model, images, labels, targets, mask, targeted


@pytest.mark.parametrize("name", [a for a in PATCH_ATTACKS if a not in ("pgd", "autoattack")])
def test_each_attack_stays_in_the_patch_and_raises_targeted_miou(attacked, name):
    model, images, labels, targets, mask, targeted = attacked
    adversarial = create_patch_attack(name, steps=10, eot=2)(model, images, labels, mask=mask, targets=targets).images
    assert torch.equal(adversarial * (1 - mask), images * (1 - mask))
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert targeted(adversarial) > targeted(images)


def test_pgd_with_the_papers_small_step_still_moves_towards_the_target(attacked):
    model, images, labels, targets, mask, targeted = attacked
    adversarial = create_patch_attack("pgd", steps=10, eot=2, gamma=0.05)(
        model, images, labels, mask=mask, targets=targets
    ).images
    assert targeted(adversarial) > targeted(images)


def test_autoattack_in_the_patch_raises_targeted_miou_and_lowers_untargeted_accuracy(attacked):
    model, images, labels, targets, mask, targeted = attacked
    towards_target = create_patch_attack("autoattack", steps=5, eot=2)(
        model, images, labels, mask=mask, targets=targets
    ).images
    assert torch.equal(towards_target * (1 - mask), images * (1 - mask))
    assert targeted(towards_target) > targeted(images)
    adversarial = create_patch_attack("autoattack", steps=5, eot=2)(
        model, images, labels, mask=mask, targets=None
    ).images
    assert torch.equal(adversarial * (1 - mask), images * (1 - mask))
    with torch.no_grad(), fixed_rad_seed(model, 10_000):
        clean, attacked_accuracy = (float((model(x).argmax(1) == labels).float().mean()) for x in (images, adversarial))
    assert attacked_accuracy < clean


def test_square_draws_its_windows_inside_the_patch():
    from harden.attacks.patch import PatchThreat
    from harden.attacks.square import random_windows, region_boxes

    images = torch.rand(6, 3, 20, 30)
    mask = PatchMask(7, "random", seed=4)(6, 20, 30)
    boxes = region_boxes(PatchThreat(1.0, mask=mask).region(images), images.shape)
    assert torch.equal(boxes[2], torch.full((6,), 7)) and torch.equal(boxes[3], torch.full((6,), 7))
    torch.manual_seed(0)
    for side in (1, 3, 7):
        for _ in range(20):
            window = random_windows(boxes, side, images.shape, images.device)
            assert (window.flatten(1).sum(1) == side * side).all()
            assert not (window & (mask < 0.5)).any()
    whole = region_boxes(None, images.shape)
    assert whole[0].tolist() == [0] * 6 and whole[2].tolist() == [20] * 6 and whole[3].tolist() == [30] * 6


def test_a_rad_model_needs_eot_and_a_windowed_model_has_no_attention_to_read(attacked):
    model, images, labels, targets, mask, _ = attacked
    with pytest.raises(InputError, match="EOT"):
        create_patch_attack("dag", steps=1)(model, images, labels, mask=mask, targets=targets)
    swin = create_model("swin_tiny", num_classes=19).eval()
    wide = torch.rand(1, 3, 64, 128)  # on 64×64, Swin's last stage is one window: global after all
    wide_labels = torch.zeros(1, 64, 128, dtype=torch.long)
    maxattn = create_patch_attack("maxattn-dag", steps=1)
    with pytest.raises(InputError, match="nothing to read"):
        maxattn(swin, wide, wide_labels, mask=PatchMask(8)(1, 64, 128), targets=wide_labels + 1)
    cnn = create_model("pspnet_tiny", num_classes=19).eval()
    with pytest.raises(InputError, match="no attention layer"):
        create_patch_attack("patch-fool", steps=1)(cnn, images, labels, mask=mask, targets=targets)
    with pytest.raises(InputError):
        create_patch_attack("no-such-attack")
    with pytest.raises(InputError, match="targets must be"):
        create_patch_attack("dag", eot=2)(model, images, labels, mask=mask, targets=targets[:, :8])


def _cli(*args):
    from click.testing import CliRunner

    from harden.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_attack_command_with_patch_writes_the_protocol_table(ram_run, tmp_path):
    import json

    report = tmp_path / "patch"
    small = ["--images", 2, "--iters", 3, "--eot", 2, "--draws", 2, "--no-progress"]
    result = _cli("attack", ram_run, "--patch", 16, "--target", "strip", "--attack", "dag,maxattn-dag",
                  "--out", report, *small)  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((report / "patch_attack.json").read_text())
    assert [r["attack"] for r in summary["rows"]] == ["clean", "random-patch", "dag", "maxattn-dag"]
    assert summary["target"] == "strip" and summary["draws"] == 2 and summary["worst_over_draws"]
    assert summary["sound"] and {c["name"] for c in summary["checks"]} == {"patch-confined", "beats-random-patch"}
    clean, dag = summary["rows"][0], summary["rows"][2]
    assert dag["targeted_miou"] >= clean["targeted_miou"]
    assert (report / "examples.png").stat().st_size > 10_000

    untargeted = _cli("attack", ram_run, "--patch", 16, "--target", "none", "--attack", "dag",
                      "--out", tmp_path / "none", *small)  # fmt: skip
    assert untargeted.exit_code == 0, untargeted.output
    assert json.loads((tmp_path / "none" / "patch_attack.json").read_text())["rows"][0]["targeted_miou"] is None


def test_an_attack_weaker_than_random_noise_fails_the_sanity_check(ram_run, tmp_path):
    # a step of 1e-6 for one iteration leaves the patch as it was: random noise does more damage
    result = _cli("attack", ram_run, "--patch", 32, "--target", "none", "--attack", "pgd", "--gamma", "1e-6",
                  "--iters", 1, "--images", 2, "--eot", 2, "--draws", 1, "--out", tmp_path / "r",
                  "--no-progress")  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "[fail] beats-random-patch" in result.output and "pgd" in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--attack", "ipatch", "--target", "none"], "targeted attack"), (["--attack", "fgsm"], "unknown patch attack"),
     (["--location", "middle"], "patch location"), (["--gamma", "-1"], "gamma")],
)  # fmt: skip
def test_patch_attack_bad_input_exits_2(ram_run, tmp_path, extra, message):
    result = _cli("attack", ram_run, "--patch", 16, "--images", 1, "--iters", 1, "--eot", 2, *extra,
                  "--out", tmp_path / "r", "--no-progress")  # fmt: skip
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "r" / "patch_attack.json").exists()


def test_attention_aware_attacks_pull_more_attention_onto_the_patch_than_dag():
    """The adaptive attacks' extra terms work: after the attack, the queries of a plain attention
    model attend to the patch more than after DAG, whose loss ignores attention."""
    torch.manual_seed(0)
    model = create_model("segformer_tiny", num_classes=19).eval()
    dataset = open_dataset("synthetic", "val", size=(64, 128), num_images=2, seed=0)
    images, labels = collate_pad([dataset[i] for i in range(2)])
    targets = permute_targets(labels, dataset.num_classes, seed=0)
    mask = PatchMask(32)(2, 64, 128)

    def patch_attention(x):
        with torch.no_grad(), AttentionReader(model) as reader:
            model(x)
        return float(reader.patch_mass(mask))

    dag = patch_attention(
        create_patch_attack("dag", steps=10)(model, images, labels, mask=mask, targets=targets).images
    )
    for name in ("maxattn-dag", "patch-fool", "attention-fool"):
        adversarial = create_patch_attack(name, steps=10)(model, images, labels, mask=mask, targets=targets).images
        assert patch_attention(adversarial) > dag, name


def test_the_template_runs_algorithm_1_as_written():
    """A fixed-seed DAG through the Attack template equals Algorithm 1 written out by hand:
    the template (eval mode, seeded RNG, EOT, projection) adds nothing and changes nothing."""
    from harden.attacks.patch_losses import dag_margin
    from harden.ram import RAMConfig, insert_ram_

    torch.manual_seed(0)
    model = create_model("segformer_tiny", num_classes=19).eval()
    insert_ram_(model, RAMConfig())  # RAD: every forward pass draws from the seeded RNG
    images, labels = torch.rand(2, 3, 64, 64), torch.randint(0, 19, (2, 64, 64))
    targets, mask = (labels + 1) % 19, PatchMask(16, "random", seed=1)(2, 64, 64)
    output = create_patch_attack("dag", steps=3, eot=2, seed=5)(model, images, labels, mask=mask, targets=targets)

    torch.manual_seed(5)
    x = images.clone()
    for _ in range(3):
        gradient = torch.zeros_like(x)
        for _ in range(2):
            x_var = x.detach().requires_grad_(True)
            gradient += torch.autograd.grad(dag_margin(model(x_var), labels, targets), x_var)[0]
        x = patch_step(x, gradient / 2, mask, gamma=1.0)
    assert torch.equal(output.images, x)
    assert output.gradients.images == 2 * 3 * 2 and output.gradients.nan == 0
    assert create_patch_attack("eot").eot == 8 and create_patch_attack("eot", eot=3).eot == 3
    assert create_patch_attack("pgd").gamma == 0.005 and create_patch_attack("dag").gamma == 1.0
