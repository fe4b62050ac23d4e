"""The training monitor: per-step logs, validation, checkpoints, results file and plot.

Replaces mindcv 0.3.0's ``StateMonitor`` and avoids its failures: validation with EMA weights swaps
Parameters (not Tensors) in and out; the optimizer is taken from our train step whatever the sink mode;
metrics are summed across ranks in float32; only rank 0 writes files.
"""
import hashlib
import logging
import math
import os
import time
from typing import Callable, List, Optional

import numpy as np

from mindspore.train.callback import Callback

from .checkpoint import CheckpointKeeper, parameter_checksum, save_atomic
from .results import ResultsLog, plot_curves

__all__ = ["TrainMonitor"]

_logger = logging.getLogger("mindcv_ext")


class TrainMonitor(Callback):
    def __init__(self, train_step, network, model_name: str, lr_schedule: List[float], steps_per_epoch: int,
                 epoch_size: int, global_batch: int, save_dir: str, rank: Optional[int], begin_epoch: int = 0,
                 best_top1: float = float("-inf"), evaluate_fn: Optional[Callable[[], dict]] = None,
                 val_interval: int = 1, log_interval: int = 100, ckpt_save_interval: int = 1,
                 keep_checkpoint_max: int = 10, ckpt_save_policy: str = "latest_k", data_digest: bool = False,
                 sink_mode: bool = False, on_checkpoint: Optional[Callable[[str], None]] = None) -> None:
        super().__init__()
        self.train_step, self.network, self.model_name = train_step, network, model_name
        self.lr_schedule, self.steps_per_epoch, self.epoch_size = lr_schedule, steps_per_epoch, epoch_size
        self.global_batch, self.save_dir, self.rank = global_batch, save_dir, rank
        self.is_writer = rank in (None, 0)
        self.begin_epoch, self.best_top1 = begin_epoch, best_top1
        self.evaluate_fn, self.val_interval, self.log_interval = evaluate_fn, val_interval, max(1, log_interval)
        self.ckpt_save_interval = max(1, ckpt_save_interval)
        self.sink_mode = sink_mode
        self.on_checkpoint = on_checkpoint  # e.g. the OpenI upload, after each saved epoch
        self.keeper = CheckpointKeeper(save_dir, model_name, keep_checkpoint_max, ckpt_save_policy) \
            if self.is_writer else None
        self.results = ResultsLog(os.path.join(save_dir, "results.csv"), begin_epoch) if self.is_writer else None
        self.data_digest = set() if data_digest else None
        self.epoch = begin_epoch
        self._reset_epoch()

    def _reset_epoch(self):
        self.epoch_start = time.time()
        self.step_start = time.time()
        self.loss_sum = 0.0
        self.loss_count = 0
        self.overflows = 0
        self.pending = []  # (loss, overflow, steps) of the steps not read yet, as the step returned them
        self.window_start = time.time()
        self.window_steps = 0

    def _log(self, message: str) -> None:
        _logger.info(message)

    def _optimizer_step(self) -> int:
        return int(self.train_step.optimizer.global_step.asnumpy().reshape(-1)[0])

    def _current_lr(self) -> float:
        index = max(0, min(self._optimizer_step() - 1, len(self.lr_schedule) - 1))
        return float(self.lr_schedule[index])

    # ---------------------------------------------------------------- epoch
    def on_train_epoch_begin(self, run_context):
        self.epoch += 1
        self._reset_epoch()

    def _read_pending(self) -> float:
        """Add the unread steps' losses and overflows to the epoch's figures, in step order (so they are the same
        as when each step was read at once); returns the last step's loss."""
        loss_value = float("nan")
        for loss, overflow, steps_done in self.pending:
            loss_value = float(np.asarray(loss.asnumpy()).mean())
            if math.isfinite(loss_value):
                self.loss_sum += loss_value * steps_done
                self.loss_count += steps_done
            if overflow is not None and bool(overflow.asnumpy()):
                self.overflows += 1
        self.pending.clear()
        return loss_value

    def on_train_step_end(self, run_context):
        params = run_context.original_args()
        outputs = params.net_outputs
        loss, overflow, scale = (outputs if isinstance(outputs, (tuple, list)) else (outputs, None, None))
        steps_done = self.steps_per_epoch if self.sink_mode else 1
        # Read at log lines and at the epoch's end only: reading a value after every step makes the host wait for
        # each step to finish before it queues the next (on Ascend and GPU without sink mode, host and device
        # then take turns).
        self.pending.append((loss, overflow, steps_done))
        if self.data_digest is not None and getattr(params, "train_dataset_element", None) is not None:
            images = params.train_dataset_element[0].asnumpy()
            self.data_digest.update(hashlib.blake2b(np.ascontiguousarray(img).tobytes(), digest_size=6).hexdigest()
                                    for img in images)
        self.window_steps += steps_done
        cur = (params.cur_step_num - 1) % self.steps_per_epoch + 1 if not self.sink_mode else self.steps_per_epoch
        if cur % self.log_interval == 0 or cur == self.steps_per_epoch:
            loss_value = self._read_pending()
            elapsed = time.time() - self.window_start
            step_ms = 1000.0 * elapsed / max(self.window_steps, 1)
            throughput = self.global_batch * self.window_steps / max(elapsed, 1e-9)
            scale_text = f", loss scale {float(scale.asnumpy()):g}" if scale is not None and \
                float(scale.asnumpy()) != 1.0 else ""
            self._log(f"Epoch {self.epoch}/{self.epoch_size}, step {cur}/{self.steps_per_epoch}, "
                      f"loss {loss_value:.4f}, "
                      f"lr {self._current_lr():.6g}{scale_text}, step time {step_ms:.1f} ms, "
                      f"{throughput:.1f} img/s")
            self.window_start, self.window_steps = time.time(), 0

    def _ema_swap(self):
        """Exchange the network weights with their EMA (call twice to undo)."""
        for weight, ema in zip(self.train_step.weights, self.train_step.ema_weights):
            current = weight.value().copy()
            weight.set_data(ema.value())
            ema.set_data(current)

    def _evaluate(self) -> Optional[dict]:
        if self.evaluate_fn is None or self.epoch % self.val_interval != 0 and self.epoch != self.epoch_size:
            return None
        use_ema = getattr(self.train_step, "ema", False)
        if use_ema:
            self._ema_swap()
        try:
            return self.evaluate_fn()
        finally:
            if use_ema:
                self._ema_swap()

    def _network_weights(self, use_ema: bool):
        """Parameters of the network alone (EMA values under the network's names when EMA is on)."""
        params = [{"name": p.name, "data": p.value()} for p in self.network.get_parameters()]
        if use_ema:
            ema = {w.name: e for w, e in zip(self.train_step.weights, self.train_step.ema_weights)}
            params = [{"name": p["name"], "data": ema[p["name"]].value() if p["name"] in ema else p["data"]}
                      for p in params]
        return params

    def on_train_epoch_end(self, run_context):
        self._read_pending()  # the epoch's last step logs, and reads them; kept for an epoch ended otherwise
        epoch_time = time.time() - self.epoch_start
        train_loss = self.loss_sum / self.loss_count if self.loss_count else float("nan")
        throughput = self.global_batch * self.steps_per_epoch / max(epoch_time, 1e-9)
        try:
            metrics = self._evaluate()
        except Exception:
            # The training epoch is complete: keep it (without validation figures) before the error ends the run.
            self._log(f"Epoch {self.epoch}/{self.epoch_size}: validation failed; saving the epoch first")
            self._commit(train_loss, None, False, epoch_time, throughput, always_save=True)
            raise
        improved = metrics is not None and metrics["top1"] > self.best_top1
        if improved:
            self.best_top1 = metrics["top1"]
        summary = f"Epoch {self.epoch}/{self.epoch_size} done in {epoch_time:.1f} s ({throughput:.1f} img/s), " \
                  f"train loss {train_loss:.4f}"
        if self.overflows:
            summary += f", {self.overflows} step(s) skipped on overflow"
        if metrics is not None:
            summary += (f", val top-1 {100 * metrics['top1']:.2f}%, top-5 {100 * metrics['top5']:.2f}%, "
                        f"loss {metrics['loss']:.4f} (best {100 * self.best_top1:.2f}%)")
            if "exits" in metrics:  # multi-exit networks: the figures above are the last exit's
                summary += ", top-1 per exit " + "/".join(f"{100 * e['top1']:.2f}%" for e in metrics["exits"])
        self._log(summary)
        self._commit(train_loss, metrics, improved, epoch_time, throughput)

    def _commit(self, train_loss: float, metrics: Optional[dict], improved: bool, epoch_time: float,
                throughput: float, always_save: bool = False) -> None:
        """Write the epoch's results row, best checkpoint and epoch checkpoint, in that order.

        The epoch checkpoint comes last: a run resumed from it finds every earlier file written, and one
        killed before it resumes from the previous checkpoint, drops the later rows and redoes the epoch.
        """
        if not self.is_writer:
            return
        self.results.append(epoch=self.epoch, train_loss=train_loss, lr=f"{self._current_lr():.6g}",
                            val_loss=metrics["loss"] if metrics else None,
                            val_top1=metrics["top1"] if metrics else None,
                            val_top5=metrics["top5"] if metrics else None, epoch_time_s=f"{epoch_time:.2f}",
                            images_per_s=f"{throughput:.1f}")
        if improved:
            best = os.path.join(self.save_dir, f"{self.model_name}_best.ckpt")
            save_atomic(self._network_weights(getattr(self.train_step, "ema", False)), best,
                        append_dict={"epoch_num": self.epoch, "top1": self.best_top1})
            self._log(f"saved {best} (best val top-1 {100 * self.best_top1:.2f}%)")
        step = self.epoch * self.steps_per_epoch
        extra = {"epoch_num": self.epoch, "step_num": step,
                 "best_top1": self.best_top1 if math.isfinite(self.best_top1) else -1.0}
        if always_save or self.epoch % self.ckpt_save_interval == 0 or self.epoch == self.epoch_size:
            path = self.keeper.save(self.train_step, self.epoch, step,
                                    metrics["top1"] if metrics else None, append_dict=extra)
            self._log(f"saved {path}")
            if self.on_checkpoint is not None:
                self.on_checkpoint(os.path.basename(path))

    def on_train_end(self, run_context):
        rank = 0 if self.rank is None else self.rank
        self._log(f"rank {rank}: final parameters sha256 {parameter_checksum(self.network)}")
        if self.data_digest is not None:
            samples = sorted(self.data_digest)
            listed = ",".join(samples) if len(samples) <= 4096 else "(too many to list)"
            self._log(f"rank {rank}: data digest {len(samples)} distinct samples: {listed}")
        if self.is_writer:
            png = plot_curves(self.results.path, os.path.join(self.save_dir, "curves.png"), self.model_name)
            self._log(f"results: {self.results.path}" + (f", plot: {png}" if png else
                                                          " (install matplotlib for the plot)"))
