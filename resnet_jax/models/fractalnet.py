"""FractalNet (Larsson, Maire & Shakhnarovich 2016, "FractalNet: Ultra-Deep Neural Networks without
Residuals"), the CIFAR networks of Sec. 4, as one `FractalNet` module.

The fractal expansion rule (Sec. 2, Eq. 1): f_1(z) = conv(z) and f_{C+1}(z) = join(f_C(f_C(z)),
conv(z)), a join being the element-wise mean of its inputs. A block f_C has C columns: column k
(counted from 0, the shallowest) has 2^k convolutions, the longest path 2^(C-1), and the block
2^C - 1 convolutions in all. B blocks, each followed by 2x2 max pooling (Fig. 1 right), make a
network B * 2^(C-1) convolutions deep; every convolution is 3x3 and followed by BatchNorm and
ReLU (Sec. 4). The 1x1 map after the last pool feeds a linear classifier.

Drop-path (Sec. 3.1), in training only and from the `drop_path` RNG stream: each mini-batch is
either local (every join drops each of its inputs with probability `drop_path`, keeping at least
one) or global (one column, drawn for the whole network, is the only path); `global_fraction` of
the mini-batches are global (Sec. 4: 50/50). `column=k` evaluates column k alone (Sec. 4.3,
Table 3); with column=None, evaluation joins every column and drops nothing.

- `fractalnet20`: B=5, C=3 (Table 1, "FractalNet (20 layers)").
- `fractalnet40`: B=5, C=4 (Fig. 1's example, Table 1's 40-layer row).
Both with filters 64, 128, 256, 512, 512 (Sec. 4); see the registrations for their counts.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import layers
from resnet_jax.models.registry import register

# Larsson et al. 2016, Sec. 4: "we fix drop rate per block at (0%, 10%, 20%, 30%, 40%)".
PAPER_DROPOUT = (0.0, 0.1, 0.2, 0.3, 0.4)


def column_convs(num_columns: int, position: int) -> list[int]:
  """The columns whose convolution ends at `position` (1 .. 2^(C-1)) of a block: column k has a
  convolution every 2^(C-1-k) positions, and those that end together are joined there."""
  return [k for k in range(num_columns) if position % 2 ** (num_columns - 1 - k) == 0]


def join(inputs: Sequence[jax.Array], keep: jax.Array | None = None) -> jax.Array:
  """The mean of the inputs that `keep` ([n] booleans; None: all) keeps (Sec. 2: the element-wise
  mean). Dropped inputs are selected away, never multiplied, and a join that keeps none (a join
  off the chosen column under global drop-path, whose output no kept path reads) gives zeros."""
  if keep is None:
    return sum(inputs[1:], inputs[0]) / len(inputs)
  total = sum(jnp.where(k, x, jnp.zeros_like(x)) for k, x in zip(keep, inputs))
  count = jnp.maximum(jnp.sum(keep), 1).astype(inputs[0].dtype)
  return total / count


def local_drop_mask(key: jax.Array, num_inputs: int, drop_rate: float) -> jax.Array:
  """Local drop-path (Sec. 3.1): each of a join's inputs is dropped with probability
  `drop_rate`, independently, but at least one survives: when all are dropped, one input drawn
  uniformly is kept. [num_inputs] booleans."""
  drop_key, pick_key = jax.random.split(key)
  keep = jax.random.bernoulli(drop_key, 1.0 - drop_rate, (num_inputs,))
  one = jnp.arange(num_inputs) == jax.random.randint(pick_key, (), 0, num_inputs)
  return jnp.where(jnp.any(keep), keep, one)


class FractalNet(layers.Classifier):
  """FractalNet: B fractal blocks of C columns, each followed by 2x2 max pooling and dropout,
  then a linear classifier (`head`) on the 1x1 map.

  Arguments:
    num_columns: C; a block's longest column has 2^(C-1) convolutions (Sec. 2).
    widths: the filters of each block's convolutions, one block per entry (Sec. 4: 64, 128, 256,
      512, 512 for 32x32 inputs, which five poolings take to 1x1).
    dropout_rates: dropout on each block's output (`dropout` stream); PAPER_DROPOUT is the
      paper's 0/10/20/30/40% (Sec. 4). Off by default, as Table 1's plain FractalNet rows.
    drop_path: the local drop-path probability of each join input (Sec. 4: 0.15); 0 turns
      drop-path (local and global) off.
    global_fraction: the share of mini-batches that use global drop-path, the others local
      (Sec. 3.1 and 4: 0.5). One draw per call, i.e. per (per-device) mini-batch.
    column: None joins every column; k (0 .. C-1, 0 the shallowest, C-1 the deepest) runs column
      k alone, with the same parameter names (Sec. 4.3, Table 3). In training it is a network
      of that column only (no drop-path).
    pool_columns: pool every column before the block's last join instead of after it, as the
      authors did "purely for convenience" (Sec. 4, implementation details). Off: Fig. 1.
    act / kernel_init / norm: names in layers.ACTIVATIONS / KERNEL_INITS / NORMS. 'xavier'
      (Glorot & Bengio 2010) as the authors' release. Convolutions have no bias unless
      norm='none' (BatchNorm's offset takes its place).
    dtype: computation dtype; parameters and logits are float32.

  In training the drawn path is sown as intermediates['drop_path_column']: the global column,
  or -1 for a local mini-batch.
  """

  num_classes: int
  num_columns: int = 3
  widths: Sequence[int] = (64, 128, 256, 512, 512)
  dropout_rates: Sequence[float] | None = None
  drop_path: float = 0.0
  global_fraction: float = 0.5
  column: int | None = None
  pool_columns: bool = False
  act: str = 'relu'
  kernel_init: str = 'xavier'
  norm: str = 'batch'
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  def _drop_path_draw(self, train: bool) -> tuple[jax.Array, jax.Array, jax.Array] | None:
    """(join key, global?, global column) for this mini-batch, or None when nothing drops."""
    if not train or self.drop_path == 0 or self.column is not None:
      return None
    if not 0 < self.drop_path < 1:
      raise ValueError(f'drop_path must be in [0, 1), got {self.drop_path}')
    if not 0 <= self.global_fraction <= 1:
      raise ValueError(f'global_fraction must be in [0, 1], got {self.global_fraction}')
    key, mode_key, column_key = jax.random.split(self.make_rng('drop_path'), 3)
    is_global = jax.random.bernoulli(mode_key, self.global_fraction)
    chosen = jax.random.randint(column_key, (), 0, self.num_columns)
    self.sow('intermediates', 'drop_path_column', jnp.where(is_global, chosen, -1))
    return key, is_global, chosen

  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    columns = self.num_columns
    if columns < 1:
      raise ValueError(f'num_columns must be >= 1, got {columns}')
    if self.column is not None and not 0 <= self.column < columns:
      raise ValueError(f'column must be None or in [0, {columns}), got {self.column}')
    rates = (0.0,) * len(self.widths) if self.dropout_rates is None else self.dropout_rates
    if len(rates) != len(self.widths):
      raise ValueError(f'{len(rates)} dropout rates for {len(self.widths)} blocks')
    conv = functools.partial(
        nn.Conv, use_bias=self.norm == 'none', dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=layers.get_kernel_init(self.kernel_init))
    norm = functools.partial(
        layers.make_norm, self.norm, train=train, dtype=self.dtype, axis_name=self.bn_axis_name,
        momentum=self.bn_momentum, epsilon=self.bn_epsilon)
    unit = functools.partial(layers.BasicConv2d, kernel_size=3, padding=1, conv=conv, norm=norm,
                             act=layers.get_activation(self.act))
    draw = self._drop_path_draw(train)
    length = 2 ** (columns - 1)  # Sec. 2: the longest column of a block
    # Feature maps: each block's output before its pool (the last map at that resolution), then
    # the last pool's (1x1 for 5 blocks on 32x32). With pool_columns and column=None the
    # columns are pooled before each block's last join (Sec. 4), so no block has one map at its
    # input's resolution: each block's pooled output is marked instead, one stage fewer.
    pooled_joins = self.pool_columns and self.column is None

    def pool(y):  # Sec. 4: 2x2 max pooling after every block
      return nn.max_pool(y, (2, 2), strides=(2, 2))

    joins = 0  # joins so far, numbering each its own drop-path key
    for b, (width, rate) in enumerate(zip(self.widths, rates)):
      def conv_unit(k, position, y, b=b, width=width):
        # The convolution of column k ending at `position`: its i-th, counted from 0.
        i = position // 2 ** (columns - 1 - k) - 1
        return unit(width, name=f'block{b}_col{k}_conv{i}')(y)

      if self.column is not None:  # Sec. 4.3: one column alone
        k = self.column
        for position in range(2 ** (columns - 1 - k), length + 1, 2 ** (columns - 1 - k)):
          x = conv_unit(k, position, x)
        x = pool(self.stage_end(x))
      else:
        inputs = [x] * columns  # what each column's next convolution reads
        for position in range(1, length + 1):
          cols = column_convs(columns, position)
          outs = [conv_unit(k, position, inputs[k]) for k in cols]
          last = position == length
          if last and self.pool_columns:
            outs = [pool(y) for y in outs]
          if len(outs) == 1:
            joined = outs[0]
          elif draw is None:
            joined = join(outs)
          else:
            key, is_global, chosen = draw
            local = local_drop_mask(jax.random.fold_in(key, joins), len(outs), self.drop_path)
            on_chosen = jnp.asarray(cols) == chosen
            # Global: only the chosen column; a join it is not part of feeds only columns
            # deeper than it, which reach the output through no kept path: keep all there.
            chosen_only = jnp.where(jnp.any(on_chosen), on_chosen, True)
            joined = join(outs, jnp.where(is_global, chosen_only, local))
            joins += 1
          for k in cols:
            inputs[k] = joined
        x = joined if self.pool_columns else pool(self.stage_end(joined))
      if rate > 0:
        x = nn.Dropout(rate, deterministic=not train)(x)
      if pooled_joins:
        x = self.stage_end(x)
    return x if pooled_joins else self.stage_end(x)

  def classify(self, x: jax.Array, *, train: bool, pre_logits: bool) -> jax.Array:
    if x.shape[1] != 1 or x.shape[2] != 1:
      raise ValueError(f'FractalNet: {len(self.widths)} poolings leave a {x.shape[1:3]} map; the '
                       f'linear classifier reads a 1x1 map (32x32 inputs for 5 blocks)')
    x = x.reshape((x.shape[0], -1))
    if pre_logits:
      return x.astype(layers.output_dtype(self.dtype))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=layers.get_kernel_init(self.kernel_init), name='head')(x)
    return x.astype(layers.output_dtype(self.dtype))


# Larsson et al. 2016, Sec. 4 (CIFAR): B=5 blocks of filters 64/128/256/512/512, 32x32 inputs,
# 10 classes. Table 1 lists 38.6M parameters for the 20-layer net and 22.9M for the 40-layer one;
# neither is reproduced by these layers (see docs/models.md, "FractalNet options"): the 20-layer
# net as the authors' released generator builds it (gustavla/fractalnet, COLUMNS=3) has 33.7M,
# and Table 1's 40-layer net is a narrower variant (columns of different widths, 1x1 filters,
# projections before joins) that the paper does not specify to the layer. Counts: tests.
_CIFAR = dict(input_size=32, num_classes=10, classifier='head', widths=(64, 128, 256, 512, 512))
register('fractalnet20', FractalNet, num_columns=3, **_CIFAR)
register('fractalnet40', FractalNet, num_columns=4, **_CIFAR)
