"""Evaluate a checkpoint on a validation set: top-1, top-5 and loss (and ImageNet ReaL top-1).

    python eval.py -c configs/quickstart/gmlp_monarch_digits.yaml --ckpt_path ckpt/quickstart/gmlp_s16_224_best.ckpt
    python eval.py --model vitae_basic_small --data_dir /data/imagenet --ckpt_path ViTAE-S.pth.tar \\
        --real_labels real.json

``--ckpt_path`` takes a MindSpore .ckpt (``--ema True`` for the EMA weights of a training checkpoint) or a
PyTorch checkpoint, imported on the fly without torch. Images get the model's own evaluation transform
(crop, interpolation, mean and std from its ``default_cfg``) unless the configuration overrides them.
"""
import json
import logging
import os
import sys

from config import model_arguments, parse_args

_logger = logging.getLogger("mindcv_ext")


def _real_top1(predictions, real_labels_path: str, count: int) -> float:
    with open(real_labels_path) as stream:
        real = json.load(stream)
    if not isinstance(real, list) or len(real) != count:
        raise ValueError(f"{real_labels_path!r} has {len(real) if isinstance(real, list) else 'no'} label lists, but "
                         f"the validation folder has {count} images; ReaL labels need the full 50,000-image "
                         f"ImageNet validation set")
    scored = [(prediction in labels) for prediction, labels in zip(predictions, real) if labels]
    return sum(scored) / max(len(scored), 1)


def evaluate_checkpoint(args) -> dict:
    import mindspore as ms

    import mindcv_ext  # noqa: F401  (registers the models)
    from mindcv_ext.data import (create_file_loader, create_split_loader, find_unreadable_images, list_class_folder,
                                 resolve_dataset, transform_settings)
    from mindcv_ext.engine import evaluate
    from mindcv_ext.engine.runtime import build_model, load_weights, setup_context, setup_distributed, setup_logger

    if not args.ckpt_path and not args.pretrained:
        raise ValueError("eval.py needs the weights to evaluate: --ckpt_path FILE (.ckpt, or a PyTorch checkpoint)")
    if args.real_labels and args.distribute:
        raise ValueError("--real_labels needs the predictions of every image in one process; drop --distribute")
    setup_context(args.mode, args.device_target)
    rank, device_num = setup_distributed(args.distribute)
    setup_logger(None, rank)
    info = resolve_dataset(args.dataset, args.data_dir, args.val_split, args.cache_dir)
    network = build_model(args.model, args.num_classes or info.num_classes, args.in_channels, args.pretrained,
                          None, None, args.img_size, args.mlp_layer, args.nblocks, args.model_kwargs,
                          **model_arguments(args))
    if args.ckpt_path:
        _logger.info(f"loaded {load_weights(network, args.ckpt_path, ema=args.ema)}")
    network.set_train(False)
    if args.val_amp_level != "O0":
        network = ms.amp.auto_mixed_precision(network, args.val_amp_level)
    transforms = transform_settings(getattr(network, "default_cfg", {}) or {}, args.image_resize or args.img_size,
                                    args.crop_pct, args.interpolation, args.mean, args.std)
    _logger.info(f"evaluation transform: resize {transforms['image_resize']}, crop {transforms['crop_pct']}, "
                 f"{transforms['interpolation']}, mean {[round(m / 255, 4) for m in transforms['mean']]}, "
                 f"std {[round(s / 255, 4) for s in transforms['std']]}")

    predictions = None
    if args.real_labels:
        split_dir = os.path.join(info.root, args.val_split)
        paths, labels, _ = list_class_folder(split_dir)
        order = sorted(range(len(paths)), key=lambda i: os.path.basename(paths[i]))  # ReaL's file-name order
        loader = create_file_loader([paths[i] for i in order], [labels[i] for i in order], args.batch_size,
                                    transforms, args.num_parallel_workers)
        predictions = []
    else:
        shard = dict(num_shards=device_num, shard_id=rank) if device_num > 1 else {}
        loader, _ = create_split_loader(info, args.val_split, False, args.batch_size, transforms,
                                        shuffle=args.eval_shuffle, num_samples=args.num_samples,
                                        num_parallel_workers=args.num_parallel_workers, **shard)
    try:
        results = evaluate(network, loader, distributed=args.distribute, progress=rank in (None, 0),
                           predictions=predictions)
    except RuntimeError as exc:
        if not info.is_folder:
            raise
        bad = find_unreadable_images(os.path.join(info.root, args.val_split))
        if not bad:
            raise
        raise ValueError(f"{len(bad)} unreadable image(s) in the validation split: " + ", ".join(bad[:20])) from exc
    if args.real_labels:
        results["real_top1"] = _real_top1(predictions, args.real_labels, len(predictions))
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        results = evaluate_checkpoint(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"eval.py: error: {exc}", file=sys.stderr)
        return 2
    line = (f"{args.model}: top-1 {100 * results['top1']:.2f}%, top-5 {100 * results['top5']:.2f}%, "
            f"loss {results['loss']:.4f} on {results['num_samples']} images")
    if "real_top1" in results:
        line += f"; ReaL top-1 {100 * results['real_top1']:.2f}%"
    print(line)
    print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
