"""Techniques inside the train step: gradient accumulation, EMA, mixup/CutMix, RNG streams."""
from __future__ import annotations

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train import digits_batch, make_config

from resnet_jax import checkpoint, evaluate, steps, train
from resnet_jax.parallel import DataParallel

NORM = dict(mean=(50.0,), std=(90.0,), dtype=jnp.float32)


def fresh_state(config, parallel, image_size=32, ema=False):
  model = train.build_model(config, 10)
  tx = train.build_optimizer(config, 10)
  state = steps.create_train_state(model, tx, jax.random.PRNGKey(0), (image_size, image_size, 1),
                                   ema=ema)
  return parallel.replicate(state)


def test_accumulated_micro_batches_give_the_update_of_the_whole_batch():
  # Goyal et al. 2017: k micro-batches of B/k, gradients averaged, one update = one batch of B
  # (LeNet-5 has no BatchNorm, whose statistics would differ per micro-batch).
  batch = digits_batch(64, 32)
  parallel = DataParallel('shard_map')
  params = {}
  for k in (1, 4):
    config = make_config(grad_accum_steps=k)
    state = fresh_state(config, parallel)
    step = parallel.map(functools.partial(steps.train_step, grad_accum_steps=k, **NORM),
                        ('state', 'batch', 'const'))
    for _ in range(2):
      state, metrics = step(state, parallel.shard_batch(batch), jax.random.PRNGKey(1))
    params[k] = jax.device_get(state.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               params[1], params[4])
  initial = jax.device_get(fresh_state(config, parallel).params)
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), params[4], initial)
  assert min(jax.tree.leaves(moved)) > 1e-4


def test_accumulation_steps_must_divide_the_device_batch():
  with pytest.raises(ValueError, match=r'config.grad_accum_steps=3 must divide the batch of each '
                                       r'device, 8 \(config.batch_size=64 over 8 devices\)'):
    train.setup(make_config(grad_accum_steps=3))


def test_ema_follows_the_closed_form():
  # Weights held at p (learning rate 0) with the average started at p0: after n steps
  # ema = d^n p0 + (1 - d^n) p.
  config = make_config(**{'schedule.name': 'constant', 'schedule.base_lr': 0.0,
                          'optimizer.weight_decay': 0.0})
  parallel = DataParallel('shard_map')
  state = jax.device_get(fresh_state(config, parallel, ema=True))
  p0 = state.params
  p = jax.tree.map(lambda x: x + 1.0, p0)
  state = parallel.replicate(state.replace(params=p))
  step = parallel.map(functools.partial(steps.train_step, ema_decay=0.9, **NORM),
                      ('state', 'batch', 'const'))
  batch = parallel.shard_batch(digits_batch(16, 32))
  for _ in range(5):
    state, _ = step(state, batch, jax.random.PRNGKey(1))
  state = jax.device_get(state)
  jax.tree.map(np.testing.assert_array_equal, state.params, p)
  jax.tree.map(lambda e, a, b: np.testing.assert_allclose(e, 0.9 ** 5 * a + (1 - 0.9 ** 5) * b,
                                                          rtol=1e-5, atol=1e-6),
               state.ema['params'], p0, p)


def test_ema_is_evaluated_saved_and_reported(tmp_path):
  config = make_config(**{'ema_decay': 0.9, 'num_epochs': 0.25, 'eval_every_epochs': 1.0})
  workdir = str(tmp_path)
  results = train.train_and_evaluate(config, workdir)
  assert set(results) == {'split', 'accuracy', 'loss', 'examples', 'step', 'ema_accuracy',
                          'ema_loss'}
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f) == results
  saved = checkpoint.load_state_tree(workdir)
  assert set(saved['ema']) == {'params', 'batch_stats'}
  # The EMA numbers are those of an evaluation with the averaged weights in place of the raw.
  exp = train.setup(config, train=False)
  host = jax.device_get(exp.parallel.unreplicate(exp.state))
  averaged = host.replace(params=jax.tree.map(jnp.asarray, saved['ema']['params']))
  by_hand = train.evaluate(exp, exp.parallel.replicate(averaged))
  assert by_hand['accuracy'] == pytest.approx(results['ema_accuracy'])
  assert by_hand['loss'] == pytest.approx(results['ema_loss'], rel=1e-5)
  assert results['ema_loss'] != pytest.approx(results['loss'], rel=1e-4)
  # --mode=eval reports both too.
  assert evaluate.evaluate_checkpoint(config, workdir) == pytest.approx(results)
  # A config without EMA cannot restore the checkpoint, and the error says which field to set.
  with pytest.raises(ValueError, match='config.ema_decay'):
    evaluate.evaluate_checkpoint(make_config(**{'num_epochs': 0.25}), workdir)


mix = jax.jit(steps.mix_batch,
              static_argnames=('mixup_alpha', 'cutmix_alpha', 'mix_prob', 'switch_prob'))


IMAGES = jax.random.normal(jax.random.PRNGKey(0), (16, 12, 10, 3))


def test_mixup_is_the_convex_combination_with_a_permutation():
  key = jax.random.PRNGKey(3)
  mixed, lam, perm = mix(key, IMAGES, mixup_alpha=0.2)
  again = mix(key, IMAGES, mixup_alpha=0.2)
  jax.tree.map(np.testing.assert_array_equal, (mixed, lam, perm), again)  # Same key, same mix.
  assert sorted(np.asarray(perm).tolist()) == list(range(16)) and 0 < float(lam) < 1
  np.testing.assert_allclose(mixed, lam * IMAGES + (1 - lam) * IMAGES[perm], rtol=1e-6, atol=1e-7)
  other, other_lam, _ = mix(jax.random.PRNGKey(4), IMAGES, mixup_alpha=0.2)
  assert float(other_lam) != float(lam)
  # Beta(0.2, 0.2) (Zhang et al. 2018): most lambdas near 0 or 1.
  keys = jax.random.split(jax.random.PRNGKey(5), 400)
  lams = np.asarray(jax.vmap(lambda k: steps.mix_batch(k, IMAGES[:2], mixup_alpha=0.2)[1])(keys))
  assert np.mean((lams < 0.1) | (lams > 0.9)) > 0.5
  assert abs(np.mean(lams) - 0.5) < 0.1


def test_cutmix_box_area_matches_the_corrected_lambda():
  for seed in range(5):
    mixed, lam, perm = mix(jax.random.PRNGKey(seed), IMAGES, cutmix_alpha=1.0)
    moved = np.asarray(perm) != np.arange(16)
    from_partner = np.all(np.asarray(mixed) == np.asarray(IMAGES)[perm], axis=-1)
    from_self = np.all(np.asarray(mixed) == np.asarray(IMAGES), axis=-1)
    assert np.all(from_partner | from_self)  # Every pixel is one image's or the other's.
    box = from_partner[moved]  # [n, H, W]: the same box for every example.
    assert np.all(box == box[0])
    np.testing.assert_allclose(1 - box[0].mean(), lam, rtol=1e-6)  # Yun et al. 2019, Sec. 3.1.
    rows, cols = np.nonzero(box[0].any(1))[0], np.nonzero(box[0].any(0))[0]
    if rows.size:  # A rectangle.
      assert box[0].sum() == rows.size * cols.size


def test_mixed_targets_sum_to_one_with_label_smoothing():
  labels = jnp.array([0, 1, 2, 3])
  partner = jnp.array([1, 1, 4, 0])
  targets = steps.soft_targets(labels, 5, 0.1, partner, lam=0.7)
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
  # 0.1 smoothing puts 0.92 on the label, 0.02 elsewhere; mixed 0.7 / 0.3.
  np.testing.assert_allclose(targets[0], [0.7 * 0.92 + 0.3 * 0.02, 0.7 * 0.02 + 0.3 * 0.92,
                                          0.02, 0.02, 0.02], rtol=1e-6)
  np.testing.assert_allclose(targets[1], [0.02, 0.92, 0.02, 0.02, 0.02], rtol=1e-6)


def test_with_both_alphas_each_batch_is_mixup_or_cutmix():
  kinds = []
  for seed in range(12):
    mixed, lam, perm = mix(jax.random.PRNGKey(seed), IMAGES, mixup_alpha=1.0, cutmix_alpha=1.0)
    moved = np.asarray(perm) != np.arange(16)
    pasted = (np.asarray(mixed) == np.asarray(IMAGES)[perm])[moved]
    kinds.append('cutmix' if pasted.any() else 'mixup')
    if kinds[-1] == 'mixup':
      np.testing.assert_allclose(mixed, lam * IMAGES + (1 - lam) * IMAGES[perm], rtol=1e-6,
                                 atol=1e-7)
  assert set(kinds) == {'mixup', 'cutmix'}  # mix_switch_prob 0.5: both happen.
  _, lam, _ = mix(jax.random.PRNGKey(0), IMAGES, mixup_alpha=1.0, mix_prob=0.0)
  assert float(lam) == 1.0  # mix_prob 0: never mixed.


class NoisyPool(nn.Module):
  """Draws from the 'fmp' stream in training and evaluation, as fractional max pooling does."""

  @nn.compact
  def __call__(self, x, *, train):
    x = x.reshape(x.shape[0], -1)
    noise = jax.random.normal(self.make_rng('fmp'), x.shape)
    x = x + noise
    if train:
      x = nn.Dropout(0.5, deterministic=False)(x)
    return nn.Dense(10)(x)


def test_train_and_eval_steps_pass_the_rng_streams():
  model = NoisyPool()
  variables = model.init({'params': jax.random.PRNGKey(0), 'fmp': jax.random.PRNGKey(1)},
                         jnp.zeros((1, 8, 8, 1)), train=False)
  state = steps.TrainState.create(apply_fn=model.apply, params=variables['params'],
                                  tx=optax.sgd(0.1), batch_stats={}, ema={},
                                  skipped_steps=jnp.zeros((), jnp.int32))
  parallel = DataParallel('shard_map')
  batch = digits_batch(16, 8)
  step = parallel.map(functools.partial(steps.train_step, **NORM), ('state', 'batch', 'const'))
  new, metrics = step(parallel.replicate(state), parallel.shard_batch(batch),
                      jax.random.PRNGKey(2))
  assert np.isfinite(metrics['loss'])
  evaluate = parallel.map(functools.partial(steps.eval_step, **NORM),
                          ('state', 'batch', 'const'))
  eval_batch = parallel.shard_batch({**batch, 'mask': np.ones(16, np.float32)})
  key = jax.random.fold_in(jax.random.PRNGKey(0), 2)
  first = jax.device_get(evaluate(new, eval_batch, key))
  second = jax.device_get(evaluate(new, eval_batch, key))
  assert first == second  # A fixed key: evaluation is deterministic.
  other = jax.device_get(evaluate(new, eval_batch, jax.random.PRNGKey(9)))
  assert other['loss'] != first['loss']  # ... and the model really draws from it.
