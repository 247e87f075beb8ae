"""The experiment scripts, run as the README runs them, at their CPU budget."""
import csv
import json
import subprocess
import sys

import pytest
from conftest import REPO


def test_init_study_shows_the_notes_collapse_and_kaiming_keeping_the_signal(tmp_path):
  done = subprocess.run([sys.executable, 'experiments/init_study.py', f'--workdir={tmp_path}',
                         '--budget=cpu'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  with open(tmp_path / 'init_study.csv') as f:
    rows = list(csv.DictReader(f))
  std = {(r['act'], r['init'], int(r['layer'])): float(r['std']) for r in rows}
  grad = {(r['act'], r['init'], int(r['layer'])): float(r['grad_norm']) for r in rows}
  assert len(rows) == 2 * 4 * 10
  # tanh: std 0.01 collapses to nothing by layer 10 (and the gradients with it); Xavier does not.
  assert std['tanh', 'normal:0.01', 10] < 1e-5 < 0.1 < std['tanh', 'xavier_normal', 10]
  assert grad['tanh', 'normal:0.01', 1] < 1e-5 < 0.1 < grad['tanh', 'xavier_normal', 1]
  # ReLU: Kaiming keeps the scale over 10 layers, Xavier loses about half the variance per layer.
  assert 0.7 < std['relu', 'kaiming_in', 10] / std['relu', 'kaiming_in', 1] < 1.4
  assert std['relu', 'xavier_normal', 10] / std['relu', 'xavier_normal', 1] < 0.1
  assert (tmp_path / 'init_study.png').stat().st_size > 20_000
  # All-zero weights: after 200 SGD steps every hidden unit still equals its neighbours (only the
  # output biases learn: the loss stays near log 10); small random weights break the symmetry
  # (and, through 6 tanh layers, learn slowly); Xavier's learn the labelling.
  with open(tmp_path / 'init_symmetry.csv') as f:
    rows = list(csv.DictReader(f))
  spread = {(r['init'], int(r['layer'])): float(r['spread']) for r in rows}
  loss = {r['init']: (float(r['loss_start']), float(r['loss_end'])) for r in rows}
  assert len(rows) == 4 * 6 and all(spread['zeros', layer] == 0 for layer in range(1, 7))
  assert all(spread[init, layer] > 1e-2 for layer in range(1, 7)
             for init in ('normal:0.01', 'normal:0.05'))
  assert loss['zeros'][1] > 2.2 and loss['xavier_normal'][1] < 0.5
  assert loss['normal:0.05'][1] < loss['normal:0.05'][0] - 0.03


def test_activation_comparison_trains_each_and_writes_the_table(tmp_path, mnist_folder):
  done = subprocess.run([sys.executable, 'experiments/activations.py', f'--workdir={tmp_path}',
                         f'--data={mnist_folder}', '--acts=relu,tanh', '--epochs=3'],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  with open(tmp_path / 'activations.csv') as f:
    rows = {r['act']: r for r in csv.DictReader(f)}
  assert set(rows) == {'relu', 'tanh'}
  # 3 epochs of 14 steps on 1,800 real digits: far above chance (0.1) on the 200 held out, for
  # both (about 0.8 here; after 1 epoch ReLU's cosine-decayed 14 steps reached only 0.24-0.31).
  assert all(float(r['accuracy']) > 0.5 and float(r['seconds']) > 0 for r in rows.values())
  assert (tmp_path / 'activations.png').stat().st_size > 10_000


def test_degradation_writes_each_nets_error_curves(tmp_path, cifar_folder):
  done = subprocess.run([sys.executable, 'experiments/degradation.py', f'--workdir={tmp_path}',
                         f'--data={cifar_folder}', '--models=plain20', '--seeds=2',
                         '--epochs=1'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  with open(tmp_path / 'degradation.csv') as f:
    reader = csv.DictReader(f)
    assert reader.fieldnames == ['model', 'seed', 'step', 'train_error', 'test_error']
    rows = list(reader)
  # 450 training images (the 500 less the 10% validation split), batch 128: 3 steps per epoch,
  # evaluated every sixth of the run (rounded: every step).
  for seed in ('0', '1'):
    mine = [r for r in rows if r['model'] == 'plain20' and r['seed'] == seed]
    assert [int(r['step']) for r in mine] == [1, 2, 3]
    assert all(0 <= float(r['test_error']) <= 1 for r in mine)
    with open(tmp_path / f'plain20_seed{seed}' / 'results.json') as f:
      final = json.load(f)
    assert float(mine[-1]['test_error']) == pytest.approx(1 - final['accuracy'], abs=1e-4)
    assert 0 <= float(mine[-1]['train_error']) <= 1
  # Two seeds, two different runs.
  assert [r['train_error'] for r in rows if r['seed'] == '0'] != \
      [r['train_error'] for r in rows if r['seed'] == '1']
  table = (tmp_path / 'degradation.md').read_text()
  assert '| plain20 | 2 |' in table
  assert (tmp_path / 'degradation.png').stat().st_size > 20_000


def test_complexity_measures_each_model_and_draws_the_bubble_chart(tmp_path):
  done = subprocess.run([sys.executable, 'experiments/complexity.py', f'--workdir={tmp_path}',
                         '--models=squeezenet1_1,alexnet', '--throughput_batch=2'],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  with open(tmp_path / 'complexity.csv') as f:
    row, alexnet = list(csv.DictReader(f))
  assert int(row['params']) == 1_235_496  # torchvision squeezenet1_1.
  # torchvision's 0.35 GMACs: XLA counts a multiply-add as 2 FLOPs, plus ReLUs and pooling.
  assert 0.65 < float(row['gflops']) < 0.75
  assert float(row['latency_ms']) > 0 and float(row['images_per_sec']) > 0
  assert int(row['batch']) == 2 and float(row['top1']) == 58.178
  assert (tmp_path / 'complexity.png').stat().st_size > 20_000
  # AlexNet is in the architecture history's latency table (Titan Xp, 1.0 ms); squeezenet1_1 not.
  assert row['titan_xp_ms'] == '' and float(alexnet['titan_xp_ms']) == 1.0
  (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith('alexnet') and '1.0' in ln
             and len(ln.split()) == 3]
  assert float(line.split()[1]) == pytest.approx(float(alexnet['latency_ms']), abs=0.06)


def test_complexity_rejects_a_model_that_is_not_an_imagenet_one(tmp_path):
  done = subprocess.run([sys.executable, 'experiments/complexity.py', f'--workdir={tmp_path}',
                         '--models=cifar_resnet20'], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert done.returncode != 0 and 'cifar_resnet20' in done.stderr and 'resnet50' in done.stderr


def test_plain_vs_residual_draws_fig4_from_four_runs(tmp_path, cifar_folder):
  # Without runs and without --train: the error says how to make them.
  done = subprocess.run([sys.executable, 'experiments/plain_vs_residual.py',
                         f'--workdir={tmp_path}'], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert done.returncode != 0
  assert 'no finished run of plain18, plain34, resnet18, resnet34' in done.stderr
  assert '--config.model.name=NAME' in done.stderr
  # The paper's recipe on 450 CIFAR images at 32x32, one epoch of 7 steps per net.
  done = subprocess.run([sys.executable, 'experiments/plain_vs_residual.py',
                         f'--workdir={tmp_path}', '--train', f'--data={cifar_folder}',
                         '--config.dataset.image_size=32', '--config.dataset.augment=flip',
                         '--config.dataset.num_workers=0', '--config.batch_size=64',
                         '--config.num_epochs=1', '--config.log_every_steps=2'],
                        cwd=REPO, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(tmp_path / 'plain_vs_residual.csv') as f:
    rows = list(csv.DictReader(f))
  assert [m for m in dict.fromkeys(r['model'] for r in rows)] == [
      'plain18', 'plain34', 'resnet18', 'resnet34']
  for model in ('plain18', 'resnet34'):
    with open(tmp_path / model / 'config.json') as f:
      stored = json.load(f)
    assert stored['model']['name'] == model and stored['model']['shortcut'] == 'A'
    last = [r for r in rows if r['model'] == model][-1]
    with open(tmp_path / model / 'results.json') as f:
      assert float(last['test_error']) == pytest.approx(1 - json.load(f)['accuracy'], abs=1e-4)
  table = (tmp_path / 'plain_vs_residual.md').read_text()
  assert '| resnet34 |' in table and '| 25.03 |' in table
  assert 'plain34 above plain18 in training error' in table
  assert (tmp_path / 'plain_vs_residual.png').stat().st_size > 20_000
