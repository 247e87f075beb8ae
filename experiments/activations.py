"""The same CNN trained with each activation on the MNIST folder: accuracy and time.

  python experiments/activations.py --workdir=DIR [--budget=cpu|full] [--data=MNIST_FOLDER]

Trains LeNet-5 (experiments/configs/activations.py) once per activation on a 54k/6k split of the
MNIST PNG folder (by default unpacked from ../shared/data/mnist-train-png.tar.gz into DIR/data) and
writes DIR/activations.csv (act, accuracy, loss, seconds) and DIR/activations.png. Each run is a
normal resumable run in DIR/ACT, so an interrupted comparison picks up where it stopped.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time

from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from experiments.configs import activations as activations_config  # noqa: E402
from experiments.shared_data import image_folder  # noqa: E402
from resnet_jax import train, xla_flags  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'Where the runs, CSV and PNG go.', required=True)
_BUDGET = flags.DEFINE_enum('budget', 'cpu', ['cpu', 'full'], 'cpu: 1 epoch each; full: 10.')
_DATA = flags.DEFINE_string('data', '', 'An MNIST image folder (DATA/train/<digit>/*.png).')
_ACTS = flags.DEFINE_list('acts', list(activations_config.ACTIVATIONS), 'Activations to compare.')
_EPOCHS = flags.DEFINE_float('epochs', 0.0, 'Override the budget\'s epochs (0: keep).')

def plot(rows: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
  names = [r['act'] for r in rows]
  left.bar(names, [100 * r['accuracy'] for r in rows], color='tab:blue')
  left.set_ylim(min(100 * r['accuracy'] for r in rows) - 2, 100)
  left.set_ylabel('validation accuracy (%)')
  right.bar(names, [r['seconds'] for r in rows], color='tab:orange')
  right.set_ylabel('training + evaluation (s)')
  for ax in (left, right):
    ax.tick_params(axis='x', labelrotation=45, labelsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv) -> None:
  del argv
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  source = f"folder:{image_folder('mnist', workdir, _DATA.value)}"
  rows = []
  for act in _ACTS.value:
    config = activations_config.get_config(_BUDGET.value)
    config.model.act = act
    config.dataset.source = source
    if _EPOCHS.value:
      config.num_epochs = _EPOCHS.value
    run_dir = os.path.join(workdir, act)
    start = time.perf_counter()
    if train.train_and_evaluate(config, run_dir).get('preempted'):
      sys.exit(f'{act} was stopped (SIGTERM) and saved; run the same command to resume.')
    seconds = time.perf_counter() - start
    with open(os.path.join(run_dir, 'results.json')) as f:
      results = json.load(f)
    rows.append({'act': act, 'accuracy': results['accuracy'], 'loss': results['loss'],
                 'seconds': seconds})
    logging.info('%s: accuracy %.4f in %.0f s', act, results['accuracy'], seconds)
  with open(os.path.join(workdir, 'activations.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=['act', 'accuracy', 'loss', 'seconds'])
    writer.writeheader()
    writer.writerows(rows)
  plot(rows, os.path.join(workdir, 'activations.png'))
  for r in rows:
    print(f"{r['act']:11s} accuracy {r['accuracy']:.4f}  loss {r['loss']:.4f}  "
          f"{r['seconds']:.0f} s")


if __name__ == '__main__':
  xla_flags.set_cpu_defaults()  # Before JAX starts its backends.
  app.run(main)
