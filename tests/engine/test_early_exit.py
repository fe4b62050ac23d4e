"""engine/early_exit.py: thresholds per exit as DVT's inference.py finds them, early exit by hand, the threshold search
on the release's calibration file, and how train.py and eval.py find a network's exits."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

import mindcv_ext
from mindcv_ext.engine.early_exit import (LAST_EXIT_THRESHOLD, dynamic_evaluate, early_exit, exit_proportions,
                                          find_thresholds, multi_exit_model, softmax, threshold_table,
                                          thresholds_for_budget, use_all_exits)
from tests.utils import shared_fixture_dir

# The release's calibration file (held-out probabilities, the reference's thresholds and budgeted results).
CALIBRATION = ("dvt", "dvt_t2t_vit_12_depth2")


def _two_class_probs(confidences, classes):
    """(exits, samples, 2) probabilities: each sample's top class and its probability, per exit."""
    confidences, classes = np.asarray(confidences, np.float32), np.asarray(classes)
    probs = np.stack([1 - confidences, confidences], axis=-1)
    return np.where(classes[..., None] == 1, probs, probs[..., ::-1]).astype(np.float32)


# Six samples, three exits: confidence and top class of each at each exit.
PROBS = _two_class_probs([[0.9, 0.6, 0.8, 0.55, 0.7, 0.65],
                          [0.99, 0.95, 0.5, 0.6, 0.98, 0.7],
                          [0.8] * 6],
                         [[0, 1, 1, 0, 0, 1],
                          [1, 0, 0, 1, 1, 1],
                          [0, 0, 1, 1, 0, 0]])
# What find_thresholds gives for shares (0.5, 0.25, 0.25): float32 confidences, compared as they are stored.
THRESHOLDS = np.array([0.7, 0.95, LAST_EXIT_THRESHOLD], np.float32)


def test_softmax_is_over_the_last_axis_in_float32():
    probs = softmax(np.array([[0.0, np.log(3.0)], [5.0, 5.0]]))
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, [[0.25, 0.75], [0.5, 0.5]], rtol=1e-6)


def test_thresholds_give_each_exit_its_share_of_the_samples():
    """Exit 0 takes floor(6 * 0.5) = 3 samples, its three most confident (0.9, 0.8, 0.7); exit 1 takes
    floor(6 * 0.25) = 1 of the three left, the most confident there (0.95); the last exit takes whatever is left."""
    thresholds = find_thresholds(PROBS, [0.5, 0.25, 0.25])
    assert thresholds.dtype == np.float32
    np.testing.assert_array_equal(thresholds, THRESHOLDS)
    # A share smaller than one sample leaves the exit's threshold out of reach.
    np.testing.assert_array_equal(find_thresholds(PROBS, [0.1, 0.1, 0.8]),
                                  np.array([1e8, 1e8, LAST_EXIT_THRESHOLD], np.float32))


def test_a_sample_leaves_at_the_first_exit_confident_enough_with_that_exits_class():
    exit_index, prediction = early_exit(PROBS, THRESHOLDS)
    assert exit_index.tolist() == [0, 1, 0, 2, 0, 2]
    assert prediction.tolist() == [0, 0, 1, 1, 0, 0]
    # Thresholds compare with the float32 confidences: as float64, 0.7 and 0.95 are above the stored 0.7 and 0.95.
    assert early_exit(PROBS, [0.7, 0.95, LAST_EXIT_THRESHOLD])[0].tolist() == [0, 2, 0, 2, 1, 2]
    # The last exit answers whatever its threshold.
    assert early_exit(PROBS, [1.0, 1.0, 1.0])[0].tolist() == [2] * 6


def test_dynamic_accuracy_and_expected_compute():
    result = dynamic_evaluate(PROBS, np.array([0, 1, 1, 1, 0, 0]), [1.0, 2.5, 4.0], THRESHOLDS)
    assert result["accuracy"] == pytest.approx(100 * 5 / 6)  # sample 1 left at exit 1 with class 0
    assert result["exit_shares"] == pytest.approx([3 / 6, 1 / 6, 2 / 6])
    assert result["expected_macs"] == pytest.approx(0.5 * 1.0 + 2.5 / 6 + 4.0 * 2 / 6)
    assert result["thresholds"] == THRESHOLDS.tolist()


def test_the_table_has_one_row_per_setting_and_probabilities_must_be_three_dimensional():
    table = threshold_table(PROBS)
    assert table.shape == (59, 3) and (table[:, 2] == LAST_EXIT_THRESHOLD).all()
    np.testing.assert_array_equal(table[19], find_thresholds(PROBS, exit_proportions(20)))
    with pytest.raises(ValueError, match=r"probabilities must have shape \(exits, samples, classes\), got \(6, 2\)"):
        early_exit(PROBS[0], [0.5])


def test_threshold_search_reproduces_the_calibration_file():
    directory = shared_fixture_dir(*CALIBRATION)
    calibration = np.load(directory / "early_exit_calibration.npz")
    table = threshold_table(calibration["probs"])
    np.testing.assert_array_equal(table, calibration["dynamic_threshold"])
    for row, thresholds in enumerate(table):
        result = dynamic_evaluate(calibration["probs"], calibration["targets"], calibration["flops"], thresholds)
        assert result["accuracy"] == pytest.approx(calibration["budgeted_acc"][row], abs=1e-6)
        assert result["expected_macs"] == pytest.approx(calibration["budgeted_flops"][row], rel=1e-6)


def test_budget_picks_the_most_accurate_setting_that_fits():
    directory = shared_fixture_dir(*CALIBRATION)
    calibration = np.load(directory / "early_exit_calibration.npz")
    probs, targets, flops = calibration["probs"], calibration["targets"], calibration["flops"]
    budget = float(np.median(calibration["budgeted_flops"]))
    found = thresholds_for_budget(probs, targets, flops, budget)
    fitting = [p for p in found["curve"] if p["expected_macs"] <= budget]
    assert found["best"]["expected_macs"] <= budget
    assert found["best"]["accuracy"] == max(p["accuracy"] for p in fitting)
    assert len(found["curve"]) == 59
    with pytest.raises(ValueError, match="no threshold setting fits a budget of 0.1 GMACs"):
        thresholds_for_budget(probs, targets, flops, 0.1)


def test_exit_proportions_follow_the_reference():
    np.testing.assert_allclose(exit_proportions(20), [1 / 3] * 3, rtol=1e-6)
    q = 0.5
    np.testing.assert_allclose(exit_proportions(10), np.array([q, q * q, q ** 3]) / (q + q * q + q ** 3), rtol=1e-6)
    with pytest.raises(ValueError, match="setting must be in 1..59"):
        exit_proportions(60)


def test_bad_thresholds_name_the_culprit():
    probs = softmax(np.random.default_rng(0).standard_normal((3, 4, 5)))
    with pytest.raises(ValueError, match="one threshold per exit"):
        early_exit(probs, [0.5, 0.5])


@pytest.mark.parametrize("amp_level", ["O0", "O2", "O3", "auto"])
def test_train_and_eval_ask_the_model_for_its_exits_through_amp(amp_level):
    """use_all_exits (train.py, eval.py) finds DVT's multi_exit() inside AMP's wrapper, and DVT then returns its
    three exits, whose cumulative costs it reports."""
    net = mindcv_ext.create_model("dvt_t2t_vit_12", img_size=64, num_classes=5, depth=1, embed_dim=32, num_heads=2)
    expected = net.exit_macs()
    wrapped = ms.amp.auto_mixed_precision(net, amp_level)
    assert multi_exit_model(wrapped) is net
    macs = use_all_exits(wrapped)
    assert macs == expected and len(macs) == 3 and 0 < macs[0] < macs[1] < macs[2]
    wrapped.set_train(False)
    exits = wrapped(ms.Tensor(np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)))
    assert len(exits) == 3 and all(e.shape == (2, 5) for e in exits)


def test_a_single_exit_model_is_left_as_it_is():
    net = mindcv_ext.create_model("gmlp_s16_224", img_size=32, patch_size=8, num_blocks=1, embed_dim=32,
                                  num_classes=4)
    wrapped = ms.amp.auto_mixed_precision(net, "O2")
    assert multi_exit_model(wrapped) is None and use_all_exits(wrapped) is None
    wrapped.set_train(False)
    logits = wrapped(ms.Tensor(np.zeros((2, 3, 32, 32), np.float32)))
    assert isinstance(logits, ms.Tensor) and logits.shape == (2, 4)


class _TwoExits(nn.Cell):
    """A model that declares multi_exit(): afterwards it returns both exits' logits."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Dense(4, 3), nn.Dense(4, 3)
        self.all_exits = False

    def multi_exit(self):
        self.all_exits = True
        return [0.25, 1]

    def construct(self, x):
        if self.all_exits:
            return self.first(x), self.second(x)
        return self.second(x)


def test_the_multi_exit_model_is_found_inside_its_wrappers():
    model = _TwoExits()
    wrapped = nn.SequentialCell([nn.Identity(), nn.SequentialCell([model])])
    assert multi_exit_model(wrapped) is model and multi_exit_model(model) is model
    assert not model.all_exits
    macs = use_all_exits(wrapped)
    assert macs == (0.25, 1.0) and all(isinstance(m, float) for m in macs) and model.all_exits
    assert len(wrapped(ms.Tensor(np.ones((2, 4), np.float32)))) == 2
