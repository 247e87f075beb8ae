"""Auxiliary classifiers trained from the config (Szegedy et al. 2015, Sec. 5): GoogLeNet's two
heads through the real train step and a whole run."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train import digits_batch, make_config

from resnet_jax import steps, train
from resnet_jax.parallel import DataParallel


def test_googlenet_train_step_adds_its_auxiliary_losses_with_weight_0_3():
  config = make_config(**{'model.name': 'googlenet', 'model.aux_logits': True,
                          'model.dropout_rate': 0.0, 'label_smoothing': 0.1})
  # The config reaches the module; the aux heads' own dropout off too, so both sides agree.
  model = train.build_model(config, 10).clone(aux_dropout_rate=0.0)
  assert model.aux_logits
  options = train.train_step_options(config, model)
  assert options['aux_weight'] == type(model).AUX_WEIGHT == 0.3
  batch = digits_batch(16, 32)
  # unsafe_rbg: on CPU, threefry's kernels take longer to compile than GoogLeNet's init.
  init_key = jax.random.key(0, impl='unsafe_rbg')
  state = jax.jit(lambda key: steps.create_train_state(model, optax.sgd(0.5), key, (32, 32, 1)))(
      init_key)
  parallel = DataParallel('shard_map', devices=jax.devices()[:1])  # BN sees the whole batch.
  step = parallel.map(functools.partial(steps.train_step, mean=(50.0,), std=(90.0,), **options),
                      ('state', 'batch', 'const'))
  replicated = parallel.replicate(state)
  for _ in range(2):  # Check the second step: after one update the three heads disagree.
    before = jax.device_get(parallel.unreplicate(replicated))
    replicated, metrics = step(replicated, parallel.shard_batch(batch), jax.random.PRNGKey(1))
  metrics = jax.device_get(parallel.unreplicate(metrics))

  x = steps.normalize(jnp.asarray(batch['image']), (50.0,), (90.0,), jnp.float32)
  apply = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))
  (logits, aux1, aux2), _ = apply({'params': before.params, 'batch_stats': before.batch_stats}, x)
  targets = 0.9 * np.eye(10)[batch['label']] + 0.1 / 10  # label smoothing 0.1
  ce = lambda z: float(np.mean(-np.sum(targets * jax.nn.log_softmax(z), axis=-1)))
  main, first, second = ce(logits), ce(aux1), ce(aux2)
  assert min(abs(main - first), abs(main - second), abs(first - second)) > 1e-3
  np.testing.assert_allclose(metrics['aux_loss'], first + second, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss'], main + 0.3 * (first + second), rtol=1e-5)
  np.testing.assert_allclose(metrics['accuracy'],
                             np.mean(np.argmax(logits, -1) == batch['label']))


@pytest.mark.slow  # ~75 s on 2 idle cores: GoogLeNet's init, step and eval compile, its save.
def test_googlenet_with_auxiliary_heads_trains_and_evaluates(tmp_path):
  # 32x32 digits: the heads' adaptive 4x4 pool takes the 2x2 maps after inception4a/4d.
  # 2 steps (0.1 of 22 per epoch), logged, checkpointed and evaluated once: one compile each.
  config = make_config(**{'model.name': 'googlenet', 'model.aux_logits': True,
                          'num_epochs': 0.1, 'log_every_steps': 2, 'checkpoint_every_steps': 2,
                          'schedule.base_lr': 0.01})
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['examples'] == 360 and np.isfinite(results['loss'])  # evaluation: logits only
  logged = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  train_lines = [line for line in logged if 'train/loss' in line]
  assert train_lines and all(line['train/loss'] > 0.3 * line['train/aux_loss'] > 0
                             for line in train_lines)
  # Two heads near chance at the start: aux_loss ~ 2 log(10).
  assert abs(train_lines[0]['train/aux_loss'] - 2 * np.log(10)) < 1.0
