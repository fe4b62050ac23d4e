"""MindSpore checkpoints are checked before MindSpore reads them: hand-built protobufs that would corrupt the heap are
refused by name; files MindSpore writes, with or without CRC, sliced or not, still load."""
import binascii
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mindspore as ms
from mindspore.train.checkpoint_pb2 import Checkpoint

from mindcv_ext.convert.mindspore_checkpoint import CheckpointFormatError, check_mindspore_checkpoint
from mindcv_ext.models import read_mindspore_checkpoint
from tests.utils import REPO_ROOT

QUICKSTART = REPO_ROOT / "configs" / "quickstart" / "gmlp_monarch_digits.yaml"
TINY = {"patch_size": 4, "num_blocks": 2, "embed_dim": 32}


def _entries(path: Path) -> Checkpoint:
    content = path.read_bytes()
    if content[-17:-10] == b"crc_num":
        content = content[:-17]
    checkpoint = Checkpoint()
    checkpoint.ParseFromString(content)
    return checkpoint


def _write(checkpoint: Checkpoint, path: Path, crc: bool = True) -> Path:
    """``checkpoint`` as MindSpore lays it out, with a valid CRC, so only the content is hostile."""
    content = checkpoint.SerializeToString()
    if crc:
        content += b"crc_num" + binascii.crc32(content).to_bytes(10, "big")
    path.write_bytes(content)
    return path


def _tensor(checkpoint: Checkpoint, tag: str, dims, kind: str, content: bytes) -> None:
    value = checkpoint.value.add()
    value.tag = tag
    value.tensor.dims.extend(dims)
    value.tensor.tensor_type = kind
    value.tensor.tensor_content = content


def _valid(tmp_path: Path) -> Path:
    path = tmp_path / "valid.ckpt"
    ms.save_checkpoint([{"name": "w", "data": ms.Tensor(np.arange(12, dtype=np.float32).reshape(3, 4))},
                        {"name": "b", "data": ms.Tensor(np.ones(4, np.float16))}], str(path), crc_check=True,
                       append_dict={"epoch_num": 3, "note": "abc"})
    return path


def _hostile(tmp_path: Path, name: str, edit) -> Path:
    checkpoint = _entries(_valid(tmp_path))
    edit(checkpoint)
    return _write(checkpoint, tmp_path / f"{name}.ckpt")


def _negative_dims(c):
    del c.value[0].tensor.dims[:]
    c.value[0].tensor.dims.extend([-4, -4])


def _huge_dims(c):  # 2**40 x 2**40 float32 from 48 bytes
    del c.value[0].tensor.dims[:]
    c.value[0].tensor.dims.extend([2 ** 40, 2 ** 40])


def _short_content(c):
    c.value[0].tensor.tensor_content = c.value[0].tensor.tensor_content[:8]


def _empty_and_huge(c):  # 0 bytes declared as 0 x 2**40 x 2**40: MindSpore saves no empty tensor
    c.value[0].tensor.tensor_content = b""
    del c.value[0].tensor.dims[:]
    c.value[0].tensor.dims.extend([0, 2 ** 40, 2 ** 40])


def _too_many_dims(c):
    c.value[0].tensor.tensor_content = c.value[0].tensor.tensor_content[:4]
    del c.value[0].tensor.dims[:]
    c.value[0].tensor.dims.extend([1] * 9)


def _unknown_type(c):
    c.value[0].tensor.tensor_type = "Complex512"


def _map_tensor(c):
    c.value[1].ClearField("tensor")
    c.value[1].maptensor.tensor.add(dims=[2], tensor_type="Float32", tensor_content=b"\0" * 8)


def _slices_disagree(c):
    _tensor(c, c.value[-1].tag, [5], "Float32", b"\0" * 20)


HOSTILE = {"negative_dims": (_negative_dims, "declares negative dims [-4, -4]"),
           "huge_dims": (_huge_dims, "declares dims [1099511627776, 1099511627776] of Float32"),
           "short_content": (_short_content, "(48 bytes) but holds 8 bytes"),
           "empty_and_huge": (_empty_and_huge, "(3 of them): empty or of more than 8 dimensions"),
           "too_many_dims": (_too_many_dims, "(9 of them): empty or of more than 8 dimensions"),
           "unknown_type": (_unknown_type, "has type 'Complex512', not one MindSpore writes"),
           "map_tensor": (_map_tensor, "is not a plain tensor"),
           "slices_disagree": (_slices_disagree, "the slices of tensor 'note' disagree")}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_crafted_checkpoint_is_refused_before_mindspore_reads_it(tmp_path, name):
    edit, message = HOSTILE[name]
    path = _hostile(tmp_path, name, edit)
    with pytest.raises(CheckpointFormatError) as refused:
        check_mindspore_checkpoint(str(path))
    assert message in str(refused.value) and str(path) in str(refused.value)
    # The public reader refuses it too (it used to hand negative dims to MindSpore: a heap corruption later).
    with pytest.raises(CheckpointFormatError, match="corrupt or crafted"):
        read_mindspore_checkpoint(str(path))


def test_not_a_checkpoint_is_refused(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointFormatError, match="not a MindSpore checkpoint"):
        check_mindspore_checkpoint(str(garbage))


def test_what_mindspore_writes_still_loads(tmp_path):
    """With and without CRC, every parameter type a model or append_dict has, and a tensor in slices (MindSpore
    splits tensors over 512 MB into consecutive entries with one name; here two hand-made halves)."""
    values = {"f32": np.arange(6, dtype=np.float32).reshape(2, 3), "f16": np.ones((2, 2), np.float16),
              "i32": np.array([1, -2], np.int32), "i64": np.array(5, np.int64), "flags": np.array([True, False]),
              "f64": np.array([0.25], np.float64), "u8": np.array([7, 8, 9], np.uint8)}
    params = [{"name": k, "data": ms.Tensor(v)} for k, v in values.items()]
    params.append({"name": "bf16", "data": ms.Tensor(np.ones((2, 3), np.float32), ms.bfloat16)})
    for crc in (True, False):
        path = tmp_path / f"all_{crc}.ckpt"
        ms.save_checkpoint(params, str(path), crc_check=crc, append_dict={"epoch_num": 2, "tag": "run"})
        assert (path.read_bytes()[-17:-10] == b"crc_num") is crc
        assert check_mindspore_checkpoint(str(path)) == len(params) + 2
        loaded = read_mindspore_checkpoint(str(path))
        for key, value in values.items():
            np.testing.assert_array_equal(loaded[key].asnumpy(), value, err_msg=key)
        assert loaded["bf16"].shape == (2, 3) and loaded["tag"] == "run"
        assert int(loaded["epoch_num"].asnumpy()) == 2

    sliced = Checkpoint()
    whole = np.arange(10, dtype=np.float32).reshape(2, 5)
    _tensor(sliced, "w", [2, 5], "Float32", whole.tobytes()[:16])
    _tensor(sliced, "w", [2, 5], "Float32", whole.tobytes()[16:])
    path = _write(sliced, tmp_path / "sliced.ckpt")
    assert check_mindspore_checkpoint(str(path)) == 2
    np.testing.assert_array_equal(read_mindspore_checkpoint(str(path))["w"].asnumpy(), whole)


def test_eval_refuses_the_quickstart_model_with_negated_dims(tmp_path):
    """The reported crash: the model's largest weight with its dims negated ended eval.py in SIGSEGV. Now: exit 2,
    the file and the tensor named, before MindSpore reads it."""
    from mindcv_ext.models import create_model

    net = create_model("gmlp_s16_224", num_classes=10, img_size=32, mlp_layer="monarch", nblocks=4, **TINY)
    weights = tmp_path / "weights.ckpt"
    ms.save_checkpoint(net, str(weights), crc_check=True)
    checkpoint = _entries(weights)
    largest = max(checkpoint.value, key=lambda v: len(v.tensor.tensor_content))
    dims = [-d for d in largest.tensor.dims]
    del largest.tensor.dims[:]
    largest.tensor.dims.extend(dims)
    hostile = _write(checkpoint, tmp_path / "negated.ckpt")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "eval.py"), "-c", str(QUICKSTART), "--model_kwargs",
                             str(TINY), "--num_samples", "8", "--batch_size", "8", "--ckpt_path", str(hostile)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert f"refusing to load {str(hostile)!r}" in result.stderr
    assert f"tensor {largest.tag!r} declares negative dims" in result.stderr
