"""Optax optimizers and learning-rate schedules from `config.optimizer` and `config.schedule`.

Every optimizer is one chain, in this order:

  clip by global norm -> 'l2' decay -> the optimizer's direction -> 'decoupled' decay
  -> trust ratio (LARS, LAMB) -> learning rate -> momentum after the rate (LARS)

so the decay styles differ only in where `weight_decay * w` enters (`decay_style`):
- 'l2': added to the gradient before the optimizer (torch's `weight_decay` argument of SGD, Adam,
  RMSprop), so Adam divides it by sqrt(v) like any gradient;
- 'loss': an explicit `0.5 * weight_decay * ||w||^2` term in the loss (the train step adds it and
  reports it as `decay_loss`); for SGD the same update as 'l2' (a test);
- 'decoupled': added to the optimizer's update, then scaled by the learning rate (Loshchilov &
  Hutter 2019, Alg. 1-2: SGDW, AdamW). As in torch's AdamW and optax, the decay is multiplied by
  the scheduled rate lr_t, not by the schedule multiplier eta_t alone: the paper's lambda is our
  weight_decay times base_lr.
BatchNorm scales/offsets and biases get no decay (`decay_mask`; Goyal et al. 2017, He et al. 2019)
unless `optimizer.decay_norm_and_bias` (every parameter, as He et al. 2015 and torch's SGD), and
never LARS/LAMB adaptation.

Parameter groups (`config.freeze`, `optimizer.lr_multipliers`; `param_groups`): the chain above then
runs only on the trained parameters and its final update is multiplied by each parameter's factor,
as a torch param group's `lr`; frozen parameters get no update, no decay and no optimizer state.
"""
from __future__ import annotations

import contextlib
import math
import re
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from resnet_jax.models.layers import PRELU_PARAM

OPTIMIZERS = ('sgd', 'adam', 'adamw', 'rmsprop', 'lars', 'lamb')
DECAY_STYLES = ('l2', 'loss', 'decoupled')
SCHEDULES = ('constant', 'step', 'multistep', 'exponential', 'cosine', 'cosine_restarts',
             'onecycle', 'onecycle_linear', 'polynomial')

# The decay style of each optimizer's paper or usual implementation (`optimizer.decay_style` unset).
DEFAULT_DECAY_STYLE = {
    'sgd': 'l2', 'adam': 'l2', 'rmsprop': 'l2',  # torch.optim's weight_decay.
    'adamw': 'decoupled',  # Loshchilov & Hutter 2019, Alg. 2.
    'lars': 'l2',  # You et al. 2017, Alg. 1: the trust ratio sees grad + beta * w.
    'lamb': 'decoupled',  # You et al. 2020, Alg. 2: r_t + lambda * x_t before the trust ratio.
}
# `optimizer.eps` unset: torch's defaults; LAMB 1e-6 (You et al. 2020, Sec. 4); SGD and LARS none.
DEFAULT_EPS = {'sgd': 0.0, 'adam': 1e-8, 'adamw': 1e-8, 'rmsprop': 1e-8, 'lars': 0.0,
               'lamb': 1e-6}


def base_learning_rate(schedule, batch_size: int) -> float:
  """`schedule.base_lr`, scaled by batch / 256 when `schedule.scale_by_batch` is set.

  The linear scaling rule of Goyal et al. 2017, Sec. 2.1 (ResNet-50: 0.1 for batch 256).
  `batch_size` is the batch of one update, whatever `grad_accum_steps` splits it into.
  """
  lr = schedule.base_lr
  return lr * batch_size / 256 if schedule.scale_by_batch else lr


def total_steps(num_epochs: float, steps_per_epoch: int) -> int:
  """The number of updates of the whole run."""
  return max(1, int(round(num_epochs * steps_per_epoch)))


def learning_rate_schedule(schedule, *, batch_size: int, num_epochs: float,
                           steps_per_epoch: int) -> optax.Schedule:
  """Linear warmup for `schedule.warmup_epochs` (from 0; Goyal et al. 2017, Sec. 2.2, gradual
  warmup), then `schedule.name`:

  - constant: `base_lr`.
  - step: times `decay_factor` every `step_epochs` (torch's StepLR); with `step_epochs` unset, at
    `boundaries` like 'multistep' (the meaning 'step' had before 'multistep' existed).
  - multistep: times `decay_factor` at each of `boundaries` (He et al. 2015, Sec. 3.4: /10 at
    epochs 30 and 60). Epochs for both count from the start of training, warmup included.
  - exponential: times `decay_factor` per epoch, continuously.
  - cosine: half a cosine from `base_lr` to 0 at the last step (Loshchilov & Hutter 2017, Eq. 5
    without restarts).
  - cosine_restarts: SGDR (Loshchilov & Hutter 2017, Eq. 5): cosine cycles from `base_lr` to 0,
    the first `restart_epochs` long, each next one `restart_mult` times longer.
  - onecycle: from base_lr / div_factor up to `base_lr` at `pct_start` of the run, then down to
    base_lr / (div_factor * final_div_factor), both halves cosine (torch's OneCycleLR, fastai).
  - onecycle_linear: Smith & Topin 2018 (Super-convergence, Sec. 3): linear up to base_lr at
    `pct_start`, linear back to base_lr / div_factor at 85% of the run, then annihilation to
    base_lr / (div_factor * final_div_factor) (optax.linear_onecycle_schedule).
  - polynomial: base_lr * (1 - t / T)^power (You et al. 2017 use power 2 with LARS).
  All but step and multistep start at the end of the warmup and reach their end at the last step.
  `schedule` is config.schedule; `batch_size` and `num_epochs` are the run's.
  """
  s = schedule
  if s.name not in SCHEDULES:
    raise ValueError(f"config.schedule.name '{s.name}' is not one of {SCHEDULES}")
  lr = base_learning_rate(s, batch_size)
  warmup = int(s.warmup_epochs * steps_per_epoch)
  steps = max(1, total_steps(num_epochs, steps_per_epoch) - warmup)  # After the warmup.
  if s.name == 'constant':
    main = optax.constant_schedule(lr)
  elif s.name in ('step', 'multistep'):
    main = _drops(lr, s, steps_per_epoch, warmup, num_epochs)
  elif s.name == 'exponential':
    main = _exponential(lr, s.decay_factor, steps_per_epoch)
  elif s.name == 'cosine':
    main = optax.cosine_decay_schedule(lr, decay_steps=steps)
  elif s.name == 'cosine_restarts':
    main = _cosine_restarts(lr, max(1, int(round(s.restart_epochs * steps_per_epoch))),
                            s.restart_mult, steps)
  elif s.name == 'onecycle':
    main = optax.cosine_onecycle_schedule(steps, lr, pct_start=s.pct_start,
                                          div_factor=s.div_factor,
                                          final_div_factor=s.final_div_factor)
  elif s.name == 'onecycle_linear':
    main = optax.linear_onecycle_schedule(steps, lr, pct_start=s.pct_start,
                                          div_factor=s.div_factor,
                                          final_div_factor=s.final_div_factor)
  else:
    main = optax.polynomial_schedule(lr, 0.0, power=s.power, transition_steps=steps)
  if warmup == 0:
    return main
  ramp = optax.linear_schedule(0.0, lr, transition_steps=warmup)
  return optax.join_schedules([ramp, main], boundaries=[warmup])


def _drops(lr: float, s, steps_per_epoch: int, warmup: int, num_epochs: float) -> optax.Schedule:
  """'step' and 'multistep': lr * decay_factor ** (drops reached), at epochs counted from the
  start of training; the schedule itself is called with steps counted after the warmup."""
  if s.name == 'step' and s.step_epochs is not None:
    every = max(1, int(round(s.step_epochs * steps_per_epoch)))
    boundaries = range(every, int(num_epochs * steps_per_epoch) + every + 1, every)
  else:
    boundaries = [int(b * steps_per_epoch) for b in s.boundaries]
  at = jnp.asarray(sorted(boundaries), jnp.int32)

  def schedule(count):
    reached = jnp.sum(count + warmup >= at)
    return lr * jnp.asarray(s.decay_factor, jnp.float32) ** reached
  return schedule


def _exponential(lr: float, factor: float, steps_per_epoch: int) -> optax.Schedule:
  """lr * factor ** (count / steps_per_epoch), as a power of e: a per-epoch factor beyond float32
  (the range test's growth over a few hundred steps of a long epoch: 1e5 over 19 steps of 351 is
  1e92 per epoch) gives finite rates, where optax.exponential_decay's factor ** t is inf."""
  if not factor > 0:
    raise ValueError(f'config.schedule.decay_factor must be > 0 for the exponential schedule, '
                     f'got {factor}')
  rate = math.log(factor) / steps_per_epoch
  return lambda count: lr * jnp.exp(rate * jnp.asarray(count, jnp.float32))


def _cosine_restarts(lr: float, period: int, mult: float, steps: int) -> optax.Schedule:
  """SGDR: cycle i is round(period * mult^i) steps of lr * (1 + cos(pi * t_cur / T_i)) / 2."""
  starts, lengths = [0], []
  while True:
    lengths.append(max(1, int(round(period * mult ** len(lengths)))))
    if starts[-1] + lengths[-1] >= steps:
      break
    starts.append(starts[-1] + lengths[-1])
  starts, lengths = jnp.asarray(starts, jnp.int32), jnp.asarray(lengths, jnp.int32)

  def schedule(count):
    i = jnp.searchsorted(starts, count, side='right') - 1
    t_cur = jnp.minimum(count - starts[i], lengths[i])
    return lr * 0.5 * (1 + jnp.cos(jnp.pi * t_cur / lengths[i]))
  return schedule


def decay_mask(params, norm_and_bias: bool = False):
  """True for the weights that get weight decay: kernels, not BN scales/offsets or biases.

  Excluding them is the "no bias decay" of Goyal et al. 2017 / He et al. 2019 (Bag of Tricks, 3.1);
  `norm_and_bias=True` decays every parameter (He et al. 2015, torch.optim.SGD's weight_decay)
  but PReLU slopes, which He et al. 2015b (Sec. 2.1) never decay.
  """
  def decayed(path, p):
    return (norm_and_bias or p.ndim > 1) and getattr(path[-1], 'key', None) != PRELU_PARAM

  return jax.tree_util.tree_map_with_path(decayed, params)


def decay_style(optimizer) -> str:
  """`optimizer.decay_style`, or the optimizer's own when unset (DEFAULT_DECAY_STYLE)."""
  o = optimizer
  if o.name not in OPTIMIZERS:
    raise ValueError(f"config.optimizer.name '{o.name}' is not one of {OPTIMIZERS}")
  style = o.decay_style if o.decay_style is not None else DEFAULT_DECAY_STYLE[o.name]
  if style not in DECAY_STYLES:
    raise ValueError(f"config.optimizer.decay_style '{style}' is not one of {DECAY_STYLES}")
  return style


def loss_weight_decay(optimizer) -> float:
  """The coefficient of the train step's explicit decay term: weight_decay for 'loss', else 0."""
  return optimizer.weight_decay if decay_style(optimizer) == 'loss' else 0.0


def weight_decay_loss(params, weight_decay: float, norm_and_bias: bool = False) -> jax.Array:
  """0.5 * weight_decay * ||w||^2 over the decayed weights (`decay_mask`): its gradient is
  weight_decay * w, the 'l2' style's term."""
  mask = decay_mask(params, norm_and_bias)
  leaves = [p for p, decayed in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if decayed]
  return 0.5 * weight_decay * sum(jnp.sum(jnp.square(p.astype(jnp.float32))) for p in leaves)


def l1_loss(params, l1: float, norm_and_bias: bool = False) -> jax.Array:
  """l1 * sum |w| over the weights weight decay would touch (`decay_mask`): the L1 penalty, whose
  gradient (a subgradient: 0 at 0) is l1 * sign(w). With weight decay on as well, the two make
  the elastic net (Zou & Hastie 2005): l1 * |w|_1 + weight_decay / 2 * |w|_2^2."""
  mask = decay_mask(params, norm_and_bias)
  leaves = [p for p, decayed in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if decayed]
  # |w| as w * sign(w): its gradient is sign(w), 0 at 0 as torch's (jnp.abs's is 1 there, which
  # would push an exact zero away).
  return l1 * sum(jnp.sum(p.astype(jnp.float32) * jnp.sign(p.astype(jnp.float32)))
                  for p in leaves)


def create_optimizer(optimizer, learning_rate: optax.ScalarOrSchedule,
                     lr_factor: Callable[[str], float] | None = None
                     ) -> optax.GradientTransformation:
  """`optimizer.name` (config.optimizer) with its decay style, gradient clipping and the
  learning rate (a schedule: `learning_rate_schedule`).

  - sgd: heavy-ball momentum (or Nesterov) as torch.optim.SGD (dampening 0): buf = m buf + g,
    w -= lr buf (Sutskever et al. 2013 for Nesterov).
  - adam, adamw: Kingma & Ba 2015, Alg. 1 (bias-corrected; eps outside the square root, as torch).
  - rmsprop: torch.optim.RMSprop's form: v = rho v + (1 - rho) g^2, step g / (sqrt(v) + eps),
    eps outside the root, v from 0, then momentum `momentum` (0 for plain RMSprop; Tieleman &
    Hinton 2012, lecture 6e). TF's variant (eps inside the root, v from 1) is not this one.
  - lars: You et al. 2017, Alg. 1: per layer, the update (grad + weight_decay w) is scaled by
    trust_coefficient ||w|| / ||grad + weight_decay w||, times the rate, then momentum. The paper
    divides by ||grad|| + weight_decay ||w|| (>= ours, by the triangle inequality); we use optax's.
  - lamb: You et al. 2020, Alg. 2: the Adam update plus decoupled decay, scaled per layer by
    ||w|| / ||update||.
  `optimizer.clip_norm` > 0 first rescales the averaged gradient to at most that global norm
  (Pascanu et al. 2013, Sec. 3.2, Alg. 1), before any decay is added.
  With parameter groups (`lr_factor`, from `param_groups`), an optax.partition: 'trained' runs
  this chain (the clip over the trained parameters only, as torch sees no gradient of a frozen
  one) and then scales each update by its factor; 'frozen' (factor 0) is optax.set_to_zero.
  """
  o = optimizer
  style = decay_style(o)
  name = o.name
  eps = o.eps if o.eps is not None else DEFAULT_EPS[name]
  # Both decay places and the clip are always in the chain (0 or identity when unused): their
  # states hold no arrays, and a fixed layout lets a run resume with another weight_decay or
  # clip_norm.
  mask = lambda params: decay_mask(params, o.decay_norm_and_bias)
  decay = lambda used: optax.add_decayed_weights(o.weight_decay if used else 0.0, mask=mask)
  parts = [optax.clip_by_global_norm(o.clip_norm) if o.clip_norm > 0 else optax.identity(),
           decay(style == 'l2')]
  if name == 'sgd' and o.momentum:
    parts.append(optax.trace(decay=o.momentum, nesterov=o.nesterov))
  elif name in ('adam', 'adamw', 'lamb'):
    parts.append(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=eps))
  elif name == 'rmsprop':
    parts.append(optax.scale_by_rms(decay=o.rms_decay, eps=eps, eps_in_sqrt=False))
    if o.momentum:
      parts.append(optax.trace(decay=o.momentum, nesterov=o.nesterov))
  parts.append(decay(style == 'decoupled'))
  if name in ('lars', 'lamb'):
    # You et al. 2017, Sec. 3: LARS's eta = 0.001; LAMB's phi is the identity (coefficient 1).
    ratio = optax.scale_by_trust_ratio(
        trust_coefficient=o.trust_coefficient if name == 'lars' else 1.0, eps=eps)
    parts.append(optax.masked(ratio, decay_mask))  # BN and biases keep the plain update.
  parts.append(optax.scale_by_learning_rate(learning_rate))
  if name == 'lars' and o.momentum:
    parts.append(optax.trace(decay=o.momentum, nesterov=o.nesterov))
  factor = lr_factor
  if factor is None:
    return optax.chain(*parts)
  parts.append(scale_by_lr_factor(factor))
  label = lambda tree: jax.tree_util.tree_map_with_path(
      lambda k, _: 'frozen' if factor(param_path(k)) == 0 else 'trained', tree)
  return optax.partition({'trained': optax.chain(*parts), 'frozen': optax.set_to_zero()}, label)


# ---------------------------------------------------------------------------------------------
# Parameter groups: config.freeze and optimizer.lr_multipliers.

# Whole entries of either field that stand for a part of any model (`param_groups`).
SHORTHANDS = ('backbone', 'head')


def param_path(key_path) -> str:
  """A parameter's '/'-joined flax names ('stage0_block0/conv1/kernel'): what the patterns of
  config.freeze and optimizer.lr_multipliers are searched in."""
  return jax.tree_util.keystr(key_path, simple=True, separator='/')


def parse_param_groups(freeze: str, lr_multipliers: str
                       ) -> tuple[list[str], list[tuple[str, float]]]:
  """config.freeze -> its patterns; optimizer.lr_multipliers -> (pattern, factor) pairs.

  Both are comma-separated; a pattern is a Python regular expression (re.search) or a SHORTHAND.
  """
  patterns = [p.strip() for p in freeze.split(',') if p.strip()]
  multipliers = []
  for entry in (e.strip() for e in lr_multipliers.split(',') if e.strip()):
    pattern, _, value = entry.rpartition('=')
    try:
      factor = float(value)
    except ValueError:
      factor = None
    if not pattern.strip() or factor is None or not 0 <= factor < float('inf'):
      raise ValueError(f"config.optimizer.lr_multipliers entry '{entry}' is not REGEX=FACTOR with "
                       "a factor >= 0 (e.g. 'head=10' or 'backbone=0.1,stage2=0.5')")
    multipliers.append((pattern.strip(), factor))
  for field, listed in (('config.freeze', patterns),
                        ('config.optimizer.lr_multipliers', [p for p, _ in multipliers])):
    for pattern in listed:
      try:
        re.compile(pattern)
      except re.error as e:
        raise ValueError(f"{field}: '{pattern}' is not a valid regular expression ({e}); give "
                         f'Python regular expressions over parameter paths or one of '
                         f'{SHORTHANDS}') from None
  return patterns, multipliers


def check_optimizer_config(optimizer, schedule, freeze: str) -> None:
  """Rejects a config.optimizer / config.schedule / config.freeze no run could use, naming the
  field and what would be valid (the names, the numbers, the parameter-group syntax)."""
  decay_style(optimizer)
  if schedule.name not in SCHEDULES:
    raise ValueError(f"config.schedule.name '{schedule.name}' is not one of {SCHEDULES}")
  for field, value in (('clip_norm', optimizer.clip_norm),
                       ('weight_decay', optimizer.weight_decay), ('l1', optimizer.l1)):
    if value < 0:
      raise ValueError(f'config.optimizer.{field} must be >= 0, got {value}')
  if not 0 <= schedule.pct_start <= 1:
    raise ValueError(f'config.schedule.pct_start must be in [0, 1], got {schedule.pct_start}')
  if schedule.restart_epochs <= 0 or schedule.restart_mult < 1:
    raise ValueError('config.schedule.restart_epochs must be > 0 and config.schedule.restart_mult '
                     f'>= 1, got {schedule.restart_epochs} and {schedule.restart_mult}')
  if schedule.step_epochs is not None and schedule.step_epochs <= 0:
    raise ValueError(f'config.schedule.step_epochs must be > 0, got {schedule.step_epochs}')
  parse_param_groups(freeze, optimizer.lr_multipliers)


def param_paths(params) -> list[str]:
  """Every parameter path of a `params` tree (`param_path` of each leaf)."""
  return [param_path(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def param_groups(freeze: str, lr_multipliers: str, paths: list[str], classifier: str,
                 model_name: str = 'the model') -> Callable[[str], float] | None:
  """The learning-rate factor of a parameter path: 0 when a config.freeze pattern matches it,
  else that of the first optimizer.lr_multipliers entry that matches, else 1 (None when both
  fields are empty).

  `paths` are the model's parameter paths (`param_paths`); `classifier` is the module path the
  model's registration declares (models.model_spec: 'head' in ResNet, 'output' in LeNet-5):
  'head' means its parameters, 'backbone' every other one. A pattern that matches no parameter
  is an error naming it.
  """
  patterns, multipliers = parse_param_groups(freeze, lr_multipliers)
  if not patterns and not multipliers:
    return None
  meaning = {'head': f'^{re.escape(classifier)}/', 'backbone': f'^(?!{re.escape(classifier)}/)'}
  rules = ([('config.freeze', p, 0.0) for p in patterns]
           + [('config.optimizer.lr_multipliers', p, f) for p, f in multipliers])
  rules = [(field, pattern, re.compile(meaning.get(pattern, pattern)), factor)
           for field, pattern, factor in rules]
  for field, pattern, regex, _ in rules:
    if not any(regex.search(p) for p in paths):
      examples = ', '.join(paths[:3] + ['...'] + paths[-3:])
      raise ValueError(
          f"{field}: '{pattern}' matches no parameter of {model_name}, whose "
          f'{len(paths)} parameter paths are {examples} (patterns are regular expressions '
          f"searched in these paths, or 'backbone' / 'head': all but / only {classifier})")

  def factor(path: str) -> float:
    return next((f for _, _, regex, f in rules if regex.search(path)), 1.0)

  if all(factor(p) == 0 for p in paths):
    raise ValueError(f'config.freeze {freeze!r} and config.optimizer.lr_multipliers '
                     f'{lr_multipliers!r} leave no parameter to train')
  return factor


def scale_by_lr_factor(factor: Callable[[str], float]) -> optax.GradientTransformation:
  """Multiplies each parameter's update by `factor(path)`: per-group learning rates."""

  def update(updates, state, params=None):
    del params
    scale = lambda k, u: u if factor(param_path(k)) == 1 else u * factor(param_path(k))
    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def frozen_modules(paths: list[str], factor: Callable[[str], float] | None) -> frozenset[str]:
  """The module paths ('stage0_block0/bn1') whose every parameter is frozen (factor 0)."""
  if factor is None:
    return frozenset()
  trained = {p.rpartition('/')[0] for p in paths if factor(p) != 0}
  return frozenset(p.rpartition('/')[0] for p in paths) - trained


def frozen_batch_norm(modules: frozenset[str]):
  """A context in which the BatchNorm layers at `modules` (`frozen_modules`) normalise with their
  running statistics, which so stay as loaded: a frozen layer, as torch's `.eval()` on a frozen
  backbone (else training would normalise with batch statistics the evaluation never sees)."""
  if not modules:
    return contextlib.nullcontext()

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if (context.method_name == '__call__' and isinstance(module, nn.BatchNorm)
        and not module.use_running_average and '/'.join(module.path) in modules):
      # The same layer in inference mode, on the same variables (its scope).
      return module.clone(use_running_average=True, parent=module.scope)(*args, **kwargs)
    return next_fun(*args, **kwargs)

  return nn.intercept_methods(intercept)
