"""Check a MindSpore ``.ckpt`` file before MindSpore reads it.

``mindspore.load_checkpoint`` trusts each tensor's declared dims: a crafted file whose tensor says
``dims: [-4, -4]`` comes back as a Parameter of shape (-4, -4), and the process later dies in the heap
(glibc's ``free(): invalid next size``, or SIGSEGV). Shared checkpoints (OpenI model pages, issue threads)
are hostile input, so every file is parsed first with MindSpore's own ``Checkpoint`` protobuf and refused,
by name, unless each tensor is one MindSpore could have written:

- its type is one MindSpore writes for a parameter (``Float32``, ``Int64``, ``BFloat16``... or ``str``
  for the strings of ``append_dict``);
- its dims are non-negative, at most 8 of them and none 0 (MindSpore saves no empty tensor), and its bytes (the
  concatenation of consecutive entries with its name, which is how MindSpore stores tensors over 512 MB) are
  exactly dims x the type's size;
- so everything MindSpore will allocate is bounded by the file's own size.

The file format: serialized ``Checkpoint`` messages, optionally followed by ``b"crc_num"`` and the CRC32 as
10 bytes (``crc_check=True`` when saving); MindSpore verifies that CRC itself afterwards.
"""
import math
from typing import List, Tuple

__all__ = ["CheckpointFormatError", "check_mindspore_checkpoint", "PARAMETER_TYPE_SIZES"]

# The tensor types MindSpore's save_checkpoint writes for parameters and append_dict values, with their sizes in
# bytes (serialization.py's tensor_to_ms_type, less Int4: packed two to a byte, never written by these models).
PARAMETER_TYPE_SIZES = {"Int8": 1, "UInt8": 1, "Int16": 2, "UInt16": 2, "Int32": 4, "UInt32": 4, "Int64": 8,
                        "UInt64": 8, "Float16": 2, "BFloat16": 2, "Float32": 4, "Float64": 8, "Bool": 1}
_CRC_MARK, _CRC_TAIL = b"crc_num", 17  # b"crc_num" + 10 bytes of CRC at the end of the file
_SHOWN = 80  # characters of a crafted name or type quoted in a message
_MAX_RANK = 8  # MindSpore's tensors have at most 8 dimensions


class CheckpointFormatError(ValueError):
    """The file is not a checkpoint MindSpore could have written; MindSpore never saw it."""


def _refuse(path: str, what: str) -> CheckpointFormatError:
    return CheckpointFormatError(
        f"refusing to load {path!r}: {what}. MindSpore never writes this, so the file is corrupt or crafted; "
        f"nothing from it was loaded. Use another copy of the checkpoint, or one of the run's other checkpoints")


def _runs(values) -> List[Tuple[str, list]]:
    """Consecutive entries with the same name, as MindSpore joins them (one tensor split into slices)."""
    runs: List[Tuple[str, list]] = []
    for value in values:
        if runs and runs[-1][0] == value.tag:
            runs[-1][1].append(value)
        else:
            runs.append((value.tag, [value]))
    return runs


def check_mindspore_checkpoint(path: str) -> int:
    """Parse ``path`` as a MindSpore checkpoint and check every tensor (see the module docstring).

    Returns the number of entries. Raises ``CheckpointFormatError`` naming the file and the offending entry.
    """
    from google.protobuf.message import DecodeError
    from mindspore.train.checkpoint_pb2 import Checkpoint

    with open(path, "rb") as stream:
        content = stream.read()
    if content[-_CRC_TAIL:-_CRC_TAIL + len(_CRC_MARK)] == _CRC_MARK:
        content = content[:-_CRC_TAIL]
    checkpoint = Checkpoint()
    try:
        checkpoint.ParseFromString(content)
    except (DecodeError, RecursionError, ValueError, TypeError, IndexError) as exc:
        raise CheckpointFormatError(f"cannot read checkpoint {path!r}: it is not a MindSpore checkpoint, or it is "
                                    f"truncated or corrupt ({type(exc).__name__}: {exc})") from None
    if not checkpoint.value:
        raise CheckpointFormatError(f"checkpoint {path!r} holds no tensors: it is not a MindSpore checkpoint, or it "
                                    f"is truncated")
    for name, entries in _runs(checkpoint.value):
        shown = repr(name[:_SHOWN])
        first = entries[0]
        if any(entry.HasField("maptensor") or not entry.HasField("tensor") for entry in entries):
            raise _refuse(path, f"entry {shown} is not a plain tensor (a MapTensor, or no tensor at all), which no "
                                f"mindcv_ext model has")
        kind, dims = first.tensor.tensor_type, list(first.tensor.dims)
        if any(entry.tensor.tensor_type != kind or list(entry.tensor.dims) != dims for entry in entries[1:]):
            raise _refuse(path, f"the slices of tensor {shown} disagree on their type or dims")
        nbytes = sum(len(entry.tensor.tensor_content) for entry in entries)
        if kind == "str":  # append_dict strings: UTF-32, one value, read whole by MindSpore
            if len(entries) != 1 or nbytes % 4:
                raise _refuse(path, f"string entry {shown} holds {nbytes} bytes, not one UTF-32 string")
        elif kind not in PARAMETER_TYPE_SIZES:
            raise _refuse(path, f"tensor {shown} has type {kind[:_SHOWN]!r}, not one MindSpore writes for a "
                                f"parameter ({', '.join(PARAMETER_TYPE_SIZES)})")
        else:
            if any(d < 0 for d in dims):
                raise _refuse(path, f"tensor {shown} declares negative dims {dims[:8]}")
            if len(dims) > _MAX_RANK or (0 in dims and dims != [0]):
                raise _refuse(path, f"tensor {shown} declares dims {dims[:8]}{'...' if len(dims) > 8 else ''} "
                                    f"({len(dims)} of them): empty or of more than {_MAX_RANK} dimensions")
            # MindSpore reads dims [] and [0] as a scalar (it saves no empty tensors).
            elements = 1 if dims in ([], [0]) else math.prod(dims)
            expected = elements * PARAMETER_TYPE_SIZES[kind]
            if nbytes != expected:
                raise _refuse(path, f"tensor {shown} declares dims {dims[:8]} of {kind} ({expected:,} bytes) but "
                                    f"holds {nbytes:,} bytes")
    return len(checkpoint.value)
