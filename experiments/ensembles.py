"""Single models versus their seed ensemble on CIFAR-10, center view and 10-crop.

  python experiments/ensembles.py --workdir=DIR [--budget=cpu|full] [--data=CIFAR_FOLDER]
      [--members=K] [--epochs=E]

Trains K members (one per seed 0..K-1) together in one vmapped program
(resnet_jax.sweep.train_seed_ensemble; experiments/configs/ensembles.py has the two budgets) on
the CIFAR-10 JPEG folder (by default unpacked from ../shared/data/cifar10-train-jpeg.tar.gz into
DIR/data, the cpu budget's share of each class only), with a validation split held out by
config.dataset.val_fraction. Each member is saved as a normal run in DIR/seed_K (a rerun resumes
or, when finished, only evaluates). Writes DIR/ensembles.csv (model, members, eval_mode,
accuracy, loss, examples: each member's center and 10-crop rows, then the ensemble's) and
DIR/ensembles.png.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from experiments.configs import ensembles as ensembles_config  # noqa: E402
from experiments.shared_data import image_folder  # noqa: E402
from resnet_jax import evaluate, sweep, xla_flags  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'Where the members, CSV and PNG go.', required=True)
_BUDGET = flags.DEFINE_enum('budget', 'cpu', list(ensembles_config.BUDGETS),
                            'cpu: LeNet-5, 3 members, 10k images; full: ResNet-20, 5 members, '
                            "He et al. 2015's schedule.")
_DATA = flags.DEFINE_string('data', '', 'A CIFAR-10 image folder (DATA/train/<class>/*.jpg), used '
                            'whole.')
_MEMBERS = flags.DEFINE_integer('members', 0, "Members of the ensemble (0: the budget's).")
_EPOCHS = flags.DEFINE_float('epochs', 0.0, "Override the budget's epochs (0: keep).")

MODES = ('center', 'ten_crop')


def plot(rows: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import numpy as np
  names = list(dict.fromkeys(r['model'] for r in rows))
  fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 3.4))
  x = np.arange(len(names))
  for i, (mode, colour) in enumerate(zip(MODES, ('tab:blue', 'tab:orange'))):
    accuracy = {r['model']: 100 * r['accuracy'] for r in rows if r['eval_mode'] == mode}
    label = '10-crop' if mode == 'ten_crop' else mode
    ax.bar(x + (i - 0.5) * 0.38, [accuracy[n] for n in names], 0.38, color=colour, label=label)
    mean = np.mean([accuracy[n] for n in names if n != 'ensemble'])
    ax.axhline(mean, color=colour, linestyle='--', linewidth=1,
               label=f'mean member, {label} ({mean:.1f}%)')
  values = [100 * r['accuracy'] for r in rows]
  ax.set_ylim(max(0, min(values) - 5), min(100, max(values) + 4))
  ax.set_xticks(x, names)
  ax.set_ylabel('validation accuracy (%)')
  ax.legend(fontsize=7, loc='upper left', ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv) -> None:
  del argv
  budget, workdir = _BUDGET.value, _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  config = ensembles_config.get_config(budget)
  config.dataset.source = 'folder:' + image_folder('cifar10', workdir, _DATA.value,
                                                   ensembles_config.IMAGES_PER_CLASS[budget])
  if _EPOCHS.value:
    config.num_epochs = _EPOCHS.value
  members = _MEMBERS.value or ensembles_config.MEMBERS[budget]
  rows = sweep.train_seed_ensemble(config, range(members), workdir, modes=MODES)
  # Members first (center, then 10-crop), the ensemble last.
  rows.sort(key=lambda r: (r['model'] == 'ensemble', MODES.index(r['eval_mode'])))
  evaluate.write_csv(os.path.join(workdir, 'ensembles.csv'), rows)
  plot(rows, os.path.join(workdir, 'ensembles.png'))
  print(evaluate.markdown_table(rows))
  for mode in MODES:
    scored = [r for r in rows if r['eval_mode'] == mode]
    mean = sum(r['accuracy'] for r in scored[:-1]) / (len(scored) - 1)
    logging.info('%s: mean member %.4f, ensemble of %d %.4f', mode, mean, members,
                 scored[-1]['accuracy'])
    print(f'{mode}: mean member accuracy {mean:.4f}, ensemble of {members} '
          f'{scored[-1]["accuracy"]:.4f}')


if __name__ == '__main__':
  xla_flags.set_cpu_defaults()  # Before JAX starts its backends.
  app.run(main)
