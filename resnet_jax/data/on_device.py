"""Small datasets on the accelerators: the whole training split in device memory, shuffled and
augmented there, many steps per host call (one jitted `lax.scan` over the existing train step).

For digits, MNIST and CIFAR the host pipeline (decode, augment in NumPy, copy to the devices
every step) costs more than the model's step; here the split is decoded once, and a host call
runs k steps with no data traffic at all.

Layout: every device holds the whole split (uint8 NHWC, at `config.dataset.image_size`), so a
device gathers any example of any global batch locally, the gather needs no communication, and
the split is placed once. For these sizes (MNIST 61 MB, CIFAR-10 154 MB) the copies are cheap;
`choose` keeps larger splits on the host pipeline.

Order and augmentation are pure functions of (seed, step), as in the host pipeline (not the same
draws: the host's come from Grain's NumPy generators):
- epoch e = step // steps_per_epoch is a permutation of the split from fold_in(key, e); step s
  takes positions [(s % steps_per_epoch) * B, ... + B) of it, and device d the d-th slice of
  those, so 1 and 8 devices train on the same global batches. The last N mod B examples of each
  epoch's order are left out (the host loader runs on into the next epoch's order instead);
- an example's augmentation draws from fold_in(fold_in(key, epoch), index in the split): the
  same for any device count, chunking or restart.
The op definitions match `augment.py` (same names, options, order and semantics); ops that resize
(scale, random_resized_crop) exist only on the host.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from resnet_jax.data import augment as host
from resnet_jax.data.augment import AugmentOptions, EvalPreprocess, parse_augment
from resnet_jax.data.sources import Split, to_iter_dataset
from resnet_jax.parallel import AXIS

ON_DEVICE = ('auto', 'always', 'never')
SUPPORTED_OPS = ('pad_crop', 'affine', 'elastic', 'flip', 'colour_jitter', 'pca_lighting', 'cutout')
# Each op's key is its position here, in the order ops were added (not augment.OPS, their run
# order): a new op appends, and the ops before it keep their draws.
KEYED_OPS = ('scale', 'random_resized_crop', 'pad_crop', 'flip', 'colour_jitter', 'pca_lighting',
             'cutout', 'affine', 'elastic')
# 'auto' keeps the split on the devices when its bytes are at most this share of a device's
# memory: the rest is left to the model, its activations and the optimizer state.
MEMORY_SHARE = 0.25
CPU_BYTES = 4 * 2**30  # The cap where a device reports no memory limit (CPU).
MAX_STEPS_PER_CALL = 128  # steps_per_call=0: a SIGTERM waits at most this many steps.
# steps_per_call=0 on CPU: one step per call, no loop. XLA:CPU runs convolutions inside a loop
# body without its fast kernels (jax-ml/jax#12868): LeNet-5's step measured 1.5-5x slower there.
CPU_STEPS_PER_CALL = 1
LOAD_CHUNK = 1000  # Examples decoded per Grain batch while loading the split.
COLOUR_ADJUSTMENTS = ('brightness', 'contrast', 'saturation')  # colour_jitter's, in this order.


# ---------------------------------------------------------------------------------------------
# The choice, and the split in device memory.


def unsupported_ops(augment: str) -> list[str]:
  """The ops of `config.dataset.augment` that only the host pipeline has (they resize)."""
  return [op for op in parse_augment(augment) if op not in SUPPORTED_OPS]


def split_bytes(split: Split, image_size: int) -> int:
  """Device bytes of one copy of `split` at image_size: uint8 images and int32 labels."""
  channels = split.records[0]['image'].shape[-1]
  return len(split) * (image_size * image_size * channels + 4)


def memory_cap(devices) -> int:
  """MEMORY_SHARE of the smallest device's memory, or CPU_BYTES where none is reported."""
  limits = [(d.memory_stats() or {}).get('bytes_limit') for d in devices]
  if any(limit is None for limit in limits):
    return CPU_BYTES
  return int(MEMORY_SHARE * min(limits))


def check_on_device(dataset_config) -> None:
  """config.dataset.on_device's value, and 'always' with an op only the host pipeline has."""
  d = dataset_config
  if d.on_device not in ON_DEVICE:
    raise ValueError(f"config.dataset.on_device '{d.on_device}' is not one of {ON_DEVICE}")
  unsupported = unsupported_ops(d.augment)
  if d.on_device == 'always' and unsupported:
    raise ValueError(f"config.dataset.on_device='always', but config.dataset.augment "
                     f"'{d.augment}' has {unsupported}, which resize and run only in the host "
                     f'pipeline; on device: {list(SUPPORTED_OPS)} (or set '
                     "config.dataset.on_device='auto' to use the host pipeline for it)")


def choose(dataset_config, split: Split, devices) -> tuple[bool, str]:
  """(whether the split goes on the devices, why) for `config.dataset.on_device`."""
  d = dataset_config
  check_on_device(d)
  if d.on_device == 'never':
    return False, "config.dataset.on_device='never'"
  unsupported = unsupported_ops(d.augment)
  if unsupported:
    return False, f'augment op {unsupported} resizes, which only the host pipeline does'
  need, cap = split_bytes(split, d.image_size), memory_cap(devices)
  size = f'{need / 2**20:.1f} MiB of uint8 images per device, cap {cap / 2**20:.0f} MiB'
  if d.on_device == 'always':
    return True, f"config.dataset.on_device='always' ({size})"
  if need > cap:
    return False, f'the split is too large ({size})'
  return True, f'the split fits ({size}) and every augment op runs on device'


def load_arrays(split: Split, dataset_config) -> dict[str, np.ndarray]:
  """The whole split as {'image': uint8 [N, H, W, C], 'label': int32 [N]}, each image as the host
  pipeline's TrainAugment sees it before the ops run (resized to image_size: the evaluation view
  of the ops we support), read through Grain with config.dataset.num_workers."""
  d = dataset_config
  view = EvalPreprocess(d.augment, d.image_size)
  dataset = grain.MapDataset.source(split.records).map(view).batch(LOAD_CHUNK)
  batches = list(to_iter_dataset(dataset, d.num_workers))
  return {'image': np.concatenate([b['image'] for b in batches]),
          'label': np.concatenate([b['label'] for b in batches]).astype(np.int32)}


# ---------------------------------------------------------------------------------------------
# The ops, in jnp, on one uint8 HWC image, given their draws (augment.py's, for the same draws).


def pad_crop(image: jax.Array, top, left, pad: int) -> jax.Array:
  """augment.pad_and_random_crop: zero-pad every side by `pad`, the window at (top, left)."""
  padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  return lax.dynamic_slice(padded, (top, left, 0), image.shape)


def flip(image: jax.Array, mirrored) -> jax.Array:
  """augment.random_flip: the horizontal mirror where `mirrored`."""
  return jnp.where(mirrored, image[:, ::-1], image)


def grey(image: jax.Array) -> jax.Array:
  """augment.grey: luma of a float HWC image, HW1."""
  if image.shape[2] == 1:
    return image
  luma = jnp.asarray([0.2989, 0.587, 0.114], jnp.float32)  # augment.LUMA.
  return image @ luma[:, None]


def colour_jitter(image: jax.Array, order, factors) -> jax.Array:
  """augment.colour_jitter: the adjustments COLOUR_ADJUSTMENTS[order[0]], [order[1]], ... with
  factors[i] for COLOUR_ADJUSTMENTS[i] (1 leaves it unchanged), rounded once at the end."""
  blends = (lambda x: jnp.zeros((), jnp.float32), lambda x: jnp.mean(grey(x)), grey)
  out = image.astype(jnp.float32)
  for position in range(3):
    which = order[position]
    other = lax.switch(which, [lambda x, b=b: jnp.broadcast_to(b(x), grey(x).shape)
                               for b in blends], out)
    out = jnp.clip(factors[which] * out + (1.0 - factors[which]) * other, 0.0, 255.0)
  return jnp.round(out).astype(jnp.uint8)


def pca_lighting(image: jax.Array, alpha, eigval, eigvec) -> jax.Array:
  """augment.pca_lighting: 255 * eigvec @ (alpha * eigval) added to every pixel, rounded, clipped
  (Krizhevsky et al. 2012, Sec. 4.1)."""
  shift = 255.0 * (jnp.asarray(eigvec, jnp.float32) @ (alpha * jnp.asarray(eigval, jnp.float32)))
  return jnp.clip(jnp.round(image + shift), 0, 255).astype(jnp.uint8)


def cutout(image: jax.Array, cy, cx, size: int, fill) -> jax.Array:
  """augment.cutout: the size x size square centred at (cy, cx), clipped at the borders, set to
  `fill` (HWC uint8; DeVries & Taylor 2017, Sec. 3.2)."""
  height, width = image.shape[:2]
  rows, cols = jnp.arange(height), jnp.arange(width)
  top, left = cy - size // 2, cx - size // 2
  inside = (((rows >= top) & (rows < top + size))[:, None]
            & ((cols >= left) & (cols < left + size))[None, :])
  return jnp.where(inside[:, :, None], jnp.asarray(fill, jnp.uint8), image)


def affine_grid(grid: jax.Array, matrix: jax.Array) -> jax.Array:
  """augment.affine_grid: `grid` ([2, H, W]) mapped about the image centre by `matrix`."""
  centre = jnp.asarray([(grid.shape[1] - 1) / 2, (grid.shape[2] - 1) / 2], jnp.float32)
  centre = centre[:, None, None]
  return jnp.einsum('ij,jhw->ihw', matrix, grid - centre) + centre


def affine_source_matrix(angle, shear, scale_y, scale_x) -> jax.Array:
  """augment.affine_source_matrix, traced: the inverse of rotation @ shear @ scale (degrees)."""
  a, t = jnp.deg2rad(angle), jnp.tan(jnp.deg2rad(shear))
  cos, sin = jnp.cos(a), jnp.sin(a)
  # The inverse of [[cos, -sin], [sin, cos]] @ [[1, 0], [-t, 1]] @ diag(sy, sx), written out.
  forward = jnp.asarray([[cos + t * sin, -sin], [sin - t * cos, cos]]) * jnp.asarray(
      [scale_y, scale_x])[None, :]
  det = forward[0, 0] * forward[1, 1] - forward[0, 1] * forward[1, 0]
  return jnp.asarray([[forward[1, 1], -forward[0, 1]], [-forward[1, 0], forward[0, 0]]]) / det


def gaussian_matrix(size: int, sigma) -> jax.Array:
  """augment.gaussian_matrix with a traced `sigma`: the taps within 3 sigma (at most
  size - 1 away), normalised by the whole truncated kernel's sum."""
  offsets = jnp.arange(size, dtype=jnp.float32)[:, None] - jnp.arange(size, dtype=jnp.float32)
  radius = jnp.ceil(3 * sigma)
  taps = jnp.exp(-0.5 * (offsets / sigma) ** 2) * (jnp.abs(offsets) <= radius)
  # The full kernel's sum, over offsets up to any radius the drawn sigmas can reach.
  span = jnp.arange(-8 * size, 8 * size + 1, dtype=jnp.float32)
  norm = jnp.sum(jnp.exp(-0.5 * (span / sigma) ** 2) * (jnp.abs(span) <= radius))
  return taps / norm


def elastic_displacement(noise: jax.Array, sigma, alpha) -> jax.Array:
  """augment.elastic_displacement: uniform(-1, 1) fields smoothed by a Gaussian, times alpha."""
  g_rows, g_cols = gaussian_matrix(noise.shape[1], sigma), gaussian_matrix(noise.shape[2], sigma)
  return alpha * jnp.einsum('ab,kbc,dc->kad', g_rows, noise, g_cols)


def bilinear_sample(image: jax.Array, grid: jax.Array) -> jax.Array:
  """augment.bilinear_sample: float `image` read at `grid`'s points, zero outside."""
  height, width = image.shape[:2]
  image = image.astype(jnp.float32)
  top, left = jnp.floor(grid[0]), jnp.floor(grid[1])
  dy, dx = (grid[0] - top)[..., None], (grid[1] - left)[..., None]
  top, left = top.astype(jnp.int32), left.astype(jnp.int32)

  def pixel(r, c):
    inside = ((r >= 0) & (r < height) & (c >= 0) & (c < width))[..., None]
    return jnp.where(inside, image[jnp.clip(r, 0, height - 1), jnp.clip(c, 0, width - 1)], 0.0)
  return ((1 - dy) * ((1 - dx) * pixel(top, left) + dx * pixel(top, left + 1))
          + dy * ((1 - dx) * pixel(top + 1, left) + dx * pixel(top + 1, left + 1)))


def warp(image: jax.Array, key: jax.Array, o: AugmentOptions, *, affine: bool,
         elastic: bool) -> jax.Array:
  """augment.warp (the same distributions; draws from `key`): affine and / or elastic in one
  grid, one bilinear resampling, rounded back to uint8."""
  height, width = image.shape[:2]
  grid = jnp.asarray(host.identity_grid(height, width))
  affine_key, elastic_key = jax.random.split(key)
  if affine:
    k = jax.random.split(affine_key, 3)
    angle, shear = jax.random.uniform(k[0], (2,), minval=-1.0, maxval=1.0) * jnp.asarray(
        [o.affine_angle, o.affine_shear])
    scale_y = jax.random.uniform(k[1], (), minval=o.affine_scale_y[0], maxval=o.affine_scale_y[1])
    scale_x = jax.random.uniform(k[2], (), minval=o.affine_scale_x[0], maxval=o.affine_scale_x[1])
    grid = affine_grid(grid, affine_source_matrix(angle, shear, scale_y, scale_x))
  if elastic:
    k = jax.random.split(elastic_key, 3)
    sigma = jax.random.uniform(k[0], (), minval=o.elastic_sigma[0], maxval=o.elastic_sigma[1])
    alpha = jax.random.uniform(k[1], (), minval=o.elastic_alpha[0], maxval=o.elastic_alpha[1])
    noise = jax.random.uniform(k[2], grid.shape, minval=-1.0, maxval=1.0)
    grid = grid + elastic_displacement(noise, sigma, alpha)
  return jnp.clip(jnp.round(bilinear_sample(image, grid)), 0, 255).astype(jnp.uint8)


@dataclasses.dataclass(frozen=True, eq=False)
class DeviceAugment:
  """`config.dataset.augment` on device: one uint8 HWC image and its key -> augmented image.

  Each op draws from its own key of the example's key; they run as in augment.TrainAugment, in
  the order of augment.OPS. `lighting` and `fill` are TrainAugment's (Preprocessing.lighting and
  .zero_image).
  """
  augment: str
  options: AugmentOptions
  lighting: tuple[np.ndarray, np.ndarray] | None = None
  fill: np.ndarray | None = None

  def __post_init__(self):
    ops = parse_augment(self.augment)
    unsupported = unsupported_ops(self.augment)
    if unsupported:
      raise ValueError(f"config.dataset.augment '{self.augment}': {unsupported} only run in the "
                       f'host pipeline; on device: {list(SUPPORTED_OPS)}')
    if 'pca_lighting' in ops and self.lighting is None:
      raise ValueError("pca_lighting needs the training split's colour PCA (lighting=)")
    if 'cutout' in ops and self.fill is None:
      raise ValueError('cutout needs the pixels to fill with (fill=)')
    object.__setattr__(self, 'ops', ops)

  def __call__(self, image: jax.Array, key: jax.Array) -> jax.Array:
    o = self.options
    keys = dict(zip(KEYED_OPS, jax.random.split(key, len(KEYED_OPS))))
    if 'pad_crop' in self.ops:
      top, left = jax.random.randint(keys['pad_crop'], (2,), 0, 2 * o.pad + 1)
      image = pad_crop(image, top, left, o.pad)
    if 'affine' in self.ops or 'elastic' in self.ops:
      # One key for both: the grid is one (augment.warp); 'elastic' alone draws from its own.
      image = warp(image, keys['affine' if 'affine' in self.ops else 'elastic'], o,
                   affine='affine' in self.ops, elastic='elastic' in self.ops)
    if 'flip' in self.ops:
      image = flip(image, jax.random.bernoulli(keys['flip']))
    if 'colour_jitter' in self.ops:
      strengths = jnp.asarray([o.brightness, o.contrast, o.saturation], jnp.float32)
      order_key, factor_key = jax.random.split(keys['colour_jitter'])
      factors = jax.random.uniform(factor_key, (3,), minval=jnp.maximum(0.0, 1.0 - strengths),
                                   maxval=1.0 + strengths)
      # A strength of 0 leaves that adjustment out (augment.colour_jitter_factors): factor 1.
      factors = jnp.where(strengths > 0, factors, 1.0)
      image = colour_jitter(image, jax.random.permutation(order_key, 3), factors)
    if 'pca_lighting' in self.ops:
      eigval, eigvec = self.lighting
      alpha = o.pca_lighting_std * jax.random.normal(keys['pca_lighting'], (len(eigval),))
      image = pca_lighting(image, alpha, eigval, eigvec)
    if 'cutout' in self.ops:
      cy, cx = jax.random.randint(keys['cutout'], (2,), 0, jnp.asarray(image.shape[:2]))
      image = cutout(image, cy, cx, o.cutout_size, self.fill)
    return image


# ---------------------------------------------------------------------------------------------
# Batches and the multi-step function.


def device_batch(arrays: dict, order: jax.Array, step, key: jax.Array, augment: DeviceAugment, *,
                 batch_size: int, steps_per_epoch: int, num_devices: int,
                 device_index=None) -> dict:
  """This device's slice of global batch `step` (call under DataParallel.map): positions
  [(step % steps_per_epoch) * batch_size, +batch_size) of the epoch's `order`, slice
  lax.axis_index(AXIS) (or `device_index`, outside a map), gathered from the whole split and
  augmented."""
  per_device = batch_size // num_devices
  device = lax.axis_index(AXIS) if device_index is None else device_index
  start = (step % steps_per_epoch) * batch_size + device * per_device
  index = lax.dynamic_slice_in_dim(order, start, per_device)
  images, labels = arrays['image'][index], arrays['label'][index]
  if augment.ops:
    epoch_key = jax.random.fold_in(jax.random.fold_in(key, 1), step // steps_per_epoch)
    example_keys = jax.vmap(lambda i: jax.random.fold_in(epoch_key, i))(index)
    images = jax.vmap(augment)(images, example_keys)
  return {'image': images, 'label': labels}


def epoch_order(key: jax.Array, epoch, num_examples: int) -> jax.Array:
  """The shuffled order of the split's indices in `epoch`."""
  return jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, 0), epoch),
                                num_examples)


def multi_step(train_step: Callable, augment: DeviceAugment, *, max_steps: int, batch_size: int,
               steps_per_epoch: int, num_devices: int) -> Callable:
  """Up to `max_steps` of the per-device `train_step(state, batch, key, pre)` in one lax.scan,
  each on its batch gathered and augmented on device: fn(state, arrays, order, train_key,
  data_key, pre, num_steps) -> (state, order, metrics stacked over max_steps; rows past num_steps
  are zeros).

  `order` is (the shuffled indices, the epoch they are for; -1: none yet), kept on the devices
  from call to call and drawn anew when a step starts another epoch. The scan always has
  max_steps iterations and those past `num_steps` (a traced argument) leave the state alone, so
  one compiled program serves every call of a run. Map it with DataParallel.map.
  """
  options = dict(batch_size=batch_size, steps_per_epoch=steps_per_epoch, num_devices=num_devices)

  def run(state, arrays, order, train_key, data_key, pre, num_steps):
    num_examples = arrays['label'].shape[0]

    def train(carry):
      state, order = carry
      step = state.step
      epoch = step // steps_per_epoch
      # A strong int32 epoch: a weakly typed one out of the first call would compile it again.
      epoch = lax.convert_element_type(epoch, jnp.int32)
      order = lax.cond(epoch == order[1], lambda: order,
                       lambda: (epoch_order(data_key, epoch, num_examples), epoch))
      batch = device_batch(arrays, order[0], step, data_key, augment, **options)
      state, metrics = train_step(state, batch, train_key, pre)
      return (state, order), metrics

    if max_steps == 1:  # No loop at all (CPU_STEPS_PER_CALL).
      (state, order), metrics = train((state, order))
      return state, order, jax.tree.map(lambda m: m[None], metrics)
    no_metrics = jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype),
                              jax.eval_shape(train, (state, order))[1])
    one_step = lambda carry, i: lax.cond(i < num_steps, train, lambda c: (c, no_metrics), carry)
    (state, order), metrics = lax.scan(one_step, (state, order), jnp.arange(max_steps))
    return state, order, metrics

  return run


def resolve_steps_per_call(steps_per_call: int, periods: tuple[int, ...], platform: str) -> int:
  """The most steps a call runs: config.steps_per_call (0: MAX_STEPS_PER_CALL, on the 'cpu'
  platform CPU_STEPS_PER_CALL), and no more than the shortest of `periods` (the steps between
  logs, evaluations and checkpoints: calls stop at each of them)."""
  default = CPU_STEPS_PER_CALL if platform == 'cpu' else MAX_STEPS_PER_CALL
  return min(steps_per_call or default, *periods)


class DeviceData:
  """The training split on the devices, and the mapped multi-step call over it.

  `train_step` is the per-device step (steps.train_step with the run's options), `key` the run's
  data key (shuffling and augmentation), `max_steps` the most steps of one call.
  """

  def __init__(self, parallel, train_step: Callable, arrays: dict[str, np.ndarray],
               augment: DeviceAugment, key: jax.Array, *, batch_size: int, steps_per_epoch: int,
               max_steps: int):
    if len(arrays['label']) < batch_size:
      raise ValueError(f"the training split has {len(arrays['label'])} examples, fewer than "
                       f'config.batch_size={batch_size}')
    self.key, self.max_steps = key, max_steps
    self.arrays = parallel.place(arrays)
    no_order = (np.zeros(len(arrays['label']), np.int32), np.int32(-1))
    self.order = parallel.place(no_order)  # (indices, epoch): drawn by the first step.
    fn = multi_step(train_step, augment, max_steps=max_steps, batch_size=batch_size,
                    steps_per_epoch=steps_per_epoch, num_devices=len(parallel.devices))
    self.call = parallel.map(fn, ('state', 'data', 'data', 'const', 'const', 'const', 'const'),
                             donate_state=True)

  def train(self, state, num_steps: int, train_key: jax.Array, pre) -> tuple:
    """`num_steps` (<= max_steps) steps from state.step: (state, the metrics of each step, stacked
    on a leading axis of max_steps)."""
    if not 1 <= num_steps <= self.max_steps:
      raise ValueError(f'num_steps must be in [1, {self.max_steps}], got {num_steps}')
    state, self.order, metrics = self.call(state, self.arrays, self.order, train_key, self.key,
                                           pre, np.int32(num_steps))
    return state, metrics
