"""ONNX operators that segmentation models contain less often, for the graph twin (filled below)."""

from __future__ import annotations
