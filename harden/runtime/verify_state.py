"""What `verify` accumulates over the batches, and how it survives interruptions and shards.

Everything is per-image counts (`ImageCounts`), sums and the first few example images, so:
- the state after every batch is a small file (`save_state`, written atomically; `load_state`
  reads it with `torch.load(weights_only=True)`, nothing is unpickled), and a run resumes from
  the batch after the last one saved;
- states of contiguous shards of the data concatenate (`VerifyState.merge`) into exactly the
  state one process would have reached, which is how torchrun ranks are reduced.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from harden._io import atomic_path
from harden.attacks.base import GradientStats
from harden.attacks.evaluate import AttackRun
from harden.attacks.worst_case import ImageCounts
from harden.errors import InputError

# v2: agreement counted per image (confidence intervals); v3: every twin scores every candidate
STATE_FORMAT: Final = "harden-verify-state-v3"


@dataclass
class Agreement:
    """Pixels where two models agree, counted per image id: the totals give the agreement, the
    per-image counts its clustered confidence interval (`harden.runtime.confidence`). An image
    scored several times (RAD draws, attacks) is one cluster: its counts add up."""

    counts: dict[int, tuple[int, int]] = field(default_factory=dict)  # image id → (agree, pixels)

    def add(self, ids: torch.Tensor, agree: torch.Tensor, pixels: torch.Tensor) -> None:
        for image, a, n in zip(ids.tolist(), agree.tolist(), pixels.tolist(), strict=True):
            old = self.counts.get(int(image), (0, 0))
            self.counts[int(image)] = (old[0] + int(a), old[1] + int(n))

    def merge(self, other: Agreement) -> None:
        for image, (a, n) in other.counts.items():
            old = self.counts.get(image, (0, 0))
            self.counts[image] = (old[0] + a, old[1] + n)

    @property
    def agree(self) -> int:
        return sum(a for a, _ in self.counts.values())

    @property
    def pixels(self) -> int:
        return sum(n for _, n in self.counts.values())

    @property
    def agreement(self) -> float:
        pixels = self.pixels
        return self.agree / pixels if pixels else float("nan")

    def per_image(self) -> tuple[np.ndarray, np.ndarray]:
        """(agree, pixels) per image, in image-id order."""
        ordered = [self.counts[k] for k in sorted(self.counts)]
        return np.array([a for a, _ in ordered], dtype=np.int64), np.array([n for _, n in ordered], dtype=np.int64)

    def to_dict(self) -> dict[str, torch.Tensor]:
        ids = sorted(self.counts)
        agree, pixels = self.per_image()
        return {"ids": torch.tensor(ids, dtype=torch.long), "agree": torch.from_numpy(agree),
                "pixels": torch.from_numpy(pixels)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, torch.Tensor]) -> Agreement:
        agreement = cls()
        agreement.add(data["ids"], data["agree"], data["pixels"])
        return agreement


@dataclass
class Parity:
    """Twin vs engine over the pixels seen so far (same images, same RAD seed)."""

    agreement_counts: Agreement = field(default_factory=Agreement)
    max_abs: float = 0.0
    twin: ImageCounts | None = None
    engine: ImageCounts | None = None

    def add(
        self, twin: torch.Tensor, engine: torch.Tensor, labels: torch.Tensor, num_classes: int, ids: torch.Tensor
    ) -> None:
        """twin, engine: (B, K, H, W) logits of the same images; ids: (B,) their dataset indices."""
        same = (twin.argmax(1) == engine.argmax(1)).flatten(1).sum(1).cpu()
        pixels = torch.full_like(same, twin.shape[-2] * twin.shape[-1])
        self.agreement_counts.add(ids, same, pixels)
        self.max_abs = max(self.max_abs, float((twin.float() - engine.float()).abs().max()))
        self.twin = _extend(self.twin, ImageCounts.from_predictions(twin.argmax(1), labels, num_classes))
        self.engine = _extend(self.engine, ImageCounts.from_predictions(engine.argmax(1), labels, num_classes))

    def merge(self, other: Parity) -> None:
        self.agreement_counts.merge(other.agreement_counts)
        self.max_abs = max(self.max_abs, other.max_abs)
        self.twin = _extend(self.twin, other.twin)
        self.engine = _extend(self.engine, other.engine)

    @property
    def agree(self) -> int:
        return self.agreement_counts.agree

    @property
    def pixels(self) -> int:
        return self.agreement_counts.pixels

    @property
    def agreement(self) -> float:
        return self.agreement_counts.agreement

    def miou_delta(self) -> float:
        assert self.twin is not None and self.engine is not None
        return abs(self.twin.scores()[0] - self.engine.scores()[0])

    def to_dict(self) -> dict[str, Any]:
        return {"agreement": self.agreement, "max_abs_diff": self.max_abs, "pixels": self.pixels,
                "miou_delta": self.miou_delta() if self.pixels else None}  # fmt: skip


class VerifyState:
    """Clean counts and parity per RAD draw, attack runs on the engine and on every twin,
    divergence counts, example images and phase times."""

    def __init__(self, twins: list[str], num_classes: int, draws: int) -> None:
        self.num_classes, self.draws = num_classes, draws
        self.batches = 0  # batches of the data accumulated so far
        self.engine_runs: dict[tuple[str, str, float], AttackRun] = {}  # (attack, crafted_on, ε)
        self.twin_runs: dict[str, dict[tuple[str, float], AttackRun]] = {name: {} for name in twins}
        # every candidate the engine was shown, as each twin predicts it, keyed like engine_runs:
        # the survival gate compares the engine's and a twin's worst case over the SAME images
        self.shared_runs: dict[str, dict[tuple[str, str, float], AttackRun]] = {name: {} for name in twins}
        self.clean_engine = [ImageCounts.empty(num_classes) for _ in range(draws)]
        self.clean_twin = {name: [ImageCounts.empty(num_classes) for _ in range(draws)] for name in twins}
        self.clean_parity = {name: [Parity() for _ in range(draws)] for name in twins}
        self.adversarial_parity = {name: Parity() for name in twins}
        self.divergence = Agreement()  # engine vs reference on divergence-search images, labelled pixels
        self.examples: dict[str, list[torch.Tensor]] = {}
        self.seconds: dict[str, float] = {}

    def merge(self, other: VerifyState) -> None:
        """Append `other`, the state of the shard of data that follows this one."""
        self.batches += other.batches
        for key, run in other.engine_runs.items():
            _merge_run(self.engine_runs.setdefault(key, _empty_like(run)), run)
        for name, runs in other.twin_runs.items():
            for twin_key, run in runs.items():
                _merge_run(self.twin_runs[name].setdefault(twin_key, _empty_like(run)), run)
        for name, shared in other.shared_runs.items():
            for shared_key, run in shared.items():
                _merge_run(self.shared_runs[name].setdefault(shared_key, _empty_like(run)), run)
        for d in range(self.draws):
            self.clean_engine[d] = self.clean_engine[d].extend(other.clean_engine[d])
            for name in self.clean_twin:
                self.clean_twin[name][d] = self.clean_twin[name][d].extend(other.clean_twin[name][d])
                self.clean_parity[name][d].merge(other.clean_parity[name][d])
        for name, parity in other.adversarial_parity.items():
            self.adversarial_parity[name].merge(parity)
        self.divergence.merge(other.divergence)
        for example, images in other.examples.items():
            self.examples.setdefault(example, []).extend(images)
        for phase, seconds in other.seconds.items():
            self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def to_dict(self) -> dict[str, Any]:
        """Plain containers of tensors and numbers only: what `torch.load(weights_only=True)` reads."""
        return {
            "num_classes": self.num_classes,
            "draws": self.draws,
            "batches": self.batches,
            "engine_runs": [_run_to_dict(run) for run in self.engine_runs.values()],
            "twin_runs": {name: [_run_to_dict(run) for run in runs.values()] for name, runs in self.twin_runs.items()},
            "shared_runs": {
                name: [_run_to_dict(run) for run in runs.values()] for name, runs in self.shared_runs.items()
            },
            "clean_engine": [_counts_to_dict(c) for c in self.clean_engine],
            "clean_twin": {name: [_counts_to_dict(c) for c in counts] for name, counts in self.clean_twin.items()},
            "clean_parity": {name: [_parity_to_dict(p) for p in ps] for name, ps in self.clean_parity.items()},
            "adversarial_parity": {name: _parity_to_dict(p) for name, p in self.adversarial_parity.items()},
            "divergence": self.divergence.to_dict(),
            "examples": {key: list(images) for key, images in self.examples.items()},
            "seconds": dict(self.seconds),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VerifyState:
        state = cls(list(data["clean_twin"]), data["num_classes"], data["draws"])
        state.batches = data["batches"]
        for run in map(_run_from_dict, data["engine_runs"]):
            state.engine_runs[(run.attack, run.crafted_on, run.eps)] = run
        for name, runs in data["twin_runs"].items():
            state.twin_runs[name] = {(run.attack, run.eps): run for run in map(_run_from_dict, runs)}
        for name, runs in data["shared_runs"].items():
            state.shared_runs[name] = {(run.attack, run.crafted_on, run.eps): run for run in map(_run_from_dict, runs)}
        state.clean_engine = [_counts_from_dict(c) for c in data["clean_engine"]]
        state.clean_twin = {name: [_counts_from_dict(c) for c in cs] for name, cs in data["clean_twin"].items()}
        state.clean_parity = {name: [_parity_from_dict(p) for p in ps] for name, ps in data["clean_parity"].items()}
        state.adversarial_parity = {name: _parity_from_dict(p) for name, p in data["adversarial_parity"].items()}
        state.divergence = Agreement.from_dict(data["divergence"])
        state.examples = {key: list(images) for key, images in data["examples"].items()}
        state.seconds = dict(data["seconds"])
        return state


def fingerprint(**identity: Any) -> str:
    """sha256 of what makes two verify runs the same run (artefact hashes, options, data)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def save_state(path: Path, state: VerifyState, run_fingerprint: str) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": STATE_FORMAT, "fingerprint": run_fingerprint, "state": state.to_dict()}, tmp)


def load_state(path: Path, run_fingerprint: str) -> VerifyState:
    """The state saved by an interrupted run of the same verification; exit 2 on anything else."""
    try:
        saved = torch.load(path, weights_only=True)
        if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} file")
        if saved["fingerprint"] != run_fingerprint:
            raise InputError(
                f"{path} was saved by a different verification (other files, options or data); "
                "run again with the same arguments to resume it, or without --resume to start afresh"
            )
        return VerifyState.from_dict(saved["state"])
    except InputError:
        raise
    except Exception as err:  # a truncated, pickled or foreign file: torch raises many kinds, in its own words
        raise InputError(
            f"{path} is not a harden verify state (unreadable as one: {type(err).__name__}); delete it, "
            "or run without --resume to start afresh"
        ) from err


def _extend(counts: ImageCounts | None, more: ImageCounts | None) -> ImageCounts | None:
    if more is None:
        return counts
    return more if counts is None else counts.extend(more)


def _empty_like(run: AttackRun) -> AttackRun:
    return AttackRun(run.attack, run.eps, run.kind, {}, crafted_on=run.crafted_on)


def _merge_run(run: AttackRun, other: AttackRun) -> None:
    for key, counts in other.candidates.items():
        run.candidates[key] = run.candidates[key].extend(counts) if key in run.candidates else counts
    run.gradients.add(other.gradients)
    run.seconds += other.seconds


def _counts_to_dict(counts: ImageCounts) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(array.copy()) for name, array in zip(_COUNT_FIELDS, counts._arrays(), strict=True)}


def _counts_from_dict(data: dict[str, torch.Tensor]) -> ImageCounts:
    return ImageCounts(*(data[name].numpy() for name in _COUNT_FIELDS))


_COUNT_FIELDS: Final = ("tp", "fp", "fn", "correct", "total")


def _parity_to_dict(parity: Parity) -> dict[str, Any]:
    return {
        "agreement": parity.agreement_counts.to_dict(),
        "max_abs": parity.max_abs,
        "twin": None if parity.twin is None else _counts_to_dict(parity.twin),
        "engine": None if parity.engine is None else _counts_to_dict(parity.engine),
    }


def _parity_from_dict(data: dict[str, Any]) -> Parity:
    return Parity(
        Agreement.from_dict(data["agreement"]),
        data["max_abs"],
        None if data["twin"] is None else _counts_from_dict(data["twin"]),
        None if data["engine"] is None else _counts_from_dict(data["engine"]),
    )


def _run_to_dict(run: AttackRun) -> dict[str, Any]:
    return {
        "attack": run.attack,
        "eps": run.eps,
        "kind": run.kind,
        "crafted_on": run.crafted_on,
        "seconds": run.seconds,
        "gradients": [run.gradients.images, run.gradients.zero, run.gradients.nan],
        "candidates": {key: _counts_to_dict(c) for key, c in run.candidates.items()},
    }


def _run_from_dict(data: dict[str, Any]) -> AttackRun:
    return AttackRun(
        data["attack"],
        data["eps"],
        data["kind"],
        {key: _counts_from_dict(c) for key, c in data["candidates"].items()},
        gradients=GradientStats(*data["gradients"]),
        seconds=data["seconds"],
        crafted_on=data["crafted_on"],
    )
