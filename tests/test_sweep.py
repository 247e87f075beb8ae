"""Hyperparameter search: the candidates, and vmap training them together exactly as alone."""
import csv
import math
import subprocess
import sys

import pytest
from conftest import REPO

from resnet_jax import checkpoint, metrics, sweep
from resnet_jax.config import base_config


def small_config():
  """One epoch of LeNet-5 on the digits (22 steps of 64)."""
  config = base_config()
  config.update_from_flattened_dict({
      'model.name': 'lenet5', 'model.act': 'relu', 'dataset.source': 'digits',
      'dataset.mean': (50.0,), 'dataset.std': (90.0,), 'num_epochs': 1.0, 'batch_size': 64,
      'schedule.base_lr': 0.05, 'log_every_steps': 10, 'checkpoint_every_steps': 100})
  return config


def test_grid_is_every_combination_and_random_draws_are_reproducible():
  specs = [sweep.parse_spec('schedule.base_lr=[0.1, 0.01]'),
           sweep.parse_spec('optimizer.name=[sgd,adam,lamb]')]
  grid = sweep.candidates(specs, 'grid', 0, 0)
  assert len(grid) == 6 and {'schedule.base_lr': 0.01, 'optimizer.name': 'lamb'} in grid
  ranged = [sweep.parse_spec('schedule.base_lr=loguniform(1e-4,1e-1)'),
            sweep.parse_spec('seed=randint(0,3)')]
  draws = sweep.candidates(ranged, 'random', 200, seed=7)
  assert draws == sweep.candidates(ranged, 'random', 200, seed=7)
  lrs = [d['schedule.base_lr'] for d in draws]
  assert 1e-4 <= min(lrs) and max(lrs) <= 1e-1
  # Log-uniform: each decade of the three gets about a third of the draws.
  assert 50 < sum(1e-3 <= x < 1e-2 for x in lrs) < 85
  assert {d['seed'] for d in draws} == {0, 1, 2, 3}


def test_bad_sweeps_name_the_problem():
  with pytest.raises(ValueError, match='FIELD='):
    sweep.parse_spec('schedule.base_lr')
  with pytest.raises(ValueError, match='lo < hi'):
    sweep.parse_spec('schedule.base_lr=loguniform(0,1)')
  with pytest.raises(ValueError, match='--search=random'):
    sweep.candidates([sweep.parse_spec('seed=randint(0,3)')], 'grid', 0, 0)
  with pytest.raises(ValueError, match=r"schedule.base_rl is not a field; did you mean "
                                       r"config.schedule.base_lr"):
    sweep.with_overrides(small_config(), {'schedule.base_rl': 0.1})


def test_vmapped_candidates_train_exactly_as_they_do_alone(tmp_path):
  specs = ['schedule.base_lr=[0.02,0.1]', 'optimizer.weight_decay=[0,1e-3]']
  together = sweep.run_sweep(small_config(), specs, str(tmp_path / 'vmap'), vmap='on')
  alone = sweep.run_sweep(small_config(), specs, str(tmp_path / 'seq'), vmap='off')
  assert {r['trial'] for r in together} == {'vmap'} and len(alone) == 4
  key = lambda r: (r['schedule.base_lr'], r['optimizer.weight_decay'])
  for a, b in zip(sorted(together, key=key), sorted(alone, key=key)):
    assert a['accuracy'] == pytest.approx(b['accuracy'], abs=1 / 360 + 1e-9)
    assert a['loss'] == pytest.approx(b['loss'], rel=1e-3)
  # The candidates really differ (the sweep is not training one model four times).
  assert len({round(r['loss'], 4) for r in together}) == 4
  with open(tmp_path / 'vmap' / 'sweep.csv') as f:
    rows = list(csv.DictReader(f))
  assert [float(r['accuracy']) for r in rows] == sorted(
      (float(r['accuracy']) for r in rows), reverse=True)


def test_fields_that_change_the_program_run_one_after_another(tmp_path):
  # Momentum 0 drops the momentum buffer: a different optimizer state, not just another number.
  with pytest.raises(ValueError, match='cannot be trained together'):
    sweep.run_sweep(small_config(), ['optimizer.momentum=[0,0.9]'], str(tmp_path), vmap='on')


def test_command_line_random_search_writes_the_table(tmp_path):
  done = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.sweep', f'--workdir={tmp_path}', '--search=random',
       '--trials=3', '--sweep=schedule.base_lr=loguniform(0.01,0.1)', '--sweep=seed=[0,1]',
       '--config.num_epochs=1'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  with open(tmp_path / 'sweep.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 3 and all(0.01 <= float(r['schedule.base_lr']) <= 0.1 for r in rows)
  assert all(0 <= float(r['accuracy']) <= 1 and math.isfinite(float(r['loss'])) for r in rows)
  assert (tmp_path / 'sweep.md').read_text().startswith('| schedule.base_lr | seed | accuracy')


def test_vmapped_trials_run_through_the_main_loop(tmp_path):
  # The loop's own checks and outputs: per-trial scalars in metrics.jsonl, each trial's
  # checkpoint, and a non-finite loss stopping the run before it is saved.
  sweep.run_sweep(small_config(), ['schedule.base_lr=[0.02,0.1]'], str(tmp_path / 'ok'), vmap='on')
  logged = metrics.read_metrics(str(tmp_path / 'ok'))
  last = logged[max(logged)]
  assert {'train/loss/trial_000', 'train/loss/trial_001', 'eval/accuracy/trial_001'} <= set(last)
  assert checkpoint.load_state_tree(str(tmp_path / 'ok' / 'trial_001'))['step'] == 22
  with pytest.raises(FloatingPointError, match='at step'):
    sweep.run_sweep(small_config(), ['schedule.base_lr=[1e6,1e7]'], str(tmp_path / 'nan'),
                    vmap='on')
