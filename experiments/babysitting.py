"""The babysitting tools on real runs: a healthy learning rate next to one 10x too high.

  python experiments/babysitting.py --workdir=DIR [--data=CIFAR_FOLDER] [--epochs=1]
      [--lr=0.1] [--lr_find_steps=200] [--histogram_every=50] [--model=cifar_resnet20]

On the CIFAR-10 folder (a 45k/5k split; by default unpacked from ../shared/data into DIR/data),
with He et al. 2015's ResNet-20 recipe (experiments/configs/cifar10_resnet20.py) at a constant
rate:
1. the learning-rate range test (`--mode=lr_find`) in DIR/lr_find: lr_find.csv, lr_find.png and
   the suggested rate;
2. two runs of `--epochs` with every babysitting switch on (the update-to-weight ratios, the
   histograms and dead-ReLU fractions every `--histogram_every` steps, the first-layer filters):
   DIR/healthy at `--lr`, DIR/lr_x10 at 10 times it. Each checks its first loss against log(10).
Writes DIR/babysitting.csv (run, step, lr, loss, accuracy, the median, lowest and highest
update-to-weight ratio over the kernels per logged step, and the mean dead-channel fraction over
the layers where it was measured), DIR/babysitting.png (the range test, the two loss curves, the
two ratio curves beside the 1e-3 rule of thumb, the dead fractions), DIR/babysitting_filters.png
(each run's first-layer filters at its end) and DIR/babysitting.md (each run's first loss, last
training loss, validation accuracy, median ratio and dead fraction). docs/babysitting.md shows
them; TensorBoard shows the histograms (`tensorboard --logdir=DIR`).
"""
from __future__ import annotations

import csv
import os
import sys

import numpy as np
from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from experiments.configs import cifar10_resnet20  # noqa: E402
from experiments.shared_data import image_folder, write_markdown  # noqa: E402
from resnet_jax import babysit, checkpoint, metrics, train, xla_flags  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'Where the runs, CSV, PNG and table go.',
                               required=True)
_DATA = flags.DEFINE_string('data', '', 'A CIFAR-10 image folder (DATA/train/<class>/*).')
_EPOCHS = flags.DEFINE_float('epochs', 1.0, 'Length of each of the two runs.')
_LR = flags.DEFINE_float('lr', 0.1, 'The healthy rate (He et al. 2015, Sec. 4.2: 0.1).')
_LR_FIND_STEPS = flags.DEFINE_integer('lr_find_steps', 200, 'Steps of the range test.')
_HISTOGRAM_EVERY = flags.DEFINE_integer('histogram_every', 50, 'babysit.histogram_every.')
_MODEL = flags.DEFINE_string('model', 'cifar_resnet20', 'A registered model.')

FIELDS = ('run', 'step', 'lr', 'loss', 'accuracy', 'ratio_median', 'ratio_min', 'ratio_max',
          'dead_mean')
RUNS = (('healthy', 'tab:green'), ('lr_x10', 'tab:red'))


def base(source: str):
  config = cifar10_resnet20.get_config()
  config.model.name = _MODEL.value
  config.dataset.source = source
  config.dataset.eval_split, config.dataset.val_fraction = 'validation', 0.1
  config.dataset.fit_examples = 10_000
  config.schedule.name = 'constant'
  config.log_every_steps = 10
  config.eval_every_epochs = _EPOCHS.value
  config.num_epochs = _EPOCHS.value
  return config


def curve(run: str, run_dir: str) -> list[dict]:
  """The logged training steps of a run, with its update-ratio summary and, where measured,
  the mean dead-channel fraction over the layers (None elsewhere)."""
  rows = []
  for step, record in metrics.read_metrics(run_dir).items():
    if 'train/loss' not in record:
      continue
    ratios = [v for k, v in record.items() if k.startswith('train/update_ratio/')]
    dead = [v for k, v in record.items() if k.startswith('babysit/dead_relu/')]
    rows.append({'run': run, 'step': step, 'lr': record['train/learning_rate'],
                 'loss': record['train/loss'], 'accuracy': record['train/accuracy'],
                 'ratio_median': float(np.median(ratios)), 'ratio_min': min(ratios),
                 'ratio_max': max(ratios), 'dead_mean': float(np.mean(dead)) if dead else None})
  return rows


def first_loss(run_dir: str) -> float:
  return metrics.read_metrics(run_dir)[1]['babysit/initial_loss']


def plot(rows: list[dict], finder: list[tuple], suggestion: dict, path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
  lrs, losses = [r[1] for r in finder], [r[2] for r in finder]
  ax = axes[0]
  ax.plot(lrs, losses, alpha=0.3, color='tab:blue')
  ax.plot(lrs, babysit.smooth(losses), color='tab:blue')
  ax.axvline(suggestion['suggested_lr'], color='k', ls='--',
             label=f"suggested {suggestion['suggested_lr']:.2g}")
  finite = [v for v in babysit.smooth(losses) if np.isfinite(v)]
  ax.set(xscale='log', xlabel='learning rate', ylabel='training loss', title='range test',
         ylim=(min(finite) * 0.9, min(max(finite), babysit.DIVERGED * min(finite)) * 1.1))
  ax.legend(fontsize=8)
  for run, colour in RUNS:
    mine = [r for r in rows if r['run'] == run]
    if not mine:
      continue
    steps = [r['step'] for r in mine]
    label = f"{run} (lr {mine[0]['lr']:.2g})"
    axes[1].plot(steps, [r['loss'] for r in mine], color=colour, label=label)
    axes[2].plot(steps, [r['ratio_median'] for r in mine], color=colour, label=label)
    axes[2].fill_between(steps, [r['ratio_min'] for r in mine], [r['ratio_max'] for r in mine],
                         color=colour, alpha=0.15)
    dead = [(r['step'], r['dead_mean']) for r in mine if r['dead_mean'] is not None]
    axes[3].plot(*zip(*dead), 'o-', color=colour, label=label)
  axes[1].set(xlabel='step', ylabel='training loss', title='training loss')
  axes[2].axhline(1e-3, color='k', ls=':', label='1e-3 rule of thumb')
  axes[2].set(yscale='log', xlabel='step', ylabel='||update|| / ||w||',
              title='update/weight ratio (median, band: min-max)')
  axes[3].set(xlabel='step', ylabel='fraction of channels', ylim=(0, 1),
              title='dead channels, mean over layers')
  for ax in axes[1:]:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_filters(workdir: str, path: str) -> None:
  """Each run's first-layer filters at its last checkpoint (metrics.filter_grid), side by side."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(RUNS), figsize=(2.8 * len(RUNS), 2.0))
  for ax, (run, _) in zip(axes, RUNS):
    kernel = metrics.first_kernel(checkpoint.load_state_tree(os.path.join(workdir, run))['params'])
    ax.imshow(metrics.filter_grid(kernel, scale=8), interpolation='nearest')
    ax.set_title(f'{run}: first-layer filters', fontsize=9)
    ax.axis('off')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv) -> None:
  del argv
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  logging.get_absl_handler().addFilter(metrics.QuietLibraries())
  source = f"folder:{image_folder('cifar10', workdir, _DATA.value)}"
  config = base(source)
  config.babysit.lr_find_steps = _LR_FIND_STEPS.value
  config.babysit.lr_find_range = (1e-4, 10.0)
  suggestion = babysit.lr_find(config, workdir)
  finder = babysit.read_losses(os.path.join(workdir, 'lr_find'))
  rows, lines = [], ['| run | lr | first loss (log 10 = 2.303) | last training loss | '
                     'validation accuracy | median update/weight ratio, last log | '
                     'dead channels, last check |', '|---|---|---|---|---|---|---|']
  for run, lr in (('healthy', _LR.value), ('lr_x10', 10 * _LR.value)):
    config = base(source)
    config.schedule.base_lr = lr
    config.babysit.update_ratio = True
    config.babysit.histogram_every = _HISTOGRAM_EVERY.value
    config.babysit.filters = True
    run_dir = os.path.join(workdir, run)
    result = train.train_and_evaluate(config, run_dir)
    if result.get('preempted'):
      sys.exit(f'{run} was stopped (SIGTERM) and saved; run the same command to resume.')
    mine = curve(run, run_dir)
    rows += mine
    dead = [r['dead_mean'] for r in mine if r['dead_mean'] is not None]
    lines.append(f"| {run} | {lr:g} | {first_loss(run_dir):.3f} | {mine[-1]['loss']:.3f} | "
                 f"{result['accuracy']:.4f} | {mine[-1]['ratio_median']:.2g} | "
                 f"{dead[-1]:.1%} |")
  lines.append(f"\nRange test ({len(finder)} steps, lr 1e-4 to 10): suggested lr "
               f"{suggestion['suggested_lr']:.3g}, a tenth of the edge of the usable rates, "
               f"{suggestion['edge_lr']:.3g} (smoothed loss lowest at "
               f"{suggestion['min_loss_lr']:.3g}, falling fastest at "
               f"{suggestion['steepest_lr']:.3g}).")
  with open(os.path.join(workdir, 'babysitting.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
  plot(rows, finder, suggestion, os.path.join(workdir, 'babysitting.png'))
  plot_filters(workdir, os.path.join(workdir, 'babysitting_filters.png'))
  write_markdown(os.path.join(workdir, 'babysitting.md'), lines)


if __name__ == '__main__':
  xla_flags.set_cpu_defaults()  # Before JAX starts its backends.
  app.run(main)
