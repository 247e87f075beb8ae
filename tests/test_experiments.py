"""The experiment scripts, run as the README runs them, at their CPU budget."""
import csv
import subprocess
import sys

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


def test_activation_comparison_trains_each_and_writes_the_table(tmp_path, mnist_folder):
  done = subprocess.run([sys.executable, 'experiments/activations.py', f'--workdir={tmp_path}',
                         f'--data={mnist_folder}', '--acts=relu,tanh', '--epochs=1'],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  with open(tmp_path / 'activations.csv') as f:
    rows = {r['act']: r for r in csv.DictReader(f)}
  assert set(rows) == {'relu', 'tanh'}
  # 14 steps on 1,800 real digits: far above chance (0.1) on the 200 held out, for both.
  assert all(float(r['accuracy']) > 0.3 and float(r['seconds']) > 0 for r in rows.values())
  assert (tmp_path / 'activations.png').stat().st_size > 10_000
