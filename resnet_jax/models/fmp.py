"""Fractional max pooling and the nets built on it (Graham 2014, "Fractional Max-Pooling").

The pooling (Sec. 2): `fractional_max_pool`, its region sequences and the `FractionalMaxPool`
module, drawing from the `fmp` RNG stream.

Graham's nets are `(k n C2 - FMP alpha)_L - C2 - C1 - output`: L layers of a 2x2 valid
convolution with k*n filters (n = 1..L) followed by a fractional max pooling, then a 2x2 and a
1x1 convolution and the classifier. The sides shrink by 1 and then by alpha at each layer, so
the input size fixes where the net ends (Sec. 4): MNIST, 32n filters, six FMP sqrt 2 layers on
36x36; CIFAR-10, 160n filters, twelve FMP cube-root-2 layers on 94x94 (also his SparseConvNet
code). Both reach 2x2 before the last C2; here the last map is averaged, so other input sizes
work too (32x32 reaches 1x1 after C2 with six FMP sqrt 2 layers).

Test-time averaging (Sec. 4, "repeated testing"): an FMP net is an ensemble over pooling
regions. In training one draw is used per forward pass; at eval (`train=False`) the net runs
`test_draws` independent draws and returns the log of their averaged softmax probabilities.

Departures from the paper, for nets that train on a CPU with this codebase's SGD recipe:
- `filters` 32 and `num_fmp` 6 in both registrations (fmp_cifar: sqrt 2 layers on 32x32 instead
  of 12 cube-root-2 layers on 94x94); `create_model('fmp_cifar', filters=160, num_fmp=12,
  alpha=2 ** (1 / 3))` at image_size 94 is the paper's CIFAR-10 net;
- BatchNorm after every convolution (`norm='batch'`; 2014's nets had none: norm='none');
- the classifier reads the spatial mean of the last map (the identity at the paper's sizes).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import layers
from resnet_jax.models.registry import register

# ---------------------------------------------------------------------------------------------
# The pooling itself (Graham 2014, Sec. 2).

FMP_SEQUENCES = ('random', 'pseudo_random')
FMP_ALPHA = 2 ** 0.5  # Graham 2014, Sec. 4: FMP sqrt(2) on MNIST and CIFAR-100 (cube root of 2 too)


def fmp_output_size(n: int, alpha: float = FMP_ALPHA) -> int:
  """Side of a fractional max pooling by `alpha` of a side of `n`: round(n / alpha).

  Graham's nets fix the output side and take N_in = round(alpha * N_out) (his SparseConvNet
  code, `calculateInputSpatialSize`); rounding n / alpha gives back those sizes, e.g. his MNIST
  net's 36 -> 35 -> 25 -> 24 -> 17 ... -> 3 -> 2 under six (C2 - FMP sqrt 2) layers, where
  floor(n / alpha) would give 24, 16, ... and run out of rows.
  """
  if not 1.0 < alpha < 2.0:
    raise ValueError(f'fractional max pooling needs 1 < alpha < 2, got {alpha}')
  return int(n / alpha + 0.5)


def fmp_sequence(key: jax.Array, n: int, n_out: int, *, sequence: str = 'pseudo_random',
                 overlapping: bool = True) -> jax.Array:
  """The pooling boundaries a_0 = 0 < a_1 < ... < a_{n_out} (int32) of one side of `n` rows.

  Graham 2014, Sec. 2: the increments a_i - a_{i-1} are all 1 or 2. The sequence ends at n for
  `disjoint` regions [a_{i-1}, a_i - 1] (a partition of the rows) and at n - 1 for
  `overlapping` regions [a_{i-1}, a_i] (sizes 2 or 3, neighbours share their boundary row): the
  paper's 1..N_in, 0-based, which is what the overlapping regions cover exactly.
  `sequence='random'`: a random permutation of the right number of 1s and 2s.
  `sequence='pseudo_random'`: a_i = ceil(alpha (i + u)) - ceil(alpha u), u ~ U(0, 1), with alpha
  the ratio (last boundary) / n_out so that the sequence ends exactly on the last row (Graham's
  code does the same); computed in integers, ceil((T i + w) / n_out) with w = ceil(T u).
  """
  total = n - 1 if overlapping else n
  if not n_out <= total <= 2 * n_out:
    kind = 'overlapping' if overlapping else 'disjoint'
    raise ValueError(f'{kind} fractional max pooling cannot take {n} rows to {n_out} with '
                     f'increments of 1 or 2 (need {n_out} <= {total} <= {2 * n_out})')
  if sequence == 'random':
    steps = jnp.where(jnp.arange(n_out) < total - n_out, 2, 1).astype(jnp.int32)
    steps = jax.random.permutation(key, steps)
    return jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(steps, dtype=jnp.int32)])
  if sequence == 'pseudo_random':
    # ceil((T i + T u) / n_out) == ceil((T i + ceil(T u)) / n_out) for integers T i and n_out.
    w = jax.random.randint(key, (), 1, total + 1, dtype=jnp.int32)
    i = jnp.arange(n_out + 1, dtype=jnp.int32)
    return -((-(total * i + w)) // n_out) + ((-w) // n_out)
  raise ValueError(f'unknown FMP sequence {sequence!r}; valid: {", ".join(FMP_SEQUENCES)}')


def fmp_regions(a: jax.Array, overlapping: bool) -> tuple[jax.Array, jax.Array]:
  """(first, last) row of each pooling region, both inclusive, from a boundary sequence `a`."""
  return a[:-1], (a[1:] if overlapping else a[1:] - 1)


def _fmp_axis(x: jax.Array, a: jax.Array, overlapping: bool, axis: int) -> jax.Array:
  """Max over each region along `axis`: a gather of the region's rows (the last one repeated to
  pad a short region to the longest, 3 or 2) and a max over them."""
  first, last = fmp_regions(a, overlapping)
  offsets = jnp.arange(3 if overlapping else 2, dtype=a.dtype)
  rows = jnp.minimum(first[None, :] + offsets[:, None], last[None, :])
  return functools.reduce(jnp.maximum, [jnp.take(x, r, axis=axis) for r in rows])


def fmp_boundaries(key: jax.Array, size: tuple[int, int], alpha: float = FMP_ALPHA, *,
                   sequence: str = 'pseudo_random',
                   overlapping: bool = True) -> tuple[jax.Array, jax.Array]:
  """The row and column boundary sequences (independent draws, fmp_sequence) that
  fractional_max_pool uses on an H x W map, `size` = (H, W)."""
  return tuple(
      fmp_sequence(k, n, fmp_output_size(n, alpha), sequence=sequence, overlapping=overlapping)
      for k, n in zip(jax.random.split(key), size))


def fractional_max_pool(x: jax.Array, key: jax.Array, alpha: float = FMP_ALPHA, *,
                        sequence: str = 'pseudo_random', overlapping: bool = True) -> jax.Array:
  """Fractional max pooling (Graham 2014, "Fractional Max-Pooling", Sec. 2) of an NHWC batch.

  Each side n becomes fmp_output_size(n, alpha), with the regions of fmp_boundaries(key, ...).
  One draw serves the whole batch (Graham's code draws the regions once per layer per
  minibatch); a data-parallel step gives each device its own key, hence its own regions. Max
  pooling is separable over rectangles, so the rows are pooled, then the columns.
  """
  rows, cols = fmp_boundaries(key, x.shape[1:3], alpha, sequence=sequence,
                              overlapping=overlapping)
  return _fmp_axis(_fmp_axis(x, rows, overlapping, 1), cols, overlapping, 2)


class FractionalMaxPool(nn.Module):
  """fractional_max_pool with its regions drawn from the `fmp` RNG stream at every call."""

  alpha: float = FMP_ALPHA
  sequence: str = 'pseudo_random'
  overlapping: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return fractional_max_pool(x, self.make_rng('fmp'), self.alpha, sequence=self.sequence,
                               overlapping=self.overlapping)


# ---------------------------------------------------------------------------------------------
# The nets (Graham 2014, Sec. 4).

# The fields FMPNet hands to its one-draw body, _FMPBody.
_BODY_FIELDS = ('num_classes', 'filters', 'num_fmp', 'alpha', 'sequence', 'overlapping',
                'dropout_rate', 'act', 'kernel_init', 'norm', 'dtype', 'bn_axis_name',
                'bn_momentum', 'bn_epsilon')


class _FMPBody(nn.Module):
  """One forward pass of the FMP net with the pooling regions of `key` (layer i: fold_in(key, i)).

  `part` (layers.PARTS): 'logits', the whole pass (float32 logits); 'features', the layers up to
  C1, returning the stage maps (the output of each FMP layer but the last, then C1's, the
  head's input); 'head' / 'pre_logits', from C1's map (`key` unused) to the logits / to the
  spatial mean the classifier reads (float32).
  """

  num_classes: int
  filters: int
  num_fmp: int
  alpha: float
  sequence: str
  overlapping: bool
  dropout_rate: float
  act: str
  kernel_init: str
  norm: str
  dtype: Any
  bn_axis_name: str | None
  bn_momentum: float
  bn_epsilon: float

  @nn.compact
  def __call__(self, x: jax.Array, key: jax.Array | None, *, train: bool,
               part: str = 'logits') -> jax.Array | list[jax.Array]:
    if part in ('logits', 'features'):
      maps = self._stages(x, key, train=train)
      if part == 'features':
        return maps
      x = maps[-1]
    # The classifier reads the spatial mean of C1's map (the identity at the paper's sizes).
    x = jnp.mean(x, axis=(1, 2))
    if part != 'pre_logits':
      x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name='output')(x)
    return x.astype(layers.output_dtype(self.dtype))

  def _stages(self, x: jax.Array, key: jax.Array, *, train: bool) -> list[jax.Array]:
    act = layers.get_activation(self.act)
    conv = functools.partial(
        nn.Conv, padding='VALID', use_bias=self.norm == 'none', dtype=self.dtype,
        param_dtype=jnp.float32, kernel_init=layers.get_kernel_init(self.kernel_init))
    norm = functools.partial(
        layers.make_norm, self.norm, train=train, dtype=self.dtype, axis_name=self.bn_axis_name,
        momentum=self.bn_momentum, epsilon=self.bn_epsilon)
    size = x.shape[1:3]

    def layer(x: jax.Array, i: int, kernel: int, name: str) -> jax.Array:
      if min(x.shape[1:3]) < kernel:
        raise ValueError(f'input {size[0]}x{size[1]} is too small for {self.num_fmp} FMP layers '
                         f'of alpha {self.alpha:.3f}: layer {name} gets {x.shape[1]}x{x.shape[2]}')
      # Graham's CIFAR-10 net (Sec. 4; his code: layer i of l + 1 gets i / (l + 1) of the
      # rate): dropout rising linearly with depth, from 0 at the input to `dropout_rate` at C1.
      rate = self.dropout_rate * i / (self.num_fmp + 1)
      if rate > 0:
        x = nn.Dropout(rate, deterministic=not train)(x)
      x = conv(self.filters * (i + 1), (kernel, kernel), name=name)(x)
      return act(norm(name=f'{name}_bn')(x))

    # Stage ends: each (C2 - FMP) layer's output (each FMP makes the stride alpha times larger;
    # the 2x2 valid C2 before it only trims a pixel), but the last, whose stride C2 and C1
    # keep: there C1's map, the backbone's output, ends the stage.
    maps = []
    for i in range(self.num_fmp):
      x = layer(x, i, 2, f'conv{i}')
      if min(x.shape[1:3]) < 2:
        raise ValueError(f'input {size[0]}x{size[1]} is too small for {self.num_fmp} FMP layers '
                         f'of alpha {self.alpha:.3f}: FMP {i} gets {x.shape[1]}x{x.shape[2]}')
      x = fractional_max_pool(x, jax.random.fold_in(key, i), self.alpha,
                              sequence=self.sequence, overlapping=self.overlapping)
      maps.append(x)
    x = layer(x, self.num_fmp, 2, 'c2')
    return [*maps[:-1], layer(x, self.num_fmp + 1, 1, 'c1')]


class FMPNet(layers.Classifier):
  """Graham's (filters*n C2 - FMP alpha)_num_fmp - C2 - C1 - output net (Graham 2014, Sec. 4).

  Arguments:
    filters: the first layer's filters; layer n (1..num_fmp) has filters * n, C2 and C1 have
      filters * (num_fmp + 1) and filters * (num_fmp + 2).
    num_fmp: the number of (C2 - FMP) layers.
    alpha: the FMP ratio, in (1, 2); sides go n -> round(n / alpha) (fmp_output_size).
    sequence: 'pseudo_random' or 'random' region boundaries; overlapping: regions [a_{i-1}, a_i]
      (True) or disjoint [a_{i-1}, a_i - 1] (False). Graham 2014, Sec. 2.
    test_draws: independent pooling draws averaged at eval (Sec. 4: 12 or more); the output is
      then log(mean softmax), and a single draw's logits in training.
    dropout_rate: dropout on each layer's input, rising linearly from 0 at the first layer to
      `dropout_rate` at C1 (the `dropout` stream).
    act / kernel_init / norm: names in layers.ACTIVATIONS / KERNEL_INITS / NORMS; the default
      'leaky_relu:0.333' is Graham's "very leaky" rectifier (slope 1/3, his SparseConvNet code).
    bn_axis_name / bn_momentum / bn_epsilon: as in resnet.ResNet.

  The pooling regions come from the `fmp` RNG stream, in training and at eval (pass a fixed key
  there for reproducible evaluations); draw d uses fold_in(key, d), layer i of a draw
  fold_in(draw key, i). Inputs are NHWC.

  `__call__` keeps the `part` protocol of layers.Classifier, but the eval output averages
  `test_draws` passes, so the parts are one pass: 'features' (features_only, forward_features)
  the stage maps of training's draw, or at eval of the first test draw (fold_in(key, 0));
  'head' / 'pre_logits' (forward_head) that draw's logits / pooled C1 features, not the
  average. With num_classes=0 the output is that draw's pooled features.
  """

  num_classes: int
  filters: int = 32
  num_fmp: int = 6
  alpha: float = FMP_ALPHA
  sequence: str = 'pseudo_random'
  overlapping: bool = True
  test_draws: int = 12
  dropout_rate: float = 0.0
  act: str = 'leaky_relu:0.333'
  kernel_init: str = 'kaiming_in'
  norm: str = 'batch'
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, part: str = 'logits') -> jax.Array:
    layers.check_part(part)
    if self.test_draws < 1:
      raise ValueError(f'test_draws must be >= 1, got {self.test_draws}')
    body = _FMPBody(**{f: getattr(self, f) for f in _BODY_FIELDS}, name='body')
    pre_logits = part == 'pre_logits' or self.num_classes == 0
    if part in ('head', 'pre_logits'):  # no pooling left: no draw
      return body(x, None, train=train, part='pre_logits' if pre_logits else 'head')
    if not (self.has_rng('fmp') or self.has_rng('params')):
      raise ValueError('FMPNet draws its pooling regions from the `fmp` RNG stream, at eval too: '
                       "pass rngs={'fmp': key} to apply")
    key = self.make_rng('fmp')
    if train or part == 'features' or pre_logits:
      # One pass: training's draw, or at eval the first test draw.
      maps = body(x, key if train else jax.random.fold_in(key, 0), train=train, part='features')
      for stage in maps:
        self.stage_end(stage)
      if part == 'features':
        return maps[-1]
      return body(maps[-1], None, train=train, part='pre_logits' if pre_logits else 'head')

    def add_draw(body: _FMPBody, total: jax.Array, draw_key: jax.Array, x: jax.Array):
      log_probs = jax.nn.log_softmax(body(x, draw_key, train=False))
      return jnp.logaddexp(total, log_probs), None

    # The draws run one after another (memory of one pass) and share the body's variables.
    average = nn.scan(add_draw, variable_broadcast=['params', 'batch_stats'],
                      split_rngs={'params': False}, in_axes=(0, nn.broadcast),
                      length=self.test_draws)
    keys = jax.vmap(functools.partial(jax.random.fold_in, key))(jnp.arange(self.test_draws))
    total = jnp.full((x.shape[0], self.num_classes), -jnp.inf, jnp.float32)
    total, _ = average(body, total, keys, x)
    # Graham 2014, Sec. 4: average the draws' class probabilities; log so softmax gives them.
    return total - jnp.log(float(self.test_draws))


# Graham 2014, Sec. 4: MNIST, (32nC2 - FMP sqrt 2)_6 - C2 - C1 - output on 36x36 (28 + 2*4),
# without dropout; pseudorandom overlapping regions.
# The classifier is the one-draw body's (its variables are shared by every test-time draw).
register('fmp_mnist', FMPNet, input_size=36, in_channels=1, num_classes=10,
         classifier='body/output', filters=32, num_fmp=6)
# Graham 2014, Sec. 4, CIFAR-10 scaled down: six FMP sqrt 2 layers of 32n filters on 32x32
# (the paper: twelve FMP cube-root-2 layers of 160n filters on 94x94), dropout rising to 0.5.
register('fmp_cifar', FMPNet, input_size=32, num_classes=10, classifier='body/output',
         filters=32, num_fmp=6, dropout_rate=0.5)
