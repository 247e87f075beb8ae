"""The pure per-device steps: `train_step` (one optimizer update: mixing, soft targets, auxiliary
classifiers, gradient accumulation, decay in the loss, EMA, the non-finite skip) and `eval_step`
(sums of loss and correct predictions); the `TrainState` they update.

Written pmap-style: each sees one device's slice of the global batch and averages gradients,
BatchNorm statistics and metrics over `parallel.AXIS`; `parallel.DataParallel.map` maps them.
Every option is an explicit argument: nothing here reads a config.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax import lax

from resnet_jax import optim
from resnet_jax.data import preprocess
from resnet_jax.models import initial_variables
from resnet_jax.models.layers import with_hidden_bias
from resnet_jax.parallel import AXIS, cross_replica_mean

# The named RNG streams a model may draw from in training: dropout and DropConnect, stochastic
# depth, fractional max pooling (evaluation passes a fixed 'fmp' key).
RNG_STREAMS = ('dropout', 'drop_path', 'fmp')


class TrainState(train_state.TrainState):
  batch_stats: Any
  skipped_steps: Any = 0  # Updates dropped for a non-finite loss or gradient (skip_nonfinite).
  # config.ema_decay > 0: {'params', 'batch_stats'} averaged over the steps (Polyak averaging),
  # checkpointed with the rest and evaluated beside the raw weights; {} when off.
  ema: Any = None


def create_train_state(model, tx: optax.GradientTransformation, rng: jax.Array,
                       image_shape: tuple[int, ...], ema: bool = False,
                       hidden_bias: float | None = None, classifier: str = '') -> TrainState:
  """A fresh state; with `ema`, the weight averages start at the initial weights; with
  `hidden_bias`, every convolution's and dense layer's bias but the `classifier`'s starts at that
  value (layers.with_hidden_bias)."""
  variables = initial_variables(model, rng, image_shape)
  if hidden_bias is not None:
    variables['params'] = with_hidden_bias(variables['params'], hidden_bias, classifier)
  state = TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                            batch_stats=variables['batch_stats'],
                            skipped_steps=jnp.zeros((), jnp.int32),
                            ema=jax.tree.map(jnp.copy, variables) if ema else {})
  # A strong int32 step, as a checkpoint restores it: a weakly typed 0 would make a resumed run's
  # train step another program, a miss in the compilation cache.
  return state.replace(step=jnp.zeros((), jnp.int32))


def normalize(images: jax.Array, mean, std, dtype) -> jax.Array:
  """uint8 images -> (x - mean) / std per channel, in the computation dtype, on device."""
  return preprocess.apply({'mean': mean, 'std': std}, images, dtype)


def preprocess_images(images: jax.Array, pre: dict | None, mean, std, dtype) -> jax.Array:
  """The fitted preprocessing `pre` when given (preprocess.apply), else mean/std."""
  return preprocess.apply({'mean': mean, 'std': std} if pre is None else pre, images, dtype)

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
               ema_decay: float = 0.0, loss_weight_decay: float = 0.0, l1: float = 0.0,
               decay_norm_and_bias: bool = False, mixup_alpha: float = 0.0,
               cutmix_alpha: float = 0.0, mix_prob: float = 1.0, mix_switch_prob: float = 0.5,
               frozen_modules: frozenset[str] = frozenset(), update_ratios: bool = False):
  """One optimizer update on this device's slice of the global batch (call it under
  parallel.DataParallel.map).

  - `pre`: the run's fitted preprocessing (data.preprocess: `Preprocessing.arrays()`), an
    argument of the step so a whitening matrix is not baked into the program; without it,
    (x - mean) / std with the static `mean` and `std`.
  - A model that returns (logits, *aux_logits) in training (GoogLeNet, Inception-v3 with
    aux_logits=True) adds `aux_weight` times each auxiliary classifier's loss, computed against
    the same (smoothed, mixed) targets. `loss` is then that sum; the metric `aux_loss` reports
    the auxiliary losses' unweighted sum; accuracy counts the main logits only.
  - `mixup_alpha`, `cutmix_alpha`: the slice is mixed with a permutation of itself (mix_batch),
    the targets likewise; train accuracy counts the dominant label (lam >= 0.5: the example's own).
  - `grad_accum_steps` = k: the slice is split into k micro-batches, run one after another with
    lax.scan; their gradients are averaged and applied in ONE update (the update of the whole
    batch with the activation memory of a k-th). BatchNorm normalises each micro-batch with its
    own statistics and updates its running averages k times, once per micro-batch.
  - `loss_weight_decay` > 0 (decay_style 'loss'): 0.5 * wd * ||w||^2 joins the loss; the metric
    `decay_loss` reports it, `loss` stays the data loss. The sum runs over the conv/dense kernels,
    and also over BN scales/offsets and biases when `decay_norm_and_bias` (optim.decay_mask).
  - `l1` > 0: l1 * |w|_1 over the same weights joins the loss (optim.l1_loss; the metric
    `l1_loss`), whatever the decay style: with weight decay, the elastic net.
  - `ema_decay` > 0: after the update, ema = decay * ema + (1 - decay) * new, for the params and
    the BN statistics.
  - `frozen_modules` (optim.frozen_modules): their BatchNorm layers run on, and keep, their
    running statistics (optim.frozen_batch_norm).
  - `update_ratios`: the metrics also hold each kernel's update-to-weight ratio
    (update_to_weight_ratios); off, the step computes and returns nothing of it.
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
    cross_entropy = lambda z: optax.softmax_cross_entropy(z.astype(jnp.float32), targets).mean()
    loss, metrics = cross_entropy(logits), {}
    if aux:  # Szegedy et al. 2015, Sec. 5: the auxiliary losses join with a weight (0.3 there).
      metrics['aux_loss'] = sum(cross_entropy(z) for z in aux)
      loss = loss + aux_weight * metrics['aux_loss']
    dominant = y if y_partner is None else jnp.where(lam >= 0.5, y, y_partner)
    metrics.update(loss=loss, accuracy=jnp.mean(jnp.argmax(logits, -1) == dominant))
    if loss_weight_decay:
      metrics['decay_loss'] = optim.weight_decay_loss(params, loss_weight_decay,
                                                        decay_norm_and_bias)
      loss = loss + metrics['decay_loss']
    if l1:
      metrics['l1_loss'] = optim.l1_loss(params, l1, decay_norm_and_bias)
      loss = loss + metrics['l1_loss']
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
  if update_ratios:
    metrics.update(update_to_weight_ratios(state.params, new_state.params))
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


def update_to_weight_ratios(old, new) -> dict[str, jax.Array]:
  """{'update_ratio/PATH': ||new - old|| / ||old||} for every conv/dense kernel (PATH its module,
  '/'-joined): the size of one real update (learning rate, momentum and decay included) against
  the weights' (CS231n, "Babysitting": about 1e-3 is healthy). Biases and BatchNorm parameters,
  which may start at zero, are left out."""
  ratios = {}
  for (path, w), w_new in zip(jax.tree_util.tree_flatten_with_path(old)[0],
                              jax.tree_util.tree_leaves(new)):
    if path[-1].key == 'kernel':
      name = '/'.join(k.key for k in path[:-1])
      ratios[f'update_ratio/{name}'] = (optax.tree.norm(w_new - w)
                                        / jnp.maximum(optax.tree.norm(w), 1e-12))
  return ratios


def layer_statistics(variables: dict, images: jax.Array, labels: jax.Array, pre: dict, *,
                     model, classifier: str = '', key: jax.Array | None = None
                     ) -> dict[str, dict[str, jax.Array]]:
  """A look inside the net on one batch (config.babysit.histogram_every), in evaluation mode:

  - 'activations': every module's output ([N, H, W, C] maps and [N, D] vectors; flax's
    capture_intermediates), by module path; the logits are left out.
  - 'dead': per such output, the fraction of its channels that are <= 0 on every example and
    position: after a ReLU (or before one) those channels pass nothing on, "dead ReLUs"
    (CS231n, "Babysitting the learning process"). A channel of an output no ReLU follows (the
    BN before a residual addition) counts too if it never turns positive. Not the
    `classifier`'s (the logits).
  - 'gradients': the mean cross-entropy's gradient of every parameter, by parameter path.
  Call it jitted, with `model` static.
  """
  x = preprocess.apply(pre, images, model.dtype)
  rngs = {} if key is None else {'fmp': key}

  def loss_fn(params):
    logits, state = model.apply({**variables, 'params': params}, x, train=False, rngs=rngs,
                                capture_intermediates=True, mutable=['intermediates'])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return jnp.mean(loss), state['intermediates']

  grads, captured = jax.grad(loss_fn, has_aux=True)(variables['params'])
  activations, dead = {}, {}
  for path, value in jax.tree_util.tree_flatten_with_path(captured)[0]:
    names = [getattr(k, 'key', None) for k in path]
    if names[-2:-1] != ['__call__'] or len(names) < 3 or value.ndim not in (2, 4):
      continue  # The top-level output (logits), sown values, tuples of outputs.
    name = '/'.join(names[:-2])
    activations[name] = value.astype(jnp.float32)
    if name != classifier:
      dead[name] = jnp.mean(jnp.max(value.reshape(-1, value.shape[-1]), axis=0) <= 0)
  gradients = {'/'.join(k.key for k in path): g
               for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
  return {'activations': activations, 'dead': dead, 'gradients': gradients}


def layer_inspector(batch: dict, pre: dict, model, key: jax.Array | None, classifier: str,
                    examples: int = 64):
  """`variables -> layer_statistics` on the real examples of `batch` (at most `examples`),
  jitted: what metrics.Watch calls every config.babysit.histogram_every steps."""
  real = np.asarray(batch['mask']) > 0
  return jax.jit(functools.partial(
      layer_statistics, images=batch['image'][real][:examples],
      labels=batch['label'][real][:examples], pre=pre, model=model, key=key,
      classifier=classifier))


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


def scores(totals: dict, split: str) -> dict:
  """eval_step's sums over a split -> {'split', 'accuracy', 'loss', 'examples'} (and the EMA
  weights' `ema_accuracy`, `ema_loss` when present)."""
  n = np.asarray(totals['examples'], np.float64)
  # One float, or a list of one per member for a vmapped step's stacked totals.
  mean = lambda total: (np.asarray(total) / n).tolist()
  results = {'split': split, 'accuracy': mean(totals['correct']), 'loss': mean(totals['loss']),
             'examples': int(n.reshape(-1)[0])}
  if 'ema_correct' in totals:
    results.update(ema_accuracy=mean(totals['ema_correct']), ema_loss=mean(totals['ema_loss']))
  return results
