"""Evaluate a checkpoint on a validation set: top-1, top-5 and loss (and ImageNet ReaL top-1).

    python eval.py -c configs/quickstart/gmlp_monarch_digits.yaml --ckpt_path ckpt/quickstart/gmlp_s16_224_best.ckpt
    python eval.py --model vitae_basic_small --data_dir /data/imagenet --ckpt_path ViTAE-S.pth.tar \\
        --real_labels real.json

A multi-exit network (DVT) is also scored per exit and with early exit: ``--exit_thresholds '0.6 0.7 0'`` fixes
the confidence thresholds, ``--exit_budget 1.5`` finds them for an average of 1.5 GMACs per image on
``--calibration_split`` (default ``train``), and with neither the budget curve of the reference's 59 settings is
printed.

``--ckpt_path`` takes a MindSpore .ckpt (``--ema True`` for the EMA weights of a training checkpoint) or a
PyTorch checkpoint, imported on the fly without torch. Images get the model's own evaluation transform
(crop, interpolation, mean and std from its ``default_cfg``) unless the configuration overrides them.
"""
import json
import logging
import os
import sys

from config import input_resolution, model_options, parse_args

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
    from mindcv_ext.accel import accelerate
    from mindcv_ext.data import (create_file_loader, create_split_loader, find_unreadable_images,
                                 resolve_dataset, transform_settings, unreadable_images_error)
    from mindcv_ext.engine import evaluate
    from mindcv_ext.engine.early_exit import use_all_exits
    from mindcv_ext.engine.openi import OpenITask, openi_requested
    from mindcv_ext.engine.runtime import load_weights, setup_context, setup_distributed, setup_logger
    from mindcv_ext.models import create_model

    if not args.ckpt_path and not args.pretrained:
        raise ValueError("eval.py needs the weights to evaluate: --ckpt_path FILE (.ckpt, or a PyTorch checkpoint)")
    if args.real_labels and args.distribute:
        raise ValueError("--real_labels needs the predictions of every image in one process; drop --distribute")
    setup_context(args.mode, args.device_target)
    rank, device_num = setup_distributed(args.distribute)
    setup_logger(None, rank)
    if openi_requested(args.openi):
        for note in OpenITask.prepare(rank).apply(args):
            _logger.info(note)
    info = resolve_dataset(args.dataset, args.data_dir, args.val_split, args.cache_dir, in_channels=args.in_channels,
                           allow_outside_links=args.allow_outside_links)
    network = create_model(args.model, **model_options(args, num_classes=args.num_classes or info.num_classes,
                                                       drop_rate=None, drop_path_rate=None))
    exit_macs = use_all_exits(network)  # a multi-exit model (DVT): per-exit scores, early exit, threshold search
    if args.ckpt_path:
        _logger.info(f"loaded {load_weights(network, args.ckpt_path, ema=args.ema, to_monarch=args.to_monarch)}")
    network.set_train(False)
    if args.val_amp_level != "O0":
        network = ms.amp.auto_mixed_precision(network, args.val_amp_level)
    network = accelerate(network, args.cpu_kernels)
    transforms = transform_settings(getattr(network, "default_cfg", {}) or {}, input_resolution(args),
                                    args.crop_pct, args.interpolation, args.mean, args.std)
    _logger.info(f"evaluation transform: resize {transforms['image_resize']}, crop {transforms['crop_pct']}, "
                 f"{transforms['interpolation']}, mean {[round(m, 3) for m in transforms['mean']]}, "
                 f"std {[round(s, 3) for s in transforms['std']]} (0-255 scale, as --mean/--std take them)")

    predictions = None
    if args.real_labels:
        listing = info.listing(args.val_split)
        paths, labels = listing.paths, listing.labels
        order = sorted(range(len(paths)), key=lambda i: os.path.basename(paths[i]))  # ReaL's file-name order
        loader = create_file_loader([paths[i] for i in order], [labels[i] for i in order], args.batch_size,
                                    transforms, args.num_parallel_workers)
        predictions = []
    else:
        shard = dict(num_shards=device_num, shard_id=rank) if device_num > 1 else {}
        loader, _ = create_split_loader(info, args.val_split, False, args.batch_size, transforms,
                                        shuffle=args.eval_shuffle, num_samples=args.num_samples,
                                        num_parallel_workers=args.num_parallel_workers, **shard)
    exit_outputs = {} if exit_macs is not None else None
    if exit_outputs is not None:
        _check_early_exit_args(args, len(exit_macs))
    elif args.exit_thresholds or args.exit_budget is not None:
        raise ValueError(f"--exit_thresholds and --exit_budget are for multi-exit models (dvt_*); {args.model} has a "
                         f"single exit: drop them")
    try:
        results = evaluate(network, loader, distributed=args.distribute, progress=rank in (None, 0),
                           predictions=predictions, exit_outputs=exit_outputs)
    except RuntimeError as exc:
        if not info.is_folder:
            raise
        folder = os.path.join(info.root, args.val_split)
        bad = find_unreadable_images(info.listing(args.val_split))
        if not bad:
            raise
        raise unreadable_images_error(folder, bad) from exc
    if args.real_labels:
        results["real_top1"] = _real_top1(predictions, args.real_labels, len(predictions))
    if exit_outputs is not None:
        _early_exit_results(args, network, exit_macs, info, transforms, exit_outputs, results, rank,
                            device_num)
    return results


def _check_early_exit_args(args, num_exits: int) -> None:
    """Refuse bad early-exit settings before the evaluation they would waste."""
    if args.exit_thresholds:
        if len(args.exit_thresholds) != num_exits:
            raise ValueError(f"--exit_thresholds needs {num_exits} values (one per exit; the last is ignored, "
                             f"that exit always answers), got {args.exit_thresholds}")
    elif args.calibration_split == args.val_split:
        raise ValueError(f"--calibration_split must be held out from the evaluated split, both are "
                         f"{args.val_split!r}")


def _early_exit_results(args, network, exit_macs, info, transforms, exit_outputs, results, rank,
                        device_num) -> None:
    """Dynamic accuracy and average compute of a multi-exit network (DVT) on the evaluated split.

    Thresholds come from ``--exit_thresholds``, or are found on ``--calibration_split`` (held out from the
    evaluated split) for ``--exit_budget`` GMACs, or, with neither, for each of the reference's 59 settings
    (the budget curve).
    """
    from mindcv_ext.data import create_split_loader
    from mindcv_ext.engine import evaluate
    from mindcv_ext.engine.early_exit import dynamic_evaluate, threshold_table, thresholds_for_budget

    if device_num > 1:
        raise ValueError("early-exit evaluation needs every sample's probabilities in one process; drop --distribute")
    macs = [round(m, 6) for m in exit_macs]
    results["exit_macs"] = macs
    probs, targets = exit_outputs["probs"], exit_outputs["targets"]
    if args.exit_thresholds:
        results["dynamic"] = dynamic_evaluate(probs, targets, macs, args.exit_thresholds)
        return
    _logger.info(f"finding exit thresholds on the '{args.calibration_split}' split "
                 f"(up to {args.calibration_samples} images)")
    loader, _ = create_split_loader(info, args.calibration_split, False, args.batch_size, transforms, shuffle=True,
                                    num_samples=args.calibration_samples,
                                    num_parallel_workers=args.num_parallel_workers)
    held_out = {}
    evaluate(network, loader, progress=rank in (None, 0), exit_outputs=held_out)
    if args.exit_budget is not None:
        found = thresholds_for_budget(held_out["probs"], held_out["targets"], macs, args.exit_budget)
        results["dynamic"] = dynamic_evaluate(probs, targets, macs, found["best"]["thresholds"])
        results["dynamic"]["budget"] = args.exit_budget
        results["dynamic"]["calibration"] = {k: found["best"][k] for k in ("accuracy", "expected_macs", "setting")}
        return
    curve = []
    for setting, thresholds in enumerate(threshold_table(held_out["probs"]), start=1):
        point = dynamic_evaluate(probs, targets, macs, thresholds)
        point["setting"] = setting
        curve.append(point)
    results["dynamic_curve"] = curve


def _print_exits(results: dict) -> None:
    macs = results.get("exit_macs", [None] * len(results["exits"]))
    for index, (scores, gmacs) in enumerate(zip(results["exits"], macs)):
        cost = f" at {gmacs:.3f} GMACs" if gmacs is not None else ""
        print(f"  exit {index}: top-1 {100 * scores['top1']:.2f}%, top-5 {100 * scores['top5']:.2f}%{cost}")
    if "dynamic" in results:
        dynamic = results["dynamic"]
        shares = ", ".join(f"{100 * s:.1f}%" for s in dynamic["exit_shares"])
        origin = f" (budget {dynamic['budget']:g} GMACs)" if "budget" in dynamic else ""
        print(f"  dynamic{origin}: top-1 {dynamic['accuracy']:.2f}%, average {dynamic['expected_macs']:.3f} GMACs, "
              f"exits taken {shares}, thresholds {[round(t, 4) for t in dynamic['thresholds'][:-1]]}")
    if "dynamic_curve" in results:
        print("  dynamic, thresholds found on the calibration split for the reference's settings "
              "(pass --exit_budget GMACS to choose one):")
        seen = set()
        for point in results["dynamic_curve"]:
            key = (round(point["expected_macs"], 4), round(point["accuracy"], 2))
            if key not in seen:
                seen.add(key)
                print(f"    setting {point['setting']:2d}: top-1 {point['accuracy']:.2f}% at "
                      f"{point['expected_macs']:.3f} GMACs")


def _run_config(argv: list) -> list:
    """Without ``-c`` or ``--model``, the configuration train.py saved beside ``--ckpt_path`` (``<model>.yaml``)."""
    import argparse

    import yaml

    from config import ConfigError, load_yaml

    pre = argparse.ArgumentParser(add_help=False)
    for option in (("-c", "--config"), ("--model",), ("--ckpt_path",)):
        pre.add_argument(*option, default="")
    known, _ = pre.parse_known_args(argv)
    ckpt = known.ckpt_path
    if known.config or known.model or not ckpt:
        return argv
    directory = os.path.dirname(os.path.abspath(ckpt))
    found, refused = [], []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if name.endswith(".yaml"):
            try:
                with open(os.path.join(directory, name)) as stream:
                    saved = load_yaml(stream, os.path.join(directory, name))  # bounded: an alias bomb is an error
            except (OSError, yaml.YAMLError):
                continue
            except ConfigError as exc:  # beyond the bounds: the error, if no other file is the run's
                refused.append(exc)
                continue
            if isinstance(saved, dict) and saved.get("model") == name[: -len(".yaml")]:
                found.append(os.path.join(directory, name))
    if not found and refused:
        raise refused[0]
    if len(found) != 1:
        what = "no configuration" if not found else f"{len(found)} configurations ({', '.join(found)})"
        raise ValueError(f"{what} of the run beside {ckpt!r}; pass the training configuration with -c CONFIG "
                         f"(or --model NAME)")
    print(f"eval.py: using {found[0]}, the configuration train.py saved with the run (pass -c to choose another)",
          file=sys.stderr)
    return ["-c", found[0]] + list(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        argv = _run_config(argv)
    except ValueError as exc:
        print(f"eval.py: error: {exc}", file=sys.stderr)
        return 2
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
    if "exits" in results:
        line += " (last exit)"
    print(line)
    if "exits" in results:
        _print_exits(results)
    print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
