"""Small shared pieces of the model zoo: activation, kernel-init and norm registries, PyTorch-exact
pooling, and the conv-BN-activation unit of the Inception family.

Each registry maps a short string (as it appears in a config) to a callable, so a fork that wants
a new activation or initializer adds one entry here instead of a new model.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


def relu(x: jax.Array) -> jax.Array:
  """max(x, 0), NaN kept, gradient 0 at 0 (as `nn.relu`), written as a select rather than a max.

  The form matters to XLA:CPU's fusion: a max with the constant 0 counts as a unary op, which it
  recomputes inside every consumer rather than reading once. In a ResNet the weight gradient of
  each convolution transposes its input, so each transpose recomputed the residual stream back to
  the start of its stage (BatchNorm, shortcut add and ReLU of every earlier block): 0.36 s of a
  0.82 s ResNet-20 step at batch 128 (docs/benchmarks.md). A select of two full-size operands is
  computed once and read, which takes those transposes to 0.07 s. Values and gradients are those
  of `nn.relu` (but for the gradient at NaN, which passes through).
  """
  return jnp.where(x <= 0, jnp.zeros_like(x), x)


PRELU_PARAM = 'prelu_slope'  # Never weight-decayed (optim.decay_mask): He et al. 2015b, 2.1.


class PReLU(nn.Module):
  """He et al. 2015b ("Delving Deep into Rectifiers"), Eq. 1: f(y) = y for y > 0, a * y otherwise,
  with the slope a learned by backpropagation: one per channel (the channel-wise form), or one
  for the layer (`shared`, the channel-shared variant). a starts at 0.25 (Sec. 2.1) and gets no
  weight decay ("we do not use weight decay when updating a_i", Sec. 2.1). torch.nn.PReLU's
  function; its parameter is `prelu_slope`."""

  shared: bool = False
  initial: float = 0.25

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = () if self.shared else (x.shape[-1],)
    slope = self.param(PRELU_PARAM, nn.initializers.constant(self.initial), shape, jnp.float32)
    return jnp.where(x > 0, x, slope.astype(x.dtype) * x)


def prelu(x: jax.Array) -> jax.Array:
  """A channel-wise PReLU with its own slopes, made where it is called: inside a model's
  compact `__call__` each call site is a new layer (`PReLU_0`, `PReLU_1`, ... of the calling
  module)."""
  return PReLU()(x)


def prelu_shared(x: jax.Array) -> jax.Array:
  """`prelu` with one slope per layer (He et al. 2015b, Sec. 2.1, the channel-shared variant)."""
  return PReLU(shared=True)(x)


def scaled_tanh(x: jax.Array) -> jax.Array:
  """A tanh(B x) with A = 1.7159, B = 0.6666: Ciresan et al. 2010, Sec. 3, after LeCun et al. 1998,
  Appendix A (B = 2/3: f(1) = 1, f(-1) = -1, the steepest gain near the targets)."""
  return 1.7159 * jnp.tanh(0.6666 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  'sigmoid': nn.sigmoid,
  'tanh': jnp.tanh,
  'scaled_tanh': scaled_tanh,  # A tanh(B x), LeCun et al. 1998 / Ciresan et al. 2010
  'relu': relu,  # Nair & Hinton 2010
  'relu6': nn.relu6,  # min(max(x, 0), 6): MobileNet's (Howard et al. 2017, via TF-slim and timm)
  # Maas et al. 2013, Sec. 3: negative slope 0.01 (PyTorch's default too); 'leaky_relu:0.2' sets it.
  'leaky_relu': nn.leaky_relu,
  'elu': nn.elu,  # Clevert et al. 2016, Eq. 1 with alpha = 1; `elu:ALPHA` sets alpha.
  # Klambauer et al. 2017, Eq. 2 and Sec. 3: lambda ~ 1.0507, alpha ~ 1.6733 (fixed point 0, 1).
  'selu': nn.selu,
  # Hendrycks & Gimpel 2016, Sec. 2: x * Phi(x), the exact erf form, as torch.nn.GELU.
  'gelu': functools.partial(nn.gelu, approximate=False),
  'swish': nn.swish,  # Ramachandran et al. 2017, Sec. 4: x * sigmoid(x) (beta = 1), i.e. SiLU
  'silu': nn.silu,
  # He et al. 2015b: learned negative slopes, per channel or one per layer (parameters: PReLU).
  'prelu': prelu,
  'prelu_shared': prelu_shared,
}


def _leaky_relu(slope: float) -> Callable[[jax.Array], jax.Array]:
  return functools.partial(nn.leaky_relu, negative_slope=slope)


def _elu(alpha: float) -> Callable[[jax.Array], jax.Array]:
  return functools.partial(nn.elu, alpha=alpha)


# Activations with one numeric argument, written `name:ARG` in a config ('leaky_relu:0.2'); the
# bare name is the ACTIVATIONS entry. Values: (what the argument is, factory).
PARAMETRIC_ACTIVATIONS: dict[str, tuple[str, Callable[[float], Any]]] = {
  'leaky_relu': ('SLOPE', _leaky_relu),
  'elu': ('ALPHA', _elu),
}

KERNEL_INITS: dict[str, Initializer] = {
  # He et al. 2015b ("Delving Deep into Rectifiers", Sec. 2.2): N(0, 2/fan); fan_out and
  # untruncated, as torchvision's kaiming_normal_(mode='fan_out', nonlinearity='relu').
  'kaiming_out': nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
  # He et al. 2015b, Eq. 10: the forward-pass condition, variance 2/fan_in.
  'kaiming_in': nn.initializers.variance_scaling(2.0, 'fan_in', 'normal'),
  # U(-sqrt(6/fan_in), sqrt(6/fan_in)): variance 2/fan_in, as torch's kaiming_uniform_(a=0).
  'kaiming_uniform': nn.initializers.variance_scaling(2.0, 'fan_in', 'uniform'),
  # Glorot & Bengio 2010, Eq. 16: U(-sqrt(6/(fan_in+fan_out)), +...), variance 2/(fan_in+fan_out).
  'xavier_uniform': nn.initializers.xavier_uniform(),
  # Glorot & Bengio 2010, Sec. 4.2.1's variance 2/(fan_in+fan_out), from a normal (flax truncates
  # it at 2 std and rescales, so the variance is kept).
  'xavier_normal': nn.initializers.xavier_normal(),
  # LeCun et al. 1998b, Sec. 4.6: variance 1/fan_in; Klambauer et al. 2017, Sec. 3 for SELU.
  'lecun': nn.initializers.lecun_normal(),
  'normal': nn.initializers.normal(stddev=0.01),  # Krizhevsky et al. 2012, Sec. 5: N(0, 0.01^2)
  # All weights 0: the course notes' pitfall. Every unit of a layer computes the same output and
  # gets the same update, so the symmetry between them is never broken (experiments/init_study).
  'zeros': nn.initializers.zeros,
}
# The names the models were written with, kept as aliases (the same initializer objects).
KERNEL_INITS['kaiming'] = KERNEL_INITS['kaiming_out']
KERNEL_INITS['xavier'] = KERNEL_INITS['xavier_uniform']
KERNEL_INITS['normal_0.01'] = KERNEL_INITS['normal']


def _normal(std: float) -> Initializer:
  if std <= 0:
    raise ValueError(f'kernel_init normal:{std}: the standard deviation must be > 0')
  return nn.initializers.normal(stddev=std)


def _uniform(bound: float) -> Initializer:
  if bound <= 0:
    raise ValueError(f'kernel_init uniform:{bound}: the bound must be > 0')

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


# Initializers with one numeric argument, written `name:ARG` ('normal:0.01', the course notes'
# small random numbers); the bare name is the KERNEL_INITS entry.
PARAMETRIC_KERNEL_INITS: dict[str, tuple[str, Callable[[float], Initializer]]] = {
  'normal': ('STD', _normal),
  # U(-BOUND, BOUND); 'uniform:0.05': Ciresan et al. 2010, Sec. 3 (weights and biases alike).
  'uniform': ('BOUND', _uniform),
}

# 'batch': layers.BatchNorm; 'flax_batch': flax.linen.BatchNorm itself (the same values and
# variables, differentiated by JAX's autodiff, so forward mode too: jax.jvp, jax.jacfwd).
# 'torch_batch': 'batch' whose running variance averages the unbiased batch variance (n/(n-1)
# times the biased one), as torch.nn.BatchNorm2d's running_var; the training pass is the same.
NORMS = ('batch', 'flax_batch', 'torch_batch', 'none')
HEAD_INITS = ('lecun', 'torch')


def head_init(name: str, fan_in: int) -> dict[str, Initializer]:
  """kernel_init and bias_init of a classifier with `fan_in` inputs: 'lecun' is flax's Dense
  default (LeCun normal, zero bias); 'torch' is torch.nn.Linear's (kaiming_uniform_ with a=sqrt(5):
  weights and bias both U(-1/sqrt(fan_in), 1/sqrt(fan_in)))."""
  if name == 'lecun':
    return {'kernel_init': nn.initializers.lecun_normal(), 'bias_init': nn.initializers.zeros}
  if name == 'torch':
    bound = 1.0 / math.sqrt(fan_in)

    def bias_init(key, shape, dtype=jnp.float32):
      return jax.random.uniform(key, shape, dtype, -bound, bound)
    return {'kernel_init': nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
            'bias_init': bias_init}
  raise ValueError(f'unknown head_init {name!r}; valid: {", ".join(HEAD_INITS)}')


def _lookup(
    registry: dict[str, Any],
    kind: str,
    name: str,
    parametric: dict[str, tuple[str, Callable[[float], Any]]] | None = None,
) -> Any:
  """registry[name], or for 'base:ARG' the parametric factory of `base` called with float(ARG).

  Any other name, or an argument that is not a finite number, is a ValueError listing the valid
  names (parametrised forms as 'leaky_relu:SLOPE').
  """
  parametric = parametric or {}
  valid = ', '.join(sorted([*registry, *(f'{k}:{arg}' for k, (arg, _) in parametric.items())]))
  if not isinstance(name, str):
    raise ValueError(f'unknown {kind} {name!r}; valid: {valid}')
  base, sep, arg = name.partition(':')
  if not sep:
    if name not in registry:
      raise ValueError(f'unknown {kind} {name!r}; valid: {valid}')
    return registry[name]
  if base not in parametric:
    raise ValueError(f'unknown {kind} {name!r} (only {", ".join(sorted(parametric)) or "none"} '
                     f'take an argument); valid: {valid}')
  try:
    value = float(arg)
  except ValueError:
    value = float('nan')  # not a number: rejected just below
  if not abs(value) < float('inf'):  # False for nan and inf
    raise ValueError(f'{kind} {name!r}: {parametric[base][0]} must be a finite number, got '
                     f'{arg!r}; valid: {valid}')
  return parametric[base][1](value)


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """The activation `name` (see ACTIVATIONS), or 'leaky_relu:0.2' style (PARAMETRIC_ACTIVATIONS)."""
  return _lookup(ACTIVATIONS, 'activation', name, PARAMETRIC_ACTIVATIONS)


def max_plus_avg_pool(x: jax.Array, window_shape, strides=None, padding='VALID') -> jax.Array:
  """The sum of max and average pooling over the same windows (Mishkin, Sergievskiy & Matas
  2016, "Systematic evaluation of CNN advances on the ImageNet", pooling variants: max + average
  beat either alone on their CaffeNet at no cost in parameters)."""
  return (nn.max_pool(x, window_shape, strides, padding)
          + nn.avg_pool(x, window_shape, strides, padding))


# Parameter-free pooling of the nets that take a `pool` name (LeNet-5, AlexNet), with
# flax's (x, window_shape, strides, padding) signature.
POOLS: dict[str, Callable[..., jax.Array]] = {
  'avg': nn.avg_pool,  # LeCun et al. 1998's subsampling, without its trainable coefficient
  'max': nn.max_pool,
  'max+avg': max_plus_avg_pool,  # Mishkin et al. 2016
}


def get_pool(name: str) -> Callable[..., jax.Array]:
  """The pooling `name` (see POOLS)."""
  return _lookup(POOLS, 'pool', name)


class ColourTransform(nn.Module):
  """A learned colour-space transform at the input (Mishkin, Sergievskiy & Matas 2016, colour
  spaces: of RGB, HSV, YCbCr, Lab, grey and learned ones, a learned 'mini-network' of 1x1
  convolutions RGB -> 10 -> 3 with very leaky ReLU scored best). Each 1x1 convolution (with bias)
  is followed by `act`; the output has the input's channels, so the net after it is unchanged."""

  hidden: int = 10
  act: str = 'leaky_relu:0.333'  # Very leaky ReLU, slope 1/3 (Graham 2014's; Mishkin et al.).
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = get_activation(self.act)
    conv = dict(dtype=self.dtype, param_dtype=jnp.float32)
    y = act(nn.Conv(self.hidden, (1, 1), name='mix', **conv)(x))
    return act(nn.Conv(x.shape[-1], (1, 1), name='out', **conv)(y))

def get_kernel_init(name: str) -> Initializer:
  """The kernel initializer `name` (see KERNEL_INITS), or 'normal:0.01' style."""
  return _lookup(KERNEL_INITS, 'kernel_init', name, PARAMETRIC_KERNEL_INITS)


def with_hidden_bias(params: dict, value: float, classifier: str) -> dict:
  """`params` with the bias of every layer that has a kernel (convolutions, dense layers) set to
  `value`, but the classifier's (its '/'-joined path, as registered). BatchNorm offsets, also
  named 'bias', sit beside a 'scale', not a kernel, and stay. A small positive value (0.01) is the
  course notes' remedy for ReLUs that start dead; the classifier keeps its own."""
  def walk(node: dict, path: str) -> dict:
    out = {k: walk(v, f'{path}/{k}'.lstrip('/')) if isinstance(v, dict) else v
           for k, v in node.items()}
    if 'kernel' in node and 'bias' in node and path != classifier:
      out['bias'] = jnp.full_like(node['bias'], value)
    return out

  return walk(dict(params), '')


def output_dtype(dtype) -> jnp.dtype:
  """The dtype of a model's logits and BatchNorm's statistics for a compute `dtype`: float32
  from bfloat16 or float32, float64 from float64 (so that the float64 gradient check, `gradcheck`,
  sees a model computed in float64 throughout)."""
  return jnp.promote_types(dtype, jnp.float32)


def _identity(x: jax.Array) -> jax.Array:
  return x


def _channel_sums(a: jax.Array, b: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
  """(sum of a, sum of b) over every axis but the last, both from one pass over the data.

  Variadic reduces: XLA:CPU fuses the producers of a and b (x * x, g * x_hat) into the first,
  where two single reductions each became a reduce-window (its precision rewrite) of a
  materialised operand. One axis at a time (columns, then rows, then images): no float32 sum runs
  over more terms than one axis has, as accurate as XLA's own tree of windows of 32.
  """
  def add(u, v):
    return u[0] + v[0], u[1] + v[1]

  zero = (jnp.zeros((), a.dtype), jnp.zeros((), b.dtype))
  for axis in reversed(range(a.ndim - 1)):
    a, b = jax.lax.reduce((a, b), zero, add, (axis,))
  return (a, b) if axis_name is None else jax.lax.psum((a, b), axis_name)


def _count(x: jax.Array, axis_name: str | None) -> int | jax.Array:
  """How many values each channel's statistics are over (all devices' under `axis_name`)."""
  count = x.size // x.shape[-1]
  return count if axis_name is None else jax.lax.psum(count, axis_name)


def _batch_norm_forward(x, scale, bias, epsilon, axis_name):
  xf = x.astype(output_dtype(x.dtype))
  count = _count(x, axis_name)
  total, total_sq = _channel_sums(xf, xf * xf, axis_name)
  mean = total / count
  var = jnp.maximum(total_sq / count - mean * mean, 0.0)  # E[x^2] - E[x]^2, as flax's default
  inv = jax.lax.rsqrt(var + epsilon)
  y = (xf - mean) * (inv * scale) + bias
  return y, mean, var, inv


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x, scale, bias, epsilon: float, axis_name: str | None):
  """Training-mode BatchNorm over the last axis: (y in float32, batch mean, biased variance).

  The values of flax's BatchNorm (fast variance, float32 statistics); under `axis_name` the
  statistics are over every device's batch, and the gradient of x sums over them as autodiff of
  flax's `pmean` does. Its gradient is the closed form (Ioffe & Szegedy 2015, Sec. 3) with
  sum(g) and sum(g * x_hat) taken in one pass.
  """
  return _batch_norm_forward(x, scale, bias, epsilon, axis_name)[:3]


def _batch_norm_train_fwd(x, scale, bias, epsilon, axis_name):
  y, mean, var, inv = _batch_norm_forward(x, scale, bias, epsilon, axis_name)
  return (y, mean, var), (x, mean, inv, scale)


def _batch_norm_train_bwd(epsilon, axis_name, residuals, cotangents):
  del epsilon
  x, mean, inv, scale = residuals
  g = cotangents[0]  # the statistics feed only batch_stats, never the loss
  x_hat = (x.astype(output_dtype(x.dtype)) - mean) * inv
  # The parameters' gradients are this device's (train_step averages them over devices); x's
  # needs the sums over the whole batch the statistics came from.
  d_bias, d_scale = _channel_sums(g, g * x_hat, None)
  sum_g, sum_g_x_hat = (d_bias, d_scale) if axis_name is None else jax.lax.psum(
      (d_bias, d_scale), axis_name)
  count = _count(x, axis_name)
  dx = (inv * scale) * (g - sum_g / count - x_hat * (sum_g_x_hat / count))
  return dx.astype(x.dtype), d_scale, d_bias


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class BatchNorm(nn.BatchNorm):
  """flax's BatchNorm (same fields, variables and values) over the last axis, with training-mode
  statistics and gradient from `batch_norm_train`: one pass over the data for the statistics and
  one for the gradient's sums, where XLA:CPU made each of the four a separate reduce-window of a
  materialised operand: the ResNet-20 and ResNet-18 training steps on 2 CPU cores ran 1.24x as
  fast (docs/benchmarks.md). Evaluation mode is flax's arithmetic, to the bit.

  Its rules are plain JAX, so grad-of-grad and jvp-of-grad (Hessian products) go through; a
  custom_vjp has no forward mode of its own, so jax.jvp / jacfwd of a training-mode output needs
  norm='flax_batch' (flax's BatchNorm, the same variables).

  `unbiased_running_var`: the running variance averages n/(n-1) times the batch variance, as
  torch's BatchNorm2d (norm='torch_batch'); the normalisation itself uses the biased one in both."""

  unbiased_running_var: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    if self.axis not in (-1, x.ndim - 1) or self.axis_index_groups is not None:
      raise ValueError('layers.BatchNorm normalises over the last axis of the whole batch; use '
                       'flax.linen.BatchNorm for other axes or axis_index_groups')
    running = nn.merge_param('use_running_average', self.use_running_average,
                             use_running_average)
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), features)
    ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), features)
    scale = (self.param('scale', self.scale_init, features, self.param_dtype) if self.use_scale
             else jnp.ones(features, jnp.float32))
    bias = (self.param('bias', self.bias_init, features, self.param_dtype) if self.use_bias
            else jnp.zeros(features, jnp.float32))
    if running:
      y = (x - ra_mean.value) * (jax.lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
    else:
      # At initialisation the mapped axis may not exist yet, and the running averages stay.
      axis_name = None if self.is_initializing() else self.axis_name
      y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, axis_name)
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        if self.unbiased_running_var:
          count = _count(x, axis_name)
          var = var * (count / max(count - 1, 1))
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y.astype(self.dtype or jnp.result_type(x, scale, bias))


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
  if norm in ('batch', 'flax_batch', 'torch_batch'):
    extra = {'unbiased_running_var': True} if norm == 'torch_batch' else {}
    return (nn.BatchNorm if norm == 'flax_batch' else BatchNorm)(
        **extra,
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


# A regularizer that lives inside a model: DropConnect (Wan et al. 2013). Stochastic depth is the
# `stochastic_depth` field of resnet.ResNet; fractional max pooling (Graham 2014) is in fmp.py.


class DropConnectDense(nn.Module):
  """A dense layer with DropConnect (Wan et al. 2013, "Regularization of Neural Networks using
  DropConnect", Sec. 2-3): in training every WEIGHT (and bias) is kept with probability
  1 - `rate`, by an independent Bernoulli mask per example (shape [batch, in, out], and [batch,
  out] for the bias), drawn from the `dropout` RNG stream.

  Scaling is inverted: the kept weights are divided by 1 - rate in training, so at test
  (`deterministic=True`) the layer is the plain dense layer x W + b, the expectation of the
  training output. The paper's inference (Sec. 3: a Gaussian moment-matched to the
  pre-activation, sampled and averaged through the nonlinearity) is replaced by that mean, as
  dropout's mean network is. The per-example mask costs batch x in x out random bits and a
  batched matmul: cheap on classifier heads, heavy on wide layers.

  Parameters are `kernel` [in, out] and `bias` [out], created in nn.Dense's order with its
  default initializers, so a DropConnectDense and an nn.Dense of the same name share checkpoints,
  weight imports and, for one `params` key, their initial values. Inputs are [batch, in].
  """

  features: int
  rate: float = 0.0
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    if not 0.0 <= self.rate < 1.0:
      raise ValueError(f'DropConnect rate must be in [0, 1), got {self.rate}')
    if x.ndim != 2:
      raise ValueError(f'DropConnectDense takes [batch, features] inputs, got shape {x.shape}')
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    if deterministic or self.rate == 0.0:
      y = x @ kernel
      return y if bias is None else y + bias
    keep = 1.0 - self.rate
    kernel_key, bias_key = jax.random.split(self.make_rng('dropout'))
    # Wan et al. 2013, Sec. 2.2: r = a((M * W) v), a mask M per example over the whole matrix.
    mask = jax.random.bernoulli(kernel_key, keep, (x.shape[0], *kernel.shape))
    y = jnp.einsum('bi,bio->bo', x, jnp.where(mask, kernel, 0))
    if bias is not None:
      y = y + jnp.where(jax.random.bernoulli(bias_key, keep, y.shape), bias, 0)
    return y / jnp.asarray(keep, y.dtype)


class FlattenDense(nn.Module):
  """A dense layer on flattened [N, H, W, C] maps (torch's (C, H, W) order, as `flatten_nchw`),
  or, with `fully_conv`, the same layer slid over a larger map as a `window` x `window`
  convolution (Sermanet et al. 2013, Sec. 3.5: "FC layers ... replaced by 1x1 convolutions", the
  first of them a convolution over the whole last feature map).

  Parameters are nn.Dense's `kernel` [window * window * C, features] and `bias` [features], made
  in its order, so both modes (and an nn.Dense of the same name) share checkpoints and weight
  imports. The convolution reads each window as im2col patches in (C, H, W) order and multiplies
  them by the same kernel: on a map of exactly `window` x `window` it computes the very product
  of the flat layer (a [N, 1, 1, features] map), not merely a close one. Outputs: [N, features]
  (inputs flattened already pass as they are), or [N, H - window + 1, W - window + 1, features]
  with `fully_conv`.
  """

  features: int
  fully_conv: bool = False
  window: int | None = None  # fully_conv: the side of the map the layer was built on
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4 and not (x.ndim == 2 and not self.fully_conv):
      raise ValueError(f'FlattenDense takes [N, H, W, C] maps (or [N, features] when not '
                       f'fully_conv), got shape {x.shape}')
    if not self.fully_conv:
      x = flatten_nchw(x) if x.ndim == 4 else x
    elif self.window is None or min(x.shape[1:3]) < self.window:
      raise ValueError(f'FlattenDense(fully_conv): a {self.window}x{self.window} window on '
                       f'{x.shape[1]}x{x.shape[2]} maps')
    else:
      # Exact (a copy, one nonzero tap per output), also where the default precision is bf16.
      x = jax.lax.conv_general_dilated_patches(
          x, (self.window, self.window), (1, 1), 'VALID',
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=jax.lax.Precision.HIGHEST)
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return x @ kernel + bias


# What a model's `__call__(x, train=..., part=...)` computes (Classifier):
# 'logits': the whole net; 'features': the stem and stages, ending in the last feature map
# (timm's forward_features); 'head': that map to logits (forward_head); 'pre_logits': that map
# to what the classifier reads (forward_head(pre_logits=True)).
PARTS = ('logits', 'features', 'head', 'pre_logits')
FEATURES = 'stage_features'  # The `intermediates` key each stage's output is sown under.


class Classifier(nn.Module):
  """The face every zoo model shows: a backbone (stem and stages, ending in a feature map) and a
  head (pooling, the layers before the classifier, the classifier), split as in timm.

  A family defines `backbone(x, *, train)` and `classify(x, *, train, pre_logits)` and marks the
  end of each stage with `self.stage_end(x)`; this class's `__call__` runs them. So
  `num_classes=0` gives the pooled features without a classifier (none is made), and
  `apply(..., method='forward_features' | 'forward_head')` runs each half alone, with the very
  parameters of the whole net. `registry.feature_info` and `create_model(features_only=True)`
  read the sown stage ends (`FEATURES` in `intermediates`; sowing is free unless that collection
  is mutable). A net whose output is not one array (GoogLeNet's auxiliary heads) overrides
  `__call__` and keeps the `part` protocol.
  """

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, part: str = 'logits') -> jax.Array:
    check_part(part)
    if part in ('logits', 'features'):
      x = self.backbone(x, train=train)
      if part == 'features':
        return x
    return self.classify(x, train=train, pre_logits=part == 'pre_logits' or self.num_classes == 0)

  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    raise NotImplementedError(f'{type(self).__name__} defines no backbone')

  def classify(self, x: jax.Array, *, train: bool, pre_logits: bool) -> jax.Array:
    raise NotImplementedError(f'{type(self).__name__} defines no classify')

  def forward_features(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """The last feature map, before any pooling (timm's forward_features)."""
    return self(x, train=train, part='features')

  def forward_head(self, x: jax.Array, *, train: bool = False,
                   pre_logits: bool = False) -> jax.Array:
    """`forward_features`' output to logits, or to the classifier's input (`pre_logits`)."""
    return self(x, train=train, part='pre_logits' if pre_logits else 'head')

  def stage_end(self, x: jax.Array) -> jax.Array:
    """Marks `x` as a stage's output (a feature map for `features_only`); returns it unchanged."""
    self.sow('intermediates', FEATURES, x)
    return x


class AuxClassifier(Classifier):
  """A Classifier with auxiliary classifiers on inner maps (GoogLeNet, Inception-v3), whose
  training output is `(logits, *aux_logits)`. A family defines `trunk(x, *, train, run_aux)`:
  the backbone's map and a tuple of the auxiliary heads' logits (Nones unless `run_aux`), the
  field `aux_logits`, and `classify`. The auxiliary heads read inner maps, so they run inside
  the trunk; they are classifiers, so a net without classes (num_classes=0) has none, and
  `forward_features` / `features_only` build none. Initialisation builds them, so their
  parameters exist for training."""

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               part: str = 'logits') -> jax.Array | tuple[jax.Array, ...]:
    check_part(part)
    if part == 'features':
      return self.backbone(x, train=train)
    pre_logits = part == 'pre_logits' or self.num_classes == 0
    if part in ('head', 'pre_logits'):
      return self.classify(x, train=train, pre_logits=pre_logits)
    with_aux = self.aux_logits and self.num_classes > 0
    x, aux = self.trunk(x, train=train, run_aux=with_aux and (train or self.is_initializing()))
    logits = self.classify(x, train=train, pre_logits=pre_logits)
    if with_aux and train:
      return (logits, *(a.astype(logits.dtype) for a in aux))
    return logits

  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    return self.trunk(x, train=train, run_aux=False)[0]

  def trunk(self, x: jax.Array, *, train: bool,
            run_aux: bool) -> tuple[jax.Array, tuple[jax.Array | None, ...]]:
    raise NotImplementedError(f'{type(self).__name__} defines no trunk')


def check_part(part: str) -> None:
  if part not in PARTS:
    raise ValueError(f'unknown part {part!r}; valid: {", ".join(PARTS)}')
