"""Convert a PyTorch checkpoint (timm, ViTAE-Transformer, fly, Lightning, DDP, safetensors) to MindSpore.

    python scripts/convert_checkpoint.py --model gmlp_s16_224 --src model_best.pth.tar --dst gmlp_s16.ckpt
    python -c "import mindcv_ext, mindcv; net = mindcv.create_model('gmlp_s16_224', checkpoint_path='gmlp_s16.ckpt')"

The file is read without torch, and without running any code it may contain.
"""
import argparse
import json
import sys
from typing import List, Optional


def _spelling(argv: List[str], *spellings: str) -> str:
    """The option as the command line spelled it (its messages name it so), else its first spelling. Options take
    mindcv's underscores (``--model_kwargs``); the hyphens they once had are accepted too."""
    return next((arg.split("=", 1)[0] for arg in reversed(argv) if arg.split("=", 1)[0] in spellings), spellings[0])


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        description="Convert a PyTorch checkpoint into a MindSpore .ckpt for a mindcv_ext (or mindcv) model.",
        epilog="Example: python scripts/convert_checkpoint.py --model vitae_basic_small "
               "--src ViTAE-S.pth.tar --dst vitae_basic_small.ckpt")
    parser.add_argument("--model", required=True,
                        help="registered model name (e.g. gmlp_s16_224, mixer_b16_224_monarch, ViTAE_basic_Small)")
    parser.add_argument("--model_kwargs", "--model-kwargs", dest="model_kwargs", default="{}", metavar="JSON",
                        help='model arguments as JSON, e.g. \'{"num_classes": 10, "img_size": 32}\'')
    parser.add_argument("--src", required=True, help="PyTorch checkpoint: .pth, .pth.tar, .ckpt, .bin or .safetensors")
    parser.add_argument("--dst", required=True, help="MindSpore checkpoint to write (.ckpt)")
    parser.add_argument("--drop_head", "--drop-head", dest="drop_head", action="store_true",
                        help="keep the model's own classifier when the checkpoint's has another shape (fine-tuning)")
    parser.add_argument("--to_monarch", "--to-monarch", dest="to_monarch", action="store_true",
                        help="project dense MLP weights onto the model's Monarch layers (dense checkpoint, "
                             "Monarch model)")
    parser.add_argument("--no_ema", "--no-ema", dest="no_ema", action="store_true",
                        help="use 'state_dict' even when the checkpoint also holds 'state_dict_ema'")
    parser.add_argument("--overwrite", action="store_true", help="replace --dst if it exists")
    args = parser.parse_args(argv)
    from config import MAX_TEXT_CHARS, ConfigError, check_value

    text, option = args.model_kwargs, _spelling(argv, "--model_kwargs", "--model-kwargs")
    if len(text) > MAX_TEXT_CHARS:  # a few model arguments; JSON has no aliases, so its text bounds its size
        parser.error(f"{option} is {len(text):,} characters (at most {MAX_TEXT_CHARS:,}); it holds a few "
                     f"model arguments, e.g. '{{\"num_classes\": 10}}'")
    try:
        args.model_kwargs = check_value(json.loads(text))
    except json.JSONDecodeError as exc:
        parser.error(f"{option} is not valid JSON ({exc}): {text}")
    except RecursionError:
        parser.error(f"{option} nests deeper than JSON can be read: {text[:60]}...")
    except ConfigError as exc:
        parser.error(f"{option}: {exc}")
    if not isinstance(args.model_kwargs, dict):
        parser.error(f"{option} must be a JSON object, got {args.model_kwargs!r}")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from mindcv_ext.convert import convert_checkpoint

    try:
        report = convert_checkpoint(args.model, args.src, args.dst, args.model_kwargs, drop_head=args.drop_head,
                                    to_monarch=args.to_monarch, prefer_ema=not args.no_ema,
                                    overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"wrote {args.dst}; load it with create_model({args.model!r}, checkpoint_path={args.dst!r}"
          + "".join(f", {k}={v!r}" for k, v in args.model_kwargs.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
