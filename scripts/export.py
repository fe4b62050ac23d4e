"""Export a trained model to MindIR, AIR or ONNX for inference.

    python scripts/export.py -c configs/quickstart/gmlp_monarch_digits.yaml \\
        --ckpt ckpt/quickstart/gmlp_s16_224_best.ckpt --format MINDIR

MINDIR is reloaded with ``nn.GraphCell(ms.load(...))`` and its output compared with the Cell's before
success is reported; a mismatching export is deleted. ONNX goes through ``mindspore.onnx.export`` (exact
GELU is written without Erf, which that exporter lacks) and is checked with onnxruntime when installed.
AIR needs the Ascend backend. Model options (``--model``, ``--num_classes``, ``--img_size``, ``--mlp_layer``,
``--model_kwargs``...) are read like train.py's, from ``-c`` and the command line.
"""
import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from config import create_parser, input_resolution, model_options, parse_args

_logger = logging.getLogger("mindcv_ext")
_EXTENSIONS = {"MINDIR": ".mindir", "AIR": ".air", "ONNX": ".onnx"}


def _parser() -> argparse.ArgumentParser:
    parser = create_parser()
    parser.description = "Export a model with its checkpoint to MindIR, AIR or ONNX."
    group = parser.add_argument_group("Export")
    group.add_argument("--ckpt", dest="ckpt_path", help="checkpoint to export (same as --ckpt_path)")
    group.add_argument("--format", type=str.upper, default="MINDIR", choices=sorted(_EXTENSIONS),
                       help="MINDIR (any backend), ONNX, or AIR (Ascend only)")
    group.add_argument("--output", type=str, default="",
                       help="output file (default: <model><.ext> beside the checkpoint)")
    group.add_argument("--export_batch_size", type=int, default=1, help="batch size baked into the graph")
    group.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    group.add_argument("--tolerance", type=float, default=1e-5,
                       help="largest MINDIR-vs-Cell difference, relative to the largest logit, accepted")
    return parser


def export_model(args: argparse.Namespace) -> Dict[str, Any]:
    """Export the checkpoint's network as ``args`` say and check the exported file against it; the report."""
    import numpy as np

    import mindspore as ms
    from mindspore import nn

    from mindcv_ext.engine.runtime import load_weights, setup_context, setup_logger
    from mindcv_ext.models import create_model

    if not args.ckpt_path:
        raise ValueError("nothing to export: pass --ckpt CHECKPOINT (MindSpore .ckpt or a PyTorch checkpoint)")
    setup_context(args.mode, args.device_target)
    setup_logger(None, None)
    if args.format == "AIR" and ms.get_context("device_target") != "Ascend":
        raise ValueError(f"AIR export needs the Ascend backend; this MindSpore runs on "
                         f"{ms.get_context('device_target')}. Export MINDIR (runs on every backend, and converts to "
                         f"OM with Ascend's ATC tool), or run this command on an Ascend machine.")
    output = args.output or str(Path(args.ckpt_path).with_name(args.model + _EXTENSIONS[args.format]))
    if not output.endswith(_EXTENSIONS[args.format]):
        raise ValueError(f"--output must end with {_EXTENSIONS[args.format]} for {args.format}, got {output!r}")
    if os.path.exists(output) and not args.overwrite:
        raise FileExistsError(f"{output!r} already exists; pass --overwrite or another --output")

    num_classes = args.num_classes
    classes_file = Path(args.ckpt_path).parent / "classes.json"
    if num_classes is None:
        num_classes = len(json.loads(classes_file.read_text())) if classes_file.is_file() else 1000
    # Dropout rates aside: an exported graph runs in eval mode.
    network = create_model(args.model, **model_options(args, num_classes=num_classes, pretrained=False,
                                                       drop_rate=None, drop_path_rate=None))
    _logger.info(f"loaded {load_weights(network, args.ckpt_path, ema=args.ema)}")
    # The plain network, never accelerate(network): the CPU kernels are calls into a library on this machine,
    # and an exported graph must run anywhere.
    network.set_train(False)
    size = input_resolution(args) or (getattr(network, "default_cfg", {}) or {}).get(
        "input_size", (3, 224, 224))[-1]
    sample = ms.Tensor(np.random.default_rng(0).standard_normal(
        (args.export_batch_size, args.in_channels, size, size)).astype(np.float32))

    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    # Export under a temporary name beside the output and rename once checked: no half-written artefact.
    stem = tempfile.mktemp(prefix=f".{args.model}-export-", dir=directory)
    produced = stem + _EXTENSIONS[args.format]
    report = {"format": args.format, "output": output, "input_shape": list(sample.shape)}
    try:
        if args.format == "ONNX":
            from mindcv_ext.layers import ErfFreeGELU, is_exact_gelu, replace_cells

            # MindSpore's ONNX exporter has no Erf; an erf-free exact GELU keeps the numerics (< 1.5e-7).
            swapped = replace_cells(network, lambda _, cell: is_exact_gelu(cell), lambda _: ErfFreeGELU())
            report["gelu_replaced"] = swapped
            ms.onnx.export(network, sample, file_name=produced, input_names=["image"], output_names=["logits"])
        else:
            ms.export(network, sample, file_name=stem, file_format=args.format)
        reloaded = None
        if args.format == "MINDIR":
            reloaded = nn.GraphCell(ms.load(produced))(sample).asnumpy()
            report["checked_with"] = "nn.GraphCell(ms.load(...))"
        elif args.format == "ONNX":
            try:
                import onnxruntime
            except ImportError:
                report["checked_with"] = None  # optional: pip install onnxruntime to check ONNX files
            else:
                session = onnxruntime.InferenceSession(produced, providers=["CPUExecutionProvider"])
                reloaded = session.run(None, {"image": sample.asnumpy()})[0]
                report["checked_with"] = f"onnxruntime {onnxruntime.__version__}"
        if reloaded is not None:
            expected = network(sample).asnumpy()
            error = float(np.abs(reloaded - expected).max() / max(np.abs(expected).max(), 1e-12))
            report["max_relative_difference"] = error
            if reloaded.shape != expected.shape or error > args.tolerance:
                raise ValueError(f"the reloaded {args.format} disagrees with the Cell: shapes {reloaded.shape} vs "
                                 f"{expected.shape}, relative difference {error:.3g} > {args.tolerance}")
        os.replace(produced, output)
    finally:
        if os.path.exists(produced):
            os.remove(produced)
    return report


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv, _parser())
    try:
        report = export_model(args)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"export.py: error: {exc}", file=sys.stderr)
        return 2
    check = ""
    if "max_relative_difference" in report:
        check = f"; reloaded with {report['checked_with']}: output matches the Cell (max relative difference " \
                f"{report['max_relative_difference']:.2g})"
    elif report.get("checked_with", "") is None:
        check = " (not checked: pip install onnxruntime to compare its output with the Cell's)"
    print(f"exported {report['format']} {report['output']} for input {tuple(report['input_shape'])}{check}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
