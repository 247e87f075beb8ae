"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998, "Gradient-Based Learning Applied to Document
Recognition", Sec. II.B).

Layout: 32x32 input, C1 6@5x5 (valid), S2 2x2 pool, C3 16@5x5, S4 2x2 pool, C5 120@5x5 (a
convolution that sees the whole 5x5 map), F6 84, output `num_classes`.

Simplifications, as in the usual modern reading (61,706 parameters at 1x32x32 and 10 classes):
- S2/S4 are parameter-free pools (the paper's subsampling has a trainable coefficient and bias);
- C3 connects to all six S2 maps by default; `sparse_c3=True` gives the paper's connection table
  (Table I, `C3_TABLE`: 60 of the 96 map pairs, C3's 1,516 parameters of Sec. II.B);
- the output is a dense layer giving logits (the paper uses Euclidean RBF units, Sec. II.B);
- the activation is plain tanh by default (the paper scales it, 1.7159 tanh(2a/3), Appendix A).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.models import layers
from resnet_jax.models.registry import register

# LeCun et al. 1998, Table I: the S2 maps each C3 map takes. Maps 0-5 see 3 neighbouring maps,
# 6-11 four neighbouring, 12-14 four non-neighbouring, 15 all six: 60 connections.
C3_TABLE = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 0), (5, 0, 1),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 0), (4, 5, 0, 1), (5, 0, 1, 2),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)


class TableConv(nn.Module):
  """A VALID convolution in which output map j sees only the input maps `table[j]` (LeCun et
  al. 1998, Sec. II.B: C3 "breaks the symmetry" of the network this way).

  Only the connected kernels exist: the output maps with n inputs form one grouped convolution
  over their gathered inputs, kernel `kernel_{n}` of shape [kh, kw, n, #maps], so each map's
  initializer sees its own fan-in (25 n for 5x5). One bias per output map.
  """

  table: Sequence[Sequence[int]]
  kernel_size: tuple[int, int] = (5, 5)
  kernel_init: layers.Initializer = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    outputs, order = [], []
    for n in sorted({len(inputs) for inputs in self.table}):
      maps = [j for j, inputs in enumerate(self.table) if len(inputs) == n]
      kernel = self.param(f'kernel_{n}', self.kernel_init, (*self.kernel_size, n, len(maps)),
                          jnp.float32)
      gathered = x[..., np.array([i for j in maps for i in self.table[j]])]
      gathered, kernel = nn.dtypes.promote_dtype(gathered, kernel, dtype=self.dtype)
      outputs.append(jax.lax.conv_general_dilated(
          gathered, kernel, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
          feature_group_count=len(maps)))
      order += maps
    bias = self.param('bias', nn.initializers.zeros, (len(self.table),), jnp.float32)
    y = jnp.concatenate(outputs, axis=-1)[..., np.argsort(order)]  # back to map order
    return y + bias.astype(y.dtype)


class LeNet5(layers.Classifier):
  """LeNet-5. `act` is a name in layers.ACTIVATIONS; `pool` a name in layers.POOLS: 'avg' (the
  paper's averaging subsampling), 'max' or 'max+avg'; `kernel_init` a name in
  layers.KERNEL_INITS; `dropout_rate` applies before the output layer (the `dropout` RNG
  stream). `dropconnect_rate` puts DropConnect (Wan et al. 2013, layers.DropConnectDense, the
  `dropout` stream) on the weights of F6 and of the output layer; 0 keeps plain nn.Dense layers,
  with the same parameters either way. `sparse_c3`: C3 with Table I's connection table
  (TableConv, 1,516 parameters) instead of a full 16@5x5x6 convolution (2,416)."""

  num_classes: int
  dtype: Any = jnp.float32
  act: str = 'tanh'
  pool: str = 'avg'
  kernel_init: str = 'lecun'
  dropout_rate: float = 0.0
  dropconnect_rate: float = 0.0
  sparse_c3: bool = False

  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    act = layers.get_activation(self.act)
    pool = layers.get_pool(self.pool)
    kinit = layers.get_kernel_init(self.kernel_init)
    conv = dict(padding='VALID', dtype=self.dtype, param_dtype=jnp.float32, kernel_init=kinit)
    # Feature maps as timm's VGG: each convolution's output before its subsampling (C1, C3),
    # then C5's 1x1 map, the last before the fully connected layers.
    x = act(nn.Conv(6, (5, 5), name='c1', **conv)(x))  # 32 -> 28
    x = pool(self.stage_end(x), (2, 2), strides=(2, 2))  # S2: 28 -> 14
    if self.sparse_c3:
      c3 = TableConv(C3_TABLE, (5, 5), kernel_init=kinit, dtype=self.dtype, name='c3')
    else:
      c3 = nn.Conv(16, (5, 5), name='c3', **conv)
    x = act(c3(x))  # 14 -> 10
    x = pool(self.stage_end(x), (2, 2), strides=(2, 2))  # S4: 10 -> 5
    x = act(nn.Conv(120, (5, 5), name='c5', **conv)(x))  # 5 -> 1
    return self.stage_end(x)

  def classify(self, x: jax.Array, *, train: bool, pre_logits: bool) -> jax.Array:
    act = layers.get_activation(self.act)
    x = x.reshape((x.shape[0], -1))
    x = act(self._dense(84, 'f6', x, train=train))
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    if pre_logits:  # F6's 84 units, what the output layer reads
      return x.astype(layers.output_dtype(self.dtype))
    x = self._dense(self.num_classes, 'output', x, train=train)
    return x.astype(layers.output_dtype(self.dtype))

  def _dense(self, features: int, name: str, x: jax.Array, *, train: bool) -> jax.Array:
    kwargs = dict(dtype=self.dtype, param_dtype=jnp.float32,
                  kernel_init=layers.get_kernel_init(self.kernel_init))
    if self.dropconnect_rate > 0:
      return layers.DropConnectDense(features, rate=self.dropconnect_rate, name=name,
                                     **kwargs)(x, deterministic=not train)
    return nn.Dense(features, name=name, **kwargs)(x)


# LeCun et al. 1998, Sec. II.B: 32x32 grey-level input (MNIST's 28x28 padded), 10 digit classes;
# 60,000 trainable parameters (C1 156 + S2 12 + C3 1,516 + S4 32 + C5 48,120 + F6 10,164). Ours
# has 61,706: pools without parameters (-44), C3 fully connected (+900), a dense output (+850);
# with sparse_c3 (Table I), 60,806: C3 then has 60 5x5 kernels + 16 biases = 1,516 (-900).
register('lenet5', LeNet5, input_size=32, in_channels=1, num_classes=10, classifier='output',
         paper_params=60_000)
