"""The gradient check of the course notes: jax.grad against centred differences, in float64.

  from resnet_jax import gradcheck
  errors = gradcheck.check_model('lenet5', train=True)     # {parameter path: max relative error}
  errors = gradcheck.check_gradients(loss, params)           # any float64 loss of a pytree

For `samples` coordinates of each parameter (drawn with a seeded NumPy generator; every coordinate
of a smaller one), the analytic derivative from `jax.grad` is compared with the numerical one,
(f(w + h e_i) - f(w - h e_i)) / 2h, by the relative error |a - n| / max(|a|, |n|, floor). It all
runs in float64 (`jax.enable_x64`): in float32 the difference of two nearly equal losses keeps
only a few digits, so the check could not tell a wrong gradient from rounding. The `floor` keeps
a gradient that is zero (a dead unit, an unused bias) from dividing rounding noise by nothing.

A model is checked through `check_model`: created with dtype float64 (its logits and BatchNorm
statistics then stay float64, `layers.output_dtype`), on random images and labels, with training
mode's BatchNorm (the custom gradient of `layers.batch_norm_train`) when `train`. Dropout and the
other random layers draw from one fixed key, so both sides see the same function.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from resnet_jax.models import create_model, initial_variables, model_spec
from resnet_jax.steps import RNG_STREAMS

DEFAULT_STEP = 1e-5
DEFAULT_FLOOR = 1e-8


def relative_error(analytic: np.ndarray, numeric: np.ndarray,
                   floor: float = DEFAULT_FLOOR) -> np.ndarray:
  """|a - n| / max(|a|, |n|, floor), elementwise."""
  scale = np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), floor)
  return np.abs(analytic - numeric) / scale


def check_gradients(loss: Callable, params, *, samples: int = 10, step: float = DEFAULT_STEP,
                    floor: float = DEFAULT_FLOOR, seed: int = 0) -> dict[str, float]:
  """{parameter path: the largest relative error over its sampled coordinates} between
  `jax.grad(loss)` and centred differences of `loss` with step `step`, in float64.

  `loss(params)` must compute in float64 when given float64 parameters (its own arithmetic:
  a float32 model would hide every error under its rounding)."""
  with jax.enable_x64(True):
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
    flat, unravel = ravel_pytree(params)
    flat_loss = jax.jit(lambda v: loss(unravel(v)))
    analytic = np.asarray(ravel_pytree(jax.jit(jax.grad(loss))(params))[0])

    @jax.jit
    def centred(i):
      one = jnp.zeros_like(flat).at[i].set(step)
      return (flat_loss(flat + one) - flat_loss(flat - one)) / (2 * step)

    rng = np.random.default_rng(seed)
    errors, offset = {}, 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
      size = int(np.prod(leaf.shape))
      picked = np.arange(size) if size <= samples else rng.choice(size, samples, replace=False)
      index = offset + picked
      numeric = np.array([float(centred(i)) for i in index])
      errors['/'.join(str(getattr(k, 'key', k)) for k in path)] = float(
          relative_error(analytic[index], numeric, floor).max())
      offset += size
  return errors


def check_model(name: str, *, batch: int = 4, train: bool = True, samples: int = 10,
                step: float = DEFAULT_STEP, floor: float = DEFAULT_FLOOR, seed: int = 0,
                image_size: int | None = None, num_classes: int = 10,
                **overrides) -> dict[str, float]:
  """`check_gradients` of registered model `name` (with `overrides`), in float64: the softmax
  cross-entropy of its logits on `batch` random images (at `image_size`, default the model's)
  and labels, in training mode (`train`: BatchNorm on the batch's statistics, dropout on) or
  evaluation mode."""
  spec = model_spec(name)
  size = image_size or spec['input_size']
  shape = (size, size, spec['in_channels'])
  with jax.enable_x64(True):
    model = create_model(name, num_classes=num_classes, dtype=jnp.float64, **overrides)
    key = jax.random.key(seed)
    variables = initial_variables(model, key, shape)
    images = jax.random.normal(jax.random.fold_in(key, 1), (batch, *shape), jnp.float64)
    labels = jax.random.randint(jax.random.fold_in(key, 2), (batch,), 0, num_classes)
    rngs = {stream: jax.random.fold_in(key, 3 + i) for i, stream in enumerate(RNG_STREAMS)}
    batch_stats = variables['batch_stats']

    def loss(params):
      out = model.apply({'params': params, 'batch_stats': batch_stats}, images, train=train,
                        rngs=rngs, mutable=['batch_stats'] if train else False)
      logits = out[0] if train else out
      logits = logits[0] if isinstance(logits, tuple) else logits  # Auxiliary heads left out.
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return check_gradients(loss, variables['params'], samples=samples, step=step, floor=floor,
                           seed=seed)
