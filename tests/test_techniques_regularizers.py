"""Regularizers inside models: DropConnect, stochastic depth, fractional max pooling."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import restack_stage1

from resnet_jax.models import create_model, layers
from resnet_jax.models.fmp import (
    FMP_SEQUENCES,
    FractionalMaxPool,
    fmp_boundaries,
    fmp_output_size,
    fmp_regions,
    fmp_sequence,
    fractional_max_pool,
)
from resnet_jax.models.resnet import ResNet


def _key(seed):
  # unsafe_rbg: threefry kernels take seconds each to compile on CPU; the statistics are the same.
  return jax.random.key(seed, impl='unsafe_rbg')


# ---------------------------------------------------------------------------------------------
# DropConnect (Wan et al. 2013).


def _dropconnect(rate, features=4, in_features=8):
  layer = layers.DropConnectDense(features, rate=rate)
  params = layer.init(_key(0), jnp.zeros((1, in_features)), deterministic=True)
  return layer, params


def test_dropconnect_same_key_same_masks_and_one_mask_per_example():
  layer, params = _dropconnect(0.5)
  x = jnp.tile(jax.random.normal(_key(1), (1, 8)), (2, 1))  # the same input twice
  train = functools.partial(layer.apply, params, x, deterministic=False)
  a, b = train(rngs={'dropout': _key(2)}), train(rngs={'dropout': _key(2)})
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a[0], a[1])  # two examples, two masks
  assert not np.allclose(a, train(rngs={'dropout': _key(3)}))


def test_dropconnect_keeps_each_weight_and_bias_with_probability_1_minus_rate():
  rate, n_in, n_out, copies = 0.3, 8, 16, 64
  layer = layers.DropConnectDense(n_out, rate=rate)
  # Example b sees the one-hot input e_{b mod n_in}: output o is its mask entry (b, b mod n_in, o)
  # over 1 - rate (kernel of ones, bias 0); a kernel of zeros and a bias of ones reads the
  # bias mask the same way.
  x = jnp.tile(jnp.eye(n_in), (copies, 1))
  ones, zeros = jnp.ones((n_in, n_out)), jnp.zeros((n_out,))
  for params in ({'kernel': ones, 'bias': zeros}, {'kernel': 0 * ones, 'bias': zeros + 1}):
    y = np.asarray(layer.apply({'params': params}, x, deterministic=False,
                               rngs={'dropout': _key(4)}))
    assert set(np.unique(np.round(y * (1 - rate), 6))) == {0.0, 1.0}
    kept = (y > 0).mean()
    assert abs(kept - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / y.size)  # 8192 draws


def test_dropconnect_mean_of_training_outputs_is_the_test_output():
  rate, n = 0.5, 4000
  layer, params = _dropconnect(rate)
  params = {'params': {**params['params'], 'bias': jnp.linspace(-1.0, 1.0, 4)}}
  x = jax.random.normal(_key(5), (1, 8))
  y = np.asarray(layer.apply(params, jnp.tile(x, (n, 1)), deterministic=False,
                             rngs={'dropout': _key(6)}), np.float64)
  test = np.asarray(layer.apply(params, x, deterministic=True))[0]
  kernel, bias = np.asarray(params['params']['kernel']), np.asarray(params['params']['bias'])
  np.testing.assert_allclose(test, np.asarray(x)[0] @ kernel + bias, rtol=1e-5, atol=1e-6)
  # Independent Bernoulli(1 - r) weights scaled by 1 / (1 - r): per output, variance
  # r / (1 - r) * (sum_i x_i^2 W_io^2 + b_o^2).
  var = rate / (1 - rate) * ((np.asarray(x)[0, :, None] ** 2 * kernel ** 2).sum(0) + bias ** 2)
  assert np.all(np.abs(y.mean(0) - test) < 5 * np.sqrt(var / n))
  np.testing.assert_allclose(y.var(0), var, rtol=0.15)
  # Masks on weights, not units: the outputs are uncorrelated (dropout on x would correlate them).
  corr = np.corrcoef(y.T)[np.triu_indices(4, 1)]
  assert np.all(np.abs(corr) < 0.1)


def test_dropconnect_rate_0_is_dense_with_the_same_parameters():
  x = jax.random.normal(_key(7), (3, 8))
  dense = nn.Dense(4).init(_key(0), x)
  _, params = _dropconnect(0.0)
  _, params_half = _dropconnect(0.5)
  for p in (params, params_half):
    jax.tree_util.tree_map(np.testing.assert_array_equal, p, dense)
  np.testing.assert_allclose(
      layers.DropConnectDense(4, rate=0.0).apply(params, x, deterministic=False),
      nn.Dense(4).apply(dense, x), rtol=1e-6)
  with pytest.raises(ValueError, match=r'\[0, 1\)'):
    _dropconnect(1.0)


def test_lenet_and_resnet_dropconnect():
  x = jax.random.normal(_key(8), (4, 32, 32, 1))
  plain = create_model('lenet5', num_classes=10)
  dc = create_model('lenet5', num_classes=10, dropconnect_rate=0.5)
  # Jitted: one compile each instead of eager per-op compiles.
  init = {m: jax.jit(functools.partial(m.init, train=False)) for m in (plain, dc)}
  variables = init[plain]({'params': _key(0)}, x)
  # The same tree and the same initial values: checkpoints and imports are unchanged.
  jax.tree_util.tree_map(np.testing.assert_array_equal, init[dc]({'params': _key(0)}, x),
                         variables)
  # Inverted scaling: the eval pass is the plain net's.
  np.testing.assert_allclose(jax.jit(functools.partial(dc.apply, train=False))(variables, x),
                             jax.jit(functools.partial(plain.apply, train=False))(variables, x),
                             rtol=1e-6)
  train = jax.jit(lambda key: dc.apply(variables, x, train=True, rngs={'dropout': key}))
  assert not np.allclose(train(_key(1)), train(_key(2)))

  def shapes(model):
    return jax.eval_shape(functools.partial(model.init, train=False), {'params': _key(0)},
                          jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))

  want = shapes(create_model('cifar_resnet20', num_classes=10))
  got = shapes(create_model('cifar_resnet20', num_classes=10, dropconnect_rate=0.5))
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  assert got['params']['head']['kernel'].shape == (64, 10)


# ---------------------------------------------------------------------------------------------
# Stochastic depth (Huang et al. 2016).


def _survival(num_units, drop_last):
  # Huang et al. 2016, Sec. 3, Eq. 4: p_l = 1 - (l / L)(1 - p_L).
  return 1 - np.arange(1, num_units + 1) / num_units * drop_last


def _train_gates(model, x, key):
  @jax.jit
  def run(x, key):
    variables = model.init({'params': _key(0)}, x, train=False)
    return model.apply(variables, x, train=True, rngs={'drop_path': key},
                       mutable=['batch_stats', 'intermediates'])

  out, state = run(x, key)
  return out, np.asarray(state['intermediates']['drop_path_gates'][0])


def test_linear_decay_rule_and_expected_depth_of_resnet110():
  # ResNet-110's 54 units (3 x 18) at a toy width and 4x4 inputs; scanned for a short trace.
  model = ResNet(stage_sizes=(18, 18, 18), widths=(2, 4, 8), stem='cifar', shortcut='A',
                 num_classes=3, stochastic_depth=0.5, scan_blocks=True)
  n = 2000
  _, gates = _train_gates(model, jax.random.normal(_key(9), (n, 4, 4, 3)), _key(10))
  p = _survival(54, 0.5)
  # Huang et al. 2016, Sec. 3: about 40 active units of 54 for ResNet-110 with p_L = 0.5.
  assert p.sum() == pytest.approx(54 - 55 / 4) == pytest.approx(40.25)
  assert gates.shape == (n, 54) and set(np.unique(gates)) <= {0, 1}
  se = np.sqrt(p * (1 - p) / n)
  assert np.all(np.abs(gates.mean(0) - p) < 5 * se + 1e-9)  # per position: kept with p_l
  assert abs(gates.sum(1).mean() - p.sum()) < 5 * np.sqrt((p * (1 - p)).sum() / n)
  assert len({tuple(g) for g in gates[:10]}) == 10  # per example


def test_test_output_is_the_expectation_of_training_outputs():
  # A pre-activation unit without BN: its output is linear in the gate, so Eq. 5 (the branch
  # times p_l at test) is exactly the mean over Bernoulli(p_l) gates.
  model = ResNet(stage_sizes=(2,), widths=(4,), stem='cifar', preact=True, norm='none',
                 num_classes=3, stochastic_depth=0.8)
  x = jnp.tile(jax.random.normal(_key(11), (1, 6, 6, 3)), (64, 1, 1, 1))
  variables = model.init({'params': _key(0)}, x, train=False)
  apply = functools.partial(model.apply, variables, x, capture_intermediates=True)
  _, state = apply(train=True, rngs={'drop_path': _key(12)}, mutable=['intermediates'])
  unit = np.asarray(state['intermediates']['stage0_block0']['__call__'][0])
  stem = np.asarray(state['intermediates']['stem_conv']['__call__'][0])
  gates = np.asarray(state['intermediates']['drop_path_gates'][0])[:, 0]
  assert 0 < gates.sum() < len(gates)
  kept, dropped = unit[gates == 1][0], unit[gates == 0][0]
  np.testing.assert_allclose(dropped, stem[0], rtol=1e-6)  # a dropped unit is its shortcut
  assert not np.allclose(kept, dropped)
  # Identical examples with different gates: every kept one equals `kept`, every dropped one.
  np.testing.assert_allclose(unit[gates == 1], np.broadcast_to(kept, unit[gates == 1].shape),
                             rtol=1e-6)
  _, test_state = apply(train=False, mutable=['intermediates'])
  test_unit = np.asarray(test_state['intermediates']['stage0_block0']['__call__'][0])[0]
  p1 = _survival(2, 0.8)[0]  # 0.6
  np.testing.assert_allclose(test_unit, p1 * kept + (1 - p1) * dropped, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('block, preact', [('basic', False), ('bottleneck', False),
                                           ('basic', True), ('bottleneck', True)])
def test_scan_blocks_same_as_unrolled_for_every_unit(block, preact):
  # zero_init_residual=False: v1 branches that start at 0 would hide the gates.
  kwargs = dict(stage_sizes=(1, 3), widths=(4, 8), stem='cifar', block=block, preact=preact,
                num_classes=3, stochastic_depth=0.5, zero_init_residual=False)
  x = jax.random.normal(_key(13), (6, 8, 8, 3))
  net, scan_net = ResNet(**kwargs), ResNet(**kwargs, scan_blocks=True)
  unrolled = jax.jit(functools.partial(net.init, train=False))({'params': _key(0)}, x)

  scanned = {k: restack_stage1(v) for k, v in unrolled.items()}

  def run(model, variables, key):  # (train output, test output), one compile
    train, _ = model.apply(variables, x, train=True, rngs={'drop_path': key},
                           mutable=['batch_stats'])
    return train, model.apply(variables, x, train=False)

  run_net = jax.jit(functools.partial(run, net))
  want = run_net(unrolled, _key(14))
  got = jax.jit(functools.partial(run, scan_net))(scanned, _key(14))
  jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5),
                         got, want)
  other = run_net(unrolled, _key(15))
  assert not np.allclose(other[0], want[0])  # the gates change the training output


def test_stochastic_depth_needs_residual_units():
  x = jnp.zeros((1, 32, 32, 3))
  with pytest.raises(ValueError, match='residual=False'):
    create_model('plain20', num_classes=10, stochastic_depth=0.5).init(_key(0), x, train=False)
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    create_model('cifar_resnet20', num_classes=10, stochastic_depth=1.5).init(
        _key(0), x, train=False)


# ---------------------------------------------------------------------------------------------
# Fractional max pooling (Graham 2014).


def test_fmp_output_sizes_reproduce_grahams_nets():
  sqrt2, cbrt2 = 2 ** 0.5, 2 ** (1 / 3)
  assert [fmp_output_size(n, sqrt2) for n in (2, 3, 10, 16, 24, 32, 35)] == [
      1, 2, 7, 11, 17, 23, 25]

  def sides(n, alpha, num_fmp):  # (C2 - FMP alpha) x num_fmp: -1, then / alpha
    out = [n]
    for _ in range(num_fmp):
      out += [out[-1] - 1, fmp_output_size(out[-1] - 1, alpha)]
    return out

  # Graham 2014, Sec. 4: MNIST 36x36 under six FMP sqrt 2 layers, CIFAR 94x94 under twelve FMP
  # cube-root-2 layers both end at 2x2, which the final C2 takes to 1x1.
  assert sides(36, sqrt2, 6) == [36, 35, 25, 24, 17, 16, 11, 10, 7, 6, 4, 3, 2]
  assert sides(94, cbrt2, 12)[-1] == 2 and sides(94, cbrt2, 12)[2] == 74
  for n in (5, 10, 35):
    x = jnp.zeros((1, n, n + 3, 2))
    assert fractional_max_pool(x, _key(0)).shape == (
        1, fmp_output_size(n), fmp_output_size(n + 3), 2)
  with pytest.raises(ValueError, match='1 < alpha < 2'):
    fmp_output_size(10, 2.5)


@pytest.mark.parametrize('sequence', FMP_SEQUENCES)
@pytest.mark.parametrize('overlapping', [False, True])
def test_fmp_sequences_and_regions(sequence, overlapping):
  for n in (2, 3, 7, 10, 35, 94):
    n_out = fmp_output_size(n)
    last = n - 1 if overlapping else n
    draws = set()
    for seed in range(8):
      a = np.asarray(fmp_sequence(_key(seed), n, n_out, sequence=sequence,
                                  overlapping=overlapping))
      draws.add(tuple(a))
      assert len(a) == n_out + 1 and a[0] == 0 and a[-1] == last
      assert set(np.diff(a)) <= {1, 2}
      first, end = map(np.asarray, fmp_regions(jnp.asarray(a), overlapping))
      assert first[0] == 0 and end[-1] == n - 1  # the regions cover every row
      if overlapping:  # [a_{i-1}, a_i]: 2 or 3 rows, neighbours share one boundary row
        assert np.all(first[1:] == end[:-1]) and set(end - first + 1) <= {2, 3}
      else:  # [a_{i-1}, a_i - 1]: a partition
        assert np.all(first[1:] == end[:-1] + 1) and set(end - first + 1) <= {1, 2}
      if sequence == 'pseudo_random':
        # a_i = ceil(alpha (i + u)) - ceil(alpha u): within a band of width 1 around alpha i.
        dev = a - last / n_out * np.arange(n_out + 1)
        assert dev.max() - dev.min() < 1
      again = fmp_sequence(_key(seed), n, n_out, sequence=sequence,
                           overlapping=overlapping)
      np.testing.assert_array_equal(again, a)  # same key, same regions
    if n >= 10:
      assert len(draws) > 1  # different keys, different regions


def test_fmp_pools_the_max_of_each_region():
  x = jax.random.normal(_key(16), (2, 11, 9, 3))
  for overlapping in (False, True):
    key = _key(17)
    got = np.asarray(fractional_max_pool(x, key, overlapping=overlapping))
    rows, cols = fmp_boundaries(key, (11, 9), overlapping=overlapping)
    (r0, r1), (c0, c1) = (map(np.asarray, fmp_regions(a, overlapping))
                          for a in (rows, cols))
    want = np.stack([np.stack([np.asarray(x)[:, r0[i]:r1[i] + 1, c0[j]:c1[j] + 1].max((1, 2))
                               for j in range(len(c0))], 1) for i in range(len(r0))], 1)
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(fractional_max_pool(x, _key(18), overlapping=overlapping),
                              got)


def test_fmp_module_draws_from_the_fmp_stream():
  x = jax.random.normal(_key(19), (1, 12, 12, 1))
  pool = FractionalMaxPool()
  a = pool.apply({}, x, rngs={'fmp': _key(1)})
  np.testing.assert_array_equal(a, pool.apply({}, x, rngs={'fmp': _key(1)}))
  assert a.shape == (1, 8, 8, 1)
  assert not np.array_equal(a, pool.apply({}, x, rngs={'fmp': _key(2)}))


def test_fmp_net_test_time_averaging():
  model = functools.partial(create_model, 'fmp_mnist', num_classes=10, filters=4, num_fmp=2,
                            norm='none')
  x = jax.random.normal(_key(20), (2, 12, 12, 1))
  variables = jax.jit(functools.partial(model().init, train=False))({'params': _key(0)}, x)
  fmp = {'fmp': _key(21)}

  @functools.cache
  def evaluate(draws):  # one compile per test_draws
    return jax.jit(lambda rngs: model(test_draws=draws).apply(variables, x, train=False,
                                                              rngs=rngs))

  def probs(draws, rngs=fmp):
    return np.exp(np.asarray(evaluate(draws)(rngs), np.float64))

  p = {d: probs(d) for d in (1, 2, 3)}
  np.testing.assert_array_equal(p[3], probs(3))  # deterministic given the key
  assert not np.allclose(p[3], p[1])
  assert not np.allclose(p[3], probs(3, {'fmp': _key(22)}))
  # Draw d's key does not depend on test_draws, so D p_D - (D - 1) p_{D-1} is draw D's softmax:
  # a probability vector, different for each draw.
  draw = [p[1]] + [d * p[d] - (d - 1) * p[d - 1] for d in (2, 3)]
  for q in draw:
    np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-5)
    assert q.min() > -1e-6
  assert not np.allclose(draw[1], draw[0]) and not np.allclose(draw[2], draw[1])
  # Training: one draw, its logits; same key, same output.
  train = jax.jit(lambda rngs: model().apply(variables, x, train=True, rngs=rngs))
  np.testing.assert_array_equal(train(fmp), train(fmp))
  assert not np.allclose(train(fmp), train({'fmp': _key(22)}))
  with pytest.raises(ValueError, match='fmp'):
    model().apply(variables, x, train=False)
  with pytest.raises(ValueError, match='too small'):
    model(num_fmp=4).init({'params': _key(0)}, x, train=False)
