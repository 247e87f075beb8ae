"""Optax optimizers and learning-rate schedules from `config.optimizer` and `config.schedule`."""
from __future__ import annotations

import jax
import optax

OPTIMIZERS = ('sgd', 'adamw')
SCHEDULES = ('constant', 'step', 'cosine')


def base_learning_rate(config) -> float:
  """`schedule.base_lr`, scaled by batch / 256 when `schedule.scale_by_batch` is set.

  The linear scaling rule of Goyal et al. 2017, Sec. 2.1 (ResNet-50: 0.1 for batch 256).
  """
  lr = config.schedule.base_lr
  return lr * config.batch_size / 256 if config.schedule.scale_by_batch else lr


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """Linear warmup for `schedule.warmup_epochs`, then constant, step or cosine decay.

  `step` multiplies the rate by `schedule.decay_factor` at each of `schedule.boundaries`
  (in epochs, fractions allowed, counted from the start of training).
  """
  s = config.schedule
  if s.name not in SCHEDULES:
    raise ValueError(f"config.schedule.name '{s.name}' is not one of {SCHEDULES}")
  lr = base_learning_rate(config)
  total = int(config.num_epochs * steps_per_epoch)
  warmup = int(s.warmup_epochs * steps_per_epoch)
  if s.name == 'constant':
    main = optax.constant_schedule(lr)
  elif s.name == 'cosine':
    main = optax.cosine_decay_schedule(lr, decay_steps=max(1, total - warmup))
  else:
    boundaries = {int(b * steps_per_epoch) - warmup: s.decay_factor for b in s.boundaries}
    main = optax.piecewise_constant_schedule(lr, boundaries)
  if warmup == 0:
    return main
  ramp = optax.linear_schedule(0.0, lr, transition_steps=warmup)
  return optax.join_schedules([ramp, main], boundaries=[warmup])


def decay_mask(params):
  """True for the weights that get weight decay: kernels, not BN scales/offsets or biases.

  Excluding them is the "no bias decay" of Goyal et al. 2017 / He et al. 2019 (Bag of Tricks, 3.1).
  """
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD (momentum, optional Nesterov) with coupled L2 decay as in torch, or AdamW."""
  o = config.optimizer
  schedule = learning_rate_schedule(config, steps_per_epoch)
  if o.name == 'sgd':
    return optax.chain(
        optax.add_decayed_weights(o.weight_decay, mask=decay_mask),
        optax.sgd(schedule, momentum=o.momentum or None, nesterov=o.nesterov))
  if o.name == 'adamw':
    return optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask)
  raise ValueError(f"config.optimizer.name '{o.name}' is not one of {OPTIMIZERS}")
