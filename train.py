"""Train a model (mindcv conventions): ``python train.py -c configs/quickstart/gmlp_monarch_digits.yaml``.

Data parallel: ``msrun --worker_num=N --local_worker_num=N python train.py -c CONFIG --distribute True``.
Resume after a crash: ``--ckpt_path CKPT_DIR/<model>-<epoch>_<step>.ckpt --resume_opt True``.
Dense to Monarch: the Monarch twin's recipe with ``--ckpt_path DENSE_RUN/<model>_best.ckpt --to_monarch True``
projects the trained dense layers onto Monarch factors and fine-tunes from there.
``--dry_run True`` builds everything and stops before training. See ``python train.py --help``.
"""
import json
import logging
import math
import os
import sys
from typing import Optional

from config import input_resolution, model_options, parse_args, save_args

_logger = logging.getLogger("mindcv_ext")


def _loss_scaling(args):
    """(initial scale, dynamic, drop overflowing updates) from the AMP options."""
    kind = args.loss_scale_type
    if kind == "auto":
        kind = "dynamic" if args.amp_level in ("O2", "O3") else "fixed"
    if kind == "dynamic":
        return (args.loss_scale if args.loss_scale > 1.0 else 2.0 ** 16), True, True
    return args.loss_scale, False, args.drop_overflow_update


def _existing_run(save_dir: str, model: str):
    if not os.path.isdir(save_dir):
        return []
    return sorted(name for name in os.listdir(save_dir)
                  if name == "results.csv" or (name.startswith(model) and name.endswith(".ckpt")))


def _ineffective_settings(args, info) -> list:
    """Keys that are set but change nothing for this dataset (so a recipe never silently does less)."""
    unused = []
    if args.aug_splits:
        unused.append("aug_splits (augmentation splits are not implemented; the key is read for mindcv's configs)")
    if args.dataset_download:
        unused.append("dataset_download (nothing is downloaded; digits is built in, the others read data_dir)")
    if not info.is_folder:
        if args.aug_repeats:
            unused.append(f"aug_repeats (repeated augmentation samples image folders only, not {info.name})")
        for key, default in (("train_split", "train"), ("val_split", "val")):
            if getattr(args, key) != default:
                unused.append(f"{key} ({info.name} takes its splits from its own files)")
    return [f"{item} has no effect here" for item in unused]


def _reproducibility_notes(args) -> list:
    """What keeps this run from being bit-reproducible (and a resumed run from matching an uninterrupted one)."""
    notes = []
    workers = min(args.num_parallel_workers, os.cpu_count() or 1)
    python_random = [name for name, used in (("auto_augment", args.auto_augment), ("random erasing", args.re_prob > 0))
                     if used]
    if python_random and workers > 1:
        notes.append(f"not bit-reproducible: {' and '.join(python_random)} draw from NumPy's and Python's shared "
                     f"generators in {workers} pipeline threads; --num_parallel_workers 1 makes them reproducible")
    if (args.drop_rate or 0) > 0 or (args.drop_path_rate or 0) > 0:
        notes.append("not bit-reproducible: MindSpore's Dropout kernel keeps its random state to itself, so dropout "
                     "and drop-path masks differ between runs, and restart on resume")
    return notes


def _latest_checkpoint(save_dir: str, model: str) -> Optional[str]:
    """The newest epoch checkpoint in ``save_dir``, the one to resume from."""
    from mindcv_ext.engine.checkpoint import epoch_checkpoints

    found = epoch_checkpoints(save_dir, model)
    return found[-1][1] if found else None


def _explain_data_failure(exc: RuntimeError, info, splits) -> None:
    """Turn the data pipeline's opaque decode failure into an error that names the broken files."""
    from mindcv_ext.data import find_unreadable_images, unreadable_images_error

    if not info.is_folder or "dataset" not in str(exc).lower():
        raise exc
    for split in splits:
        bad = find_unreadable_images(info.listing(split))
        if bad:
            raise unreadable_images_error(os.path.join(info.root, split), bad) from exc
    raise exc


def _check_data(args, info, rank: Optional[int], device_num: int) -> None:
    """Faults in an image folder surface before epoch 1: entries the pipeline would fail on, classes without images,
    files that are not images. The checks read the pipeline's own listing (``list_image_folder``)."""
    from mindcv_ext.data import check_image_headers, unreadable_images_error

    if not info.is_folder:
        return
    splits = [args.train_split] + ([args.val_split] if args.val_while_train else [])
    listings = [info.listing(split) for split in splits]
    for listing in listings:
        empty = listing.empty_classes
        if empty and not args.allow_empty_classes:
            raise ValueError(f"{len(empty)} class folder(s) hold no images: {', '.join(empty[:10])}; add images, "
                             f"remove the folder(s), or pass --allow_empty_classes True to train with them")
        if empty:
            _logger.warning(f"class folder(s) without images (allowed by --allow_empty_classes): {', '.join(empty)}")
        if listing.ignored and rank in (None, 0):
            _logger.warning(f"{len(listing.ignored)} entr{'y' if len(listing.ignored) == 1 else 'ies'} in "
                            f"{listing.split_dir} not named like images (no reader uses them), e.g. "
                            f"{', '.join(listing.ignored[:3])}")
    if not args.check_images:
        return
    for listing in listings:
        bad = check_image_headers(listing, (rank or 0, device_num), progress=rank in (None, 0))
        if bad:
            raise unreadable_images_error(listing.split_dir, bad, " (or skip this check with --check_images False)")


def train(args) -> int:
    import mindspore as ms
    from mindcv.loss import create_loss
    from mindcv.optim import create_optimizer
    from mindcv.scheduler import create_scheduler

    import mindcv_ext  # noqa: F401  (registers the models)
    from mindcv_ext.accel import accelerate
    from mindcv_ext.data import create_split_loader, resolve_dataset, transform_settings
    from mindcv_ext.engine import Evaluator, NetWithLoss, TrainMonitor, TrainStep, load_training_state
    from mindcv_ext.engine.early_exit import use_all_exits
    from mindcv_ext.engine.files import RunLock, atomic_write, sweep_temporary_files
    from mindcv_ext.engine.openi import OpenITask, openi_requested
    from mindcv_ext.engine.runtime import (attach_log_file, load_weights, set_seed, setup_context,
                                           setup_distributed, setup_logger)
    from mindcv_ext.models import create_model

    setup_context(args.mode, args.device_target)
    rank, device_num = setup_distributed(args.distribute)
    setup_logger(None, rank)
    openi = OpenITask.prepare(rank) if openi_requested(args.openi) else None
    openi_notes = openi.apply(args) if openi else []
    resuming = bool(args.ckpt_path) and args.resume_opt
    if args.resume_opt and not args.ckpt_path:
        raise ValueError("--resume_opt True needs --ckpt_path pointing at a checkpoint of the run to resume")
    if args.to_monarch and not args.ckpt_path:
        raise ValueError("--to_monarch True needs --ckpt_path pointing at the dense twin's checkpoint")
    if args.ckpt_path and not os.path.isfile(args.ckpt_path):
        raise FileNotFoundError(f"ckpt_path {args.ckpt_path!r} does not exist")
    writer = rank in (None, 0) and not args.dry_run
    lock = RunLock(args.ckpt_save_dir)
    if writer:  # a directory in use is refused before anything is written (the lock is taken below if new)
        lock.acquire(create=False)
    earlier = _existing_run(args.ckpt_save_dir, args.model)
    if earlier and not resuming and not args.dry_run:
        raise FileExistsError(f"ckpt_save_dir {args.ckpt_save_dir!r} already holds a run ({', '.join(earlier[:4])}); "
                              f"resume it with --ckpt_path <its checkpoint> --resume_opt True, or choose another "
                              f"--ckpt_save_dir")
    for note in getattr(args, "notes", []) + openi_notes:
        _logger.warning(note)
    set_seed(args.seed)

    info = resolve_dataset(args.dataset, args.data_dir, args.train_split, args.cache_dir, in_channels=args.in_channels,
                           allow_outside_links=args.allow_outside_links)
    _check_data(args, info, rank, device_num)
    for warning in _ineffective_settings(args, info):
        _logger.warning(warning)
    num_classes = args.num_classes or info.num_classes
    if info.num_classes > num_classes:
        raise ValueError(f"the data has {info.num_classes} classes but num_classes is {num_classes}; raise "
                         f"num_classes or leave it unset to take it from the data")
    if info.num_classes < num_classes:
        _logger.warning(f"the data has {info.num_classes} classes, the model {num_classes} outputs")
    network = create_model(args.model, **model_options(args, num_classes=num_classes))
    use_all_exits(network)  # a multi-exit model (DVT): the loss sums every exit's, validation scores each
    cfg = getattr(network, "default_cfg", {}) or {}
    transforms = transform_settings(cfg, input_resolution(args), args.crop_pct, args.interpolation,
                                    args.mean, args.std)
    augment = dict(scale=tuple(args.scale), ratio=tuple(args.ratio), hflip=args.hflip, vflip=args.vflip,
                   color_jitter=args.color_jitter, auto_augment=args.auto_augment, re_prob=args.re_prob,
                   re_scale=tuple(args.re_scale), re_ratio=tuple(args.re_ratio), re_value=args.re_value,
                   re_max_attempts=args.re_max_attempts)
    shard = dict(num_shards=device_num if device_num > 1 else None, shard_id=rank if device_num > 1 else None)
    loader_train, train_size = create_split_loader(
        info, args.train_split, True, args.batch_size, transforms, augment, shuffle=args.shuffle,
        drop_remainder=args.drop_remainder, num_samples=args.num_samples,
        num_parallel_workers=args.num_parallel_workers,
        aug_repeats=args.aug_repeats, mixup=args.mixup, cutmix=args.cutmix, cutmix_prob=args.cutmix_prob,
        num_classes=num_classes, **shard)
    steps_per_epoch = loader_train.get_dataset_size()
    if steps_per_epoch == 0:
        raise ValueError(f"the training split has {train_size} image(s) on this device, fewer than one batch of "
                         f"{args.batch_size}; lower --batch_size or set --drop_remainder False")
    loader_val = None
    if args.val_while_train:
        loader_val, _ = create_split_loader(info, args.val_split, False, args.batch_size, transforms,
                                            shuffle=args.eval_shuffle, num_parallel_workers=args.num_parallel_workers,
                                            **shard)

    updates_per_epoch = max(1, steps_per_epoch // args.gradient_accumulation_steps)
    lr_schedule = create_scheduler(updates_per_epoch, scheduler=args.scheduler, lr=args.lr, min_lr=args.min_lr,
                                   warmup_epochs=args.warmup_epochs, warmup_factor=args.warmup_factor,
                                   decay_epochs=args.decay_epochs, decay_rate=args.decay_rate,
                                   milestones=args.multi_step_decay_milestones, num_epochs=args.epoch_size,
                                   num_cycles=args.num_cycles, cycle_decay=args.cycle_decay,
                                   lr_epoch_stair=args.lr_epoch_stair)
    initial_weights = load_weights(network, args.ckpt_path, to_monarch=args.to_monarch) \
        if args.ckpt_path and not resuming else None
    optimizer = create_optimizer(network, opt=args.opt, lr=lr_schedule, weight_decay=args.weight_decay,
                                 momentum=args.momentum, nesterov=args.use_nesterov,
                                 weight_decay_filter=args.weight_decay_filter, layer_decay=args.layer_decay,
                                 loss_scale=1.0, eps=args.eps)
    if args.amp_level != "O0":
        network = ms.amp.auto_mixed_precision(network, args.amp_level)
        if args.amp_cast_list:
            network = ms.amp.custom_mixed_precision(
                network, black_list=ms.amp.get_black_list() + [getattr(ms.nn, n) for n in args.amp_cast_list])
    network = accelerate(network, args.cpu_kernels)
    loss = create_loss(name=args.loss, reduction=args.reduction, label_smoothing=args.label_smoothing,
                       aux_factor=args.aux_factor)
    scale, dynamic, drop_overflow = _loss_scaling(args)
    train_step = TrainStep(NetWithLoss(network, loss), optimizer, loss_scale=scale, dynamic_loss_scale=dynamic,
                           drop_overflow_update=drop_overflow, clip_grad=args.clip_grad, clip_value=args.clip_value,
                           accumulation_steps=args.gradient_accumulation_steps, ema=args.ema,
                           ema_decay=args.ema_decay)
    train_step.set_train()

    begin_epoch, best_top1 = 0, float("-inf")
    notes = [f"initial weights: {initial_weights}"] if initial_weights else []
    if resuming:
        state = load_training_state(train_step, args.ckpt_path)
        begin_epoch, best_top1 = state.epoch, state.best_top1
        notes.append(f"resuming from {args.ckpt_path}: epoch {state.epoch} done, optimizer step "
                     f"{int(optimizer.global_step.asnumpy().reshape(-1)[0])}, lr continues at "
                     f"{lr_schedule[min(state.epoch * updates_per_epoch, len(lr_schedule) - 1)]:.6g}")
    from mindcv_ext.models import count_params

    notes.insert(0, f"model {args.model}: {count_params(network):,} parameters, {num_classes} classes; data "
                    f"{info.name} ({train_size} training images on this device, {steps_per_epoch} steps/epoch); "
                    f"{args.opt} lr {min(lr_schedule):.3g}..{max(lr_schedule):.3g} over {args.epoch_size} epochs; "
                    f"amp {args.amp_level}, loss scale {scale:g}{' dynamic' if dynamic else ''}; "
                    f"{device_num} device(s), global batch {args.batch_size * device_num}")
    notes.extend(_reproducibility_notes(args))
    if args.dry_run:
        for note in notes:
            _logger.info(note)
        images, labels = next(loader_train.create_tuple_iterator(num_epochs=1))
        _logger.info(f"dry run: first batch {tuple(images.shape)} {images.dtype}, labels {tuple(labels.shape)}; "
                     f"stopping before training")
        return 0
    if begin_epoch >= args.epoch_size:
        _logger.info(f"{args.ckpt_path} already finished all {args.epoch_size} epochs; nothing to do")
        return 0

    if writer:  # from here on the run writes files (rank 0 only)
        lock.acquire(create=True)
        if not resuming and _existing_run(args.ckpt_save_dir, args.model):
            raise FileExistsError(f"ckpt_save_dir {args.ckpt_save_dir!r} received a run while this one started; "
                                  f"choose another --ckpt_save_dir")
        swept = sweep_temporary_files(args.ckpt_save_dir)
    attach_log_file(args.ckpt_save_dir, rank)
    if writer and swept:
        _logger.info(f"removed {len(swept)} temporary file(s) left by an interrupted run: {', '.join(swept)}")
    for note in notes:
        _logger.info(note)
    if rank in (None, 0):
        save_args(args, os.path.join(args.ckpt_save_dir, f"{args.model}.yaml"))
        if info.class_names:
            with atomic_write(os.path.join(args.ckpt_save_dir, "classes.json")) as stream:
                json.dump(info.class_names, stream)

    sink = args.dataset_sink_mode
    if args.data_digest and sink:
        _logger.warning("data_digest needs dataset_sink_mode False; sink mode switched off")
        sink = False
    monitor = TrainMonitor(
        train_step, network, args.model, list(lr_schedule), steps_per_epoch, args.epoch_size,
        args.batch_size * device_num, args.ckpt_save_dir, rank, begin_epoch=begin_epoch, best_top1=best_top1,
        evaluate_fn=((lambda evaluator=Evaluator(network, args.distribute): evaluator(loader_val))
                     if loader_val else None),
        val_interval=args.val_interval, log_interval=args.log_interval, ckpt_save_interval=args.ckpt_save_interval,
        keep_checkpoint_max=args.keep_checkpoint_max, ckpt_save_policy=args.ckpt_save_policy,
        data_digest=args.data_digest, sink_mode=sink,
        on_checkpoint=(lambda name: openi.upload(name)) if openi else None)
    # The pipeline restarts at the resumed epoch's first step by replaying the earlier ones in full, so the
    # data order, augmentation and mixup draws continue exactly (the fast mode would skip their randomness).
    ms.dataset.config.set_fast_recovery(False)
    if begin_epoch:
        loader_train.set_init_step(begin_epoch * steps_per_epoch)
        _logger.info(f"replaying the data pipeline's first {begin_epoch} epoch(s) so that the data order and "
                     f"augmentation continue where the run stopped")
    trainer = ms.train.Model(train_step)
    try:
        trainer.train(args.epoch_size, loader_train, callbacks=[monitor], dataset_sink_mode=sink,
                      initial_epoch=begin_epoch)
    except RuntimeError as exc:
        _explain_data_failure(exc, info, [args.train_split] + ([args.val_split] if loader_val else []))
    finally:
        if openi:  # whatever ended the run, the platform keeps what it wrote
            openi.upload("the end of the run")
    if loader_val is not None and math.isfinite(monitor.best_top1):
        _logger.info(f"best val top-1 {100 * monitor.best_top1:.2f}%: "
                     f"{os.path.join(args.ckpt_save_dir, args.model + '_best.ckpt')}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return train(args)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        from mindcv_ext.engine.files import is_storage_error

        if not is_storage_error(exc):
            raise
        where = f" {exc.filename!r}" if exc.filename else ""
        latest = _latest_checkpoint(args.ckpt_save_dir, args.model)
        resume = (f"resume with --ckpt_path {latest} --resume_opt True" if latest else
                  "run again")
        print(f"train.py: error: cannot write{where}: {exc.strerror or exc}. The files saved before are intact; "
              f"free space or make {args.ckpt_save_dir!r} writable and {resume}, or choose another --ckpt_save_dir",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
