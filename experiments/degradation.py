"""Plain versus residual nets of 20 and 56 layers on CIFAR-10: training and test error over
iterations (He et al. 2015, Fig. 1 and Fig. 6).

  python experiments/degradation.py --workdir=DIR [--budget=cpu|full] [--data=CIFAR_FOLDER]

Trains plain20, plain56, cifar_resnet20 and cifar_resnet56 (experiments/configs/degradation.py) on a
45k/5k split of the CIFAR-10 JPEG folder (by default unpacked from
../shared/data/cifar10-train-jpeg.tar.gz into DIR/data) and writes DIR/degradation.csv (model, step,
train_error, test_error: the training error of the augmented batches since the previous row, and the
validation error where one was measured, else empty) and DIR/degradation.png. Each net is a normal
resumable run in DIR/MODEL.
"""
from __future__ import annotations

import csv
import os
import sys

from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from experiments.configs import degradation as degradation_config  # noqa: E402
from experiments.shared_data import image_folder  # noqa: E402
from resnet_jax import metrics, train, xla_flags  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'Where the runs, CSV and PNG go.', required=True)
_BUDGET = flags.DEFINE_enum('budget', 'cpu', ['cpu', 'full'],
                            'cpu: 2 epochs at 16x16; full: the paper\'s 64k iterations.')
_DATA = flags.DEFINE_string('data', '', 'A CIFAR-10 image folder (DATA/train/<class>/*).')
_MODELS = flags.DEFINE_list('models', list(degradation_config.MODELS), 'Nets to compare.')
_EPOCHS = flags.DEFINE_float('epochs', 0.0, 'Override the budget\'s epochs (0: keep).')

FIELDS = ['model', 'step', 'train_error', 'test_error']


def error_curve(model: str, run_dir: str) -> list[dict]:
  """One row per logged step: 1 - the training accuracy of the interval ending there, and
  1 - the validation accuracy where an evaluation ran."""
  rows = []
  for step, scalars in metrics.read_metrics(run_dir).items():
    if 'train/accuracy' not in scalars and 'eval/accuracy' not in scalars:
      continue
    error = lambda key: f'{1 - scalars[key]:.4f}' if key in scalars else ''  # noqa: E731
    rows.append({'model': model, 'step': step, 'train_error': error('train/accuracy'),
                 'test_error': error('eval/accuracy')})
  return rows


def plot(rows: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
  colours = {'20': 'tab:orange', '56': 'tab:red'}
  for ax, family, title in ((axes[0], 'plain', 'plain'), (axes[1], 'cifar_resnet', 'ResNet')):
    for model in dict.fromkeys(r['model'] for r in rows):
      if not model.startswith(family):
        continue
      depth = model[len(family):]
      mine = [r for r in rows if r['model'] == model]
      # Fig. 6's style: dashed = training error, bold = test error.
      train_rows = [r for r in mine if r['train_error']]
      test_rows = [r for r in mine if r['test_error']]
      ax.plot([r['step'] for r in train_rows], [100 * float(r['train_error']) for r in train_rows],
              '--', lw=1, color=colours.get(depth, 'tab:blue'), label=f'{title}-{depth} train')
      ax.plot([r['step'] for r in test_rows], [100 * float(r['test_error']) for r in test_rows],
              '-', lw=2.2, color=colours.get(depth, 'tab:blue'), label=f'{title}-{depth} test')
    ax.set_title(f'{title} nets')
    ax.set_xlabel('iteration')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  axes[0].set_ylabel('error (%)')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def final_errors(rows: list[dict], model: str, last: int = 4) -> tuple[float, float]:
  """The mean training error of the last `last` logged intervals and the last test error."""
  mine = [r for r in rows if r['model'] == model]
  train_errors = [float(r['train_error']) for r in mine if r['train_error']][-last:]
  test_errors = [float(r['test_error']) for r in mine if r['test_error']]
  return sum(train_errors) / len(train_errors), test_errors[-1]


def main(argv) -> None:
  del argv
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  source = f"folder:{image_folder('cifar10', workdir, _DATA.value)}"
  rows = []
  for model in _MODELS.value:
    config = degradation_config.get_config(_BUDGET.value)
    config.model.name = model
    config.dataset.source = source
    if _EPOCHS.value:
      config.num_epochs = _EPOCHS.value
    run_dir = os.path.join(workdir, model)
    if train.train_and_evaluate(config, run_dir).get('preempted'):
      sys.exit(f'{model} was stopped (SIGTERM) and saved; run the same command to resume.')
    rows += error_curve(model, run_dir)
    logging.info('%s: final training error %.4f, test error %.4f', model,
                 *final_errors(rows, model))
  with open(os.path.join(workdir, 'degradation.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
  plot(rows, os.path.join(workdir, 'degradation.png'))
  for model in _MODELS.value:
    train_error, test_error = final_errors(rows, model)
    print(f'{model:15s} training error {100 * train_error:5.2f}%  '
          f'test error {100 * test_error:5.2f}%')


if __name__ == '__main__':
  xla_flags.set_cpu_defaults()  # Before JAX starts its backends.
  app.run(main)
