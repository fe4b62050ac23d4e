"""engine/evaluate.py: top-1, top-5 and loss over a loader as NumPy computes them, per exit for a multi-exit
network, with the predictions and probabilities it is asked for."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from mindcv_ext.engine import Evaluator, evaluate, topk_hits
from tests.utils import random_dense

CLASSES = 10


def _loader(images, labels, batch_size=4):
    return ms.dataset.NumpySlicesDataset({"image": images, "label": labels}, shuffle=False).batch(batch_size)


def _data(seed, count=10):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, 6)).astype(np.float32), rng.integers(0, CLASSES, count).astype(np.int32)


def _expected(net, images, labels):
    logits = images.astype(np.float64) @ net.weight.asnumpy().T.astype(np.float64) + net.bias.asnumpy()
    ranks = (-logits).argsort(axis=1)
    shifted = logits - logits.max(axis=1, keepdims=True)
    loss = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(labels)), labels]
    top5 = (ranks[:, :5] == labels[:, None]).any(axis=1)
    return {"top1": float(np.mean(ranks[:, 0] == labels)), "top5": float(np.mean(top5)), "loss": float(loss.mean()),
            "num_samples": len(labels)}, logits


def test_topk_hits():
    logits = np.array([[0.1, 0.5, 0.2, 0.9], [3.0, 2.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.5]])
    labels = np.array([1, 2, 0])
    assert topk_hits(logits, labels, 1).tolist() == [False, False, False]
    assert topk_hits(logits, labels, 2).tolist() == [True, False, False]
    assert topk_hits(logits, labels, 3).tolist() == [True, True, True]
    assert topk_hits(logits, labels, 5).tolist() == [True, True, True]  # k beyond the classes: every class


def test_scores_over_every_batch_and_the_predictions_in_loader_order():
    images, labels = _data(seed=5)
    net = random_dense(6, CLASSES, 1)
    expected, logits = _expected(net, images, labels)
    assert 0 < expected["top1"] < expected["top5"] < 1  # the scores tell the two apart
    net.set_train(True)
    predictions = []
    results = Evaluator(net)(_loader(images, labels), predictions=predictions)  # batches of 4, 4 and 2
    assert set(results) == {"top1", "top5", "loss", "num_samples"}
    assert results["num_samples"] == 10
    assert results["top1"] == pytest.approx(expected["top1"]) and results["top5"] == pytest.approx(expected["top5"])
    assert results["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert predictions == logits.argmax(axis=1).tolist()
    assert net.training  # the network's mode is restored


def test_one_hot_labels_are_scored_by_their_class():
    images, labels = _data(seed=2)
    net = random_dense(6, CLASSES, 3)
    one_hot = np.eye(CLASSES, dtype=np.float32)[labels]
    expected, _ = _expected(net, images, labels)
    results = evaluate(net, _loader(images, one_hot))
    assert not net.training
    assert results["top1"] == pytest.approx(expected["top1"]) and results["loss"] == pytest.approx(expected["loss"],
                                                                                                  rel=1e-5)


class _TwoExits(nn.Cell):
    def __init__(self, first, second):
        super().__init__()
        self.first, self.second = first, second

    def construct(self, x):
        return self.first(x), self.second(x)


def test_a_multi_exit_network_is_scored_on_its_last_exit_and_on_every_exit():
    images, labels = _data(seed=4)
    first, second = random_dense(6, CLASSES, 5), random_dense(6, CLASSES, 6)
    exits = [_expected(net, images, labels) for net in (first, second)]
    outputs = {}
    results = evaluate(_TwoExits(first, second), _loader(images, labels), exit_outputs=outputs)
    assert results["top1"] == pytest.approx(exits[1][0]["top1"]) and results["loss"] == pytest.approx(
        exits[1][0]["loss"], rel=1e-5)
    assert len(results["exits"]) == 2
    for scores, (expected, _) in zip(results["exits"], exits):
        assert scores["num_samples"] == 10 and scores["top5"] == pytest.approx(expected["top5"])
        assert scores["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert outputs["probs"].shape == (2, 10, CLASSES) and outputs["targets"].tolist() == labels.tolist()
    for probs, (_, logits) in zip(outputs["probs"], exits):
        softmax = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(probs, softmax / softmax.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
