"""Classify image files: the top-k classes with probabilities, printed and as JSON.

    python infer.py -c configs/quickstart/gmlp_monarch_digits.yaml \\
        --ckpt_path ckpt/quickstart/gmlp_s16_224_best.ckpt --images photo.png more_photos/ --json predictions.json

Class names come from ``--class_names`` (a .txt with one name per line, a .json list, or a training folder
whose sub-folders are the classes), else from ``classes.json`` beside the checkpoint (train.py writes it),
else ImageNet's names for 1000-class models, else class indices.
"""
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

from config import create_parser, input_resolution, model_options, parse_args

_logger = logging.getLogger("mindcv_ext")


def _parser():
    parser = create_parser()
    parser.description = "Classify image files with a trained model (top-k classes and probabilities)."
    group = parser.add_argument_group("Inference")
    group.add_argument("--images", nargs="+", default=[], help="image files and/or folders of images")
    group.add_argument("--topk", type=int, default=5, help="classes to report per image")
    group.add_argument("--class_names", type=str, default="",
                       help="class names: .txt (one per line), .json list, or a folder of class sub-folders")
    group.add_argument("--json", type=str, default="", help="also write the predictions to this JSON file")
    return parser


def _collect_images(inputs: List[str]) -> List[str]:
    from mindcv_ext.data import IMAGE_EXTENSIONS

    paths = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {item!r}")
            paths.extend(found)
        elif path.is_file():
            paths.append(str(path))
        else:
            raise FileNotFoundError(f"image or folder {item!r} does not exist")
    return paths


def _check_readable(paths: List[str]) -> None:
    from PIL import Image

    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
        except Exception as exc:
            raise ValueError(f"cannot read image {path!r}: {exc}") from exc


def load_class_names(source: str, ckpt_path: str, num_classes: int) -> Optional[List[str]]:
    from mindcv_ext.data import imagenet_class_names

    if source:
        path = Path(source)
        if path.is_dir():
            names = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        elif path.suffix == ".json":
            names = json.loads(path.read_text())
        elif path.is_file():
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        else:
            raise FileNotFoundError(f"--class_names {source!r} does not exist")
    elif ckpt_path and (Path(ckpt_path).parent / "classes.json").is_file():
        names = json.loads((Path(ckpt_path).parent / "classes.json").read_text())
    elif num_classes == 1000:
        names = imagenet_class_names()
    else:
        return None
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a {num_classes}-class model (from "
                         f"{source or 'classes.json beside the checkpoint'})")
    return [str(n) for n in names]


def predict(args) -> list:
    import numpy as np

    import mindcv_ext  # noqa: F401  (registers the models)
    from mindcv_ext.accel import accelerate
    from mindcv_ext.data import create_file_loader, transform_settings
    from mindcv_ext.engine.runtime import load_weights, setup_context, setup_logger
    from mindcv_ext.models import create_model

    if not args.images:
        raise ValueError("nothing to classify: pass --images FILE_OR_FOLDER [...]")
    if not args.ckpt_path and not args.pretrained:
        raise ValueError("infer.py needs the weights: --ckpt_path FILE (.ckpt, or a PyTorch checkpoint)")
    paths = _collect_images(args.images)
    _check_readable(paths)
    setup_context(args.mode, args.device_target)
    setup_logger(None, None)
    num_classes = args.num_classes
    if num_classes is None:
        classes_file = Path(args.ckpt_path).parent / "classes.json" if args.ckpt_path else None
        num_classes = len(json.loads(classes_file.read_text())) if classes_file and classes_file.is_file() else 1000
    network = create_model(args.model, **model_options(args, num_classes=num_classes, drop_rate=None,
                                                       drop_path_rate=None))
    if args.ckpt_path:
        _logger.info(f"loaded {load_weights(network, args.ckpt_path, ema=args.ema)}")
    network.set_train(False)
    network = accelerate(network, args.cpu_kernels)
    names = load_class_names(args.class_names, args.ckpt_path, num_classes)
    transforms = transform_settings(getattr(network, "default_cfg", {}) or {}, input_resolution(args),
                                    args.crop_pct, args.interpolation, args.mean, args.std)
    loader = create_file_loader(paths, None, min(args.batch_size, len(paths)), transforms, args.num_parallel_workers)
    topk = max(1, min(args.topk, num_classes))
    results, index = [], 0
    for images, _ in loader.create_tuple_iterator(num_epochs=1):
        logits = network(images).asnumpy().astype(np.float64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        for row in probs:
            best = np.argsort(-row)[:topk]
            results.append({"image": paths[index], "top": [
                {"class": int(c), "name": names[c] if names else str(int(c)), "probability": round(float(row[c]), 6)}
                for c in best]})
            index += 1
    return results


def main(argv=None) -> int:
    args = parse_args(argv, _parser())
    try:
        results = predict(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"infer.py: error: {exc}", file=sys.stderr)
        return 2
    for item in results:
        ranked = ", ".join(f"{t['name']} {100 * t['probability']:.1f}%" for t in item["top"])
        print(f"{item['image']}: {ranked}")
    if args.json:
        from mindcv_ext.engine.files import atomic_write

        with atomic_write(args.json) as stream:
            json.dump(results, stream, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
