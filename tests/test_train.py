"""The train step under data parallelism, the loop, exact resume and the command line."""
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import run_main

from resnet_jax import checkpoint, metrics, steps, train
from resnet_jax.config import base_config
from resnet_jax.data import load_split
from resnet_jax.parallel import DataParallel


def make_config(**fields):
  """A small digits run; `fields` are dotted config paths, as on the command line."""
  config = base_config()
  config.update_from_flattened_dict({
      'model.name': 'lenet5', 'dataset.source': 'digits', 'dataset.image_size': 32,
      'num_epochs': 1.0, 'batch_size': 64, 'schedule.base_lr': 0.05, 'log_every_steps': 5,
      'checkpoint_every_steps': 5, 'eval_every_epochs': 1.0, **fields})
  return config


def digits_batch(n: int, image_size: int) -> dict:
  records = load_split(base_config().dataset, 'train').records
  from resnet_jax.data.augment import resize
  images = np.stack([resize(records[i]['image'], image_size, image_size) for i in range(n)])
  labels = np.array([records[i]['label'] for i in range(n)], np.int32)
  return {'image': images, 'label': labels}


def run_steps(config, parallel: DataParallel, batch: dict, count: int):
  """`count` train steps of config's model on the same global batch; returns host params etc."""
  model = train.build_model(config, 10)
  tx = train.build_optimizer(config, 10)
  state = steps.create_train_state(model, tx, jax.random.PRNGKey(0),
                                   (*batch['image'].shape[1:],))
  state = parallel.replicate(state)
  step = parallel.map(functools.partial(steps.train_step, mean=(50.0,), std=(90.0,),
                                        dtype=jnp.float32), ('state', 'batch', 'const'))
  for _ in range(count):
    state, metrics = step(state, parallel.shard_batch(batch), jax.random.PRNGKey(1))
  state = jax.device_get(parallel.unreplicate(state))
  return {'params': state.params, 'batch_stats': state.batch_stats}, jax.device_get(
      parallel.unreplicate(metrics))


@pytest.mark.parametrize('mode', ['shard_map', 'pmap'])
@pytest.mark.parametrize('model', ['lenet5', 'cifar_resnet20'])
def test_eight_devices_match_one_device_on_the_same_global_batch(mode, model):
  # Sync BN makes BatchNorm see the global batch, as a single device does. Zero-init (ResNet):
  # the units start at the identity, where training is well conditioned, so reduction order
  # stays at rounding level over two steps (from BN's plain init float32 rounding alone moves
  # the second step's loss by ~1e-3: test_parity).
  resnet = {'model.sync_bn': True, 'model.zero_init_residual': True} if model != 'lenet5' else {}
  config = make_config(**{'model.name': model, **resnet})
  batch = digits_batch(32, 32 if model == 'lenet5' else 16)
  eight, m8 = run_steps(config, DataParallel(mode), batch, count=2)
  one, m1 = run_steps(config, DataParallel(mode, devices=jax.devices()[:1]), batch, count=2)
  assert len(jax.devices()) == 8
  np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), eight, one)


def test_shard_map_and_pmap_give_identical_parameters():
  config = make_config(**{'model.name': 'cifar_resnet20'})
  batch = digits_batch(32, 16)
  by_shard_map, _ = run_steps(config, DataParallel('shard_map'), batch, count=3)
  by_pmap, _ = run_steps(config, DataParallel('pmap'), batch, count=3)
  # The same step function; XLA may order the all-reduce sums differently: a few ulps at most.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               by_shard_map, by_pmap)


def test_per_device_batch_norm_statistics_are_averaged_across_devices():
  config = make_config(**{'model.name': 'cifar_resnet20'})  # Per-device BN (no sync).
  batch = digits_batch(32, 16)
  eight, _ = run_steps(config, DataParallel('shard_map'), batch, count=1)
  # Device d normalised with the statistics of its own 4 examples; the saved running mean is
  # the average over devices, which for the first BN is the global batch's mean (linear).
  one, _ = run_steps(config, DataParallel('shard_map', devices=jax.devices()[:1]), batch, 1)
  stem_mean = lambda s: s['batch_stats']['stem_bn']['mean']
  np.testing.assert_allclose(stem_mean(eight), stem_mean(one), rtol=1e-4, atol=1e-6)
  # The variances differ (4-example versus 32-example statistics): BN really was per device.
  # Running var = 0.9 * 1 + 0.1 * batch var (flax momentum 0.9): recover the batch variances.
  batch_var = lambda s: (s['batch_stats']['stem_bn']['var'] - 0.9) / 0.1
  assert not np.allclose(batch_var(eight), batch_var(one), rtol=1e-3)


def test_bfloat16_computes_in_bf16_with_float32_parameters():
  config = make_config(**{'dtype': 'bfloat16', 'model.name': 'cifar_resnet20'})
  batch = digits_batch(16, 16)
  state, metrics = run_steps(config, DataParallel('shard_map'), batch, count=1)
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(state['params']))
  assert np.isfinite(metrics['loss'])


def test_learning_rate_schedules_and_linear_scaling():
  config = make_config(**{'schedule.name': 'step', 'schedule.boundaries': (2.0, 4.0),
                          'schedule.base_lr': 0.1, 'num_epochs': 6.0})
  lr = train.build_schedule(config, 10)
  assert [float(lr(s)) for s in (0, 19, 20, 39, 40)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001])
  config = make_config(**{'schedule.name': 'cosine', 'schedule.warmup_epochs': 1.0,
                          'schedule.scale_by_batch': True, 'batch_size': 1024})
  lr = train.build_schedule(config, 10)
  assert float(lr(0)) == 0.0 and float(lr(10)) == pytest.approx(0.2)  # 0.05 * 1024 / 256.
  assert float(lr(5)) == pytest.approx(0.1)


def test_weight_decay_skips_batch_norm_and_biases():
  params = {'conv': {'kernel': jnp.ones((3, 3, 1, 2))}, 'bn': {'scale': jnp.ones(2),
            'bias': jnp.ones(2)}, 'dense': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}}
  config = make_config(**{'optimizer.weight_decay': 0.5, 'schedule.name': 'constant',
                          'schedule.base_lr': 1.0, 'optimizer.momentum': 0.0})
  tx = train.build_optimizer(config, 1)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert float(new['conv']['kernel'][0, 0, 0, 0]) == 0.5
  assert float(new['bn']['scale'][0]) == 1.0 and float(new['dense']['bias'][0]) == 1.0


def test_resume_is_bit_identical(tmp_path):
  # ResNet-20 (BN statistics, momentum) on augmented digits: the data order, the augmentation
  # and the optimizer must all continue exactly where they stopped; so must the EMA weights and
  # BN averages, and the micro-batches of gradient accumulation.
  config = make_config(**{'model.name': 'cifar_resnet20', 'dataset.image_size': 16,
                          'dataset.augment': 'cifar', 'num_epochs': 0.5, 'batch_size': 64,
                          'checkpoint_every_steps': 4, 'ema_decay': 0.9, 'grad_accum_steps': 2})
  straight = train.train_and_evaluate(config, str(tmp_path / 'straight'))
  halted = train.train_and_evaluate(config, str(tmp_path / 'restarted'), stop_at_step=6)
  assert halted == {'step': 6, 'preempted': True}
  resumed = train.train_and_evaluate(config, str(tmp_path / 'restarted'))
  assert straight['step'] == resumed['step'] == 11
  a = checkpoint.load_state_tree(str(tmp_path / 'straight'))
  b = checkpoint.load_state_tree(str(tmp_path / 'restarted'))
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert straight == resumed


def test_nan_never_reaches_a_checkpoint(tmp_path):
  workdir = str(tmp_path)
  config = make_config(**{'checkpoint_every_steps': 5})
  train.train_and_evaluate(config, workdir, stop_at_step=5)
  good = checkpoint.load_state_tree(workdir)
  config.schedule.base_lr = 1e12  # Diverges at once.
  with pytest.raises(FloatingPointError, match='base_lr'):
    train.train_and_evaluate(config, workdir, allow_config_change=('schedule.base_lr',))
  kept = checkpoint.load_state_tree(workdir)
  assert int(kept['step']) == 5
  jax.tree.map(np.testing.assert_array_equal, good, kept)


def test_checkpoints_keep_the_latest_and_the_best(tmp_path):
  config = make_config(**{'num_epochs': 4.0, 'checkpoint_every_steps': 4, 'keep_checkpoints': 2,
                          'eval_every_epochs': 1.0, 'log_every_steps': 100})
  train.train_and_evaluate(config, str(tmp_path))
  kept = sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints') if s.isdigit())
  # 22 steps per epoch; evaluations at 22, 44, 66, 88 are checkpointed with their accuracy.
  accuracy = {step: m['eval/accuracy'] for step, m in metrics.read_metrics(str(tmp_path)).items()
              if 'eval/accuracy' in m}
  assert sorted(accuracy) == [22, 44, 66, 88]
  best = {step for step, a in accuracy.items() if a == max(accuracy.values())}
  assert kept[-2:] == [84, 88]
  assert set(kept[:-2]) <= best and best & set(kept)  # The best kept beside the latest two.


def test_the_best_checkpoint_outlives_newer_worse_ones(tmp_path):
  state = {'w': np.zeros(3, np.float32)}
  for run in (((1, 0.9), (2, 0.5)), ((3, None), (4, 0.4), (5, None))):  # Then a restart.
    checkpointer = checkpoint.Checkpointer(str(tmp_path), keep=2)
    for step, accuracy in run:
      checkpointer.save(step, state, None, None if accuracy is None else {'accuracy': accuracy})
    checkpointer.close()
  assert sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints')) == [1, 4, 5]


def test_short_run_on_real_mnist_pngs_learns(mnist_folder, tmp_path):
  config = make_config(**{'dataset.source': f'folder:{mnist_folder}', 'dataset.val_fraction': 0.1,
                          'dataset.eval_split': 'validation', 'dataset.mean': (33.3,),
                          'dataset.std': (78.6,), 'num_epochs': 3.0, 'batch_size': 64,
                          'checkpoint_every_steps': 1000, 'schedule.base_lr': 0.05})
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['examples'] == 200 and results['split'] == 'validation'
  assert results['accuracy'] > 0.75  # Chance is 0.10.
  with open(tmp_path / 'results.json') as f:
    assert json.load(f) == results
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(tmp_path))


def test_metric_writer_leaves_torch_unimported(tmp_path):
  """tensorboardX imports torch when it is installed (350-400 MiB the job never uses); the
  writer keeps it out, writes its event file, and leaves torch importable afterwards."""
  import subprocess
  import sys
  pytest.importorskip('torch')
  script = (
      'import sys\n'
      'from resnet_jax import metrics\n'
      f'writer = metrics.MetricWriter({str(tmp_path)!r})\n'
      'writer.write(1, {"loss": 0.5})\n'
      'writer.close()\n'
      'print("torch" in sys.modules)\n'
      'import torch\n'
      'print(torch.ones(2).sum().item())\n')
  done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.split() == ['False', '2.0']
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(tmp_path))
  assert metrics.read_metrics(str(tmp_path)) == {1: {'loss': 0.5}}


def test_command_line_trains_then_evaluates_the_latest_checkpoint(tmp_path):
  workdir = str(tmp_path / 'run')
  done = run_main(f'--workdir={workdir}', '--config.num_epochs=3', '--config.eval_every_epochs=3')
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'img/s ETA' in done.stderr and 'Final test accuracy' in done.stderr
  with open(os.path.join(workdir, 'results.json')) as f:
    trained = json.load(f)
  assert trained['examples'] == 360 and trained['accuracy'] > 0.5
  evaluated = run_main(f'--workdir={workdir}', '--mode=eval')  # The stored config: no overrides.
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  with open(os.path.join(workdir, 'eval_test.json')) as f:
    assert json.load(f) == pytest.approx(trained)


def test_unknown_config_field_is_an_error_naming_it(tmp_path):
  done = run_main(f'--workdir={tmp_path}', '--config.optimizer.momentun=0.9', timeout=120)
  assert done.returncode != 0
  assert 'momentun' in done.stderr


def test_bad_values_name_the_field(tmp_path):
  with pytest.raises(ValueError, match='config.parallelism'):
    train.train_and_evaluate(make_config(parallelism='vmap'), str(tmp_path))
  with pytest.raises(ValueError, match='config.batch_size=60 must be divisible'):
    train.train_and_evaluate(make_config(batch_size=60), str(tmp_path))


class TwoHeads(nn.Module):
  """A small net with an auxiliary classifier, returned in training as GoogLeNet's are."""

  @nn.compact
  def __call__(self, x, *, train):
    h = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
    logits = nn.Dense(10, name='main')(h)
    return (logits, nn.Dense(10, name='aux')(h)) if train else logits


def test_auxiliary_classifier_losses_are_added_with_their_weight():
  model = TwoHeads()
  batch = digits_batch(8, 8)
  tx = optax.sgd(0.1)
  state = steps.TrainState.create(
      apply_fn=model.apply, tx=tx, batch_stats={}, skipped_steps=jnp.zeros((), jnp.int32),
      params=model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=True)['params'])
  parallel = DataParallel('shard_map')
  step = parallel.map(functools.partial(steps.train_step, mean=(50.0,), std=(90.0,),
                                        dtype=jnp.float32, aux_weight=0.3),
                      ('state', 'batch', 'const'))
  _, metrics = step(parallel.replicate(state), parallel.shard_batch(batch), jax.random.PRNGKey(1))
  x = steps.normalize(jnp.asarray(batch['image']), (50.0,), (90.0,), jnp.float32)
  logits, aux = model.apply({'params': state.params}, x, train=True)
  ce = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, batch['label']).mean()
  np.testing.assert_allclose(metrics['loss'], ce(logits) + 0.3 * ce(aux), rtol=1e-5)
