"""Plain vs residual nets of 18 and 34 layers on ImageNet: He et al. 2015, Fig. 4 and Table 2.

  python experiments/plain_vs_residual.py --workdir=DIR [--train] [--data=FOLDER]
      [--config=experiments/configs/imagenet_plain_vs_residual.py] [--config.FIELD=VALUE ...]

Reads the four runs DIR/plain18, DIR/plain34, DIR/resnet18 and DIR/resnet34, each a normal run of
the config (`python -m resnet_jax.main --config=... --config.model.name=NAME --workdir=DIR/NAME`,
on four machines at once if you have them), and draws Fig. 4: top-1 training error (dashed; the
augmented batches, in training mode) and validation error (bold, centre crop) against
iterations, plain nets left, ResNets right. `--train` trains the runs that are missing or
unfinished here, one after another (each resumes where it stopped). Writes
DIR/plain_vs_residual.csv (model, seed, step, train_error, test_error), DIR/plain_vs_residual.png
and DIR/plain_vs_residual.md (the final errors beside Table 2's 10-crop ones, and whether the
paper's two effects show: plain-34 above plain-18, ResNet-34 below ResNet-18).

The expected cost of --train is that of four ImageNet runs of 600k iterations (an accelerator
job: `experiments/reproduce.py` prints such estimates); `--data` with any image folder and
`--config.num_epochs` make a small one.
"""
from __future__ import annotations

import csv
import json
import os
import sys

from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from experiments import error_curves  # noqa: E402
from experiments.shared_data import write_markdown  # noqa: E402
from resnet_jax import metrics, train, xla_flags  # noqa: E402
from resnet_jax.configs import command_line  # noqa: E402

command_line.define_config_flag(
    'The recipe of the four runs.',
    default=os.path.join(REPO, 'experiments/configs/imagenet_plain_vs_residual.py'))
_WORKDIR = flags.DEFINE_string('workdir', None, 'Holds one run per net (DIR/NAME) and the plot.',
                               required=True)
_TRAIN = flags.DEFINE_bool('train', False, 'Train the missing or unfinished runs here.')
_DATA = flags.DEFINE_string('data', '', 'An image folder (DATA/train/<class>/*) to train on, 10% '
                            'held out for validation, instead of the config\'s source.')

MODELS = ('plain18', 'plain34', 'resnet18', 'resnet34')
EFFECTS = (('plain34', 'plain18', +1), ('resnet34', 'resnet18', -1))
PANELS = (('plain', 'plain'), ('resnet', 'ResNet'))
# He et al. 2015, Table 2: top-1 error (%, 10-crop testing) on the ImageNet validation set.
TABLE2 = {'plain18': 27.94, 'plain34': 28.54, 'resnet18': 27.88, 'resnet34': 25.03}


def finished(run_dir: str) -> bool:
  return os.path.exists(os.path.join(run_dir, 'results.json'))


def main(argv) -> None:
  del argv
  workdir = _WORKDIR.value
  logging.get_absl_handler().addFilter(metrics.QuietLibraries())
  missing = [m for m in MODELS if not finished(os.path.join(workdir, m))]
  if missing and not _TRAIN.value:
    raise app.UsageError(
        f'{workdir} has no finished run of {", ".join(missing)}: train each with `python -m '
        f'resnet_jax.main --config={flags.FLAGS["config"].config_filename} '
        f'--config.model.name=NAME --workdir={workdir}/NAME`, or pass --train')
  for model in missing:
    config = flags.FLAGS.config.copy_and_resolve_references()
    config.model.name = model
    if _DATA.value:
      config.dataset.source = f'folder:{_DATA.value}'
      config.dataset.eval_split = 'validation'
      config.dataset.val_fraction = 0.1
    if train.train_and_evaluate(config, os.path.join(workdir, model)).get('preempted'):
      sys.exit(f'{model} was stopped (SIGTERM) and saved; run the same command to resume.')
  rows = [row for m in MODELS for row in error_curves.error_curve(m, 0, os.path.join(workdir, m))]
  with open(os.path.join(workdir, 'plain_vs_residual.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=error_curves.FIELDS)
    writer.writeheader()
    writer.writerows(rows)
  error_curves.plot(rows, os.path.join(workdir, 'plain_vs_residual.png'), PANELS)
  lines = error_curves.summary(rows, EFFECTS)
  lines += ['', '| net | validation error (%), centre crop | He et al. 2015, Table 2 (10-crop) |',
            '|---|---|---|']
  for model in MODELS:
    with open(os.path.join(workdir, model, 'results.json')) as f:
      error = 100 * (1 - json.load(f)['accuracy'])
    lines.append(f'| {model} | {error:.2f} | {TABLE2[model]:.2f} |')
  write_markdown(os.path.join(workdir, 'plain_vs_residual.md'), lines)


if __name__ == '__main__':
  xla_flags.set_cpu_defaults()  # Before JAX starts its backends.
  app.run(main, flags_parser=command_line.parse_flags)
