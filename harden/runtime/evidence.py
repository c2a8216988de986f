"""The evidence set a verify run leaves behind, so that any rebuilt engine can be re-judged on
exactly the images that decided the verdict (`harden replay`), and every verdict can be traced
to the bytes it was computed on.

Layout of `OUT/evidence/` (written by `harden verify`, read by `harden replay`):

- `batch-NNNNNN.safetensors.gz`, one per verified batch (NNNNNN: the batch's first image id):
  gzip of a safetensors file (no pickles) holding, for the batch's images,
  `ids` (B,), `clean` (B, 3, H, W), `labels` (B, H, W), `clean.pred` (B, D, H, W) — the engine's
  class map in every RAD draw d (seed DRAW_SEED + d) — and per ε index k `adv.k` (B, 3, H, W),
  the adversarial image on which the engine scored worst, and `pred.k` (B, D, H, W);
- `evidence.json`: the manifest — the schema, the deployment the predictions came from, ε,
  draws, how images are stored, every file's sha256 and size, and every image's id, the sha256
  of its clean pixels and label, and which attack, member, twin and draw produced its worst
  adversarial image at each ε. verify.json names the manifest and its sha256.

Storage, decided per batch (and recorded per file):
- **uint8** when the data's images lie on the 8-bit grid (every image file does): the worst
  adversarial image is rounded to the grid inside the ε-ball (never outside it) and the engine
  re-scored on the rounded image, so the recorded predictions are exactly what the engine gives
  for the stored bytes. A camera delivers 8-bit images; 4 bytes a value would buy nothing.
- **float32** otherwise (a float data source): exact as attacked, four times the size.
gzip then shrinks labels and class maps about twentyfold (they are mostly runs of one class);
adversarial noise compresses little. Measured sizes: docs/benchmarks.md ("Evidence sets").
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from harden._io import atomic_open, safetensors_bytes, write_json
from harden.attacks.threat import format_eps
from harden.data.classes import IGNORE_INDEX
from harden.errors import InputError
from harden.export.files import sha256_file
from harden.memory import available_bytes

SCHEMA = "harden-evidence-v1"
FOLDER = "evidence"
MANIFEST = "evidence.json"
GRID_TOLERANCE = 1e-4  # |x·255 − round(x·255)| below this: the image lies on the 8-bit grid
MAX_EXPANSION = 1100  # deflate cannot expand more than 1032-fold: the bound when no size is recorded

Predict = Callable[[torch.Tensor, int], torch.Tensor]  # (images, draw) → the engine's class map (B, H, W)


def on_8bit_grid(images: torch.Tensor) -> bool:
    scaled = images.detach().float() * 255
    return bool((scaled - scaled.round()).abs().max() <= GRID_TOLERANCE * 255) and bool(
        (images.min() >= 0) & (images.max() <= 1)
    )


def to_grid_in_ball(adversarial: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    """`adversarial` rounded to the 8-bit grid, then moved to the nearest grid value inside the
    L∞ ball of radius `eps` around `clean` (itself on the grid) and inside [0, 1]: uint8."""
    rounded = (adversarial.float() * 255).round()
    low = torch.ceil((clean.float() - eps) * 255 - GRID_TOLERANCE).clamp_min(0)
    high = torch.floor((clean.float() + eps) * 255 + GRID_TOLERANCE).clamp_max(255)
    return torch.minimum(torch.maximum(rounded, low), high).to(torch.uint8)


def image_sha256(clean: torch.Tensor, labels: torch.Tensor) -> str:
    """The identity of one verified image: sha256 of its pixels as 8-bit values (or float32 when
    off the grid) followed by its label map as int64."""
    pixels = (clean.float() * 255).round().to(torch.uint8) if on_8bit_grid(clean) else clean.float()
    digest = hashlib.sha256(pixels.contiguous().cpu().numpy().tobytes())
    digest.update(labels.to(torch.int64).contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def _class_dtype(num_classes: int) -> torch.dtype:
    return torch.uint8 if num_classes < IGNORE_INDEX else torch.int16


@dataclass
class WorstImages:
    """Per image of a batch at one ε: the adversarial image the engine scored worst on, and
    which candidate (attack, member, twin, draw) produced it."""

    images: torch.Tensor  # (B, 3, H, W) float in [0, 1]
    sources: list[str]


class EvidenceWriter:
    """Writes one batch file per verified batch and, at the end, the manifest.

    A resumed verification keeps the batch files of the batches it does not redo; a new one
    starts from an empty folder (`start`).
    """

    def __init__(self, folder: Path, eps_values: list[float], num_classes: int) -> None:
        self.folder = Path(folder)
        self.eps_values = list(eps_values)
        self.num_classes = num_classes

    def start(self) -> None:
        """Make the folder. Batch files of an earlier run are overwritten batch by batch (a resumed
        run keeps those it does not redo); `finish` removes any this run did not produce."""
        self.folder.mkdir(parents=True, exist_ok=True)

    def add_batch(
        self, predict: Predict, draws: int, ids: torch.Tensor, clean: torch.Tensor, labels: torch.Tensor,
        worst: dict[float, WorstImages],
    ) -> Path:  # fmt: skip
        """Store one batch: its clean images and labels, each ε's worst adversarial images, and
        the engine's class maps of all of them in each of `draws` RAD draws (re-scored on the
        stored bytes)."""
        grid = on_8bit_grid(clean)
        classes = _class_dtype(self.num_classes)
        stored_clean = (clean * 255).round().to(torch.uint8) if grid else clean.float()
        tensors: dict[str, torch.Tensor] = {
            "ids": ids.to(torch.int64).cpu(),
            "clean": stored_clean.cpu(),
            "labels": labels.to(classes).cpu(),
            "clean.pred": self._predictions(predict, draws, stored_clean, classes),
        }
        sources: dict[str, list[str]] = {}
        for k, eps in enumerate(self.eps_values):
            found = worst[eps]
            stored = to_grid_in_ball(found.images, clean, eps) if grid else found.images.float()
            tensors[f"adv.{k}"] = stored.cpu()
            tensors[f"pred.{k}"] = self._predictions(predict, draws, stored, classes)
            sources[str(k)] = list(found.sources)
        hashes = [image_sha256(c, lab) for c, lab in zip(clean, labels, strict=True)]
        metadata = {"storage": "uint8" if grid else "float32", "sources": json.dumps(sources),
                    "image_sha256": json.dumps(hashes)}  # fmt: skip
        serialised = safetensors_bytes({k: v.contiguous() for k, v in tensors.items()}, metadata)
        payload = gzip.compress(serialised, 6, mtime=0)  # mtime 0: the same evidence, the same bytes
        path = self.folder / f"batch-{int(ids[0]):06d}.safetensors.gz"
        with atomic_open(path, "wb") as f:
            f.write(payload)
        return path

    def _predictions(self, predict: Predict, draws: int, stored: torch.Tensor, classes: torch.dtype) -> torch.Tensor:
        images = stored.float() / 255 if stored.dtype == torch.uint8 else stored
        maps = [predict(images.to(stored.device), d).to(classes).cpu() for d in range(draws)]
        return torch.stack(maps, dim=1)  # (B, D, H, W)

    def finish(
        self, first_ids: list[int], draws: int, deployment: dict[str, Any], class_names: list[str],
        data: dict[str, Any],
    ) -> tuple[Path, str]:  # fmt: skip
        """Write the manifest over the batch files of this run (those starting at `first_ids`),
        removing any other batch file left by an earlier run; (the manifest's path, its sha256)."""
        ours = {f"batch-{i:06d}.safetensors.gz" for i in first_ids}
        for stale in self.folder.glob("batch-*.safetensors.gz"):
            if stale.name not in ours:
                stale.unlink()
        for leftover in self.folder.glob(".*.tmp"):  # a writer killed mid-write
            leftover.unlink()
        files: list[dict[str, Any]] = []
        images: list[dict[str, Any]] = []
        for name in sorted(ours):
            path = self.folder / name
            if not path.is_file():
                raise RuntimeError(f"{path}: a verified batch left no evidence file")
            batch = read_batch(path, len(self.eps_values))
            files.append({"path": path.name, "bytes": path.stat().st_size, "raw_bytes": batch.raw_bytes,
                          "sha256": sha256_file(path), "storage": batch.storage,
                          "ids": batch.ids.tolist()})  # fmt: skip
            for i, image_id in enumerate(batch.ids.tolist()):
                images.append({"id": image_id, "sha256": batch.image_sha256[i],
                               "worst": {format_eps(eps): batch.sources[str(k)][i]
                                         for k, eps in enumerate(self.eps_values)}})  # fmt: skip
        manifest = {
            "schema": SCHEMA,
            "deployment": deployment,
            "class_names": class_names,
            "num_classes": self.num_classes,
            "eps": self.eps_values,
            "eps_text": [format_eps(e) for e in self.eps_values],
            "draws": draws,
            "data": data,
            "files": files,
            "images": images,
            "bytes": sum(f["bytes"] for f in files),
        }
        path = self.folder / MANIFEST
        write_json(path, manifest)
        return path, sha256_file(path)


@dataclass
class EvidenceBatch:
    ids: torch.Tensor
    clean: torch.Tensor  # float in [0, 1]
    labels: torch.Tensor  # (B, H, W) class ids as stored (uint8, or int16 beyond 254 classes)
    clean_predictions: torch.Tensor  # (B, D, H, W) as stored
    adversarial: list[torch.Tensor]  # per ε index: (B, 3, H, W) float
    predictions: list[torch.Tensor]  # per ε index: (B, D, H, W) as stored
    storage: str
    sources: dict[str, list[str]]
    image_sha256: list[str]
    raw_bytes: int  # the safetensors file's size, uncompressed


def read_batch(
    path: Path, eps_count: int | None, expected_bytes: int | None = None, raw_bytes: int | None = None
) -> EvidenceBatch:
    """One batch file, decompressed to at most `raw_bytes` (what the manifest records; a crafted
    file cannot inflate beyond it) and checked for every tensor it must hold; InputError (exit 2)
    naming the file otherwise."""
    try:
        raw = path.read_bytes()
        limit = raw_bytes if raw_bytes is not None else MAX_EXPANSION * max(len(raw), 1)
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        data = inflater.decompress(raw, limit)
        if inflater.unconsumed_tail or not inflater.eof or (raw_bytes is not None and len(data) != raw_bytes):
            raise ValueError(f"truncated, or inflating to other than the {limit} bytes recorded")
        tensors = load_safetensors(data)
        with io.BytesIO(data) as buffer:
            header = json.loads(buffer.read(int.from_bytes(buffer.read(8), "little")))
        metadata = header.get("__metadata__", {})
        storage = metadata["storage"]
        sources = json.loads(metadata["sources"])
        hashes = json.loads(metadata["image_sha256"])
    except (OSError, zlib.error, ValueError, KeyError, SafetensorError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable harden evidence file ({err}); re-run harden verify") from err
    if expected_bytes is not None and len(raw) != expected_bytes:
        raise InputError(f"{path}: {len(raw)} bytes where the manifest records {expected_bytes}: truncated or replaced")
    count = eps_count if eps_count is not None else sum(1 for k in tensors if k.startswith("adv."))
    needed = ["ids", "clean", "labels", "clean.pred", *[f"{p}.{k}" for k in range(count) for p in ("adv", "pred")]]
    hashes = hashes if isinstance(hashes, list) else []
    missing = [k for k in needed if k not in tensors]
    if missing or storage not in ("uint8", "float32"):
        raise InputError(f"{path}: missing {', '.join(missing) or 'a known storage'}; not a complete evidence batch")
    batch = tensors["ids"].shape[0]
    if any(tensors[k].shape[0] != batch for k in needed) or len(hashes) != batch:
        raise InputError(f"{path}: its tensors disagree on the number of images")

    def image(t: torch.Tensor) -> torch.Tensor:
        return t.float() / 255 if t.dtype == torch.uint8 else t.float()

    return EvidenceBatch(
        ids=tensors["ids"].long(),
        clean=image(tensors["clean"]),
        labels=tensors["labels"],
        clean_predictions=tensors["clean.pred"],
        adversarial=[image(tensors[f"adv.{k}"]) for k in range(count)],
        predictions=[tensors[f"pred.{k}"] for k in range(count)],
        storage=storage,
        sources=sources,
        image_sha256=hashes,
        raw_bytes=len(data),
    )


@dataclass
class Evidence:
    """An evidence set, its manifest checked; `batches()` reads and checks each file in turn."""

    folder: Path
    manifest: dict[str, Any]
    sha256: str

    @property
    def eps_values(self) -> list[float]:
        return [float(e) for e in self.manifest["eps"]]

    @property
    def draws(self) -> int:
        return int(self.manifest["draws"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def image_count(self) -> int:
        return len(self.manifest["images"])

    def batches(self) -> Iterator[EvidenceBatch]:
        for entry in self.manifest["files"]:
            path = self.folder / entry["path"]
            if not path.is_file():
                raise InputError(f"{path}: listed in {self.folder / MANIFEST} but missing; the evidence is incomplete")
            if sha256_file(path) != entry["sha256"]:
                raise InputError(f"{path}: its sha256 differs from the one {MANIFEST} records: the file was changed")
            batch = read_batch(path, len(self.eps_values), entry["bytes"], entry["raw_bytes"])
            if batch.ids.tolist() != entry["ids"]:
                raise InputError(f"{path}: holds images {batch.ids.tolist()}, the manifest lists {entry['ids']}")
            if batch.clean_predictions.shape[1] != self.draws:
                raise InputError(f"{path}: {batch.clean_predictions.shape[1]} draws, the manifest says {self.draws}")
            yield batch


def open_evidence(path: Path) -> Evidence:
    """The evidence set at `path`: its folder, its manifest, or a verify report folder holding one."""
    path = Path(path)
    if path.is_dir() and not (path / MANIFEST).is_file() and (path / FOLDER / MANIFEST).is_file():
        path = path / FOLDER
    manifest_path = path if path.is_file() else path / MANIFEST
    if not manifest_path.is_file():
        raise InputError(
            f"{path}: no {MANIFEST} here; pass the evidence folder `harden verify` wrote (OUT/{FOLDER}) "
            "or its report folder (run verify without --no-evidence)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{manifest_path}: not readable JSON ({err}); re-run harden verify") from err
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        found = manifest.get("schema") if isinstance(manifest, dict) else None
        raise InputError(f"{manifest_path}: schema {found!r} is not {SCHEMA!r}; not a harden evidence manifest")
    try:
        eps = [float(e) for e in manifest["eps"]]
        draws = int(manifest["draws"])
        classes = int(manifest["num_classes"])
        files = manifest["files"]
        if not files or any(not isinstance(f, dict) or {"path", "sha256", "bytes", "raw_bytes", "ids"} - set(f)
                            for f in files):  # fmt: skip
            raise ValueError("files must list path, sha256, bytes, raw_bytes and ids")
        largest = max(int(f["raw_bytes"]) for f in files)
        if any("/" in str(f["path"]) or str(f["path"]).startswith(".") for f in files):
            raise ValueError("a file path leaves the evidence folder")
        if not eps or draws < 1 or classes < 1 or not all(math.isfinite(e) and e > 0 for e in eps):
            raise ValueError("eps, draws and num_classes must be positive")
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{manifest_path}: incomplete or tampered manifest ({err})") from err
    room, source = available_bytes()
    if largest > room // 4:  # a batch is inflated, then held as tensors twice over
        raise InputError(
            f"{manifest_path}: a batch file inflates to {largest / 2**30:.1f} GB, more than a quarter of the "
            f"{room / 2**30:.1f} GB free ({source}); a tampered manifest, or a machine too small for this evidence"
        )
    return Evidence(manifest_path.parent, manifest, sha256_file(manifest_path))
