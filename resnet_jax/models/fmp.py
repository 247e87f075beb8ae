"""Fractional max-pooling nets (Graham 2014, "Fractional Max-Pooling", Sec. 2 and 4).

Graham's nets are `(k n C2 - FMP alpha)_L - C2 - C1 - output`: L layers of a 2x2 valid
convolution with k*n filters (n = 1..L) followed by a fractional max pooling (layers.
fractional_max_pool), then a 2x2 and a 1x1 convolution and the classifier. The sides shrink by
1 and then by alpha at each layer, so the input size fixes where the net ends (Sec. 4): MNIST,
32n filters, six FMP sqrt 2 layers on 36x36; CIFAR-10, 160n filters, twelve FMP cube-root-2
layers on 94x94 (also his SparseConvNet code). Both reach 2x2 before the last C2; here the last
map is averaged, so other input sizes work too (32x32 reaches 1x1 after C2 with six FMP sqrt 2
layers).

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

# The fields FMPNet hands to its one-draw body, _FMPBody.
_BODY_FIELDS = ('num_classes', 'filters', 'num_fmp', 'alpha', 'sequence', 'overlapping',
                'dropout_rate', 'act', 'kernel_init', 'norm', 'dtype', 'bn_axis_name',
                'bn_momentum', 'bn_epsilon')


class _FMPBody(nn.Module):
  """One forward pass of the FMP net with the pooling regions of `key` (layer i: fold_in(key, i)).

  Returns float32 logits.
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
  def __call__(self, x: jax.Array, key: jax.Array, *, train: bool) -> jax.Array:
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

    for i in range(self.num_fmp):
      x = layer(x, i, 2, f'conv{i}')
      if min(x.shape[1:3]) < 2:
        raise ValueError(f'input {size[0]}x{size[1]} is too small for {self.num_fmp} FMP layers '
                         f'of alpha {self.alpha:.3f}: FMP {i} gets {x.shape[1]}x{x.shape[2]}')
      x = layers.fractional_max_pool(x, jax.random.fold_in(key, i), self.alpha,
                                     sequence=self.sequence, overlapping=self.overlapping)
    x = layer(x, self.num_fmp, 2, 'c2')
    x = layer(x, self.num_fmp + 1, 1, 'c1')
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name='output')(x)
    return x.astype(jnp.float32)


class FMPNet(nn.Module):
  """Graham's (filters*n C2 - FMP alpha)_num_fmp - C2 - C1 - output net (Graham 2014, Sec. 4).

  Arguments:
    filters: the first layer's filters; layer n (1..num_fmp) has filters * n, C2 and C1 have
      filters * (num_fmp + 1) and filters * (num_fmp + 2).
    num_fmp: the number of (C2 - FMP) layers.
    alpha: the FMP ratio, in (1, 2); sides go n -> round(n / alpha) (layers.fmp_output_size).
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
  """

  num_classes: int
  filters: int = 32
  num_fmp: int = 6
  alpha: float = layers.FMP_ALPHA
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
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.test_draws < 1:
      raise ValueError(f'test_draws must be >= 1, got {self.test_draws}')
    if not (self.has_rng('fmp') or self.has_rng('params')):
      raise ValueError('FMPNet draws its pooling regions from the `fmp` RNG stream, at eval too: '
                       "pass rngs={'fmp': key} to apply")
    body = _FMPBody(**{f: getattr(self, f) for f in _BODY_FIELDS}, name='body')
    key = self.make_rng('fmp')
    if train:
      return body(x, key, train=True)

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
register('fmp_mnist', FMPNet, input_size=36, in_channels=1, num_classes=10, filters=32,
         num_fmp=6)
# Graham 2014, Sec. 4, CIFAR-10 scaled down: six FMP sqrt 2 layers of 32n filters on 32x32
# (the paper: twelve FMP cube-root-2 layers of 160n filters on 94x94), dropout rising to 0.5.
register('fmp_cifar', FMPNet, input_size=32, num_classes=10, filters=32, num_fmp=6,
         dropout_rate=0.5)
