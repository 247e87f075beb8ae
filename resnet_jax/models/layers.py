"""Small shared pieces of the model zoo: activation, kernel-init and norm registries, PyTorch-exact
pooling, and the conv-BN-activation unit of the Inception family.

Each registry maps a short string (as it appears in a config) to a callable, so a fork that wants
a new activation or initializer adds one entry here instead of a new model.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  'relu': nn.relu,
  'relu6': nn.relu6,  # min(max(x, 0), 6): MobileNet's (Howard et al. 2017, via TF-slim and timm)
  'leaky_relu': nn.leaky_relu,  # negative slope 0.01, the PyTorch default
  'elu': nn.elu,
  'selu': nn.selu,
  'tanh': jnp.tanh,
  'sigmoid': nn.sigmoid,
  'gelu': functools.partial(nn.gelu, approximate=False),  # exact erf form, as torch.nn.GELU
}

KERNEL_INITS: dict[str, Initializer] = {
  # He et al. 2015b ("Delving Deep into Rectifiers", Sec. 2.2): N(0, 2/fan); fan_out and
  # untruncated, as torchvision's kaiming_normal_(mode='fan_out', nonlinearity='relu').
  'kaiming': nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
  'kaiming_in': nn.initializers.variance_scaling(2.0, 'fan_in', 'normal'),
  'xavier': nn.initializers.xavier_uniform(),  # Glorot & Bengio 2010, Eq. 16
  'lecun': nn.initializers.lecun_normal(),  # LeCun et al. 1998b, Sec. 4.6: variance 1/fan_in
  'normal_0.01': nn.initializers.normal(stddev=0.01),
}

NORMS = ('batch', 'none')


def _lookup(registry: dict[str, Any], kind: str, name: str) -> Any:
  """Returns registry[name], or raises a ValueError listing the valid names."""
  try:
    return registry[name]
  except (KeyError, TypeError):
    raise ValueError(f'unknown {kind} {name!r}; valid: {", ".join(sorted(registry))}') from None


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """The activation function registered as `name` (see ACTIVATIONS)."""
  return _lookup(ACTIVATIONS, 'activation', name)


def get_kernel_init(name: str) -> Initializer:
  """The kernel initializer registered as `name` (see KERNEL_INITS)."""
  return _lookup(KERNEL_INITS, 'kernel_init', name)


def _identity(x: jax.Array) -> jax.Array:
  return x


def make_norm(
    norm: str,
    *,
    train: bool,
    dtype: Any = jnp.float32,
    axis_name: str | None = None,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    scale_init: Initializer = nn.initializers.ones,
    name: str | None = None,
) -> Callable[[jax.Array], jax.Array]:
  """A normalization layer over the channel (last) axis, or the identity for norm='none'.

  Call it inside a compact method: the returned BatchNorm becomes a child of the calling module.
  `axis_name` is the mapped axis ('batch') for cross-replica statistics under shard_map/pmap.
  `momentum` follows the flax convention (0.9 here equals PyTorch's momentum=0.1). Parameters
  and running statistics are float32 whatever `dtype` (the computation dtype) is.
  """
  if norm == 'batch':
    return nn.BatchNorm(
        use_running_average=not train,
        axis_name=axis_name,
        momentum=momentum,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=scale_init,
        name=name,
    )
  if norm == 'none':
    return _identity
  raise ValueError(f'unknown norm {norm!r}; valid: {", ".join(NORMS)}')


# Pooling and flattening as PyTorch computes them, so imported torch weights see the same maps.


def max_pool(
    x: jax.Array, window: int, stride: int, padding: int = 0, ceil_mode: bool = False
) -> jax.Array:
  """torch.nn.MaxPool2d(window, stride, padding, ceil_mode=ceil_mode) on an NHWC batch.

  ceil_mode keeps a last, partial window, emulated by extra -inf padding at the bottom/right; as
  in torch, a window that would start in the right padding is dropped.
  """
  pads = []
  for size in x.shape[1:3]:
    span = size + 2 * padding - window
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
      out -= 1
    extra = max(0, (out - 1) * stride + window - (size + 2 * padding))
    pads.append((padding, padding + extra))
  # reduce_window pads with the -inf identity of max, as torch's max pool ignores its padding.
  return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)


def _adaptive_avg_pool_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
  """Averages `x` along `axis` into `size` bins with torch's edges: [floor(i*n/size),
  ceil((i+1)*n/size)). The bins may overlap (13 -> 6) or repeat a row (1 -> 7)."""
  n = x.shape[axis]
  if n == 0:
    raise ValueError(f'adaptive_avg_pool: empty feature map {x.shape}; the input is too small')
  if n == size:
    return x
  bins = []
  for i in range(size):
    start, end = (i * n) // size, -(-((i + 1) * n) // size)
    window = jax.lax.slice_in_dim(x, start, end, axis=axis)
    bins.append(jnp.mean(window, axis=axis, keepdims=True))
  return jnp.concatenate(bins, axis=axis)


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
  """torch.nn.AdaptiveAvgPool2d(output_size) on an NHWC batch.

  Each output bin is a rectangle of rows x columns with uniform weights, so averaging the rows
  and then the columns gives torch's value; slices, not a matmul, keep it exact in fp32 on TPU.
  """
  x = _adaptive_avg_pool_axis(x, 1, output_size[0])
  return _adaptive_avg_pool_axis(x, 2, output_size[1])


def flatten_nchw(x: jax.Array) -> jax.Array:
  """Flattens NHWC maps in torch's (C, H, W) order, so a torch Linear's weight imports as is."""
  return jnp.transpose(x, (0, 3, 1, 2)).reshape((x.shape[0], -1))


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class BasicConv2d(nn.Module):
  """Convolution (no bias), norm, activation: torchvision's BasicConv2d (submodules `conv`, `bn`).

  `conv` and `norm` are partials bound by the network (dtype, init, BN settings, train mode);
  `padding` is symmetric, per side, as in PyTorch.
  """

  features: int
  kernel_size: int | Sequence[int]
  conv: Any
  norm: Any
  act: Callable[[jax.Array], jax.Array]
  strides: int = 1
  padding: int | Sequence[int] = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = _pair(self.padding)
    x = self.conv(self.features, _pair(self.kernel_size), strides=(self.strides, self.strides),
                  padding=((ph, ph), (pw, pw)), name='conv')(x)
    return self.act(self.norm(name='bn')(x))
