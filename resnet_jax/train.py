"""TrainState, the per-device train and eval steps, and the training loop.

The steps are written pmap-style: each sees one device's slice of the batch and averages
gradients, BatchNorm statistics and metrics over the mesh axis `batch` with `lax.pmean`.
`DataParallel` maps that very function with `jax.shard_map` over a 1-D mesh of every device of
every host (default) or with `jax.pmap` (`config.parallelism='pmap'`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from etils import epath
from flax.training import train_state
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from resnet_jax import data, optim
from resnet_jax.checkpoint import Checkpointer
from resnet_jax.config import check_config
from resnet_jax.data import on_device
from resnet_jax.models import create_model, model_spec

AXIS = 'batch'
# The named RNG streams a model may draw from in training: dropout and DropConnect, stochastic
# depth, fractional max pooling (evaluation passes a fixed 'fmp' key).
RNG_STREAMS = ('dropout', 'drop_path', 'fmp')


class TrainState(train_state.TrainState):
  batch_stats: Any
  skipped_steps: Any = 0  # Updates dropped for a non-finite loss or gradient (skip_nonfinite).
  # config.ema_decay > 0: {'params', 'batch_stats'} averaged over the steps (Polyak averaging),
  # checkpointed with the rest and evaluated beside the raw weights; {} when off.
  ema: Any = None


# ---------------------------------------------------------------------------------------------
# Data parallelism: one per-device function, mapped by shard_map (default) or pmap.


@dataclasses.dataclass
class DataParallel:
  """How per-device functions are mapped over devices, and where their inputs live.

  Arguments come in four kinds: 'state' (the same on every device: a replicated global array
  under shard_map, a stacked [device, ...] array under pmap), 'data' (laid out as 'state' but
  never donated: a dataset kept on the devices), 'batch' (split over devices along the leading
  axis) and 'const' (a small value every device sees whole, such as a PRNG key).
  `devices` defaults to every device of every host.
  """
  mode: str
  devices: Sequence[jax.Device] | None = None

  def __post_init__(self):
    self.devices = list(jax.devices() if self.devices is None else self.devices)
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    self.mesh = Mesh(np.asarray(self.devices), (AXIS,)) if self.mode == 'shard_map' else None

  def map(self, fn: Callable, kinds: tuple[str, ...], donate_state: bool = False) -> Callable:
    donate = tuple(i for i, k in enumerate(kinds) if k == 'state') if donate_state else ()
    if self.mode == 'pmap':
      in_axes = tuple(None if k == 'const' else 0 for k in kinds)
      return jax.pmap(fn, axis_name=AXIS, in_axes=in_axes, donate_argnums=donate,
                      devices=self.devices)
    specs = tuple(PartitionSpec(AXIS) if k == 'batch' else PartitionSpec() for k in kinds)
    # check_vma=False keeps pmap's semantics: the gradient of a replicated parameter is this
    # device's own (with vma checking, autodiff would psum it already and pmean would not average).
    mapped = jax.shard_map(fn, mesh=self.mesh, in_specs=specs, out_specs=PartitionSpec(),
                           check_vma=False)
    return jax.jit(mapped, donate_argnums=donate)

  def replicate(self, tree):
    """One copy of a pytree -> the 'state' layout on every device."""
    if self.mode == 'pmap':
      n = len(self.local_devices)
      return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), tree)
    return jax.jit(lambda t: t, out_shardings=NamedSharding(self.mesh, PartitionSpec()))(tree)

  def unreplicate(self, tree):
    """The 'state' layout -> one copy (device arrays; fetch with jax.device_get)."""
    if self.mode == 'pmap':
      # A stacked NumPy leaf's x[0] is a NumPy scalar (not an array): orbax cannot restore into it.
      return jax.tree.map(lambda x: x[0] if isinstance(x, jax.Array) else np.asarray(x[0]), tree)
    return tree

  def shard_batch(self, batch: dict[str, np.ndarray]) -> dict:
    """This process's slice of the global batch -> the 'batch' layout."""
    return data.to_global(batch, self.mesh, len(self.local_devices))


# ---------------------------------------------------------------------------------------------
# The model, the state and the per-device steps.


def build_model(config, num_classes: int):
  """The registered model with the config's overrides (unset fields keep the model's default).

  `config.model.init` becomes the model's `kernel_init`. A model whose activation is 'selu' (set
  or by default) and whose init is not set gets 'lecun', the init SELU's fixed point assumes.
  """
  overrides = {k: v for k, v in config.model.items()
               if k not in ('name', 'sync_bn', 'init') and v is not None}
  if config.model.init is not None:
    overrides['kernel_init'] = config.model.init
  if config.model.sync_bn:
    overrides['bn_axis_name'] = AXIS
  dtype = jnp.bfloat16 if config.dtype == 'bfloat16' else jnp.float32
  model = create_model(config.model.name, num_classes=num_classes, dtype=dtype, **overrides)
  fields = {f.name for f in dataclasses.fields(model)}
  if (config.model.init is None and {'act', 'kernel_init'} <= fields and model.act == 'selu'
      and model.kernel_init != 'lecun'):
    # Klambauer et al. 2017, Sec. 3 ("Initialization"): weights of variance 1/fan_in keep the
    # activations at SELU's fixed point (mean 0, variance 1).
    logging.info('act=selu: kernel_init %r -> lecun (Klambauer et al. 2017)', model.kernel_init)
    model = model.clone(kernel_init='lecun')
  return model


def initial_variables(model, rng: jax.Array, image_shape: tuple[int, ...]) -> dict:
  """Parameters and BatchNorm statistics of a freshly initialized model (fp32)."""
  # An 'fmp' key too: fractional max pooling draws its regions in evaluation mode as well.
  rngs = {'params': rng, 'fmp': jax.random.fold_in(rng, 1)}
  variables = model.init(rngs, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}


def create_train_state(model, tx: optax.GradientTransformation, rng: jax.Array,
                       image_shape: tuple[int, ...], ema: bool = False) -> TrainState:
  """A fresh state; with `ema`, the weight averages start at the initial weights."""
  variables = initial_variables(model, rng, image_shape)
  return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                           batch_stats=variables['batch_stats'],
                           skipped_steps=jnp.zeros((), jnp.int32),
                           ema=jax.tree.map(jnp.copy, variables) if ema else {})


def normalize(images: jax.Array, mean, std, dtype) -> jax.Array:
  """uint8 images -> (x - mean) / std per channel, in the computation dtype, on device."""
  return data.preprocess.apply({'mean': mean, 'std': std}, images, dtype)


def preprocess_images(images: jax.Array, pre: dict | None, mean, std, dtype) -> jax.Array:
  """The fitted preprocessing `pre` when given (data.preprocess.apply), else mean/std."""
  return data.preprocess.apply({'mean': mean, 'std': std} if pre is None else pre, images, dtype)


def cross_replica_mean(tree):
  return lax.pmean(tree, AXIS)


def cutmix_box(key: jax.Array, lam: jax.Array, height: int, width: int):
  """CutMix's box (Yun et al. 2019, Sec. 3.1): sides H sqrt(1 - lam) and W sqrt(1 - lam), centre
  uniform over the image, clipped at the borders.

  Returns (a [height, width] mask, True inside the box; lam corrected to 1 - box area / image
  area, the share of the image that is still the example's own).
  """
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = (height * ratio).astype(jnp.int32)
  cut_w = (width * ratio).astype(jnp.int32)
  key_y, key_x = jax.random.split(key)
  cy = jax.random.randint(key_y, (), 0, height)
  cx = jax.random.randint(key_x, (), 0, width)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy - cut_h // 2 + cut_h, 0, height)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx - cut_w // 2 + cut_w, 0, width)
  rows, cols = jnp.arange(height), jnp.arange(width)
  inside = (((rows >= y0) & (rows < y1))[:, None]) & (((cols >= x0) & (cols < x1))[None, :])
  return inside, 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)


def mix_batch(key: jax.Array, images: jax.Array, *, mixup_alpha: float = 0.0,
              cutmix_alpha: float = 0.0, mix_prob: float = 1.0, switch_prob: float = 0.5):
  """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) of a [N, H, W, C] batch with a
  random permutation of itself; lam ~ Beta(alpha, alpha), one per batch.

  The batch is mixed at all with probability `mix_prob` (else lam = 1); with both alphas > 0,
  CutMix is chosen with probability `switch_prob`, else mixup (timm's rule). Returns
  (images, lam, perm): example i's target is lam * y[i] + (1 - lam) * y[perm[i]].
  """
  keys = dict(zip(('apply', 'switch', 'perm', 'mixup', 'cutmix', 'box'),
                  jax.random.split(key, 6)))
  n, height, width = images.shape[:3]
  perm = jax.random.permutation(keys['perm'], n)
  partner = images[perm]
  apply = jax.random.uniform(keys['apply']) < mix_prob
  mixed = []
  if mixup_alpha > 0:
    lam = jnp.where(apply, jax.random.beta(keys['mixup'], mixup_alpha, mixup_alpha), 1.0)
    mixed.append((lam * images + (1.0 - lam) * partner, lam))
  if cutmix_alpha > 0:
    lam = jnp.where(apply, jax.random.beta(keys['cutmix'], cutmix_alpha, cutmix_alpha), 1.0)
    inside, lam = cutmix_box(keys['box'], lam, height, width)
    mixed.append((jnp.where(inside[None, :, :, None], partner, images), lam))
  if not mixed:
    raise ValueError('mix_batch needs mixup_alpha > 0 or cutmix_alpha > 0')
  if len(mixed) == 1:
    return (*mixed[0], perm)
  (mixup_images, mixup_lam), (cutmix_images, cutmix_lam) = mixed
  use_cutmix = jax.random.uniform(keys['switch']) < switch_prob
  return (jnp.where(use_cutmix, cutmix_images, mixup_images),
          jnp.where(use_cutmix, cutmix_lam, mixup_lam), perm)


def soft_targets(labels: jax.Array, num_classes: int, label_smoothing: float = 0.0,
                 partner_labels: jax.Array | None = None, lam=1.0) -> jax.Array:
  """Smoothed one-hot targets (Szegedy et al. 2016, Sec. 7), mixed as lam * y + (1 - lam) *
  y_partner when `partner_labels` are given; every row sums to 1."""
  target = lambda y: optax.smooth_labels(jax.nn.one_hot(y, num_classes), label_smoothing)
  if partner_labels is None:
    return target(labels)
  return lam * target(labels) + (1.0 - lam) * target(partner_labels)


def train_step(state: TrainState, batch: dict, key: jax.Array, pre: dict | None = None, *,
               dtype, mean=None, std=None, label_smoothing: float = 0.0,
               skip_nonfinite: bool = False, aux_weight: float = 0.0, grad_accum_steps: int = 1,
               ema_decay: float = 0.0, loss_weight_decay: float = 0.0, mixup_alpha: float = 0.0,
               cutmix_alpha: float = 0.0, mix_prob: float = 1.0, mix_switch_prob: float = 0.5,
               frozen_modules: frozenset[str] = frozenset()):
  """One optimizer update on this device's slice of the global batch (call it under
  DataParallel.map).

  - `pre`: the run's fitted preprocessing (data.preprocess: `Preprocessing.arrays()`), an
    argument of the step so a whitening matrix is not baked into the program; without it,
    (x - mean) / std with the static `mean` and `std`.
  - A model that returns (logits, *aux_logits) in training (GoogLeNet, Inception-v3 with
    aux_logits=True) adds `aux_weight` times each auxiliary classifier's loss.
  - `mixup_alpha`, `cutmix_alpha`: the slice is mixed with a permutation of itself (mix_batch),
    the targets likewise; train accuracy counts the dominant label (lam >= 0.5: the example's own).
  - `grad_accum_steps` = k: the slice is split into k micro-batches, run one after another with
    lax.scan; their gradients are averaged and applied in ONE update (the update of the whole
    batch with the activation memory of a k-th). BatchNorm normalises each micro-batch with its
    own statistics and updates its running averages k times, once per micro-batch.
  - `loss_weight_decay` > 0 (decay_style 'loss'): 0.5 * wd * ||w||^2 joins the loss; the metric
    `decay_loss` reports it, `loss` stays the data loss.
  - `ema_decay` > 0: after the update, ema = decay * ema + (1 - decay) * new, for the params and
    the BN statistics.
  - `frozen_modules` (optim.frozen_modules): their BatchNorm layers run on, and keep, their
    running statistics (optim.frozen_batch_norm).
  """
  # Randomness tree: run key -> step -> device -> purpose (GUIDE: fold_in(root, step)).
  key = jax.random.fold_in(jax.random.fold_in(key, state.step), lax.axis_index(AXIS))
  purposes = (*RNG_STREAMS, 'mixup')
  keys = dict(zip(purposes, jax.random.split(key, len(purposes))))
  rngs = {name: keys[name] for name in RNG_STREAMS}
  images = preprocess_images(batch['image'], pre, mean, std, jnp.float32)
  labels = batch['label']
  partner, lam = None, 1.0
  if mixup_alpha > 0 or cutmix_alpha > 0:
    images, lam, perm = mix_batch(keys['mixup'], images, mixup_alpha=mixup_alpha,
                                  cutmix_alpha=cutmix_alpha, mix_prob=mix_prob,
                                  switch_prob=mix_switch_prob)
    partner = labels[perm]
  images = images.astype(dtype)

  def loss_fn(params, batch_stats, x, y, y_partner, rngs):
    with optim.frozen_batch_norm(frozen_modules):
      outputs, updates = state.apply_fn(
          {'params': params, 'batch_stats': batch_stats}, x, train=True,
          mutable=['batch_stats'], rngs=rngs)
    logits, *aux = outputs if isinstance(outputs, tuple) else (outputs,)
    targets = soft_targets(y, logits.shape[-1], label_smoothing, y_partner, lam)
    loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()
    for extra in aux:
      loss += aux_weight * optax.softmax_cross_entropy(extra.astype(jnp.float32), targets).mean()
    dominant = y if y_partner is None else jnp.where(lam >= 0.5, y, y_partner)
    metrics = {'loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == dominant)}
    if loss_weight_decay:
      metrics['decay_loss'] = optim.weight_decay_loss(params, loss_weight_decay)
      loss = loss + metrics['decay_loss']
    return loss, (updates.get('batch_stats', {}), metrics)

  grad_fn = jax.grad(loss_fn, has_aux=True)
  if grad_accum_steps == 1:
    grads, (batch_stats, metrics) = grad_fn(state.params, state.batch_stats, images, labels,
                                            partner, rngs)
  else:
    micro = lambda x: x.reshape(grad_accum_steps, x.shape[0] // grad_accum_steps, *x.shape[1:])

    def accumulate(carry, inputs):
      grads_sum, batch_stats = carry
      i, x, y, y_partner = inputs
      micro_rngs = {name: jax.random.fold_in(r, i) for name, r in rngs.items()}
      grads, (batch_stats, metrics) = grad_fn(state.params, batch_stats, x, y, y_partner,
                                              micro_rngs)
      return (jax.tree.map(jnp.add, grads_sum, grads), batch_stats), metrics

    inputs = (jnp.arange(grad_accum_steps), micro(images), micro(labels),
              None if partner is None else micro(partner))
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grads, batch_stats), metrics = lax.scan(accumulate, (zeros, state.batch_stats), inputs)
    grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
    metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
  grads = cross_replica_mean(grads)
  # The BN running averages are linear in each step's statistics, so averaging them every step
  # equals averaging the per-device averages before eval/checkpoint: the state stays replicated.
  batch_stats = cross_replica_mean(batch_stats)
  metrics = cross_replica_mean(metrics)
  metrics['grad_norm'] = optax.tree.norm(grads)
  finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if ema_decay:
    new = {'params': new_state.params, 'batch_stats': new_state.batch_stats}
    new_state = new_state.replace(ema=jax.tree.map(
        lambda e, w: ema_decay * e + (1.0 - ema_decay) * w, state.ema, new))
  if skip_nonfinite:  # Keep the old weights, still advance the step (and so the data).
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    new_state = new_state.replace(step=state.step + 1,
                                  skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32))
  metrics['skipped_steps'] = new_state.skipped_steps
  return new_state, metrics


def eval_step(state: TrainState, batch: dict, key: jax.Array | None = None,
              pre: dict | None = None, *, dtype, mean=None, std=None, ema: bool = False):
  """Sums of loss, correct predictions and real examples over the global batch (mask-aware);
  with `ema`, also `ema_loss` and `ema_correct` of the averaged weights.

  `key` is the 'fmp' stream's fixed key (fractional max pooling draws its regions from it even
  in evaluation), the same for every batch and device: evaluation is deterministic.
  """
  images = preprocess_images(batch['image'], pre, mean, std, dtype)
  rngs = {} if key is None else {'fmp': key}
  mask = batch['mask']

  def sums(variables, prefix: str) -> dict:
    logits = state.apply_fn(variables, images, train=False, rngs=rngs).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    correct = jnp.argmax(logits, -1) == batch['label']
    return {f'{prefix}loss': jnp.sum(loss * mask), f'{prefix}correct': jnp.sum(correct * mask)}

  totals = {**sums({'params': state.params, 'batch_stats': state.batch_stats}, ''),
            'examples': jnp.sum(mask)}
  if ema:
    totals.update(sums(state.ema, 'ema_'))
  return lax.psum(totals, AXIS)


# ---------------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class Experiment:
  """Everything a run builds from its config before the first step."""
  config: Any
  parallel: DataParallel
  model: Any
  train_split: data.Split | None
  eval_split: data.Split
  steps_per_epoch: int
  total_steps: int
  p_train_step: Callable
  p_eval_step: Callable
  state: Any  # In the parallel layout.
  eval_key: Any = None  # The fixed 'fmp' key of every evaluation (eval_step).
  preprocessing: Any = None  # data.Preprocessing, fitted on the training split or loaded.
  pre_arrays: Any = None  # Its arrays, on the devices: the 'pre' argument of both steps.
  train_step_fn: Callable | None = None  # The per-device step p_train_step maps (on_device's too).


def train_step_options(config, model) -> dict:
  """The keyword arguments of `train_step` that come from the config (and the model)."""
  return dict(label_smoothing=config.label_smoothing, skip_nonfinite=config.skip_nonfinite,
              aux_weight=getattr(model, 'AUX_WEIGHT', 0.0),
              grad_accum_steps=config.grad_accum_steps, ema_decay=config.ema_decay,
              loss_weight_decay=optim.loss_weight_decay(config), mixup_alpha=config.mixup_alpha,
              cutmix_alpha=config.cutmix_alpha, mix_prob=config.mix_prob,
              mix_switch_prob=config.mix_switch_prob,
              frozen_modules=optim.frozen_modules(config))


def setup(config, *, train: bool = True, workdir: str | None = None) -> Experiment:
  """Builds the run of `config`. With `workdir`, the preprocessing is loaded from (or fitted
  and saved to) WORKDIR/preprocess.npz, so evaluation and restarts use the same transform."""
  check_config(config)
  parallel = DataParallel(config.parallelism)
  d = config.dataset
  eval_split = data.load_split(d, d.eval_split)
  train_split = data.load_split(d, 'train') if train else None
  data.pipeline.per_process_batch_size(config.batch_size)
  num_train = len(train_split) if train else config.batch_size
  steps_per_epoch = max(1, num_train // config.batch_size)
  total_steps = optim.total_steps(config, steps_per_epoch)
  per_device = config.batch_size // len(parallel.devices)
  if per_device % config.grad_accum_steps:
    raise ValueError(f'config.grad_accum_steps={config.grad_accum_steps} must divide the batch of '
                     f'each device, {per_device} (config.batch_size={config.batch_size} over '
                     f'{len(parallel.devices)} devices)')
  model = build_model(config, eval_split.num_classes)
  tx = optim.create_optimizer(config, steps_per_epoch)
  channels = eval_split.records[0]['image'].shape[-1]
  image_shape = (d.image_size, d.image_size, channels)
  if len(d.mean) not in (1, channels):
    raise ValueError(f'config.dataset.mean has {len(d.mean)} values; the images have {channels} '
                     'channels (give 1 or that many)')
  root = jax.random.PRNGKey(config.seed)
  init = functools.partial(create_train_state, model, tx, image_shape=image_shape,
                           ema=config.ema_decay > 0)
  try:  # Shapes only: a model that cannot take this input fails here, before compiling.
    jax.eval_shape(init, root)
  except Exception as e:
    raise ValueError(
        f'model {config.model.name} cannot take {image_shape} images (config.dataset.image_size='
        f'{d.image_size}; it was registered for {model_spec(config.model.name)["input_size"]}): '
        f'{type(e).__name__}: {e}') from e
  if parallel.mode == 'pmap':
    state = parallel.replicate(jax.device_get(jax.jit(init)(jax.random.fold_in(root, 0))))
  else:
    replicated = NamedSharding(parallel.mesh, PartitionSpec())
    state = jax.jit(init, out_shardings=replicated)(jax.random.fold_in(root, 0))
  if config.init_from:  # On the host, then laid out again like the fresh state.
    host_state = jax.device_get(parallel.unreplicate(state))
    state = parallel.replicate(with_pretrained(host_state, config.init_from))
  dtype = model.dtype
  norm = dict(dtype=dtype)
  if workdir is not None:
    preprocessing = data.preprocess.load_or_fit(os.path.join(workdir, 'preprocess.npz'),
                                                train_split, d)
  elif train_split is None and data.preprocess.needs_fit(d):
    raise ValueError(f"config.dataset.preprocess '{d.preprocess}' (or augment '{d.augment}') "
                     'needs the training split or a workdir holding preprocess.npz')
  else:
    preprocessing = data.preprocess.fit(train_split, d)
  pre_arrays = jax.tree.map(np.asarray, preprocessing.arrays())
  if parallel.mode == 'shard_map':  # Placed once; pmap broadcasts a 'const' on every call.
    pre_arrays = parallel.replicate(pre_arrays)
  step_fn = functools.partial(train_step, **train_step_options(config, model), **norm)
  p_train = parallel.map(step_fn, ('state', 'batch', 'const', 'const'), donate_state=True)
  p_eval = parallel.map(functools.partial(eval_step, ema=config.ema_decay > 0, **norm),
                        ('state', 'batch', 'const', 'const'))
  return Experiment(config, parallel, model, train_split, eval_split, steps_per_epoch,
                    total_steps, p_train, p_eval, state, eval_key=jax.random.fold_in(root, 2),
                    preprocessing=preprocessing, pre_arrays=pre_arrays, train_step_fn=step_fn)


def with_pretrained(state: TrainState, path: str) -> TrainState:
  """`config.init_from`: params and BN statistics from a converted or trained checkpoint
  (`state` is one host copy; the optimizer state starts afresh).

  Leaves whose shape differs only in the last axis (the classifier, when `num_classes` differs)
  keep their fresh initialisation; any other difference is an error naming the leaf.
  """
  from resnet_jax.convert import load_variables
  loaded = load_variables(path)
  fresh_head = []

  def pick(key_path, fresh, saved):
    name = jax.tree_util.keystr(key_path)
    if saved is None:
      raise ValueError(f'config.init_from {path}: it has no {name}')
    if saved.shape == fresh.shape:
      return np.asarray(saved, fresh.dtype)
    if saved.shape[:-1] == fresh.shape[:-1]:
      fresh_head.append(name)
      return fresh
    raise ValueError(f'config.init_from {path}: {name} has shape {saved.shape} there and '
                     f'{fresh.shape} here')

  def merge(fresh_tree, saved_tree):
    saved_flat = {jax.tree_util.keystr(k): v
                  for k, v in jax.tree_util.tree_flatten_with_path(saved_tree)[0]}
    return jax.tree_util.tree_map_with_path(
        lambda k, f: pick(k, f, saved_flat.get(jax.tree_util.keystr(k))), fresh_tree)

  params = merge(state.params, loaded['params'])
  batch_stats = merge(state.batch_stats, loaded['batch_stats'])
  if fresh_head:
    logging.info('init_from %s: a new classifier (%s), the rest loaded.', path,
                 ', '.join(fresh_head))
  ema = {'params': params, 'batch_stats': batch_stats} if state.ema else state.ema
  return state.replace(params=params, batch_stats=batch_stats, ema=ema,
                       opt_state=state.tx.init(params))


def evaluate(exp: Experiment, state=None) -> dict:
  """Accuracy and mean loss over every example of the eval split, exactly once; with EMA on,
  `ema_accuracy` and `ema_loss` of the averaged weights too."""
  state = exp.state if state is None else state
  d = exp.config.dataset
  totals = None
  for batch in data.eval_batches(exp.eval_split, global_batch_size=exp.config.batch_size,
                                 augment=d.augment, image_size=d.image_size,
                                 num_workers=d.num_workers):
    sums = exp.p_eval_step(state, exp.parallel.shard_batch(batch), exp.eval_key, exp.pre_arrays)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(exp.parallel.unreplicate(totals))
  n = float(totals['examples'])
  results = {'split': d.eval_split, 'accuracy': float(totals['correct']) / n,
             'loss': float(totals['loss']) / n, 'examples': int(n)}
  if 'ema_correct' in totals:
    results.update(ema_accuracy=float(totals['ema_correct']) / n,
                   ema_loss=float(totals['ema_loss']) / n)
  return results


def describe_ema(results: dict) -> str:
  """' EMA accuracy A loss L' for a log line, when the results have them."""
  if 'ema_accuracy' not in results:
    return ''
  return f' EMA accuracy {results["ema_accuracy"]:.4f} loss {results["ema_loss"]:.4f}'


def restore_checkpoint(checkpointer: Checkpointer, state, data_iterator=None):
  """checkpointer.restore, saying so when the checkpoint and config differ in EMA weights."""
  try:
    return checkpointer.restore(state, data_iterator)
  except ValueError as e:
    if "['ema']" not in str(e):
      raise
    raise ValueError(f'{e} (these are the EMA weights: set --config.ema_decay as in the run that '
                     'wrote the checkpoint)') from e


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch whenever
  it is installed, only to accept torch tensors, which cost the main job 350-400 MiB of resident
  memory and a second (docs/benchmarks.md). Our scalars are Python floats."""
  if 'tensorboardX' in sys.modules or 'torch' in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules['torch'] = None  # `import torch` raises ImportError: tensorboardX's fallback
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules['torch']
  return SummaryWriter


class MetricWriter:
  """TensorBoard event files (tensorboardX: no TensorFlow needed), written by process 0 only,
  and, for a local workdir, the same scalars as `metrics.jsonl` lines ({"step": ..., name: value})
  that scripts read without TensorBoard. A resumed run appends: the last line of a step wins."""

  def __init__(self, workdir: str):
    self.writer = self.lines = None
    if jax.process_index() == 0:
      SummaryWriter = _summary_writer_class()
      self.writer = SummaryWriter(logdir=workdir)
      if '://' not in workdir:  # Buckets cannot be appended to; TensorBoard has it all there.
        self.lines = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if self.writer:
      for name, value in scalars.items():
        self.writer.add_scalar(name, value, step)
      self.writer.flush()
    if self.lines:
      self.lines.write(json.dumps({'step': step, **scalars}) + '\n')
      self.lines.flush()

  def close(self) -> None:
    if self.writer:
      self.writer.close()
    if self.lines:
      self.lines.close()


def read_metrics(workdir: str) -> dict[int, dict[str, float]]:
  """`metrics.jsonl` as {step: scalars}, a step written twice (resumed runs) keeping the last."""
  steps: dict[int, dict[str, float]] = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      record = json.loads(line)
      steps.setdefault(record.pop('step'), {}).update(record)
  return dict(sorted(steps.items()))


def write_results(workdir: str, results: dict) -> None:
  if jax.process_index() == 0:
    (epath.Path(workdir) / 'results.json').write_text(json.dumps(results, indent=2))


def _format_eta(seconds: float) -> str:
  seconds = int(max(0, seconds))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class Preemption:
  """Notices SIGTERM (a preemption notice, `kill`, a scheduler's stop) between steps.

  One process: our own handler sets a flag. Several: JAX's preemption service (started by
  jax.distributed.initialize) agrees on one step at which every process stops.
  """

  def __init__(self):
    self.requested = False
    self.multihost = jax.process_count() > 1
    if not self.multihost and threading.current_thread() is threading.main_thread():
      self.previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.requested = True

  def reached(self, step: int) -> bool:
    if self.multihost:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def close(self) -> None:
    if not self.multihost and hasattr(self, 'previous'):
      signal.signal(signal.SIGTERM, self.previous)


def check_finite(step_metrics: list[tuple[int, dict]], skip_nonfinite: bool) -> None:
  """Stops at the first step whose loss or gradient norm is NaN or Inf, naming both."""
  if skip_nonfinite:
    return
  for step, metrics in step_metrics:
    for name in ('loss', 'grad_norm'):
      if not np.isfinite(metrics[name]):
        raise FloatingPointError(
            f'{name} is {metrics[name]} at step {step}; stopped before it reached a checkpoint '
            '(the last good one is kept). Try a lower config.schedule.base_lr, or set '
            'config.skip_nonfinite=true to drop such updates and count them.')


def train_loader(exp: Experiment):
  """The run's endless, resumable stream of training batches (data.make_train_loader)."""
  c, d = exp.config, exp.config.dataset
  return data.make_train_loader(exp.train_split, global_batch_size=c.batch_size, seed=c.seed,
                                augment=d.augment, image_size=d.image_size,
                                num_workers=d.num_workers, dataset_config=d,
                                preprocessing=exp.preprocessing)


def device_data(exp: Experiment, max_steps: int) -> on_device.DeviceData:
  """The run's training split on the devices, shuffled and augmented there (data.on_device),
  up to `max_steps` steps per call."""
  c, d = exp.config, exp.config.dataset
  image_shape = (d.image_size, d.image_size, exp.train_split.records[0]['image'].shape[-1])
  augment = on_device.DeviceAugment(d.augment, data.augment.AugmentOptions.from_config(d),
                                    exp.preprocessing.lighting,
                                    exp.preprocessing.zero_image(image_shape))
  # Keys of the root: 0 initialisation, 1 training steps, 2 evaluation, 3 data order.
  key = jax.random.fold_in(jax.random.PRNGKey(c.seed), 3)
  return on_device.DeviceData(exp.parallel, exp.train_step_fn,
                              on_device.load_arrays(exp.train_split, d), augment, key,
                              batch_size=c.batch_size, steps_per_epoch=exp.steps_per_epoch,
                              max_steps=max_steps)


def split_by_step(steps: range, metrics: dict) -> list[tuple[int, dict]]:
  """(step, metrics) for each step of one call: a step's scalars, or a chunk's stacked metrics."""
  if np.ndim(metrics['loss']) == 0:
    return [(steps[0], metrics)]
  return [(s, jax.tree.map(lambda x, i=i: x[i], metrics)) for i, s in enumerate(steps)]


def train_and_evaluate(config, workdir: str, *, stop_at_step: int | None = None) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

  Evaluates on `config.dataset.eval_split` every `eval_every_epochs` and at the end, saves a
  checkpoint every `checkpoint_every_steps`, at every evaluation and at the end, and writes
  `results.json`. On SIGTERM, or at `stop_at_step`, it saves a checkpoint and returns early
  (`{'step': ..., 'preempted': True}`); the next call resumes exactly there.

  With the split on the devices (`config.dataset.on_device`), one call runs several steps (up to
  the next log, eval or checkpoint step; a SIGTERM is noticed at the end of a call), and the
  checkpoints hold no data iterator: the data order is a function of (seed, step).
  """
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # Local or a bucket (gs://...).
  exp = setup(config, workdir=workdir)
  eval_every = max(1, int(round(config.eval_every_epochs * exp.steps_per_epoch)))
  steps_per_call = on_device.resolve_steps_per_call(config, eval_every,
                                                    exp.parallel.devices[0].platform)
  use_device, why = on_device.choose(config.dataset, exp.train_split, exp.parallel.local_devices)
  feed = device_data(exp, steps_per_call) if use_device else None
  batches = None if use_device else iter(train_loader(exp))
  checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints,
                              fallback=config.restore_fallback)
  state, start = exp.state, 0
  if checkpointer.latest_step() is not None:
    restored, start = restore_checkpoint(checkpointer, exp.parallel.unreplicate(state), batches)
    state = exp.parallel.replicate(restored)
    logging.info('Resumed from %s at step %d.', checkpointer.manager.directory, start)
  writer = MetricWriter(workdir)
  preemption = Preemption()
  train_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
  schedule = optim.learning_rate_schedule(config, exp.steps_per_epoch)
  end = exp.total_steps if stop_at_step is None else min(stop_at_step, exp.total_steps)
  logging.info('Training %s on %s: %d examples, %d steps of %d (%d per epoch) on %d devices (%s).',
               config.model.name, exp.train_split.name, len(exp.train_split), exp.total_steps,
               config.batch_size, exp.steps_per_epoch, jax.device_count(), config.parallelism)
  boundaries = (config.log_every_steps, config.checkpoint_every_steps, eval_every)
  path = (f'on device, up to {steps_per_call} steps per call' if use_device
          else 'host pipeline (Grain), one step per call')
  logging.info('Training data: %s, because %s.', path, why)

  pending, window, last_eval, step = [], [], None, start
  timer_start, timer_step = time.perf_counter(), start
  try:
    while step < end:
      if feed is None:  # One batch from the host pipeline, one step.
        batch = exp.parallel.shard_batch(next(batches))
        state, metrics = exp.p_train_step(state, batch, train_key, exp.pre_arrays)
        steps = 1
      else:  # Several steps in one call, never past the next log, eval or checkpoint step.
        boundary = min(end, *(step // every * every + every for every in boundaries))
        steps = min(steps_per_call, boundary - step)
        state, metrics = feed.train(state, steps, train_key, exp.pre_arrays)
      pending.append((range(step + 1, step + steps + 1), metrics))
      step += steps
      preempted = preemption.reached(step)
      log_now = step % config.log_every_steps == 0 or step == end
      eval_now = step % eval_every == 0 or step == exp.total_steps
      save_now = step % config.checkpoint_every_steps == 0 or step == end or eval_now or preempted
      if not (log_now or eval_now or save_now):
        continue
      # Fetch this interval's metrics (one host sync), and refuse to go on with a bad step.
      fetched = jax.device_get(exp.parallel.unreplicate([m for _, m in pending]))
      step_metrics = [pair for (call_steps, _), m in zip(pending, fetched)
                      for pair in split_by_step(call_steps, m)]
      check_finite(step_metrics, config.skip_nonfinite)
      window += [m for _, m in step_metrics]
      pending = []
      if log_now:
        means = {k: float(np.mean([m[k] for m in window])) for k in ('loss', 'accuracy')}
        skipped = int(window[-1]['skipped_steps'])
        per_step = (time.perf_counter() - timer_start) / (step - timer_step)
        lr = float(schedule(step - 1))
        logging.info('epoch %.2f/%g step %d/%d loss %.4f accuracy %.4f lr %.4g %.0f img/s ETA %s%s',
                     step / exp.steps_per_epoch, config.num_epochs, step, exp.total_steps,
                     means['loss'], means['accuracy'], lr, config.batch_size / per_step,
                     _format_eta(per_step * (exp.total_steps - step)),
                     f' skipped {skipped} non-finite steps' if skipped else '')
        scalars = {'train/loss': means['loss'], 'train/accuracy': means['accuracy'],
                   'train/learning_rate': lr,
                   'train/grad_norm': float(np.mean([m['grad_norm'] for m in window])),
                   'train/skipped_steps': skipped,
                   'train/images_per_second': config.batch_size / per_step}
        if 'decay_loss' in window[-1]:  # decay_style 'loss'.
          scalars['train/decay_loss'] = float(np.mean([m['decay_loss'] for m in window]))
        writer.write(step, scalars)
        window, timer_start, timer_step = [], time.perf_counter(), step
      if eval_now:
        last_eval = {**evaluate(exp, state), 'step': step}
        logging.info('eval %s at step %d: accuracy %.4f loss %.4f (%d examples)%s',
                     last_eval['split'], step, last_eval['accuracy'], last_eval['loss'],
                     last_eval['examples'], describe_ema(last_eval))
        writer.write(step, {f'eval/{k}': last_eval[k]
                            for k in ('accuracy', 'loss', 'ema_accuracy', 'ema_loss')
                            if k in last_eval})
        timer_start, timer_step = time.perf_counter(), step
      if save_now:
        # Every evaluation is checkpointed with its accuracy, so the best one can be kept.
        checkpointer.save(step, exp.parallel.unreplicate(state), batches,
                          metrics={'accuracy': last_eval['accuracy']} if eval_now else None)
      if preempted:
        logging.warning('SIGTERM: saved a checkpoint at step %d; a restart resumes there.', step)
        end = step
        break
    checkpointer.wait()
  finally:
    preemption.close()
    writer.close()
    checkpointer.close()
  exp.state = state
  if end < exp.total_steps:
    return {'step': end, 'preempted': True}
  if last_eval is None or last_eval['step'] != end:  # Resumed after the final step: evaluate.
    last_eval = {**evaluate(exp, state), 'step': end}
  write_results(workdir, last_eval)
  logging.info('Final %s accuracy %.4f (loss %.4f, %d examples, step %d)%s -> %s',
               last_eval['split'], last_eval['accuracy'], last_eval['loss'],
               last_eval['examples'], end, describe_ema(last_eval),
               os.path.join(workdir, 'results.json'))
  return last_eval


def evaluate_checkpoint(config, workdir: str) -> dict:
  """`--mode=eval`: the latest checkpoint of `workdir` on `config.dataset.eval_split`."""
  exp = setup(config, train=False, workdir=workdir)
  checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints,
                              fallback=config.restore_fallback)
  if checkpointer.latest_step() is None:
    raise FileNotFoundError(f'no checkpoint to evaluate in {os.path.join(workdir, "checkpoints")}; '
                            'train first, or pass the --workdir of a finished run')
  state, step = restore_checkpoint(checkpointer, exp.parallel.unreplicate(exp.state))
  checkpointer.close()
  results = {**evaluate(exp, exp.parallel.replicate(state)), 'step': step}
  write_results(workdir, results)
  logging.info('Eval of step %d on %s: accuracy %.4f loss %.4f (%d examples)%s', step,
               results['split'], results['accuracy'], results['loss'], results['examples'],
               describe_ema(results))
  return results
