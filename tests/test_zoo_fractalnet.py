"""FractalNet (Larsson et al. 2016): the expansion rule of Eq. 1 against a recursive reference,
block structure, drop-path (local, global, column extraction), parameter counts."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.models import abstract_variables, count_params, create_model, initial_variables
from resnet_jax.models.fractalnet import (
    PAPER_DROPOUT,
    FractalNet,
    column_convs,
    local_drop_mask,
)


def _key(seed):
  # unsafe_rbg: on CPU each threefry kernel takes ~1.5 s to compile per shape; values don't matter.
  return jax.random.key(seed, impl='unsafe_rbg')


# Two tiny blocks on 4x4 inputs: two poolings leave the 1x1 map the classifier reads.
TINY = dict(num_classes=5, widths=(4, 6))
X = jax.random.normal(jax.random.key(0), (3, 4, 4, 3), jnp.float32)


def _tiny(**kwargs):
  return FractalNet(**{**TINY, **kwargs})


@functools.lru_cache(maxsize=None)
def _variables(columns):
  init = functools.partial(initial_variables, _tiny(num_columns=columns), image_shape=X.shape[1:])
  return jax.jit(init)(_key(0))


def _eval(model, variables):
  return jax.jit(model.apply, static_argnames='train')(variables, X, train=False)


@pytest.mark.parametrize('columns', [1, 2, 3, 4])
def test_block_structure(columns):
  """Sec. 2: a block of C columns has 2^C - 1 convolutions, column k has 2^k of them (the
  longest 2^(C-1)), and the network is B * 2^(C-1) convolutions deep."""
  params = abstract_variables(_tiny(num_columns=columns), X.shape[1:])['params']
  block0 = [name for name in params if name.startswith('block0_')]
  assert len(block0) == 2 ** columns - 1
  for k in range(columns):
    assert sum(name.startswith(f'block0_col{k}_') for name in block0) == 2 ** k
  # Every position of a block has the deepest column's convolution; all columns end at the last.
  length = 2 ** (columns - 1)
  assert all(columns - 1 in column_convs(columns, p) for p in range(1, length + 1))
  assert column_convs(columns, length) == list(range(columns))
  assert sum(len(column_convs(columns, p)) for p in range(1, length + 1)) == 2 ** columns - 1


def test_eval_is_the_recursive_expansion_rule(columns=3):
  """Eq. 1, written recursively here with the module's parameters: f_1(z) = conv(z),
  f_{C+1}(z) = join(f_C(f_C(z)), conv(z)), conv = 3x3 conv + BN + ReLU, join = mean, where a
  join whose input is a join takes that join's inputs (Fig. 1: the block's last join averages
  C inputs, one per column, with equal weights)."""
  model = _tiny(num_columns=columns)
  variables = dict(_variables(columns))
  # Non-trivial running statistics, so that BatchNorm is not the identity.
  variables['batch_stats'] = jax.tree_util.tree_map(
      lambda v: v + 0.1 * jnp.arange(v.size, dtype=v.dtype) / v.size, variables['batch_stats'])
  params, stats = variables['params'], variables['batch_stats']

  def unit(name, z):
    kernel = params[name]['conv']['kernel']
    y = jax.lax.conv_general_dilated(z, kernel, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    bn, st = params[name]['bn'], stats[name]['bn']
    y = (y - st['mean']) / jnp.sqrt(st['var'] + 1e-5) * bn['scale'] + bn['bias']
    return jnp.maximum(y, 0)

  def expand(z, block, shallowest, used):
    """The inputs of the last join of f over columns shallowest..C-1 (Fig. 1: adjacent joins
    are one join of all their inputs); `used` counts each column's convolutions consumed."""
    def conv(k, y):
      used[k] += 1
      return unit(f'block{block}_col{k}_conv{used[k] - 1}', y)

    if shallowest == columns - 1:
      return [conv(shallowest, z)]
    first = expand(z, block, shallowest + 1, used)
    deep = expand(sum(first) / len(first), block, shallowest + 1, used)
    return [*deep, conv(shallowest, z)]

  @jax.jit
  def reference(z):
    for block in range(2):
      inputs = expand(z, block, 0, [0] * columns)
      assert len(inputs) == columns  # the block's last join has one input per column
      z = sum(inputs) / columns
      z = jax.lax.reduce_window(z, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')
    return z.reshape((z.shape[0], -1)) @ params['head']['kernel'] + params['head']['bias']

  want = reference(X)
  got = jax.jit(model.apply, static_argnames='train')(variables, X, train=False)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_local_drop_mask_keeps_one_and_is_deterministic():
  keys = jax.random.split(_key(1), 2000)
  cases = [(2, 0.9), (4, 0.5), (3, 0.15)]

  @jax.jit
  def draw(keys):
    return [jax.vmap(local_drop_mask, in_axes=(0, None, None))(keys, n, r) for n, r in cases]

  for masks, again, (num_inputs, rate) in zip(draw(keys), draw(keys), cases):
    assert masks.shape == (2000, num_inputs) and bool(jnp.all(jnp.any(masks, axis=1)))
    np.testing.assert_array_equal(masks, again)
    # Each input kept with probability 1 - rate, plus the at-least-one rescue: P(all dropped)
    # = rate^n, shared out uniformly.
    expected = (1 - rate) + rate ** num_inputs / num_inputs
    assert abs(float(masks.mean()) - expected) < 0.03, (float(masks.mean()), expected)
  # 0.9 drop on two inputs: the rescue is needed in 81% of draws, and both inputs get it.
  rescued = draw(keys)[0]
  assert 0.3 < float(rescued[:, 0].mean()) < 0.7


def test_global_drop_path_is_one_column():
  """Global drop-path (Sec. 3.1) gives exactly the output of the drawn column alone, as the
  `column=k` extraction computes it from the same variables (training mode: the same batch
  statistics too); every column gets drawn."""
  variables = _variables(3)
  model = _tiny(num_columns=3, drop_path=0.15, global_fraction=1.0)

  @jax.jit
  def train(key):
    logits, state = model.apply(variables, X, train=True, rngs={'drop_path': key},
                                mutable=['batch_stats', 'intermediates'])
    return logits, state['intermediates']['drop_path_column'][0]

  @functools.partial(jax.jit, static_argnums=(0, 1))
  def alone(column, train):
    return _tiny(num_columns=3, column=column).apply(variables, X, train=train,
                                                     mutable=['batch_stats'])[0]

  seen = set()
  for seed in range(40):
    logits, column = train(_key(seed))
    column = int(column)
    assert 0 <= column < 3
    if column not in seen:
      seen.add(column)
      np.testing.assert_allclose(logits, alone(column, True), rtol=1e-5, atol=1e-5)
    if len(seen) == 3:
      break
  assert seen == {0, 1, 2}
  # The deepest column alone (Table 3's "deepest column") differs from the joined network.
  full = _eval(_tiny(num_columns=3), variables)
  assert not np.allclose(full, alone(2, False))


def test_local_drop_path_deterministic_given_key_and_eval_has_no_randomness():
  variables = _variables(3)
  model = _tiny(num_columns=3, drop_path=0.5, global_fraction=0.0,
                dropout_rates=(0.1, 0.2))

  @jax.jit
  def train(key):
    rngs = {'drop_path': key, 'dropout': jax.random.fold_in(key, 1)}
    logits, state = model.apply(variables, X, train=True, rngs=rngs,
                                mutable=['batch_stats', 'intermediates'])
    return logits, state['intermediates']['drop_path_column'][0]

  first, column = train(_key(0))
  assert int(column) == -1  # a local mini-batch
  np.testing.assert_array_equal(first, train(_key(0))[0])
  assert any(not np.allclose(first, train(_key(seed))[0]) for seed in range(1, 6))
  # Evaluation draws nothing: no RNG given, every column joined, the same answer every time,
  # whatever the drop-path and dropout settings.
  evaluate = jax.jit(model.apply, static_argnames='train')
  once = evaluate(variables, X, train=False)
  np.testing.assert_array_equal(once, evaluate(variables, X, train=False))
  np.testing.assert_allclose(once, _eval(_tiny(num_columns=3), variables), rtol=1e-6, atol=1e-6)


def test_real_forward_backward():
  model = _tiny(num_columns=3, drop_path=0.15, dropout_rates=(0.1, 0.2), pool_columns=True)
  variables = _variables(3)
  labels = jnp.array([0, 1, 2])

  def loss(params):
    logits, state = model.apply({**variables, 'params': params}, X, train=True,
                                rngs={'drop_path': _key(3), 'dropout': _key(4)},
                                mutable=['batch_stats'])
    onehot = jax.nn.one_hot(labels, 5)
    return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), -1)), state

  (value, state), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])
  assert np.isfinite(value)
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
  assert float(jnp.abs(grads['head']['kernel']).sum()) > 0
  changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)),
                                   variables['batch_stats'], state['batch_stats'])
  assert all(jax.tree_util.tree_leaves(changed))


def test_options_are_checked():
  def init(model, x=X):  # shapes only
    return jax.eval_shape(functools.partial(model.init, train=False), _key(0), x)

  with pytest.raises(ValueError, match='dropout rates'):
    init(_tiny(dropout_rates=PAPER_DROPOUT))
  with pytest.raises(ValueError, match='column'):
    init(_tiny(num_columns=3, column=3))
  with pytest.raises(ValueError, match='1x1'):
    init(_tiny(), jnp.zeros((1, 8, 8, 3)))
  assert create_model('fractalnet20', num_classes=10, drop_path=0.15,
                      dropout_rates=PAPER_DROPOUT).dropout_rates == PAPER_DROPOUT


def _closed_form(columns, widths=(64, 128, 256, 512, 512), classes=10):
  """Per block: C 3x3 convolutions read the block's input, the other 2^C - 1 - C read its width;
  each convolution has a BatchNorm scale and offset; then a linear classifier."""
  total, cin = 0, 3
  for w in widths:
    total += columns * 9 * cin * w + (2 ** columns - 1 - columns) * 9 * w * w
    total += (2 ** columns - 1) * 2 * w
    cin = w
  return total + cin * classes + classes


def test_param_counts():
  assert count_params('fractalnet20') == _closed_form(3) == 33_724_618
  assert count_params('fractalnet40') == _closed_form(4) == 76_106_634
  # The authors' release (gustavla/fractalnet, generation/fractalnet.py, COLUMNS=3) builds the
  # same convolutions with a bias each and BatchNorm without scale or offset: 7 x (64 + 128 +
  # 256 + 512 + 512) = 10,304 parameters fewer than ours, 33,714,314, i.e. 33.7M, not Table 1's
  # 38.6M.
  assert count_params('fractalnet20') - 7 * (64 + 128 + 256 + 512 + 512) == 33_714_314


def test_the_config_fields_reach_fractalnet():
  from resnet_jax import train
  from resnet_jax.config import base_config
  config = base_config()
  config.model.name, config.model.drop_path, config.model.column = 'fractalnet20', 0.15, 2
  model = train.build_model(config, 10)
  assert (model.drop_path, model.column, model.num_columns) == (0.15, 2, 3)
