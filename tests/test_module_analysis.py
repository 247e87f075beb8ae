"""The module-analysis options (Mishkin, Sergievskiy & Matas 2016): pooling as the sum of max and
average pooling, and a learned 1x1 colour transform at the input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import train
from resnet_jax.config import base_config
from resnet_jax.models import count_params, create_model, initial_variables, layers


def test_max_plus_avg_pool_is_the_sum_of_both():
  x = np.random.default_rng(0).standard_normal((2, 7, 7, 3)).astype(np.float32)
  got = layers.get_pool('max+avg')(jnp.asarray(x), (3, 3), strides=(2, 2))
  windows = np.stack([x[:, i:i + 3, j:j + 3] for i in (0, 2, 4) for j in (0, 2, 4)], axis=1)
  want = windows.max(axis=(2, 3)) + windows.mean(axis=(2, 3))  # [2, 9, 3]
  np.testing.assert_allclose(np.asarray(got).reshape(2, 9, 3), want, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match=r"unknown pool 'median'; valid: avg, max, max\+avg"):
    layers.get_pool('median')


def test_colour_transform_is_two_activated_1x1_convolutions():
  module = layers.ColourTransform(hidden=10)
  x = np.random.default_rng(1).standard_normal((2, 4, 4, 3)).astype(np.float32)
  variables = module.init(jax.random.key(0), x)
  p = variables['params']
  assert p['mix']['kernel'].shape == (1, 1, 3, 10) and p['out']['kernel'].shape == (1, 1, 10, 3)
  leaky = lambda z: np.where(z > 0, z, 0.333 * z)  # Very leaky ReLU.
  hidden = leaky(x @ np.asarray(p['mix']['kernel'][0, 0]) + np.asarray(p['mix']['bias']))
  want = leaky(hidden @ np.asarray(p['out']['kernel'][0, 0]) + np.asarray(p['out']['bias']))
  np.testing.assert_allclose(module.apply(variables, x), want, rtol=1e-5, atol=1e-6)


def test_alexnet_options_keep_its_layout_and_train_the_transform():
  # 3 -> 10 -> 3 with biases: 40 + 33 parameters on top of AlexNet's; max+avg adds none.
  assert count_params('alexnet', colour_transform=10) == count_params('alexnet') + 73
  assert count_params('alexnet', pool='max+avg') == count_params('alexnet')
  kwargs = dict(num_classes=5, widths=(8, 8, 8, 8, 8), hidden=16)
  plain = create_model('alexnet', **kwargs)
  model = create_model('alexnet', pool='max+avg', colour_transform=10, **kwargs)
  variables = initial_variables(model, jax.random.key(0), (64, 64, 3))
  assert 'colour' not in initial_variables(plain, jax.random.key(0), (64, 64, 3))['params']
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  shared = {k: v for k, v in variables['params'].items() if k != 'colour'}
  forward = lambda m, v: jax.jit(lambda v: m.apply(v, x, train=False))(v)
  assert not np.allclose(forward(model, variables), forward(plain, {'params': shared}))
  y = jnp.array([0, 3])

  def loss(params):
    logits = model.apply({'params': params}, x, train=False)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), y])

  grads = jax.jit(jax.grad(loss))(variables['params'])
  assert all(np.abs(g).max() > 0 for g in jax.tree_util.tree_leaves(grads['colour']))


def test_the_config_fields_reach_the_model():
  config = base_config()
  config.model.name, config.model.pool = 'lenet5', 'max+avg'
  assert train.build_model(config, 10).pool == 'max+avg'
  config.model.name, config.model.pool, config.model.colour_transform = 'alexnet', None, 10
  assert train.build_model(config, 10).colour_transform == 10
