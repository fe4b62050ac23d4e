"""Do Monarch and Pixelfly pay off on this machine? Every registered linear layer against dense, as layers, MLPs and
models (the command line of ``mindcv_ext.benchmark``; ``python -m mindcv_ext.benchmark`` is the same).

    python scripts/benchmark.py --suite mlp                  # the 768->3072->768 MLP on 1,568 tokens
    python scripts/benchmark.py --suite layers --compare_torch --layers dense monarch pixelfly
    python scripts/benchmark.py --suite models --models "mixer_b16_224*" --batch_size 8
    python scripts/benchmark.py --suite attention            # T2T attention cores: time and memory vs length
    python scripts/benchmark.py --suite all --out bench/      # everything, CSV and PNG into bench/
    python scripts/benchmark.py --suite mlp models --with_plain --models "mixer_b16_224*" "gmlp_s16_224*"
    python scripts/benchmark.py --suite gpt2 --batch_sizes 1 --seq_len 1024   # fly's SSL benchmark, CPU-sized

The layers and MLP suites time every registered linear layer (``--layers`` to choose), each with its default
settings (Pixelfly's are fly's Mixer-B: butterfly_size 8, n_factors 2, block 32, rank 32, gating) and the case's
``nblocks`` where it has one; their FLOPs come from each layer's own ``macs_per_token()``. ``--compare_torch`` adds
``torch.nn.Linear`` and PyTorch Monarch and Pixelfly layers, timed in the same process. ``--with_plain`` also times
the plain network (the operators GPU and Ascend run) beside the accelerated one (``mindcv_ext.accel``).
``python scripts/benchmark.py --help`` lists every option.
"""
import sys

from mindcv_ext.benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
