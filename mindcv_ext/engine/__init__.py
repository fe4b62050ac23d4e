"""Training machinery: the train step, evaluation, checkpoints, results, and the monitor callback."""
from .callbacks import TrainMonitor
from .checkpoint import (
    CheckpointKeeper,
    TrainingState,
    epoch_checkpoint_name,
    load_training_state,
    parameter_checksum,
    save_atomic,
)
from .evaluate import Evaluator, all_reduce_sum, evaluate, topk_hits
from .results import ResultsLog, plot_curves
from .train_step import NetWithLoss, TrainStep

__all__ = [
    "TrainStep",
    "NetWithLoss",
    "TrainMonitor",
    "Evaluator",
    "evaluate",
    "all_reduce_sum",
    "topk_hits",
    "CheckpointKeeper",
    "TrainingState",
    "load_training_state",
    "parameter_checksum",
    "save_atomic",
    "epoch_checkpoint_name",
    "ResultsLog",
    "plot_curves",
]
