"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998, "Gradient-Based Learning Applied to Document
Recognition", Sec. II.B).

Layout: 32x32 input, C1 6@5x5 (valid), S2 2x2 pool, C3 16@5x5, S4 2x2 pool, C5 120@5x5 (a
convolution that sees the whole 5x5 map), F6 84, output `num_classes`.

Simplifications, as in the usual modern reading (61,706 parameters at 1x32x32 and 10 classes):
- S2/S4 are parameter-free pools (the paper's subsampling has a trainable coefficient and bias);
- C3 connects to all six S2 maps (the paper uses the sparse connection table of Table I);
- the output is a dense layer giving logits (the paper uses Euclidean RBF units, Sec. II.B);
- the activation is plain tanh by default (the paper scales it, 1.7159 tanh(2a/3), Appendix A).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import layers
from resnet_jax.models.registry import register

POOLS = {'avg': nn.avg_pool, 'max': nn.max_pool}


class LeNet5(nn.Module):
  """LeNet-5. `act` is a name in layers.ACTIVATIONS; `pool` is 'avg' (the paper's averaging
  subsampling) or 'max'; `kernel_init` a name in layers.KERNEL_INITS; `dropout_rate` applies
  before the output layer (the `dropout` RNG stream). `dropconnect_rate` puts DropConnect (Wan
  et al. 2013, layers.DropConnectDense, the `dropout` stream) on the weights of F6 and of the
  output layer; 0 keeps plain nn.Dense layers, with the same parameters either way."""

  num_classes: int
  dtype: Any = jnp.float32
  act: str = 'tanh'
  pool: str = 'avg'
  kernel_init: str = 'lecun'
  dropout_rate: float = 0.0
  dropconnect_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    act = layers.get_activation(self.act)
    if self.pool not in POOLS:
      raise ValueError(f'unknown pool {self.pool!r}; valid: {", ".join(POOLS)}')
    pool = POOLS[self.pool]
    kinit = layers.get_kernel_init(self.kernel_init)
    conv = dict(padding='VALID', dtype=self.dtype, param_dtype=jnp.float32, kernel_init=kinit)
    dense_kwargs = dict(dtype=self.dtype, param_dtype=jnp.float32, kernel_init=kinit)

    def dense(features: int, name: str, x: jax.Array) -> jax.Array:
      if self.dropconnect_rate > 0:
        return layers.DropConnectDense(features, rate=self.dropconnect_rate, name=name,
                                       **dense_kwargs)(x, deterministic=not train)
      return nn.Dense(features, name=name, **dense_kwargs)(x)

    x = act(nn.Conv(6, (5, 5), name='c1', **conv)(x))  # 32 -> 28
    x = pool(x, (2, 2), strides=(2, 2))  # S2: 28 -> 14
    x = act(nn.Conv(16, (5, 5), name='c3', **conv)(x))  # 14 -> 10
    x = pool(x, (2, 2), strides=(2, 2))  # S4: 10 -> 5
    x = act(nn.Conv(120, (5, 5), name='c5', **conv)(x))  # 5 -> 1
    x = x.reshape((x.shape[0], -1))
    x = act(dense(84, 'f6', x))
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = dense(self.num_classes, 'output', x)
    return x.astype(jnp.float32)


# LeCun et al. 1998, Sec. II.B: 32x32 grey-level input (MNIST's 28x28 padded), 10 digit classes;
# 60,000 trainable parameters (C1 156 + S2 12 + C3 1,516 + S4 32 + C5 48,120 + F6 10,164). Ours
# has 61,706: pools without parameters (-44), C3 fully connected (+900), a dense output (+850).
register('lenet5', LeNet5, input_size=32, in_channels=1, num_classes=10, classifier='output',
         paper_params=60_000)
