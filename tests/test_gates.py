"""Gates derived from the export's own recorded parity: a deployed file a point worse than when
it was exported fails, although it is above the precision's fixed floor."""

import pytest
import torch

from harden.errors import InputError
from harden.runtime.gates import EXPORT_PARITY_MARGIN, Gates, clean_parity_gates
from harden.runtime.verify_state import Parity


def _parity(agreement: float, pixels: int = 1_000, images: int = 32) -> Parity:
    """A real Parity accumulator over `images` images of `pixels` pixels, in each of which a
    fraction `agreement` agree. Every image alike: the interval has zero width, so each gate
    below is decided by construction once the sequences' 32-image burn-in is over."""
    labels = torch.zeros(images, 1, pixels, dtype=torch.long)
    twin = torch.zeros(images, 2, 1, pixels)
    twin[:, 0] = 1.0
    engine = twin.clone()
    flipped = round((1 - agreement) * pixels)
    engine[:, 1, 0, :flipped] = 2.0
    parity = Parity()
    parity.add(twin, engine, labels, num_classes=2, ids=torch.arange(images))
    return parity


def _gate(results, name):  # type: ignore[no-untyped-def]
    return next(g for g in results if g.name == name)


def test_an_int8_file_a_point_worse_than_its_export_fails_by_name() -> None:
    gates = Gates.for_precision("int8").derived_from_export(0.995)
    worse = clean_parity_gates("source", [_parity(0.97)], gates)
    gate = _gate(worse, "clean-agreement[source]")
    assert not gate.passed and "recorded 99.50%" in gate.detail
    assert Gates.for_precision("int8").clean_agreement <= 0.97  # the fixed 90 % floor would have passed it
    faithful = clean_parity_gates("source", [_parity(0.992)], gates)
    assert _gate(faithful, "clean-agreement[source]").passed


def test_the_recorded_parity_never_loosens_a_gate_nor_applies_to_the_graph_twin() -> None:
    fp32 = Gates.for_precision("fp32").derived_from_export(1.0)
    assert fp32.source_agreement() == fp32.clean_agreement == 0.999  # 1.0 − margin is looser: the floor stays
    low = Gates.for_precision("int8").derived_from_export(0.85)
    assert low.source_agreement() == 0.9
    strict = Gates.for_precision("int8").derived_from_export(0.995)
    assert strict.source_agreement() == pytest.approx(0.995 - EXPORT_PARITY_MARGIN)
    # a graph twin is the file itself, not the model the export measured
    graph = clean_parity_gates("graph", [_parity(0.97)], strict)
    assert _gate(graph, "clean-agreement[graph]").passed
    assert Gates.for_precision("int8").derived_from_export(None).source_agreement() == 0.9


def test_the_derived_threshold_cannot_be_set_as_a_gate() -> None:
    with pytest.raises(InputError, match="unknown gate export_agreement"):
        Gates.for_precision("int8").with_values({"export_agreement": 0.5})


def test_the_engines_own_arithmetic_widens_the_derived_margin() -> None:
    """The export recorded its parity with the file as written; an engine that computes the file
    differently on this CPU (the engine-arithmetic audit's disagreement) moves agreement by up to
    that much, so the derived gate allows for it — and never drops below the precision's floor."""
    gates = Gates.for_precision("int8").derived_from_export(0.995)
    assert not _gate(clean_parity_gates("source", [_parity(0.97)], gates), "clean-agreement[source]").passed
    widened = clean_parity_gates("source", [_parity(0.97)], gates, shift=0.02)
    gate = _gate(widened, "clean-agreement[source]")
    assert gate.passed and gate.threshold == pytest.approx(0.995 - EXPORT_PARITY_MARGIN - 0.02)
    assert "2.00% this engine's arithmetic" in gate.detail
    assert gates.source_agreement(shift=0.5) == gates.clean_agreement
