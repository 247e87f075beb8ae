"""Plain versus residual nets of 20 and 56 layers on CIFAR-10: training and validation error over
iterations (He et al. 2015, Fig. 1 and Fig. 6), over several seeds.

  python experiments/degradation.py --workdir=DIR [--budget=cpu|full] [--seeds=2]
      [--data=CIFAR_FOLDER] [--models=...] [--epochs=E]

Trains plain20, plain56, cifar_resnet20 and cifar_resnet56 (experiments/configs/degradation.py:
He et al. 2015's recipe; `--budget=cpu` its miniature, whose docstring says why it is faithful) on
a 45k/5k split of the CIFAR-10 JPEG folder (by default unpacked from
../shared/data/cifar10-train-jpeg.tar.gz into DIR/data), seeds 0..N-1, each a normal resumable
run in DIR/MODEL_seedS. Writes
- DIR/degradation.csv: model, seed, step, train_error (of the augmented batches since the previous
  row, in training mode, as the paper's dashed curves), test_error (validation, where measured);
- DIR/degradation.png: Fig. 6's two panels, the mean over seeds;
- DIR/degradation.md: the final errors (training error of the last quarter of training, the one at
  the lowest learning rate; validation error at the end), mean +- std over seeds, and whether the
  paper's two effects show: plain-56 above plain-20 and ResNet-56 below ResNet-20, in training and
  in validation error.
`--epochs` scales the budget's schedule to E epochs (config.with_epochs).
"""
from __future__ import annotations

import csv
import os
import sys

from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from experiments.configs import degradation as degradation_config  # noqa: E402
from experiments.error_curves import FIELDS, error_curve, final_errors, plot, summary  # noqa: E402
from experiments.shared_data import image_folder, write_markdown  # noqa: E402
from resnet_jax import config as config_lib  # noqa: E402
from resnet_jax import metrics, train, xla_flags  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'Where the runs, CSV, PNG and table go.',
                               required=True)
_BUDGET = flags.DEFINE_enum('budget', 'cpu', ['cpu', 'full'],
                            "cpu: the miniature (experiments/configs/degradation.py); full: the "
                            "paper's 64k iterations.")
_SEEDS = flags.DEFINE_integer('seeds', 2, 'Seeds 0..N-1 of each net.')
_DATA = flags.DEFINE_string('data', '', 'A CIFAR-10 image folder (DATA/train/<class>/*).')
_MODELS = flags.DEFINE_list('models', list(degradation_config.MODELS), 'Nets to compare.')
_EPOCHS = flags.DEFINE_float('epochs', 0.0, "Scale the budget's schedule to E epochs (0: keep).")

# He et al. 2015, Fig. 6: (the deeper net, the shallower one, the sign of deeper - shallower).
EFFECTS = (('plain56', 'plain20', +1), ('cifar_resnet56', 'cifar_resnet20', -1))
# Fig. 6's panels: (model name prefix, title).
PANELS = (('plain', 'plain'), ('cifar_resnet', 'ResNet'))


def main(argv) -> None:
  del argv
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  logging.get_absl_handler().addFilter(metrics.QuietLibraries())
  source = f"folder:{image_folder('cifar10', workdir, _DATA.value)}"
  rows = []
  for seed in range(_SEEDS.value):
    for model in _MODELS.value:
      config = degradation_config.get_config(_BUDGET.value)
      if _EPOCHS.value:
        config = config_lib.with_epochs(config, _EPOCHS.value)
      config.model.name = model
      config.dataset.source = source
      config.seed = seed
      run_dir = os.path.join(workdir, f'{model}_seed{seed}')
      if train.train_and_evaluate(config, run_dir).get('preempted'):
        sys.exit(f'{model} was stopped (SIGTERM) and saved; run the same command to resume.')
      rows += error_curve(model, seed, run_dir)
      logging.info('%s seed %d: final training error %.4f, validation error %.4f', model, seed,
                   *final_errors(rows, model, seed))
  with open(os.path.join(workdir, 'degradation.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
  plot(rows, os.path.join(workdir, 'degradation.png'), PANELS)
  lines = summary(rows, EFFECTS)
  write_markdown(os.path.join(workdir, 'degradation.md'), lines)


if __name__ == '__main__':
  xla_flags.set_cpu_defaults()  # Before JAX starts its backends.
  app.run(main)
