"""scripts/convert_checkpoint.py and mindcv_ext.convert: layouts, strictness, failures that leave nothing behind."""
import errno
import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

import mindspore as ms
from mindspore import nn

from mindcv_ext.convert import convert_checkpoint, extract_state_dict, read_checkpoint, torch_names
from mindcv_ext.layers import MonarchLinear
from mindcv_ext.models import create_model
from scripts.convert_checkpoint import main as convert_main
from tests.utils import TEST_DATA, hostile_torch_zip, rel_err, run_script

GMLP = TEST_DATA / "models" / "gmlp_tiny"
GMLP_KWARGS = {"img_size": 32, "patch_size": 4, "num_blocks": 2, "embed_dim": 64, "num_classes": 10}


def _convert(*args):
    return convert_main([str(a) for a in args])


def test_state_dict_ema_is_preferred_and_reported():
    state, notes = extract_state_dict(read_checkpoint(str(GMLP / "model_best.pth.tar")))
    assert "using 'state_dict_ema' (also present, not used: state_dict)" in notes
    assert np.abs(state["head.weight"]).sum() > 0  # the fixture's state_dict is all zeros
    plain, notes = extract_state_dict(read_checkpoint(str(GMLP / "model_best.pth.tar")), prefer_ema=False)
    assert notes[0].startswith("using 'state_dict'") and np.abs(plain["head.weight"]).sum() == 0


def test_lightning_and_ddp_prefixes_are_stripped():
    lightning, notes = extract_state_dict(read_checkpoint(str(TEST_DATA / "models/mixer_tiny_monarch/last.ckpt")))
    assert "stripped the 'model.' prefix" in notes
    assert "blocks.0.mlp_channels.fc1.blkdiag1" in lightning
    ddp, notes = extract_state_dict(read_checkpoint(str(TEST_DATA / "models/mixer_tiny/model.pth")))
    assert "stripped the 'module.' prefix" in notes and "stem.proj.weight" in ddp


def test_norm_and_batchnorm_names_map_to_pytorch():
    net = create_model("vitae_basic_tiny", img_size=64, num_classes=10)
    names = torch_names(net)
    assert names["layers.0.RC.PCM.3.moving_mean"] == "layers.0.RC.PCM.3.running_mean"
    assert names["layers.0.RC.PCM.3.moving_variance"] == "layers.0.RC.PCM.3.running_var"
    assert names["layers.0.RC.PCM.3.gamma"] == "layers.0.RC.PCM.3.weight"
    assert names["layers.2.NC.0.norm1.beta"] == "layers.2.NC.0.norm1.bias"
    assert names["layers.0.RC.attn.w"] == "layers.0.RC.attn.w"
    monarch = create_model("gmlp_s16_224_monarch", **GMLP_KWARGS)
    assert torch_names(monarch)["blocks.0.mlp_channels.fc1.blkdiag1"] == "blocks.0.mlp_channels.fc1.blkdiag1"


def test_wrong_model_is_refused_by_name_and_writes_nothing(tmp_path, capsys):
    dst = tmp_path / "out.ckpt"
    code = _convert("--model", "mixer_s16_224", "--model-kwargs", json.dumps(GMLP_KWARGS),
                    "--src", GMLP / "model_best.pth.tar", "--dst", dst)
    err = capsys.readouterr().err
    assert code == 2 and not dst.exists()
    assert "not in the checkpoint" in err and "blocks.0.mlp_tokens.fc1.weight" in err
    assert "has no place for" in err and "blocks.0.mlp_channels.gate.proj.weight" in err
    assert not list(tmp_path.iterdir())  # no temporary file left either


def test_shape_mismatch_names_both_shapes_and_drop_head_fixes_it(tmp_path, capsys):
    dst = tmp_path / "out.ckpt"
    kwargs = dict(GMLP_KWARGS, num_classes=100)
    code = _convert("--model", "gmlp_s16_224", "--model-kwargs", json.dumps(kwargs),
                    "--src", GMLP / "model_best.pth.tar", "--dst", dst)
    err = capsys.readouterr().err
    assert code == 2 and not dst.exists()
    assert "head.weight (checkpoint 'head.weight'): model (100, 64) vs checkpoint (10, 64)" in err
    assert "--drop_head" in err

    code = _convert("--model", "gmlp_s16_224", "--model-kwargs", json.dumps(kwargs),
                    "--src", GMLP / "model_best.pth.tar", "--dst", dst, "--drop-head")
    out = capsys.readouterr().out
    assert code == 0 and dst.is_file()
    assert "kept the model's initialisation for head.weight" in out
    net = create_model("gmlp_s16_224", checkpoint_path=str(dst), **kwargs)
    reference = read_checkpoint(str(GMLP / "model_best.pth.tar"))["state_dict_ema"]
    np.testing.assert_array_equal(net.stem.proj.weight.asnumpy(), reference["stem.proj.weight"])
    assert net.head.weight.shape == (100, 64)


def test_existing_destination_is_never_overwritten_silently(tmp_path, capsys):
    dst = tmp_path / "precious.ckpt"
    dst.write_bytes(b"earlier work")
    code = _convert("--model", "gmlp_s16_224", "--model-kwargs", json.dumps(GMLP_KWARGS),
                    "--src", GMLP / "model_best.pth.tar", "--dst", dst)
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert dst.read_bytes() == b"earlier work"
    assert _convert("--model", "gmlp_s16_224", "--model-kwargs", json.dumps(GMLP_KWARGS),
                    "--src", GMLP / "model_best.pth.tar", "--dst", dst, "--overwrite") == 0
    assert dst.read_bytes() != b"earlier work"


def test_the_converted_checkpoint_is_saved_as_every_checkpoint(tmp_path, monkeypatch):
    """Through save_atomic: the CRC every load verifies, no temporary file, and a write that fails (a full disk)
    leaves an existing dst as it was, even with overwrite."""
    import mindcv_ext.engine.checkpoint as checkpoint

    calls = []
    save_atomic = checkpoint.save_atomic
    monkeypatch.setattr(checkpoint, "save_atomic", lambda net, path, *a, **k: (calls.append(path),
                                                                               save_atomic(net, path, *a, **k)))
    dst = tmp_path / "gmlp.ckpt"
    convert_checkpoint("gmlp_s16_224", str(GMLP / "model_best.pth.tar"), str(dst), model_kwargs=GMLP_KWARGS,
                       progress=False)
    assert calls == [str(dst)] and sorted(os.listdir(tmp_path)) == ["gmlp.ckpt"]
    written = dst.read_bytes()
    assert written[-17:-10] == b"crc_num"  # MindSpore's crc_check tail: b"crc_num" and 10 bytes of CRC32

    def full_disk(save_obj, path, **kwargs):  # MindSpore writes "<name>.tmp", then the file; the disk fills up
        for partial in (path, path[:-len(".ckpt")] + ".tmp"):
            with open(partial, "wb") as stream:
                stream.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ms, "save_checkpoint", full_disk)
    with pytest.raises(OSError) as failure:
        convert_checkpoint("gmlp_s16_224", str(GMLP / "model_best.pth.tar"), str(dst), model_kwargs=GMLP_KWARGS,
                           overwrite=True, progress=False)
    assert failure.value.errno == errno.ENOSPC and failure.value.filename == str(dst)
    assert dst.read_bytes() == written and sorted(os.listdir(tmp_path)) == ["gmlp.ckpt"]
    assert calls == [str(dst)] * 2


def test_unreadable_or_hostile_sources_leave_nothing(tmp_path, capsys):
    source = (GMLP / "model_best.pth.tar").read_bytes()
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(source[: len(source) // 3])
    hostile, marker = tmp_path / "hostile.pth", tmp_path / "ran"
    hostile_torch_zip(hostile, marker)
    for src, expected in ((truncated, "truncated or corrupt"), (hostile, "posix.system"),
                          (tmp_path / "missing.pth", "does not exist")):
        dst = tmp_path / f"{src.stem}.ckpt"
        code = _convert("--model", "gmlp_s16_224", "--model-kwargs", json.dumps(GMLP_KWARGS), "--src", src,
                        "--dst", dst)
        err = capsys.readouterr().err
        assert code == 2 and expected in err and str(src.name) in err
        assert not dst.exists()
    assert not marker.exists()


def test_unknown_model_and_bad_kwargs(tmp_path, capsys):
    code = _convert("--model", "gmlp_s16_244", "--src", GMLP / "model_best.pth.tar", "--dst", tmp_path / "o.ckpt")
    assert code == 2 and "unknown model 'gmlp_s16_244'. Did you mean 'gmlp_s16_224'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _convert("--model", "gmlp_s16_224", "--model-kwargs", "{img_size: 32}", "--src", "x", "--dst", "y.ckpt")
    assert "--model-kwargs is not valid JSON" in capsys.readouterr().err
    code = _convert("--model", "gmlp_s16_224", "--model-kwargs", '{"img_sise": 32}',
                    "--src", GMLP / "model_best.pth.tar", "--dst", tmp_path / "o.ckpt")
    assert code == 2 and "img_sise" in capsys.readouterr().err


def _dense_gmlp_with_monarch_mlps():
    net = create_model("gmlp_s16_224", **GMLP_KWARGS)
    for name, cell in net.cells_and_names():
        if isinstance(cell, nn.Dense) and "mlp_channels.fc" in name:
            cell.weight.set_data(MonarchLinear(cell.in_channels, cell.out_channels, nblocks=4).to_dense())
    net.head.weight.set_data(ms.Tensor(np.random.default_rng(0).normal(0, 0.05, (10, 64)).astype(np.float32)))
    return net


def test_to_monarch_projects_dense_mlps(tmp_path, capsys, graph_mode):
    dense = _dense_gmlp_with_monarch_mlps()
    dense.set_train(False)
    names = torch_names(dense)
    src = tmp_path / "dense.safetensors"
    save_file({names[p.name]: p.asnumpy() for p in dense.get_parameters()}, str(src))
    dst = tmp_path / "monarch.ckpt"

    code = _convert("--model", "gmlp_s16_224_monarch", "--model-kwargs", json.dumps(GMLP_KWARGS),
                    "--src", src, "--dst", dst)
    assert code == 2 and "--to_monarch" in capsys.readouterr().err and not dst.exists()

    code = _convert("--model", "gmlp_s16_224_monarch", "--model-kwargs", json.dumps(GMLP_KWARGS),
                    "--src", src, "--dst", dst, "--to-monarch")
    out = capsys.readouterr().out
    assert code == 0
    for layer in ("blocks.0.mlp_channels.fc1", "blocks.0.mlp_channels.fc2", "blocks.1.mlp_channels.fc1",
                  "blocks.1.mlp_channels.fc2"):
        line = next(l for l in out.splitlines() if l.startswith(f"projected {layer} onto Monarch"))
        assert float(line.rsplit(" ", 1)[1]) < 1e-5
    monarch = create_model("gmlp_s16_224_monarch", checkpoint_path=str(dst), **GMLP_KWARGS)
    monarch.set_train(False)
    x = ms.Tensor(np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32))
    assert rel_err(monarch(x).asnumpy(), dense(x).asnumpy()) < 1e-4


def test_to_monarch_on_a_random_dense_checkpoint_reports_errors(tmp_path, capsys):
    dst = tmp_path / "monarch.ckpt"
    code = _convert("--model", "gmlp_s16_224_monarch", "--model-kwargs", json.dumps(GMLP_KWARGS),
                    "--src", GMLP / "model_best.pth.tar", "--dst", dst, "--to-monarch")
    out = capsys.readouterr().out
    errors = [float(l.rsplit(" ", 1)[1]) for l in out.splitlines() if l.startswith("projected ")]
    assert code == 0 and len(errors) == 4 and all(0.01 < e < 1.0 for e in errors)


@pytest.mark.slow
def test_command_line_end_to_end(tmp_path):
    """The exact command users run, in a fresh interpreter."""
    fixture = TEST_DATA / "models" / "mixer_tiny_monarch"
    meta = json.loads((fixture / "meta.json").read_text())
    dst = tmp_path / "mixer.ckpt"
    result = run_script(["scripts/convert_checkpoint.py", "--model", meta["model"], "--model-kwargs",
                         json.dumps(meta["kwargs"]), "--src", str(fixture / meta["checkpoint"]), "--dst", str(dst)],
                        timeout=300)
    assert result.returncode == 0, result.stderr
    assert "stripped the 'model.' prefix" in result.stdout
    assert "tensors read: 34, mapped: 34" in result.stdout and f"wrote {dst}" in result.stdout
    assert "Exception ignored" not in result.stderr
    net = create_model(meta["model"], checkpoint_path=str(dst), **meta["kwargs"])
    assert net.blocks[1].mlp_channels.fc2.blkdiag1.shape == (4, 16, 64)
