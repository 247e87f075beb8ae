"""Transfer learning: config.freeze, optimizer.lr_multipliers, frozen BatchNorm, the experiment."""
import csv
import functools
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, SHARED_DATA, extract_image_folder

from resnet_jax import checkpoint, models, optim, steps, train
from resnet_jax.config import base_config
from resnet_jax.convert import load_variables
from resnet_jax.data import load_split
from resnet_jax.parallel import DataParallel


def make_config(**fields):
  """A small digits run; `fields` are dotted config paths, as on the command line."""
  config = base_config()
  config.update_from_flattened_dict({
      'model.name': 'lenet5', 'dataset.source': 'digits', 'dataset.image_size': 8,
      'num_epochs': 1.0, 'batch_size': 64, 'schedule.base_lr': 0.05, 'log_every_steps': 5,
      'checkpoint_every_steps': 5, **fields})
  return config


def flat(tree) -> dict:
  return {optim.param_path(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize('model, head', [('cifar_resnet20', 'head'), ('lenet5', 'output'),
                                         ('vgg11', 'classifier.6')])
def test_head_is_the_last_layer_and_backbone_all_the_others(model, head):
  config = make_config(**{'model.name': model, 'freeze': 'backbone'})
  paths, factor = train.build_param_groups(config)
  assert sorted(p for p in paths if factor(p) != 0) == [f'{head}/bias', f'{head}/kernel']
  assert len(paths) >= 10 and len(set(paths)) == len(paths)
  config.freeze = ''
  config.optimizer.lr_multipliers = 'head=10,backbone=0.1'  # The shorthands work as REGEX=FACTOR.
  _, factor = train.build_param_groups(config)
  assert {p: factor(p) for p in paths} == {p: 10.0 if p.startswith(f'{head}/') else 0.1
                                           for p in paths}


def test_freeze_backbone_leaves_every_backbone_parameter_and_statistic_bitwise_unchanged():
  # ResNet-20 on 8x8 digits over 8 devices, SGD with momentum and weight decay: only the head
  # moves; the frozen BatchNorm layers normalise with, and keep, their running statistics.
  config = make_config(**{'model.name': 'cifar_resnet20', 'freeze': 'backbone'})
  records = load_split(config.dataset, 'train').records
  batch = {'image': np.stack([records[i]['image'] for i in range(64)]),
           'label': np.array([records[i]['label'] for i in range(64)], np.int32)}
  model, tx = train.build_model(config, 10), train.build_optimizer(config, 10)
  state = jax.jit(lambda k: steps.create_train_state(model, tx, k, (8, 8, 1)))(
      jax.random.PRNGKey(0))
  before = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  # Only the head holds momentum buffers: frozen parameters have no optimizer state.
  buffers = [x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim]
  assert sorted(buffers) == [(10,), (64, 10)]
  parallel = DataParallel('shard_map')
  step = parallel.map(functools.partial(steps.train_step, **train.train_step_options(config, model),
                                        mean=(50.0,), std=(90.0,)),
                      ('state', 'batch', 'const'))
  state = parallel.replicate(state)
  for _ in range(3):
    state, metrics = step(state, parallel.shard_batch(batch), jax.random.PRNGKey(1))
  after = jax.device_get(parallel.unreplicate({'params': state.params,
                                               'batch_stats': state.batch_stats}))
  assert np.isfinite(float(metrics['loss']))
  old, new = flat(before['params']), flat(after['params'])
  for path in old:
    if path.startswith('head/'):
      assert np.abs(new[path] - old[path]).max() > 1e-4, path
    else:
      np.testing.assert_array_equal(new[path], old[path], err_msg=path)
  stats_before, stats_after = flat(before['batch_stats']), flat(after['batch_stats'])
  assert len(stats_before) == 2 * 19  # Mean and var of each BatchNorm: all frozen.
  for path in stats_before:
    np.testing.assert_array_equal(stats_after[path], stats_before[path], err_msg=path)


def test_lr_multipliers_scale_a_plain_sgd_update():
  # Plain SGD (no momentum), constant rate, L2 decay: the update is -lr (g + wd w) times the
  # factor, so 'c3=2' doubles those leaves exactly, 'c1=0' freezes them, the rest are unchanged.
  config = make_config(**{'optimizer.momentum': 0.0, 'schedule.name': 'constant',
                          'schedule.base_lr': 0.1, 'optimizer.weight_decay': 1e-3})
  model = train.build_model(config, 10)
  shapes = jax.eval_shape(lambda k: models.initial_variables(model, k, (32, 32, 1)),
                          jax.random.PRNGKey(0))['params']
  rng = np.random.default_rng(0)  # Random weights and gradients (NumPy: nothing to compile).
  params, grads = (jax.tree.map(lambda s: rng.standard_normal(s.shape, np.float32), shapes)
                   for _ in range(2))

  def update(multipliers):
    config.optimizer.lr_multipliers = multipliers
    tx = train.build_optimizer(config, 10)
    return flat(jax.jit(tx.update)(grads, tx.init(params), params)[0])

  base, scaled = update(''), update('c3=2,c1=0')
  assert set(base) == set(scaled) and len(base) == 10
  for path, u in base.items():
    assert np.abs(u).max() > 0, path
    expected = 2 * u if path.startswith('c3/') else 0 * u if path.startswith('c1/') else u
    np.testing.assert_array_equal(scaled[path], expected, err_msg=path)


@pytest.mark.parametrize('fields, message', [
    ({'freeze': 'stage9'}, "config.freeze: 'stage9' matches no parameter of cifar_resnet20"),
    ({'freeze': 'stem['}, r"config.freeze: 'stem\[' is not a valid regular expression"),
    ({'optimizer.lr_multipliers': 'head'}, "config.optimizer.lr_multipliers entry 'head' is not"),
    ({'optimizer.lr_multipliers': 'head=-1'}, 'with a factor >= 0'),
    ({'optimizer.lr_multipliers': 'head=2,fc=3'},
     "config.optimizer.lr_multipliers: 'fc' matches no parameter"),
    ({'freeze': 'backbone,head'}, 'leave no parameter to train'),
])
def test_bad_patterns_are_errors_naming_the_field(fields, message):
  config = make_config(**{'model.name': 'cifar_resnet20', **fields})
  with pytest.raises(ValueError, match=message) as error:
    train.setup(config)
  if 'matches no parameter' in message:  # It lists real paths to choose from.
    assert 'stem_conv/kernel' in str(error.value) and 'head/bias' in str(error.value)


def test_resume_with_frozen_layers_is_bit_identical(tmp_path):
  # An MLP with BatchNorm on digits: frozen dense1 + norm1, a doubled head rate, momentum;
  # stopping at step 6 and resuming must give the same checkpoint as the straight run.
  config = make_config(**{'model.name': 'mlp', 'model.norm': 'batch', 'num_epochs': 0.5,
                          'checkpoint_every_steps': 4, 'freeze': 'dense1|norm1',
                          'optimizer.lr_multipliers': 'head=2'})
  straight = train.train_and_evaluate(config, str(tmp_path / 'straight'))
  halted = train.train_and_evaluate(config, str(tmp_path / 'restarted'), stop_at_step=6)
  assert halted == {'step': 6, 'preempted': True}
  resumed = train.train_and_evaluate(config, str(tmp_path / 'restarted'))
  assert straight['step'] == resumed['step'] == 11 and straight == resumed
  a = checkpoint.load_state_tree(str(tmp_path / 'straight'))
  b = checkpoint.load_state_tree(str(tmp_path / 'restarted'))
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  # The frozen layer kept its weights (from step 4 on) and its initial statistics (mean 0, var 1)
  # while the next one moved.
  early = checkpoint.load_state_tree(str(tmp_path / 'straight'), step=4)['params']
  np.testing.assert_array_equal(a['params']['dense1']['kernel'], early['dense1']['kernel'])
  assert not np.array_equal(a['params']['dense2']['kernel'], early['dense2']['kernel'])
  np.testing.assert_array_equal(a['batch_stats']['norm1']['mean'], 0.0)
  np.testing.assert_array_equal(a['batch_stats']['norm1']['var'], 1.0)
  assert np.abs(a['batch_stats']['norm2']['mean']).max() > 1e-3


@pytest.fixture(scope='module')
def cifar_folder(tmp_path_factory):
  """40 real CIFAR-10 JPEGs per class from ../shared/data, as train/<class>/<image>."""
  return extract_image_folder(SHARED_DATA / 'cifar10-train-jpeg.tar.gz',
                              tmp_path_factory.mktemp('cifar'), per_class=40)


def test_transfer_experiment_writes_its_table_and_plot(tmp_path, mnist_folder, cifar_folder):
  done = subprocess.run([sys.executable, 'experiments/transfer.py', f'--workdir={tmp_path}',
                         f'--mnist={mnist_folder}', f'--cifar={cifar_folder}', '--per_class=40',
                         '--pretrain_epochs=6', '--epochs=2', '--settings=frozen'],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  with open(tmp_path / 'transfer.csv') as f:
    rows = {r['setting']: r for r in csv.DictReader(f)}
  assert list(rows) == ['pretrain_mnist', 'frozen']
  # 360 RGB digits, 6 epochs: well above chance (0.1) on the 40 held out.
  assert float(rows['pretrain_mnist']['accuracy']) > 0.3
  assert all(0 <= float(r['accuracy']) <= 1 and float(r['seconds']) > 0 for r in rows.values())
  assert [float(r['epochs']) for r in rows.values()] == [6, 2]
  assert (tmp_path / 'transfer.png').stat().st_size > 10_000
  # init_from got the pretrained backbone with a fresh head; the frozen run kept the backbone.
  pretrained = checkpoint.load_state_tree(str(tmp_path / 'pretrain'))['params']
  start = load_variables(str(tmp_path / 'backbone'))['params']
  frozen = checkpoint.load_state_tree(str(tmp_path / 'frozen'))['params']
  for layer in ('c1', 'c3', 'c5', 'f6'):
    np.testing.assert_array_equal(start[layer]['kernel'], pretrained[layer]['kernel'])
    np.testing.assert_array_equal(frozen[layer]['kernel'], pretrained[layer]['kernel'])
  assert np.abs(start['output']['kernel'] - pretrained['output']['kernel']).max() > 0.01
  assert np.abs(frozen['output']['kernel'] - start['output']['kernel']).max() > 1e-4
