"""train.py with Pixelfly channel MLPs: a tiny Mixer under AMP O2 in graph mode, and the Mixer-B/16 recipe."""
import csv
import os

import numpy as np
import pytest
import yaml

import mindspore as ms

import config
import train
from mindcv_ext.engine.runtime import set_seed
from mindcv_ext.models import create_model
from mindcv_ext.layers import SparseLRLinear
from mindcv_ext.models import count_params
from tests.utils import REPO_ROOT

QUICKSTART = REPO_ROOT / "configs" / "quickstart" / "gmlp_monarch_digits.yaml"
RECIPE = REPO_ROOT / "configs" / "mlp_mixer" / "mixer_b16_224_pixelfly.yaml"
# 32 px, patch 8 (16 tokens), two blocks, width 128: fc1 128->512 has the coarse layout of fly's e128 fixture.
TINY_KWARGS = "{patch_size: 8, num_blocks: 2, embed_dim: 128, butterfly_size: 8, n_factors: 2, block: 32, rank: 32}"


def _results(directory):
    with open(os.path.join(directory, "results.csv"), newline="") as stream:
        return list(csv.DictReader(stream))


def test_amp_o2_training_in_graph_mode(tmp_path):
    code = train.main(["-c", str(QUICKSTART), "--model", "mixer_s16_224", "--img_size", "32", "--mlp_layer",
                       "pixelfly", "--model_kwargs", TINY_KWARGS, "--mode", "0", "--amp_level", "O2",
                       "--loss_scale_type", "dynamic", "--epoch_size", "1", "--num_samples", "48", "--batch_size",
                       "16", "--val_while_train", "False", "--ckpt_save_dir", str(tmp_path)])
    assert code == 0
    (row,) = _results(tmp_path)
    assert np.isfinite(float(row["train_loss"])) and float(row["train_loss"]) > 0
    saved = ms.load_checkpoint(str(tmp_path / "mixer_s16_224-1_3.ckpt"))  # 48 samples / 16 = 3 steps
    set_seed(42)  # train.py seeds the same way before building the model
    initial = create_model("mixer_s16_224", num_classes=10, img_size=32, mlp_layer="pixelfly",
                          model_kwargs=yaml.safe_load(TINY_KWARGS))
    fc1 = initial.blocks[0].mlp_channels.fc1
    assert isinstance(fc1, SparseLRLinear) and fc1.sparse.weight.shape == (32, 32, 32)  # 16x4 layout, density 1/2
    changed = 0
    for param in initial.trainable_params():
        assert saved[param.name].dtype == ms.float32  # master weights stay fp32 under O2
        assert np.isfinite(saved[param.name].asnumpy()).all()
        changed += not np.array_equal(saved[param.name].asnumpy(), param.asnumpy())
    assert changed == len(initial.trainable_params())  # every weight was updated: no step was lost to overflow
    for name in ("blocks.0.mlp_channels.fc1.sparse.layout", "blocks.1.mlp_channels.fc2.sparse.layout"):
        assert saved[name].dtype == ms.int32  # the layout buffer travels with the weights, unchanged
        np.testing.assert_array_equal(saved[name].asnumpy(), initial.parameters_dict()[name].asnumpy())


def test_recipe_parses_and_builds_fly_pixelfly_mixer_b16():
    args = config.parse_args(["-c", str(RECIPE)])
    assert (args.model, args.mlp_layer) == ("mixer_b16_224", "pixelfly")
    assert args.model_kwargs == {"butterfly_size": 8, "n_factors": 2, "block": 32, "rank": 32, "gating": True}
    # fly's mixerb-cutmix-fbbflylr: AdamW 2e-3, wd 0.05 off norms and biases, 1024 = 8 x 128, 300 + 10 epochs
    assert (args.opt, args.lr, args.weight_decay, args.weight_decay_filter) == ("adamw", 2e-3, 0.05, "norm_and_bias")
    assert (args.batch_size, args.distribute) == (128, True)
    assert (args.epoch_size, args.warmup_epochs, args.decay_epochs) == (310, 10, 290)
    assert args.lr * args.warmup_factor == pytest.approx(1e-4) and args.min_lr == 1e-5
    assert (args.label_smoothing, args.mixup, args.cutmix, args.auto_augment) == (0.1, 0.5, 0.6, "randaug-m15-n2")
    assert (args.clip_grad, args.clip_value, args.amp_level, args.drop_path_rate) == (True, 1.0, "O2", 0.0)
    net = create_model(args.model, **config.model_options(args))
    assert count_params(net) == 27_486_256  # fly's count for this model
    assert net.blocks[11].mlp_channels.fc2.sparse.weight.shape == (864, 32, 32)
