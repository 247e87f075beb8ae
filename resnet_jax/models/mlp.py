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

`widths` gives each hidden layer its own size: the deep, big MLPs of Ciresan, Meier, Gambardella &
Schmidhuber 2010 ("Deep, Big, Simple Neural Nets for Handwritten Digit Recognition", Neural
Computation 22(12)), Table 1, registered as ciresan_mlp1..5: scaled tanh units, every weight and
bias from U(-0.05, 0.05) (Sec. 3), trained on elastically distorted digits (data/augment.py).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import layers
from resnet_jax.models.registry import register


class MLP(layers.Classifier):
  """Flatten, `depth` hidden layers of `width` units (dense, [norm], act, [dropout]), dense logits.

  `widths` (one size per hidden layer) replaces depth and width when given.

  act / kernel_init / norm: names in layers.ACTIVATIONS / KERNEL_INITS / NORMS ('none' by default:
  the studies look at the raw signal). With norm='batch' the hidden dense layers have no bias
  (BatchNorm's offset replaces it) and `bn_axis_name` gives cross-replica statistics. Biases start
  at zero, or from `bias_init` (a shape-free KERNEL_INITS name: 'uniform:0.05', 'normal:0.01').
  `dropout_rate` drops hidden outputs in training (the `dropout` RNG stream).
  Hidden layer i (from 1) sows 'hidden{i}_pre' and 'hidden{i}_post' into `intermediates`.
  """

  num_classes: int
  depth: int = 3
  width: int = 256
  widths: tuple[int, ...] | None = None
  act: str = 'relu'
  kernel_init: str = 'kaiming_in'
  norm: str = 'none'
  bias_init: str = 'zeros'
  dropout_rate: float = 0.0
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    # No stages (no maps, no stage_end): the features are the last hidden layer's output
    # [N, D], after its dropout: what the head reads.
    act = layers.get_activation(self.act)
    dense = self._dense_kwargs()
    widths = (self.width,) * self.depth if self.widths is None else tuple(self.widths)
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    for i, width in enumerate(widths, start=1):
      x = nn.Dense(width, use_bias=self.norm == 'none', name=f'dense{i}', **dense)(x)
      x = layers.make_norm(self.norm, train=train, dtype=self.dtype, axis_name=self.bn_axis_name,
                           name=f'norm{i}')(x)
      self.sow('intermediates', f'hidden{i}_pre', x)
      x = act(x)
      self.sow('intermediates', f'hidden{i}_post', x)
      if self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return x

  def classify(self, x: jax.Array, *, train: bool, pre_logits: bool) -> jax.Array:
    if not pre_logits:
      x = nn.Dense(self.num_classes, name='head', **self._dense_kwargs())(x)
    return x.astype(layers.output_dtype(self.dtype))

  def _dense_kwargs(self) -> dict[str, Any]:
    return dict(dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=layers.get_kernel_init(self.kernel_init),
                bias_init=layers.get_kernel_init(self.bias_init))


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

# Ciresan et al. 2010, Table 1, IDs 1-5: the hidden layers of each net, scaled tanh units (Sec. 3),
# weights and biases U(-0.05, 0.05) (Sec. 3). Table 1's weight counts fit 29x29 = 841 inputs with
# biases (1,347,510 for ID 1), cut (not rounded) to two decimals of millions: 1.34, 3.26, 6.69,
# 12.11, 8.86. Where rounding would give another last digit (IDs 1, 2, 4) paper_params is Table 1's
# figure one digit shorter; tests/test_zoo_ciresan.py checks all five at two decimals, cut.
CIRESAN_2010 = {
    'ciresan_mlp1': ((1000, 500), 1_300_000),  # Table 1: 1.34M weights, 0.49% test error.
    'ciresan_mlp2': ((1500, 1000, 500), 3_300_000),  # 3.26M, 0.46%.
    'ciresan_mlp3': ((2000, 1500, 1000, 500), 6_690_000),  # 6.69M, 0.41%.
    'ciresan_mlp4': ((2500, 2000, 1500, 1000, 500), 12_100_000),  # 12.11M, 0.35%.
    'ciresan_mlp5': ((1000,) * 9, 8_860_000),  # 9 x 1000: 8.86M, 0.44%.
}
for _name, (_widths, _count) in CIRESAN_2010.items():
  register(_name, MLP, input_size=29, in_channels=1, num_classes=10, classifier='head',
           paper_params=_count, widths=_widths, act='scaled_tanh', kernel_init='uniform:0.05',
           bias_init='uniform:0.05')
