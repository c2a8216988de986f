"""Deployment audits: direct checks that name the cause when a deployment differs from its source.

Parity and re-attacks show THAT an engine behaves differently; these say WHY, by looking at
the deployed graph and at the engine's response to its seed:
- `graph_ops`: the harden::Mas / MaskedMas / Rad nodes (and their thresholds and drop
  probabilities) are those of the source model — catches MAS or RAD removed or altered;
- `seed_dependence`: the engine's output depends on rad_seed exactly when the source drops
  attention with RAD — catches RAD disabled (or stuck) in the engine;
- `weights`: the graph's weights equal the checkpoint's (fp16 to half precision);
- `int8_calibration`: few activations saturate at the graph's QuantizeLinear nodes on the
  verification images — catches a calibration range that does not cover the data.

Each returns a `harden.attacks.checks.Check`; "n/a" means the premise is absent (no int8 in an
fp32 graph), not that the audit was skipped.
"""

from __future__ import annotations

import itertools
from typing import Any

import onnx
import torch
from torch import nn

from harden.attacks.checks import Check
from harden.export.manifest import ExportManifest
from harden.ram import robust_cores
from harden.ram.config import RAMConfig
from harden.runtime.engines import Engine
from harden.runtime.graph_twin import GraphTwin
from harden.runtime.inlined import find_inlined
from harden.runtime.torch_ops import QUANT_RANGE
from harden.runtime.torch_ops_quant import float32_attribute, per_axis

CLIP_LIMIT = 0.02  # min-max calibration on a few images saturated < 1 % on held-out ones (measured)


def expected_harden_nodes(source: nn.Module | None, manifest: ExportManifest | None) -> dict[str, Any]:
    """What the deployed graph must contain: MAS and RAD layer counts, thresholds and p."""
    if source is not None:
        cores = [core for _, core in robust_cores(source)]
        mas = [c.config.threshold for c in cores if c.config.mas]
        rad = [c.config.drop_p for c in cores if c.drops]
        return {"mas": len(mas), "rad": len(rad), "thresholds": sorted(set(mas)), "ps": sorted(set(rad))}
    counts = manifest.harden_nodes if manifest is not None else {}
    ram = manifest.ram if manifest is not None else None
    return {
        "mas": counts.get("Mas", 0) + counts.get("MaskedMas", 0),
        "rad": counts.get("Rad", 0),
        "thresholds": [ram.threshold] if ram is not None and ram.mas and counts else [],
        "ps": [ram.drop_p] if ram is not None and ram.rad and ram.drop_p > 0 and counts else [],
    }


def graph_ops(deployed: GraphTwin, expected: dict[str, Any], what: str) -> Check:
    """harden nodes of the deployed graph vs `expected` (from `expected_harden_nodes`)."""
    mas_nodes = [a for d, op, *_, a in deployed.nodes if d == "harden" and op in ("Mas", "MaskedMas")]
    rad_ps = [float32_attribute(a["p"]) for d, op, *_, a in deployed.nodes if d == "harden" and op == "Rad"]
    dropping = [p for p in rad_ps if p > 0]
    thresholds = sorted({float32_attribute(a["threshold"]) for a in mas_nodes})
    ps = sorted(set(dropping))
    problems = []
    if len(mas_nodes) != expected["mas"]:
        cause = "MAS was removed or replaced by a plain softmax" if len(mas_nodes) < expected["mas"] else "extra MAS"
        problems.append(f"{len(mas_nodes)} harden::Mas nodes where {what} has {expected['mas']} MAS layers ({cause})")
    elif thresholds != expected["thresholds"]:
        problems.append(f"MAS thresholds {thresholds} differ from {what}'s {expected['thresholds']}")
    if len(dropping) != expected["rad"]:
        cause = "RAD was removed or disabled (p = 0)" if len(dropping) < expected["rad"] else "extra RAD"
        problems.append(
            f"{len(dropping)} dropping harden::Rad nodes where {what} drops in {expected['rad']} layers ({cause})"
        )
    elif ps != expected["ps"]:
        problems.append(f"RAD drop probabilities {ps} differ from {what}'s {expected['ps']}")
    if problems:
        return Check("graph-ops", "fail", "deployed graph: " + "; ".join(problems))
    return Check(
        "graph-ops",
        "pass",
        f"deployed graph has {len(mas_nodes)} MAS (T {thresholds}) and {len(dropping)} RAD nodes (p {ps}), as {what}",
    )


def graph_ops_inlined(model: onnx.ModelProto, expected: dict[str, Any], ram: RAMConfig | None) -> Check | None:
    """The graph-ops audit for a graph with no harden node left: an optimiser that inlined the
    MAS and RAD functions leaves their bodies, which `harden.runtime.inlined` recognises at the
    manifest's threshold and drop probability. None when the graph still holds harden nodes (the
    node count already judged it) or there is nothing to expect."""
    if any(n.domain == "harden" for n in model.graph.node) or not (expected["mas"] or expected["rad"]):
        return None
    threshold = ram.threshold if ram is not None and ram.mas else None
    drop_p = ram.drop_p if ram is not None and ram.rad else None
    found = find_inlined(model, threshold, drop_p)
    counts = f"{found.mas} MAS (T {threshold}) and {found.rad} RAD bodies (p {drop_p})"
    if found.differs or found.mas != expected["mas"] or found.rad != expected["rad"]:
        problems = [f"inlined bodies: {counts} where the export manifest has {expected['mas']} MAS and "
                    f"{expected['rad']} RAD layers", *found.differs[:3]]  # fmt: skip
        return Check("graph-ops", "fail", "deployed graph: " + "; ".join(problems))
    return Check("graph-ops", "pass", f"an optimiser inlined MAS and RAD: harden's own {counts} recognised, "
                 "as the export manifest records them")  # fmt: skip


def seed_dependence(engine: Engine, images: torch.Tensor, source_drops: bool) -> Check:
    """Two rad_seeds must give different outputs exactly when the source drops with RAD."""
    if not engine.takes_seed:
        if source_drops:
            return Check(
                "rad-seed",
                "fail",
                f"{engine.name} takes no rad_seed but the source model drops attention with RAD: "
                "RAD is disabled in the engine",
            )
        return Check("rad-seed", "pass", "neither the source nor the engine uses RAD")
    first, second = engine.logits(images, 1), engine.logits(images, 2)
    differs = not torch.equal(first, second)
    if differs == source_drops:
        return Check(
            "rad-seed",
            "pass",
            "the engine's output changes with rad_seed, as RAD should"
            if differs
            else "the engine ignores rad_seed, as the source has no RAD",
        )
    if source_drops:
        return Check(
            "rad-seed",
            "fail",
            f"{engine.name}'s output does not change with rad_seed while the source drops with RAD: "
            "RAD is disabled in the engine",
        )
    return Check("rad-seed", "fail", f"{engine.name}'s output changes with rad_seed but the source has no RAD")


def checkpoint_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers by name, less the convolution weights and biases that
    the exporter folds into a following BatchNorm (their exported values legitimately differ)."""
    state = dict(model.state_dict())
    for name, module in model.named_modules():
        children = list(module.named_children())
        for (conv_name, conv), (_, after) in itertools.pairwise(children):
            if isinstance(conv, nn.modules.conv._ConvNd) and isinstance(after, nn.modules.batchnorm._BatchNorm):
                prefix = f"{name}.{conv_name}" if name else conv_name
                state.pop(f"{prefix}.weight", None)
                state.pop(f"{prefix}.bias", None)
    return state


def weights(deployed: GraphTwin, reference: dict[str, torch.Tensor], what: str) -> Check:
    """Initializers whose name (less a leading "model.") and shape match a reference tensor must
    equal it (to fp16 rounding when the graph stores fp16)."""
    compared, differing = 0, []
    for name, tensor in deployed.constants().items():
        ref = reference.get(name.removeprefix("model."), reference.get(name))
        if ref is None or ref.shape != tensor.shape or not tensor.is_floating_point():
            continue
        compared += 1
        ref, tensor = ref.detach().float().cpu(), tensor.cpu()
        tolerance = 1e-3 * float(ref.abs().max()) + 1e-6 if tensor.dtype == torch.float16 else 1e-6
        delta = float((tensor.float() - ref).abs().max()) if ref.numel() else 0.0
        if delta > tolerance:
            differing.append((delta, name))
    if not compared:
        return Check("weights", "n/a", f"no graph initializer matches a tensor of {what} by name and shape")
    if differing:
        delta, name = max(differing)
        return Check(
            "weights",
            "fail",
            f"{len(differing)} of {compared} weights differ from {what} (largest: {name}, max |Δ| {delta:.3g}): "
            "the deployed weights are not the trained ones",
        )
    return Check("weights", "pass", f"{compared} weights equal {what}'s")


def int8_calibration(deployed: GraphTwin, images: torch.Tensor) -> Check:
    """Fraction of activation values that saturate at each QuantizeLinear on `images`."""
    names = set(deployed.constant_names)
    if not any(op == "QuantizeLinear" and inputs[0] not in names for _, op, inputs, *_ in deployed.nodes):
        return Check("int8-calibration", "n/a", "the graph has no int8 activations")
    constant_ids = {id(t) for t in deployed.constants().values()}
    clipped: list[tuple[float, float]] = []  # per activation QuantizeLinear call: (saturated, values)

    def observe(op_type: str, inputs: list[torch.Tensor | None], outputs: list[torch.Tensor], attrs: Any) -> None:
        if op_type != "QuantizeLinear":
            return
        data, scale = inputs[0], inputs[1]
        if data is None or scale is None or id(data) in constant_ids:
            return
        zero = inputs[2] if len(inputs) > 2 and inputs[2] is not None else torch.zeros((), dtype=torch.uint8)
        low, high = QUANT_RANGE[zero.dtype]
        axis = attrs.get("axis", 1)
        q = torch.round(data.float() / per_axis(scale.float(), data, axis)) + per_axis(zero.float(), data, axis)
        # a zero point at the bottom of the range is a one-sided (post-ReLU) range: a quantiser that folds
        # the ReLU into the clamp (ONNX Runtime's) cuts the negative half on purpose, which is not saturation
        one_sided = bool((zero.float() == low).all())
        saturated = (q > high) if one_sided else (q < low) | (q > high)
        clipped.append((float(saturated.sum()), float(q.numel())))

    deployed.run_observed(images, observe)
    rates = [c / t for c, t in clipped if t]
    worst = max(rates, default=0.0)
    bad = sum(rate > CLIP_LIMIT for rate in rates)
    if bad:
        return Check(
            "int8-calibration",
            "fail",
            f"{bad} of {len(rates)} int8 activations saturate on more than {CLIP_LIMIT:.0%} of their values "
            f"(worst {worst:.1%}): the int8 calibration range does not cover the data — recalibrate on "
            "representative images (harden export --precision int8 --calib-data ...)",
        )
    return Check(
        "int8-calibration",
        "pass",
        f"{len(rates)} int8 activations; at most {worst:.2%} of values saturate (limit {CLIP_LIMIT:.0%})",
    )
