"""Top-1, top-5 and loss over a loader, summed across data-parallel ranks."""
from typing import Dict, Optional

import numpy as np

import mindspore as ms
from mindspore import nn, ops

__all__ = ["Evaluator", "evaluate", "all_reduce_sum", "topk_hits"]


class _Logits(nn.Cell):
    def __init__(self, network: nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.network = network

    def construct(self, images: ms.Tensor) -> ms.Tensor:
        outputs = self.network(images)
        if isinstance(outputs, (tuple, list)):  # multi-exit: (exits, batch, classes)
            return ops.stack([logits.astype(ms.float32) for logits in outputs])
        return outputs.astype(ms.float32)


class _AllReduceSum(nn.Cell):
    def __init__(self) -> None:
        super().__init__()
        self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.all_reduce(x)


def all_reduce_sum(values: np.ndarray) -> np.ndarray:
    """Sum a vector over ranks. float32: CPU's AllReduce has no int32 kernel (mindcv 0.3.0 sends int32)."""
    return _AllReduceSum()(ms.Tensor(np.asarray(values, dtype=np.float32))).asnumpy()


def topk_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return log_norm - shifted[np.arange(len(labels)), labels]


class Evaluator:
    """Evaluates one network repeatedly; its graph is compiled once, not at every validation."""

    def __init__(self, network: nn.Cell, distributed: bool = False) -> None:
        self.network = network
        self.logits = _Logits(network)
        self.distributed = distributed

    def __call__(self, loader, progress: bool = False, predictions: Optional[list] = None,
                 exit_outputs: Optional[dict] = None) -> Dict[str, float]:
        """Accuracy on ``loader`` (columns image, label); restores the network's train mode.

        ``predictions``, when a list, receives the top-1 class of every sample in loader order. A multi-exit
        network is scored on its last exit (``top1``...) and on every exit (``exits``: one dict per exit);
        ``exit_outputs``, when a dict, receives ``probs`` (exits, samples, classes) and ``targets`` of this rank.
        """
        from tqdm import tqdm

        from .early_exit import softmax

        was_training = self.network.training
        self.network.set_train(False)
        sums = None  # per exit: top1 hits, top5 hits, loss sum, samples
        probs, all_targets = [], []
        try:
            iterator = loader.create_tuple_iterator(num_epochs=1)
            for images, labels in tqdm(iterator, total=loader.get_dataset_size(), desc="evaluating", unit="batch",
                                       disable=not progress, leave=False):
                logits = self.logits(images).asnumpy()
                exits = logits if logits.ndim == 3 else logits[None]
                targets = labels.asnumpy().astype(np.int64)
                if targets.ndim > 1:  # one-hot or soft labels
                    targets = targets.argmax(axis=1)
                batch = np.array([(topk_hits(out, targets, 1).sum(), topk_hits(out, targets, 5).sum(),
                                   _cross_entropy(out, targets).sum(), len(targets)) for out in exits])
                sums = batch if sums is None else sums + batch
                if predictions is not None:
                    predictions.extend(exits[-1].argmax(axis=1).tolist())
                if exit_outputs is not None:
                    probs.append(softmax(exits))
                    all_targets.append(targets)
        finally:
            self.network.set_train(was_training)
        if sums is None:
            sums = np.zeros((1, 4))
        if self.distributed:
            sums = all_reduce_sum(sums.reshape(-1)).astype(np.float64).reshape(sums.shape)
        if exit_outputs is not None and probs:
            exit_outputs["probs"] = np.concatenate(probs, axis=1)
            exit_outputs["targets"] = np.concatenate(all_targets)
        scores = [{"top1": s[0] / max(s[3], 1.0), "top5": s[1] / max(s[3], 1.0), "loss": s[2] / max(s[3], 1.0),
                   "num_samples": int(s[3])} for s in sums]
        results = dict(scores[-1])
        if len(scores) > 1:
            results["exits"] = scores
        return results


def evaluate(network: nn.Cell, loader, distributed: bool = False, progress: bool = False,
             predictions: Optional[list] = None, exit_outputs: Optional[dict] = None) -> Dict[str, float]:
    """One-off evaluation; see ``Evaluator``."""
    return Evaluator(network, distributed)(loader, progress, predictions, exit_outputs)
