"""experiments/reproduce.py: a paper's table, its rows trained beside the paper's numbers."""
import csv
import re
import subprocess
import sys

from conftest import REPO


def _reproduce(*args, timeout=400):
  return subprocess.run([sys.executable, 'experiments/reproduce.py', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


def test_lecun1998_at_cpu_budget_trains_both_rows_beside_the_paper(tmp_path, mnist_folder):
  # 1,800 training digits, batch 128: 14 steps per epoch, 3 epochs.
  done = _reproduce('--table=lecun1998', f'--workdir={tmp_path}', f'--data={mnist_folder}',
                    '--epochs=3')
  assert done.returncode == 0, done.stderr[-3000:]
  out = tmp_path / 'lecun1998_cpu'
  with open(out / 'lecun1998.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['row'] for r in rows] == ['LeNet-5, C3 table', 'LeNet-5, full C3']
  assert all(float(r['paper_error']) == 0.95 and r['split'] == 'validation' for r in rows)
  assert all(r['steps'] == '42' for r in rows)
  # 42 SGD steps on real digits: far below chance (90% error) for both connection tables (about
  # 20% here), far above the paper's 0.95% after 20 passes over 60,000.
  assert all(1.0 < float(r['our_error']) < 50.0 for r in rows), rows
  table = (out / 'lecun1998.md').read_text()
  assert '| LeNet-5, C3 table | lenet5 | 0.95 |' in table
  # The C3 table row really trained the sparse net (its config records it).
  assert '"sparse_c3": true' in (out / 'LeNet-5_C3_table' / 'config.json').read_text()


def test_full_budget_estimate_prints_hours_per_accelerator(tmp_path):
  done = _reproduce('--table=he2015_cifar', f'--workdir={tmp_path}', '--budget=full',
                    '--estimate', '--rows=ResNet-20,ResNet-56')
  assert done.returncode == 0, done.stderr[-3000:]
  lines = {line.split('|')[1].strip(): line for line in done.stdout.splitlines()
           if line.startswith('| ResNet')}
  assert set(lines) == {'ResNet-20', 'ResNet-56'}
  cells = [c.strip() for c in lines['ResNet-20'].split('|')[1:-1]]
  # 64k iterations of 128 = 164 epochs of 50k; 3 x 0.076 GFLOP (XLA's forward count) per image.
  assert cells[1] == 'cifar_resnet20' and abs(float(cells[2]) - 164.1) < 0.1
  assert 1.7 < float(cells[3]) < 2.1
  hours = [float(c.replace(',', '')) for c in cells[4:]]
  assert len(hours) == 4 and hours[0] > 100 * hours[2]  # 2 CPU cores vs an H100.
  assert not (tmp_path / 'he2015_cifar_full').exists()  # --estimate trains nothing.


def test_an_unknown_row_names_the_flag_and_the_rows(tmp_path):
  done = _reproduce('--table=huang2016_sd', f'--workdir={tmp_path}', '--rows=ResNet-20')
  assert done.returncode != 0
  assert re.search(r"--rows: 'ResNet-20' is not a row of huang2016_sd; rows: 110-layer",
                   done.stderr)
