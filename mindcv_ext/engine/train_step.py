"""One training step: loss scaling with overflow skipping, gradient clipping and accumulation, EMA.

MindSpore's ``TrainOneStepWithLossScaleCell`` refuses dynamic loss scaling and overflow skipping on CPU,
and mindcv 0.3.0's ``TrainStep`` inherits that. This cell checks gradients with ``all_finite`` and
updates the scale with plain tensor arithmetic, so the same graph runs on CPU, GPU and Ascend.
"""
import mindspore as ms
from mindspore import amp, nn, ops
from mindspore.context import ParallelMode
from mindspore.parallel._utils import _get_device_num, _get_gradients_mean, _get_parallel_mode

__all__ = ["TrainStep", "NetWithLoss"]

_MAX_LOSS_SCALE = 2.0 ** 24
_ema_update = ops.MultitypeFuncGraph("ema_update")


@_ema_update.register("Tensor", "Tensor", "Tensor")
def _ema_update_tensor(decay, ema_weight, weight):
    return ops.assign(ema_weight, ema_weight * decay + weight * (1.0 - decay))


class NetWithLoss(nn.Cell):
    """Backbone + loss, with the logits cast to fp32 so the loss is never computed in fp16.

    A multi-exit network (DVT) returns a tuple of logits; its loss is the sum of the exits' losses, with equal
    weights, as the reference trains it.
    """

    def __init__(self, network: nn.Cell, loss_fn: nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.network = network
        self.loss_fn = loss_fn

    def construct(self, images: ms.Tensor, labels: ms.Tensor) -> ms.Tensor:
        outputs = self.network(images)
        if isinstance(outputs, (tuple, list)):
            loss = self.loss_fn(outputs[0].astype(ms.float32), labels)
            for logits in outputs[1:]:
                loss = loss + self.loss_fn(logits.astype(ms.float32), labels)
            return loss
        return self.loss_fn(outputs.astype(ms.float32), labels)


class TrainStep(nn.Cell):
    r"""Forward, backward and update for ``NetWithLoss``; returns ``(loss, overflow, loss_scale)``.

    The gradients are checked for overflow only where an overflow skips the update (dynamic scaling or
    ``drop_overflow_update``); elsewhere ``overflow`` is always False.

    Args:
        net_with_loss: the network with its loss.
        optimizer: a MindSpore optimizer over the network's trainable parameters.
        loss_scale: initial (or fixed) loss scale.
        dynamic_loss_scale: halve the scale on overflow, double it after ``scale_window`` good steps.
        drop_overflow_update: skip the update when a gradient is not finite (always on when dynamic).
        clip_grad: clip the gradients' global norm to ``clip_value`` (after unscaling).
        clip_value: the norm bound.
        accumulation_steps: micro-batches per optimizer update; gradients are averaged.
        ema: keep an exponential moving average of the weights in parameters named ``ema.<name>``.
        ema_decay: the EMA decay, ramped up as ``decay * (1 - exp(-updates / 2000))``.
    """

    def __init__(self, net_with_loss: nn.Cell, optimizer: nn.Optimizer, loss_scale: float = 1.0,
                 dynamic_loss_scale: bool = False, drop_overflow_update: bool = False, scale_factor: float = 2.0,
                 scale_window: int = 2000, clip_grad: bool = False, clip_value: float = 15.0,
                 accumulation_steps: int = 1, ema: bool = False, ema_decay: float = 0.9999) -> None:
        super().__init__(auto_prefix=False)
        if accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be >= 1, got {accumulation_steps}")
        self.network = net_with_loss
        self.network.set_grad()
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad_fn = ops.GradOperation(get_by_list=True, sens_param=True)
        self.scale_sense = ms.Parameter(ms.Tensor(loss_scale, ms.float32), name="scale_sense", requires_grad=False)
        self.dynamic = dynamic_loss_scale
        self.drop_overflow = dynamic_loss_scale or drop_overflow_update
        self.scale_factor = scale_factor
        self.scale_window = scale_window
        self.good_steps = ms.Parameter(ms.Tensor(0, ms.int32), name="loss_scale_good_steps", requires_grad=False)
        self.clip_grad = clip_grad
        self.clip_value = clip_value
        # Extras the recipe leaves off cost nothing: a fixed scale of 1 neither scales nor unscales, and the
        # gradients are checked for overflow only when an overflow would change the update.
        self.scaled = dynamic_loss_scale or loss_scale != 1.0
        self.no_overflow = ms.Tensor(False, ms.bool_)

        self.accumulate = accumulation_steps > 1
        self.accumulation_steps = accumulation_steps
        if self.accumulate:
            self.accumulated = self.weights.clone(prefix="accumulated_grad", init="zeros")
            self.micro_step = ms.Parameter(ms.Tensor(0, ms.int32), name="accumulation_micro_step",
                                           requires_grad=False)

        self.ema = ema
        if ema:
            self.ema_decay = ema_decay
            self.ema_weights = self.weights.clone(prefix="ema", init="same")
            self.ema_updates = ms.Parameter(ms.Tensor(0.0, ms.float32), name="ema_updates", requires_grad=False)

        self.reducer_flag = _get_parallel_mode() in (ParallelMode.DATA_PARALLEL, ParallelMode.HYBRID_PARALLEL)
        self.grad_reducer = nn.Identity()
        if self.reducer_flag:
            self.device_num = _get_device_num()
            self.grad_reducer = nn.DistributedGradReducer(self.weights, _get_gradients_mean(), self.device_num)
        self.hyper_map = ops.HyperMap()

    def _update(self, grads):
        if self.clip_grad:
            grads = ops.clip_by_global_norm(grads, self.clip_value)
        updated = self.optimizer(grads)
        if self.ema:
            updated = ops.depend(updated, ops.assign_add(self.ema_updates, 1.0))
            decay = self.ema_decay * (1.0 - ops.exp(-self.ema_updates / 2000.0))
            updated = ops.depend(updated, self.hyper_map(ops.partial(_ema_update, decay), self.ema_weights,
                                                         self.weights))
        return updated

    def construct(self, *inputs):
        loss = self.network(*inputs)
        scale = self.scale_sense.value()
        sens = ops.fill(loss.dtype, loss.shape, 1.0)
        if self.scaled:
            sens = sens * scale.astype(loss.dtype)
        grads = self.grad_fn(self.network, self.weights)(*inputs, sens)
        grads = self.grad_reducer(grads)
        if self.scaled:
            grads = self.hyper_map(ops.partial(ops.mul, 1.0 / scale), grads)
        if not self.drop_overflow:  # the update is made whatever the gradients hold
            return self._apply(loss, grads), self.no_overflow, scale
        finite = amp.all_finite(grads)  # identical on every rank: the gradients were reduced first
        overflow = ops.logical_not(finite)

        if self.dynamic:
            if finite:
                good = self.good_steps + 1
                if good >= self.scale_window:
                    # Capped: an infinite scale would overflow every later step and never come back.
                    grown = ops.minimum(scale * self.scale_factor, _MAX_LOSS_SCALE)
                    loss = ops.depend(loss, ops.assign(self.scale_sense, grown))
                    good = good * 0
                loss = ops.depend(loss, ops.assign(self.good_steps, good))
            else:
                loss = ops.depend(loss, ops.assign(self.scale_sense, ops.maximum(scale / self.scale_factor, 1.0)))
                loss = ops.depend(loss, ops.assign(self.good_steps, self.good_steps * 0))

        if overflow:
            return loss, overflow, scale
        return self._apply(loss, grads), overflow, scale

    def _apply(self, loss, grads):
        """The update (or the accumulation towards one); returns ``loss`` once it is made."""
        if self.accumulate:
            loss = ops.depend(loss, self.hyper_map(ops.assign_add, self.accumulated, grads))
            step = self.micro_step + 1
            if step >= self.accumulation_steps:
                mean_grads = self.hyper_map(ops.partial(ops.mul, 1.0 / self.accumulation_steps), self.accumulated)
                loss = ops.depend(loss, self._update(mean_grads))
                loss = ops.depend(loss, self.hyper_map(ops.assign, self.accumulated,
                                                       self.hyper_map(ops.zeros_like, self.accumulated)))
                step = step * 0
            loss = ops.depend(loss, ops.assign(self.micro_step, step))
        else:
            loss = ops.depend(loss, self._update(grads))
        return loss
