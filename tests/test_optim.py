"""Optimizers against torch.optim, LARS/LAMB by hand, decay styles, schedules, clipping."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from resnet_jax import babysit, optim, steps, train
from resnet_jax.config import base_config
from resnet_jax.parallel import DataParallel


def make_config(**fields):
  config = base_config()
  config.update_from_flattened_dict({'schedule.name': 'constant', 'schedule.base_lr': 0.1,
                                     'num_epochs': 10.0, **fields})
  return config


def make_params():
  rng = np.random.default_rng(0)
  return {'conv': {'kernel': rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
                   'bias': rng.standard_normal(4).astype(np.float32)},
          'bn': {'scale': (1 + 0.1 * rng.standard_normal(4)).astype(np.float32)},
          'dense': {'kernel': rng.standard_normal((4, 3)).astype(np.float32)}}


def make_grads(params, count: int):
  rng = np.random.default_rng(1)
  return [jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params)
          for _ in range(count)]


def run_optax(config, params, grads):
  tx = train.build_optimizer(config, 10)
  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
  return jax.tree.map(np.asarray, params)


def run_torch(make_optimizer, params, grads, weight_decay: float):
  """torch.optim on the same leaves; weight decay only on kernels (our decay_mask)."""
  leaves, treedef = jax.tree.flatten(params)
  tensors = [torch.tensor(p, requires_grad=True) for p in leaves]
  groups = [{'params': [t for t in tensors if t.ndim > 1], 'weight_decay': weight_decay},
            {'params': [t for t in tensors if t.ndim <= 1], 'weight_decay': 0.0}]
  opt = make_optimizer(groups)
  for g in grads:
    for t, gl in zip(tensors, jax.tree.leaves(g)):
      t.grad = torch.tensor(gl)
    opt.step()
  return jax.tree.unflatten(treedef, [t.detach().numpy() for t in tensors])


WD = 0.05
TORCH_TWINS = {
    'sgd_momentum': ({'optimizer.name': 'sgd'},
                     lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9)),
    'sgd_nesterov': ({'optimizer.name': 'sgd', 'optimizer.nesterov': True},
                     lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, nesterov=True)),
    'sgd_plain': ({'optimizer.name': 'sgd', 'optimizer.momentum': 0.0},
                  lambda g: torch.optim.SGD(g, lr=0.1)),
    'adam_l2': ({'optimizer.name': 'adam', 'schedule.base_lr': 1e-2},
                lambda g: torch.optim.Adam(g, lr=1e-2, betas=(0.9, 0.999), eps=1e-8)),
    'adamw': ({'optimizer.name': 'adamw', 'schedule.base_lr': 1e-2},
              lambda g: torch.optim.AdamW(g, lr=1e-2, betas=(0.9, 0.999), eps=1e-8)),
    # 'adam' with decoupled decay is AdamW, whatever the name.
    'adam_decoupled': ({'optimizer.name': 'adam', 'optimizer.decay_style': 'decoupled',
                        'schedule.base_lr': 1e-2},
                       lambda g: torch.optim.AdamW(g, lr=1e-2)),
    'rmsprop': ({'optimizer.name': 'rmsprop', 'optimizer.momentum': 0.0,
                 'schedule.base_lr': 1e-2},
                lambda g: torch.optim.RMSprop(g, lr=1e-2, alpha=0.9, eps=1e-8)),
    'rmsprop_momentum': ({'optimizer.name': 'rmsprop', 'schedule.base_lr': 1e-2,
                          'optimizer.eps': 1e-3},
                         lambda g: torch.optim.RMSprop(g, lr=1e-2, alpha=0.9, eps=1e-3,
                                                       momentum=0.9)),
}


@pytest.mark.parametrize('case', sorted(TORCH_TWINS))
def test_updates_match_torch_optim(case):
  fields, make_optimizer = TORCH_TWINS[case]
  params = make_params()
  grads = make_grads(params, count=5)
  ours = run_optax(make_config(**{'optimizer.weight_decay': WD, **fields}), params, grads)
  theirs = run_torch(make_optimizer, params, grads, WD)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ours, theirs)
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), ours, params)
  assert min(jax.tree.leaves(moved)) > 1e-3  # Every leaf moved: the comparison means something.


def test_rmsprop_eps_is_outside_the_square_root():
  # One step from v = 0: v = 0.1 g^2, step = g / (sqrt(v) + eps) (torch), not g / sqrt(v + eps).
  params = {'w': np.array([1.0], np.float32)}
  g = {'w': np.array([1e-3], np.float32)}
  config = make_config(**{'optimizer.name': 'rmsprop', 'optimizer.momentum': 0.0,
                          'optimizer.eps': 1e-4, 'optimizer.weight_decay': 0.0,
                          'schedule.base_lr': 1.0})
  step = 1.0 - run_optax(config, params, [g])['w'][0]
  np.testing.assert_allclose(step, 1e-3 / (np.sqrt(0.1) * 1e-3 + 1e-4), rtol=1e-6)


def test_decoupled_decay_differs_for_adam_as_the_formula_says():
  # First Adam step: m_hat = g, v_hat = g^2, so the direction is g / (|g| + eps).
  params = {'w': np.array([[2.0, -1.0]], np.float32)}
  g = {'w': np.array([[0.5, 0.5]], np.float32)}
  lr, wd, eps = 0.01, 0.1, 1e-8
  fields = {'optimizer.name': 'adam', 'optimizer.weight_decay': wd, 'schedule.base_lr': lr}
  l2 = run_optax(make_config(**fields, **{'optimizer.decay_style': 'l2'}), params, [g])['w']
  decoupled = run_optax(make_config(**fields, **{'optimizer.decay_style': 'decoupled'}),
                        params, [g])['w']
  w, gw = params['w'], g['w']
  coupled = gw + wd * w  # L2: the decay goes through Adam's normalisation: a unit step.
  np.testing.assert_allclose(l2, w - lr * coupled / (np.abs(coupled) + eps), rtol=1e-6)
  np.testing.assert_allclose(decoupled, w - lr * (gw / (np.abs(gw) + eps) + wd * w), rtol=1e-6)
  assert np.abs(l2 - decoupled).max() > 1e-4


def test_lars_trust_ratio_by_hand():
  params = {'w': np.array([[3.0, 0.0], [0.0, 4.0]], np.float32),  # ||w|| = 5
            'b': np.array([1.0, 1.0], np.float32)}
  g = {'w': np.array([[0.3, 0.0], [0.0, 0.4]], np.float32), 'b': np.array([0.5, -0.5], np.float32)}
  config = make_config(**{'optimizer.name': 'lars', 'optimizer.weight_decay': 0.1,
                          'schedule.base_lr': 2.0, 'optimizer.momentum': 0.9})
  one = run_optax(config, params, [g])
  # g + 0.1 w = [[0.6, 0], [0, 0.8]], norm 1: local lr = 0.001 * 5 / 1 = 0.005 (You et al. 2017).
  v1 = 2.0 * 0.005 * np.array([[0.6, 0.0], [0.0, 0.8]])
  np.testing.assert_allclose(one['w'], params['w'] - v1, rtol=1e-6)
  np.testing.assert_allclose(one['b'], params['b'] - 2.0 * g['b'], rtol=1e-6)  # Not adapted.
  two = run_optax(config, params, [g, g])
  w1 = params['w'] - v1
  u = g['w'] + 0.1 * w1
  v2 = 0.9 * v1 + 2.0 * 0.001 * np.linalg.norm(w1) / np.linalg.norm(u) * u  # Momentum after lr.
  np.testing.assert_allclose(two['w'], w1 - v2, rtol=1e-5)


def test_lamb_first_step_by_hand():
  params = {'w': np.array([[3.0, 0.0], [0.0, 4.0]], np.float32), 'b': np.array([1.0], np.float32)}
  g = {'w': np.array([[0.2, -0.1], [0.0, 0.4]], np.float32), 'b': np.array([0.5], np.float32)}
  lr, wd, eps = 0.1, 0.01, 1e-6
  config = make_config(**{'optimizer.name': 'lamb', 'optimizer.weight_decay': wd,
                          'schedule.base_lr': lr})
  new = run_optax(config, params, [g])
  u = g['w'] / (np.abs(g['w']) + eps) + wd * params['w']  # You et al. 2020, Alg. 2, t = 1.
  expected = params['w'] - lr * np.linalg.norm(params['w']) / np.linalg.norm(u) * u
  np.testing.assert_allclose(new['w'], expected, rtol=1e-5)
  np.testing.assert_allclose(new['b'], params['b'] - lr * g['b'] / (np.abs(g['b']) + eps),
                             rtol=1e-6)


def test_clipping_scales_a_huge_gradient_to_clip_norm_exactly():
  params = jax.tree.map(np.zeros_like, make_params())  # So that new - old is the update exactly.
  config = make_config(**{'optimizer.momentum': 0.0, 'optimizer.weight_decay': 0.0,
                          'optimizer.clip_norm': 2.0, 'schedule.base_lr': 1.0})
  huge = jax.tree.map(lambda g: 1e6 * g, make_grads(params, 1)[0])
  new = run_optax(config, params, [huge])
  step = jax.tree.map(lambda a, b: a - b, params, new)
  np.testing.assert_allclose(float(optax.tree.norm(step)), 2.0, rtol=1e-6)
  direction = jax.tree.map(lambda s, g: s / g, step, huge)  # Every leaf scaled alike.
  np.testing.assert_allclose(np.concatenate([d.ravel() for d in jax.tree.leaves(direction)]),
                             2.0 / float(optax.tree.norm(huge)), rtol=1e-5)
  small = jax.tree.map(lambda g: g / float(optax.tree.norm(huge)), huge)  # Norm 1: untouched.
  new = run_optax(config, params, [small])
  jax.tree.map(lambda a, b, g: np.testing.assert_allclose(a - b, g, rtol=1e-6),
               params, new, small)


def test_loss_and_l2_decay_styles_give_the_same_sgd_update():
  from test_train import digits_batch
  batch = digits_batch(32, 32)
  parallel = DataParallel('shard_map')
  results = {}
  for style in ('l2', 'loss'):
    config = make_config(**{'optimizer.decay_style': style, 'optimizer.weight_decay': 0.05})
    model = train.build_model(config, 10)
    tx = train.build_optimizer(config, 10)
    state = parallel.replicate(
        steps.create_train_state(model, tx, jax.random.PRNGKey(0), (32, 32, 1)))
    initial = jax.device_get(state.params)
    step = parallel.map(functools.partial(
        steps.train_step, mean=(50.0,), std=(90.0,), dtype=jnp.float32,
        loss_weight_decay=optim.loss_weight_decay(config.optimizer)), ('state', 'batch', 'const'))
    state, metrics = step(state, parallel.shard_batch(batch), jax.random.PRNGKey(1))
    state, _ = step(state, parallel.shard_batch(batch), jax.random.PRNGKey(1))
    results[style] = jax.device_get(state.params)
  kernels = [p for p in jax.tree.leaves(initial) if p.ndim > 1]
  np.testing.assert_allclose(metrics['decay_loss'],
                             0.5 * 0.05 * sum(float(np.sum(k ** 2)) for k in kernels), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               results['l2'], results['loss'])
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), results['l2'], initial)
  assert min(jax.tree.leaves(moved)) > 1e-4


def test_l1_penalty_gradient_is_l1_sign_w_on_the_decayed_weights():
  params = make_params()
  params['conv']['kernel'][0, 0, 0, 0] = 0.0  # The subgradient at 0 is 0.
  for everything in (False, True):
    value, grads = jax.value_and_grad(optim.l1_loss)(params, 0.01, everything)
    decayed = optim.decay_mask(params, everything)
    expected = jax.tree.map(lambda p, d: 0.01 * np.sign(p) * d, params, decayed)
    jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-6), grads, expected)
    total = sum(float(np.abs(p).sum()) for p, d in
                zip(jax.tree.leaves(params), jax.tree.leaves(decayed)) if d)
    np.testing.assert_allclose(value, 0.01 * total, rtol=1e-6)
  assert float(grads['conv']['bias'][0]) != 0 and float(grads['conv']['kernel'][0, 0, 0, 0]) == 0


def test_elastic_net_step_adds_lr_l1_sign_w_to_the_l2_update():
  """Plain SGD, one step from the same state and batch, weight decay 0.05 on both: with l1 the
  update of every kernel moves by -lr * l1 * sign(w) more (elastic net), biases as without."""
  from test_train import digits_batch
  batch = digits_batch(32, 32)
  parallel = DataParallel('shard_map')
  config = make_config(**{'optimizer.momentum': 0.0, 'optimizer.weight_decay': 0.05})
  model = train.build_model(config, 10)
  state = parallel.replicate(steps.create_train_state(
      model, train.build_optimizer(config, 10), jax.random.PRNGKey(0), (32, 32, 1)))
  initial = jax.device_get(state.params)
  new = {}
  for l1 in (0.0, 0.02):
    step = parallel.map(functools.partial(steps.train_step, mean=(50.0,), std=(90.0,),
                                          dtype=jnp.float32, l1=l1), ('state', 'batch', 'const'))
    moved, metrics = step(state, parallel.shard_batch(batch), jax.random.PRNGKey(1))
    new[l1] = jax.device_get(moved.params)
  kernels = [p for p in jax.tree.leaves(initial) if p.ndim > 1]
  np.testing.assert_allclose(metrics['l1_loss'],
                             0.02 * sum(float(np.abs(k).sum()) for k in kernels), rtol=1e-5)
  jax.tree.map(lambda w, a, b: np.testing.assert_allclose(
      b - a, -0.1 * 0.02 * np.sign(w) * (w.ndim > 1), atol=2e-7), initial, new[0.0], new[0.02])


def test_unknown_names_are_errors_listing_the_valid_ones():
  with pytest.raises(ValueError, match=r"config.optimizer.name 'adagrad' is not one of .*'lamb'"):
    train.build_optimizer(make_config(**{'optimizer.name': 'adagrad'}), 10)
  with pytest.raises(ValueError, match=r"config.optimizer.decay_style 'l1' .*'decoupled'"):
    train.build_optimizer(make_config(**{'optimizer.decay_style': 'l1'}), 10)
  with pytest.raises(ValueError, match=r"config.schedule.name 'cosin' .*'cosine_restarts'"):
    train.build_schedule(make_config(**{'schedule.name': 'cosin'}), 10)


def lrs(at, **fields):
  schedule = train.build_schedule(make_config(**fields), 10)
  return [float(schedule(s)) for s in at]


def test_step_and_multistep_drops():
  # Every 2 epochs (20 steps), halved.
  assert lrs([0, 19, 20, 39, 40, 99], **{'schedule.name': 'step', 'schedule.step_epochs': 2.0,
                                         'schedule.decay_factor': 0.5}) == pytest.approx(
      [0.1, 0.1, 0.05, 0.05, 0.025, 0.1 * 0.5 ** 4])
  # At epochs 3 and 5, counted from the start of training, through a 1-epoch warmup.
  multistep = {'schedule.name': 'multistep', 'schedule.boundaries': (3.0, 5.0),
               'schedule.warmup_epochs': 1.0}
  assert lrs([0, 5, 10, 29, 30, 49, 50], **multistep) == pytest.approx(
      [0.0, 0.05, 0.1, 0.1, 0.01, 0.01, 0.001])
  # 'step' without step_epochs keeps its old meaning: drops at the boundaries.
  assert lrs([29, 30], **{'schedule.name': 'step', 'schedule.boundaries': (3.0,)}) == \
      pytest.approx([0.1, 0.01])


def test_exponential_decays_by_the_factor_per_epoch():
  assert lrs([0, 10, 25], **{'schedule.name': 'exponential', 'schedule.decay_factor': 0.5}) == \
      pytest.approx([0.1, 0.05, 0.1 * 0.5 ** 2.5], rel=1e-6)


def test_the_range_tests_growth_stays_finite_over_a_long_epoch():
  """lr_find's 200 steps from 1e-5 to 10 in an epoch of ImageNet's 10,009 steps of 128: a
  per-epoch factor of 1e302, inf in float32; the rates are still the range, step by step."""
  config = babysit.lr_find_config(make_config(**{'babysit.lr_find_range': (1e-5, 10.0),
                                                 'babysit.lr_find_steps': 200}), 10_009)
  schedule = train.build_schedule(config, 10_009)
  got = np.array([float(schedule(s)) for s in (0, 1, 100, 199)])
  np.testing.assert_allclose(got, 1e-5 * 1e6 ** (np.array([0, 1, 100, 199]) / 199), rtol=1e-4)
  with pytest.raises(ValueError, match='lr_find_steps or a narrower range'):
    babysit.lr_find_config(make_config(**{'babysit.lr_find_range': (1e-9, 10.0)}), 10_009)


def test_cosine_endpoints_and_midpoint():
  assert lrs([0, 50, 100], **{'schedule.name': 'cosine'}) == pytest.approx([0.1, 0.05, 0.0],
                                                                            abs=1e-7)


def test_sgdr_restarts_to_base_with_growing_periods():
  # T_0 = 1 epoch = 10 steps, T_mult = 2: cycles [0, 10), [10, 30), [30, 70), [70, ...).
  fields = {'schedule.name': 'cosine_restarts', 'schedule.restart_epochs': 1.0,
            'schedule.restart_mult': 2.0}
  values = lrs(range(100), **fields)
  restarts = [s for s in range(1, 100) if values[s] > values[s - 1]]
  assert restarts == [10, 30, 70]
  assert [values[s] for s in (0, 10, 30, 70)] == pytest.approx([0.1] * 4)
  # Half way through each cycle: half the rate (Loshchilov & Hutter 2017, Eq. 5).
  assert [values[s] for s in (5, 20, 50)] == pytest.approx([0.05] * 3, rel=1e-5)
  assert values[29] == pytest.approx(0.05 * (1 + np.cos(np.pi * 19 / 20)), rel=1e-4)


def test_onecycle_peaks_at_pct_start():
  values = lrs(range(101), **{'schedule.name': 'onecycle', 'schedule.pct_start': 0.3})
  assert int(np.argmax(values)) == 30 and values[30] == pytest.approx(0.1)
  assert values[0] == pytest.approx(0.1 / 25)
  assert values[100] == pytest.approx(0.1 / 25 / 1e4)
  assert values[15] == pytest.approx((0.1 / 25 + 0.1) / 2, rel=1e-5)  # Cosine: the midpoint.
  linear = lrs([0, 15, 30, 85, 100], **{'schedule.name': 'onecycle_linear'})
  assert linear == pytest.approx([0.004, 0.052, 0.1, 0.004, 0.004 / 1e4], rel=1e-5)


def test_polynomial_decay():
  assert lrs([0, 50, 75, 100], **{'schedule.name': 'polynomial', 'schedule.power': 2.0}) == \
      pytest.approx([0.1, 0.025, 0.1 / 16, 0.0], abs=1e-8)


def test_warmup_ramps_linearly_then_runs_the_main_schedule():
  values = lrs([0, 5, 10, 55, 100], **{'schedule.name': 'cosine', 'schedule.warmup_epochs': 1.0})
  # Goyal et al. 2017, Sec. 2.2: linear ramp over 10 steps; then cosine over the other 90.
  assert values == pytest.approx([0.0, 0.05, 0.1, 0.05, 0.0], abs=1e-7)


def test_linear_scaling_rule_counts_the_update_batch():
  # Goyal et al. 2017, Sec. 2.1: lr = 0.1 * 1024 / 256; accumulation does not change the batch
  # of an update.
  for k in (1, 4):
    config = make_config(**{'batch_size': 1024, 'schedule.scale_by_batch': True,
                            'grad_accum_steps': k})
    assert optim.base_learning_rate(config.schedule, config.batch_size) == pytest.approx(0.4)
