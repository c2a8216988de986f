"""Training and clean evaluation: run configuration, checkpoints, the training loop."""

from harden.config import ModelConfig, TrainConfig
from harden.evaluation import evaluate
from harden.run import RUN_MARKERS, build_model, load_model, read_config
from harden.training.loop import TrainingDivergedError, TrainResult, describe_training, prepare_run, train

__all__ = [
    "RUN_MARKERS",
    "ModelConfig",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "build_model",
    "describe_training",
    "evaluate",
    "load_model",
    "prepare_run",
    "read_config",
    "train",
]
