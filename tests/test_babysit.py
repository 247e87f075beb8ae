"""The babysitting tools (resnet_jax/babysit.py, metrics.Watch) on real small runs of the digits:
the first loss against chance, the update-to-weight ratios, overfitting one batch, the
learning-rate range test."""
import csv
import functools
import json
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import babysit, metrics, steps, train
from resnet_jax.config import base_config
from resnet_jax.parallel import DataParallel

CHANCE_10 = math.log(10)


def digits_config(**fields):
  config = base_config()
  config.update_from_flattened_dict({
      'model.name': 'lenet5', 'dataset.source': 'digits', 'dataset.image_size': 32,
      'num_epochs': 0.25, 'batch_size': 32, 'schedule.base_lr': 0.05, 'log_every_steps': 5,
      'checkpoint_every_steps': 1000, 'eval_every_epochs': 1.0, 'compilation_cache_dir': '',
      **fields})
  return config


def jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_a_fresh_run_checks_its_first_loss_against_chance(tmp_path, caplog):
  with caplog.at_level(logging.INFO):
    train.train_and_evaluate(digits_config(), str(tmp_path / 'ok'))
  first = next(r for r in jsonl(tmp_path / 'ok' / 'metrics.jsonl') if 'babysit/initial_loss' in r)
  assert first['step'] == 1 and first['babysit/chance_loss'] == pytest.approx(CHANCE_10)
  assert abs(first['babysit/initial_loss'] - CHANCE_10) < 0.35  # LeNet-5's init: near uniform.
  assert 'chance level log(10) = 2.303: as expected' in caplog.text
  # Off by default: the step returns no update ratios at all.
  assert not [k for r in jsonl(tmp_path / 'ok' / 'metrics.jsonl') for k in r if 'ratio' in k]
  caplog.clear()
  # Unscaled pixels (0..255 into a ReLU MLP): logits in the hundreds, a loss far from chance.
  bad = digits_config(**{'model.name': 'mlp', 'dataset.mean': (0.0,), 'dataset.std': (1.0,),
                         'num_epochs': 0.05})
  with caplog.at_level(logging.INFO):
    train.train_and_evaluate(bad, str(tmp_path / 'bad'))
  first = next(r for r in jsonl(tmp_path / 'bad' / 'metrics.jsonl')
               if 'babysit/initial_loss' in r)
  assert first['babysit/initial_loss'] > 3 * CHANCE_10
  assert 'far off. Check the init' in caplog.text


def test_check_initial_loss_bounds():
  assert metrics.check_initial_loss(2.5, 10)
  assert metrics.check_initial_loss(np.array([2.2, 2.4]), 10)
  assert not metrics.check_initial_loss(3.6, 10)  # 1.3 above log 10: past half of it.
  assert not metrics.check_initial_loss(np.array([2.3, 0.5]), 10)  # One member is enough.
  assert metrics.check_initial_loss(6.5, 1000)  # log 1000 = 6.91.


def one_step_ratios(lr):
  """The metrics of LeNet-5's first SGD step on one digits batch, from one init, at `lr`."""
  from test_train import digits_batch
  config = digits_config(**{'schedule.base_lr': lr, 'schedule.name': 'constant'})
  model = train.build_model(config, 10)
  state = steps.create_train_state(model, train.build_optimizer(config, 10), jax.random.key(0),
                                   (32, 32, 1))
  parallel = DataParallel('shard_map', devices=jax.devices()[:1])
  step = parallel.map(functools.partial(steps.train_step, mean=(8.0,), std=(8.0,),
                                        dtype=jnp.float32, update_ratios=True),
                      ('state', 'batch', 'const'))
  batch = parallel.shard_batch(digits_batch(32, 32))
  _, values = step(parallel.replicate(state), batch, jax.random.key(1))
  return jax.device_get(parallel.unreplicate(values))


def test_update_ratios_are_per_kernel_and_scale_with_the_learning_rate():
  low, high = one_step_ratios(0.01), one_step_ratios(0.1)
  names = sorted(k for k in low if k.startswith('update_ratio/'))
  # LeNet-5's kernels: C1, C3, C5, F6 and the output layer; no biases.
  assert len(names) == 5 and all('bias' not in n for n in names)
  for name in names:
    # The first SGD step (momentum's trace starts at the gradient) moves lr * gradient: ten
    # times the rate, ten times the update.
    assert high[name] / low[name] == pytest.approx(10.0, rel=1e-4), name
    assert 1e-5 < low[name] < 1e-1, (name, low[name])  # Around the 1e-3 rule of thumb.


def test_a_run_with_update_ratios_logs_them(tmp_path, caplog):
  with caplog.at_level(logging.INFO):
    train.train_and_evaluate(digits_config(**{'babysit.update_ratio': True}), str(tmp_path))
  logged = [r for r in jsonl(tmp_path / 'metrics.jsonl') if 'train/loss' in r]
  ratios = [k for k in logged[0] if k.startswith('train/update_ratio/')]
  assert len(ratios) == 5 and all(np.isfinite(logged[-1][k]) for k in ratios)
  assert 'update/weight ratio at step' in caplog.text and 'over 5 kernels' in caplog.text
  assert 'too low' in babysit.metrics.describe_update_ratios({'update_ratio/a': 1e-6}, 1)
  assert 'too high' in metrics.describe_update_ratios({'update_ratio/a': 0.5}, 1)


def test_overfit_batch_memorises_one_batch(tmp_path):
  config = digits_config(**{'batch_size': 16, 'babysit.overfit_steps': 300})
  result = babysit.overfit_batch(config, str(tmp_path))
  assert result['reached'] and result['loss'] < 0.01 and result['accuracy'] == 1.0
  assert result['steps'] < 300
  assert json.loads((tmp_path / 'overfit_batch.json').read_text())['steps'] == result['steps']
  losses = [r['overfit/loss'] for r in jsonl(tmp_path / 'metrics.jsonl')]
  assert losses[0] > 10 * losses[-1]


def test_lr_find_sweeps_the_range_and_suggests_a_rate(tmp_path):
  config = digits_config(**{'babysit.lr_find_steps': 60, 'babysit.lr_find_range': (1e-4, 10.0)})
  result = babysit.lr_find(config, str(tmp_path))
  with open(tmp_path / 'lr_find.csv') as f:
    rows = list(csv.DictReader(f))
  lrs = np.array([float(r['lr']) for r in rows])
  assert len(rows) == 60 and lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(10.0)
  np.testing.assert_allclose(lrs[1:] / lrs[:-1], (1e5) ** (1 / 59), rtol=1e-4)  # Geometric.
  losses = [float(r['loss']) for r in rows]
  assert min(losses) < losses[0] - 0.5  # Somewhere in the range the loss falls.
  assert 1e-3 <= result['suggested_lr'] <= 1.0
  assert result['suggested_lr'] == result['edge_lr'] / 10
  assert result['edge_lr'] >= result['min_loss_lr']
  assert (tmp_path / 'lr_find.png').stat().st_size > 10_000
  with pytest.raises(ValueError, match='lr_find_range'):
    babysit.lr_find(digits_config(**{'babysit.lr_find_range': (1.0, 0.1)}), str(tmp_path))


def test_suggest_lr_reads_a_known_curve():
  lrs = np.geomspace(1e-5, 10, 200)
  # A valley at lr 0.1, flat below 1e-4, blowing up past 1.
  noise = np.random.default_rng(0).normal(0, 0.05, lrs.shape)
  losses = (2.3 - 2.0 * np.exp(-np.log10(lrs / 0.1) ** 2 / 2)
            + np.where(lrs > 1, 50 * (lrs - 1), 0) + noise)
  result = babysit.suggest_lr(lrs, losses)
  assert 0.08 < result['min_loss_lr'] < 0.125  # The centred smoothing does not lag.
  # The edge: where the loss is back up a quarter of its fall, on the valley's far side.
  assert 0.4 < result['edge_lr'] < 0.8 and result['suggested_lr'] == result['edge_lr'] / 10
  # The centred window sees the blow-up a few points early.
  assert 0.5 < result['diverged_lr'] < 3 and result['steepest_lr'] < result['min_loss_lr']


def _events(workdir):
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(workdir), size_guidance={'histograms': 0,
                                                                           'images': 0})
  events.Reload()
  return events.Tags()


def test_histograms_dead_relus_and_filters_on_a_real_run(tmp_path, caplog):
  """LeNet-5 with ReLUs on the digits: every histogram_every steps each layer's output and
  each parameter's gradient are histograms and each layer's dead fraction a scalar; the first
  layer's filters are an image at each evaluation. Hidden biases of -100 kill every ReLU."""
  fields = {'model.act': 'relu', 'babysit.histogram_every': 5, 'babysit.filters': True}
  with caplog.at_level(logging.INFO):
    train.train_and_evaluate(digits_config(**fields), str(tmp_path / 'ok'))
  tags = _events(tmp_path / 'ok')
  assert {'activations/c1', 'activations/c3', 'gradients/c1/kernel',
          'gradients/output/bias'} <= set(tags['histograms'])
  assert tags['images'] == ['babysit/first_layer_filters']
  rows = [r for r in jsonl(tmp_path / 'ok' / 'metrics.jsonl') if 'babysit/dead_relu/c1' in r]
  assert [r['step'] for r in rows] == [5, 10]  # 0.25 epochs of 32: 11 steps
  healthy = [v for k, v in rows[-1].items() if k.startswith('babysit/dead_relu/')]
  assert 'babysit/dead_relu/output' not in rows[-1] and len(healthy) >= 4
  assert max(healthy) < 0.5
  assert 'dead ReLUs at step 10' in caplog.text
  # Every unit's pre-activation far below zero: all of them dead, in every layer that has one.
  dead_fields = {**fields, 'model.bias_init': -100.0, 'num_epochs': 0.15}
  train.train_and_evaluate(digits_config(**dead_fields), str(tmp_path / 'dead'))
  rows = [r for r in jsonl(tmp_path / 'dead' / 'metrics.jsonl') if 'babysit/dead_relu/c1' in r]
  assert rows[-1]['babysit/dead_relu/c1'] == 1.0 and rows[-1]['babysit/dead_relu/c3'] == 1.0


def test_filter_grid_and_first_kernel():
  kernel = np.random.default_rng(0).standard_normal((5, 5, 3, 6)).astype(np.float32)
  grid = metrics.filter_grid(kernel, scale=2, border=1)
  assert grid.shape == (2 * 11 + 1, 3 * 11 + 1, 3) and grid.min() == 0 and grid.max() == 1
  # Each tile is its own filter, stretched to 0..1: the first one, channel by channel.
  tile = grid[1:11, 1:11]
  want = (kernel[..., 0] - kernel[..., 0].min()) / np.ptp(kernel[..., 0])
  np.testing.assert_allclose(tile[::2, ::2], want, atol=1e-6)
  grey = metrics.filter_grid(kernel[:, :, :1, :], scale=1)
  assert (grey[..., 0] == grey[..., 2]).all()
  params = {'stem': {'kernel': kernel}, 'head': {'kernel': np.zeros((6, 2))}}
  assert metrics.first_kernel(params) is kernel
  assert metrics.first_kernel({'head': {'kernel': np.zeros((6, 2))}}) is None
