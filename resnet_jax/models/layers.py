"""Small shared pieces of the model zoo: activation, kernel-init and norm registries.

Each registry maps a short string (as it appears in a config) to a callable, so a fork that wants
a new activation or initializer adds one entry here instead of a new model.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

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
