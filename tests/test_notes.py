"""The course notes' worked numbers, recomputed with jax.grad and the project's own modules."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.models.resnet import BasicBlock, Bottleneck


def test_backpropagation_worked_example():
  # The 2-2-2 sigmoid network of the notes: inputs 0.05, 0.10; targets 0.01, 0.99.
  params = {'w_hidden': jnp.array([[0.15, 0.25], [0.20, 0.30]]), 'b_hidden': 0.35,
            'w_out': jnp.array([[0.40, 0.50], [0.45, 0.55]]), 'b_out': 0.60}
  x, target = jnp.array([0.05, 0.10]), jnp.array([0.01, 0.99])

  def total_error(p):
    hidden = jax.nn.sigmoid(x @ p['w_hidden'] + p['b_hidden'])
    out = jax.nn.sigmoid(hidden @ p['w_out'] + p['b_out'])
    return jnp.sum(0.5 * (target - out) ** 2)

  with jax.default_matmul_precision('highest'):
    error, grads = jax.value_and_grad(total_error)(params)
  assert float(error) == pytest.approx(0.298371109, abs=1e-8)
  # One step of gradient descent with learning rate 0.5 (the biases stay, as in the notes).
  w5 = params['w_out'][0, 0] - 0.5 * grads['w_out'][0, 0]
  w1 = params['w_hidden'][0, 0] - 0.5 * grads['w_hidden'][0, 0]
  assert float(w5) == pytest.approx(0.35891648, abs=1e-7)
  assert float(w1) == pytest.approx(0.149780716, abs=1e-8)


def _conv_kernel_count(unit: nn.Module, channels: int) -> int:
  x = jnp.zeros((1, 8, 8, channels))
  variables = jax.eval_shape(unit.init, jax.random.key(0), x)
  return sum(int(np.prod(v.shape)) for path, v in jax.tree_util.tree_leaves_with_path(
      variables['params']) if path[-1].key == 'kernel')


def _unit(block, features: int):
  conv = functools.partial(nn.Conv, use_bias=False)
  norm = functools.partial(nn.BatchNorm, use_running_average=True)
  return block(features=features, strides=1, conv=conv, norm=norm, act=nn.relu)


def test_bottleneck_saves_parameters_as_the_notes_count():
  # Two 3x3x256 convolutions against 1x1 (256->64), 3x3 (64->64), 1x1 (64->256).
  plain = _conv_kernel_count(_unit(BasicBlock, 256), 256)
  bottleneck = _conv_kernel_count(_unit(Bottleneck, 64), 256)
  assert (plain, bottleneck) == (1_179_648, 69_632)
  assert plain / bottleneck == pytest.approx(16.94, abs=0.005)


def _macs_per_position(module: nn.Module, channels: int, size: int = 8) -> float:
  x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  cost = jax.jit(module.apply).lower(variables, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # XLA counts a multiply-add as 2 FLOPs; circular padding gives every position all 9 taps.
  return cost['flops'] / 2 / (size * size)


class _Reduced3x3(nn.Module):
  """Inception's 1x1 reduction to 64 channels before the 3x3 (Szegedy et al. 2015, Sec. 4)."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(64, (1, 1), use_bias=False)(x)
    x = nn.Conv(64, (3, 3), padding='CIRCULAR', use_bias=False)(x)
    return nn.Conv(256, (1, 1), use_bias=False)(x)


def test_inception_reduction_cuts_the_multiply_adds_per_position():
  direct = _macs_per_position(nn.Conv(256, (3, 3), padding='CIRCULAR', use_bias=False), 256)
  reduced = _macs_per_position(_Reduced3x3(), 256)
  # 3*3*256*256 = 589,824 MACs per output position; the bottleneck about 70k (69,632).
  assert direct == pytest.approx(589_824, rel=0.02)
  assert reduced == pytest.approx(69_632, rel=0.02)
