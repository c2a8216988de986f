"""Models harden did not define: a local HuggingFace folder (`hf:PATH`) or a user's PyTorch
module (`module:package.module:factory`), behind the same `SegmentationModel` interface as the
registry's (pixels in [0, 1] in, logits at input resolution out).

How a run rebuilds them, without a pickle:
- `hf:PATH`: the model configuration (the folder's config.json, with the run's number of
  classes) is stored in the run's ModelConfig, and transformers rebuilds the architecture from it
  (`from_config`); the weights come from the run's model.safetensors. The folder is read once,
  when training starts: config.json and model.safetensors (pickled `pytorch_model.bin` weights are
  refused). Nothing is downloaded.
- `module:package.module:factory`: the module is imported and `factory(num_classes=K)` called —
  this runs the user's code, as any import does. The module receives ImageNet-normalised images
  (B, 3, H, W) and returns logits (B, K, h, w); they are upsampled to the input size.

Both normalise with ImageNet's mean and std inside the model, as the registry models do.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harden.errors import InputError
from harden.models.base import SegmentationModel

HF_PREFIX, MODULE_PREFIX = "hf:", "module:"
HF_WEIGHTS = "model.safetensors"


def is_external(name: str) -> bool:
    return name.startswith((HF_PREFIX, MODULE_PREFIX))


class HFSegmentation(SegmentationModel):
    """A transformers semantic-segmentation model (e.g. SegFormer), its logits upsampled."""

    def __init__(self, num_classes: int, config: dict[str, Any]) -> None:
        super().__init__(num_classes)
        try:
            from transformers import AutoConfig, AutoModelForSemanticSegmentation
        except ImportError as err:
            raise InputError("hf: models need transformers: pip install 'harden-seg[hf]'") from err
        settings = {k: v for k, v in config.items() if k != "model_type"}
        try:
            hf_config = AutoConfig.for_model(config["model_type"], **settings)
            self.hf = AutoModelForSemanticSegmentation.from_config(hf_config)
        except (KeyError, ValueError) as err:
            raise InputError(f"not a transformers semantic-segmentation configuration ({err})") from err

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.hf(pixel_values=x).logits
        return logits, logits  # no decoder features are exposed: the logits stand in (RP-PGD)


class ModuleSegmentation(SegmentationModel):
    """A user's nn.Module from `factory(num_classes=K)`, fed ImageNet-normalised images."""

    def __init__(self, num_classes: int, module: nn.Module) -> None:
        super().__init__(num_classes)
        self.module = module

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.module(x)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or logits.shape[1] != self.num_classes:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise InputError(f"the module must return logits (B, {self.num_classes}, h, w); it returned {shape}")
        return logits, logits


def hf_settings(path: str, num_classes: int, class_names: list[str]) -> dict[str, Any]:
    """The `create_model` kwargs of a local HF folder: its config.json with this run's classes."""
    folder = Path(path).expanduser()
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise InputError(f"--model hf:{path}: no config.json in {folder}; give a local transformers model folder")
    if not (folder / HF_WEIGHTS).is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise InputError(
            f"--model hf:{path}: no {HF_WEIGHTS} in {folder} (it holds {found}); harden reads weights only from "
            "safetensors, never pickled files — save the model with save_pretrained(safe_serialization=True)"
        )
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{config_file}: not valid JSON ({err})") from err
    if not isinstance(config, dict) or "model_type" not in config:
        raise InputError(f"{config_file}: not a transformers configuration (no model_type)")
    for key in ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype"):
        config.pop(key, None)
    config["num_labels"] = num_classes
    config["id2label"] = {str(i): name for i, name in enumerate(class_names)}
    config["label2id"] = {name: i for i, name in enumerate(class_names)}
    return {"config": config}


def load_hf_weights(model: SegmentationModel, path: str) -> list[str]:
    """The folder's pretrained weights into `model`'s HF network, read by transformers itself
    (it renames checkpoint keys between its versions; safetensors only, nothing downloaded). A
    tensor whose shape differs (the classifier, for another number of classes) keeps its fresh
    initialisation. Returns the names left fresh."""
    from transformers import AutoModelForSemanticSegmentation

    from harden.models.compose import network_of

    network = network_of(model)
    assert isinstance(network, HFSegmentation)
    folder = Path(path).expanduser()
    try:
        pretrained = AutoModelForSemanticSegmentation.from_pretrained(
            folder, local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError) as err:
        raise InputError(f"{folder}: transformers cannot load its weights ({err})") from err
    own = network.hf.state_dict()
    usable = {k: v for k, v in pretrained.state_dict().items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise InputError(f"{folder / HF_WEIGHTS}: none of its tensors fit the model its config.json describes")
    network.hf.load_state_dict(usable, strict=False)
    return sorted(k for k in own if k not in usable)


def create_external(name: str, num_classes: int, **kwargs: Any) -> SegmentationModel:
    """`hf:PATH` (kwargs: the stored `config`) or `module:package.module:factory`."""
    if name.startswith(HF_PREFIX):
        if "config" not in kwargs:
            raise InputError(f"{name}: the run records no model configuration to rebuild it from")
        return HFSegmentation(num_classes, kwargs["config"])
    target = name[len(MODULE_PREFIX) :]
    module_name, _, factory_name = target.rpartition(":")
    if not module_name or not factory_name:
        raise InputError(f"--model {name}: write module:package.module:factory")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as err:
        raise InputError(f"--model {name}: cannot import {factory_name} from {module_name} ({err})") from err
    module = factory(num_classes=num_classes, **kwargs)
    if not isinstance(module, nn.Module):
        raise InputError(
            f"--model {name}: {factory_name}(num_classes=...) returned {type(module).__name__}, not an nn.Module"
        )
    return ModuleSegmentation(num_classes, module)


def load_user_model(spec: str, num_classes: int) -> nn.Module:
    """A user's trained model as it is, for a source twin of a bare ONNX file: `hf:PATH` (read by
    transformers from safetensors) or `module:package.module:factory` (`factory(num_classes=K)`
    must return the trained model). Its input is whatever the ONNX file's input is."""
    if spec.startswith(HF_PREFIX):
        from transformers import AutoModelForSemanticSegmentation

        folder = Path(spec[len(HF_PREFIX) :]).expanduser()
        if not (folder / HF_WEIGHTS).is_file():
            raise InputError(f"--twin {spec}: no {HF_WEIGHTS} in {folder} (safetensors only, never pickled files)")
        try:
            return AutoModelForSemanticSegmentation.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        except (OSError, ValueError) as err:
            raise InputError(f"--twin {spec}: transformers cannot load it ({err})") from err
    wrapped = create_external(spec, num_classes)
    assert isinstance(wrapped, ModuleSegmentation)
    return wrapped.module
