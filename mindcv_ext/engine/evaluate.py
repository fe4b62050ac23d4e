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
        return self.network(images).astype(ms.float32)


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

    def __call__(self, loader, progress: bool = False, predictions: Optional[list] = None) -> Dict[str, float]:
        """Accuracy on ``loader`` (columns image, label); restores the network's train mode.

        ``predictions``, when a list, receives the top-1 class of every sample in loader order.
        """
        from tqdm import tqdm

        was_training = self.network.training
        self.network.set_train(False)
        sums = np.zeros(4, dtype=np.float64)  # top1 hits, top5 hits, loss sum, samples
        try:
            iterator = loader.create_tuple_iterator(num_epochs=1)
            for images, labels in tqdm(iterator, total=loader.get_dataset_size(), desc="evaluating", unit="batch",
                                       disable=not progress, leave=False):
                logits = self.logits(images).asnumpy()
                targets = labels.asnumpy().astype(np.int64)
                if targets.ndim > 1:  # one-hot or soft labels
                    targets = targets.argmax(axis=1)
                sums += (topk_hits(logits, targets, 1).sum(), topk_hits(logits, targets, 5).sum(),
                         _cross_entropy(logits, targets).sum(), len(targets))
                if predictions is not None:
                    predictions.extend(logits.argmax(axis=1).tolist())
        finally:
            self.network.set_train(was_training)
        if self.distributed:
            sums = all_reduce_sum(sums).astype(np.float64)
        count = max(sums[3], 1.0)
        return {"top1": sums[0] / count, "top5": sums[1] / count, "loss": sums[2] / count,
                "num_samples": int(sums[3])}


def evaluate(network: nn.Cell, loader, distributed: bool = False, progress: bool = False,
             predictions: Optional[list] = None) -> Dict[str, float]:
    """One-off evaluation; see ``Evaluator``."""
    return Evaluator(network, distributed)(loader, progress, predictions)
