"""Run train.py and kill it with SIGKILL at a chosen moment: ``python tests/kill_at.py MOMENT EPOCH -- ARGS``.

The moments a crash test needs, each in epoch EPOCH (1-based):

- ``step``: after the epoch's second training step (mid-epoch);
- ``ckpt_write``: while the epoch checkpoint is being written (its temporary file is complete, not renamed);
- ``ckpt_renamed``: just after the epoch checkpoint got its final name;
- ``validation``: when the epoch's validation starts (training done, nothing of the epoch saved).

The kill is a real ``kill -9`` of this process; nothing in train.py knows about it.
"""
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _kill():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    moment, epoch = sys.argv[1], int(sys.argv[2])
    argv = sys.argv[sys.argv.index("--") + 1:]

    import mindspore as ms

    import train
    from mindcv_ext.engine import TrainMonitor

    if moment == "step":
        original_step_end = TrainMonitor.on_train_step_end

        def on_train_step_end(self, run_context):
            original_step_end(self, run_context)
            if self.epoch == epoch and (run_context.original_args().cur_step_num - 1) % self.steps_per_epoch == 1:
                _kill()

        TrainMonitor.on_train_step_end = on_train_step_end
    elif moment == "ckpt_write":
        original_save = ms.save_checkpoint

        def save_checkpoint(save_obj, ckpt_file_name, *args, **kwargs):
            original_save(save_obj, ckpt_file_name, *args, **kwargs)
            if f"-{epoch}_" in os.path.basename(ckpt_file_name) and ".tmp-" in ckpt_file_name:
                _kill()

        ms.save_checkpoint = save_checkpoint
    elif moment == "ckpt_renamed":
        original_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            original_replace(src, dst, *args, **kwargs)
            name = os.path.basename(dst)
            if name.endswith(".ckpt") and f"-{epoch}_" in name:
                _kill()

        os.replace = replace
    elif moment == "validation":
        original_evaluate = TrainMonitor._evaluate

        def evaluate(self):
            if self.epoch == epoch:
                _kill()
            return original_evaluate(self)

        TrainMonitor._evaluate = evaluate
    else:
        raise SystemExit(f"unknown moment {moment!r}")
    return train.main(argv)


if __name__ == "__main__":
    sys.exit(main())
