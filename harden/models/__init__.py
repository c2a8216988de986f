"""Segmentation models: a registry of families with tiny (CPU) and paper-sized configurations.

Every model takes pixels in [0, 1] and returns logits at input resolution (`base.py`), and every
attention layer computes through an `AttentionCore` (`attention.py`), the one interface RAM and
attention-aware attacks rely on.
"""

from harden.models import cnn, nonlocal_net, segformer, segmenter, swin  # noqa: F401  (registers)
from harden.models._registry import create_model, list_models, model_entry, register_model
from harden.models.attention import AttentionCore, AttentionTrace, find_attention
from harden.models.base import SegmentationModel

__all__ = [
    "AttentionCore",
    "AttentionTrace",
    "SegmentationModel",
    "create_model",
    "find_attention",
    "list_models",
    "model_entry",
    "register_model",
]
