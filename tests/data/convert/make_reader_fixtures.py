"""Regenerate the reader fixtures with real PyTorch (not needed by the tests; torch is not a dependency).

    python -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 "numpy<2"
    /tmp/torchvenv/bin/python tests/data/convert/make_reader_fixtures.py tests/data/convert
"""
import argparse
import collections
import sys
from pathlib import Path

import numpy as np
import torch


def main(out: Path) -> None:
    torch.manual_seed(0)
    base = torch.randn(3, 4)
    state = collections.OrderedDict(
        weight=base,
        weight_t=base.t(),  # a non-contiguous view sharing weight's storage
        row=base[1],  # a view with a storage offset
        half=torch.randn(5).half(),
        bf16=torch.randn(2, 3).to(torch.bfloat16),
        long=torch.arange(6, dtype=torch.int64).reshape(2, 3),
        flags=torch.tensor([True, False, True]),
        scalar=torch.tensor(2.5),
        empty=torch.zeros(0, 4),
    )
    obj = {"state_dict": state, "epoch": 7, "args": argparse.Namespace(lr=0.1, model="toy")}
    torch.save(obj, out / "zip_format.pth")
    torch.save(obj, out / "legacy_format.pth", _use_new_zipfile_serialization=False)
    np.savez(out / "expected.npz", **{k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
                                      for k, v in state.items()})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
