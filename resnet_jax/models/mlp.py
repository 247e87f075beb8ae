"""Fully connected networks for the initialization and activation studies.

The course notes' initialization study feeds unit-Gaussian data through a 10-layer, 500-wide net
and watches each layer's activations: small random weights (normal:0.01) collapse them to zero,
Xavier keeps tanh nets alive (Glorot & Bengio 2010, Fig. 6) but halves the variance per layer
under ReLU, which Kaiming's variance 2/fan_in corrects (He et al. 2015b, Sec. 2.2 and Fig. 2).
SELU with LeCun-normal weights keeps deep nets at mean 0, variance 1 without any normalization
(Klambauer et al. 2017, "Self-Normalizing Neural Networks", Sec. 3).

`MLP` records what those studies plot: every hidden layer sows its pre-activation (the
activation's input, after the norm if any) and its output into the `intermediates` collection;
`hidden_outputs` reads them back in depth order.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import layers
from resnet_jax.models.registry import register


class MLP(nn.Module):
  """Flatten, `depth` hidden layers of `width` units (dense, [norm], act, [dropout]), dense logits.

  act / kernel_init / norm: names in layers.ACTIVATIONS / KERNEL_INITS / NORMS ('none' by default:
  the studies look at the raw signal). With norm='batch' the hidden dense layers have no bias
  (BatchNorm's offset replaces it) and `bn_axis_name` gives cross-replica statistics. Biases start
  at zero. `dropout_rate` drops hidden outputs in training (the `dropout` RNG stream).
  Hidden layer i (from 1) sows 'hidden{i}_pre' and 'hidden{i}_post' into `intermediates`.
  """

  num_classes: int
  depth: int = 3
  width: int = 256
  act: str = 'relu'
  kernel_init: str = 'kaiming_in'
  norm: str = 'none'
  dropout_rate: float = 0.0
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    act = layers.get_activation(self.act)
    dense = dict(dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=layers.get_kernel_init(self.kernel_init))
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    for i in range(1, self.depth + 1):
      x = nn.Dense(self.width, use_bias=self.norm == 'none', name=f'dense{i}', **dense)(x)
      x = layers.make_norm(self.norm, train=train, dtype=self.dtype, axis_name=self.bn_axis_name,
                           name=f'norm{i}')(x)
      self.sow('intermediates', f'hidden{i}_pre', x)
      x = act(x)
      self.sow('intermediates', f'hidden{i}_post', x)
      if self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, name='head', **dense)(x)
    return x.astype(layers.output_dtype(self.dtype))


def hidden_outputs(intermediates: dict, which: str = 'post') -> list[jax.Array]:
  """The sown hidden-layer arrays ('pre' or 'post' activation), layer 1 first.

  `intermediates` is the `intermediates` collection of `MLP.apply(..., mutable=['intermediates'])`.
  """
  if which not in ('pre', 'post'):
    raise ValueError(f"which must be 'pre' or 'post', got {which!r}")
  depth = sum(1 for k in intermediates if k.endswith('_post'))
  return [intermediates[f'hidden{i}_{which}'][0] for i in range(1, depth + 1)]


# MNIST-sized: 28x28 grey digits, 10 classes.
register('mlp', MLP, input_size=28, in_channels=1, num_classes=10, classifier='head')
# Klambauer et al. 2017, Sec. 4: self-normalizing nets of 8 to 32 layers; 32 is the deep end.
register('mlp_deep', MLP, input_size=28, in_channels=1, num_classes=10, classifier='head',
         depth=32)
