"""A paper's table, reproduced: each row trained from the paper's config, beside the paper's number.

  python experiments/reproduce.py --table=he2015_cifar|he2016_preact|huang2016_sd|lecun1998
      --workdir=DIR [--budget=cpu|full] [--rows=NAME,...] [--epochs=E] [--per_class=N]
      [--data=FOLDER] [--estimate]

--budget=full: each row is its paper's config file (every field the paper states, cited there)
  with the row's changes (`TABLES`), on the dataset the config names (the TFDS CIFAR-10 or MNIST
  test sets: prepare them first, or pass --data=FOLDER to hold out 10% of an image folder
  instead). It first prints the expected hours of every row on each accelerator of ACCELERATORS
  (training FLOPs = 3 x the forward FLOPs XLA counts x examples x epochs, at a sustained rate);
  `--estimate` prints that and stops. This is what an accelerator session runs.
--budget=cpu: the miniature any session can run on 2 cores: each row's recipe scaled to
  CPU_EPOCHS epochs (config.with_epochs: the schedule keeps its shape) on CPU_PER_CLASS images of
  each class of the shared training folder (../shared/data), 10% of them held out as the test
  set. Rows too deep for that (`cpu=False`) are skipped. Its errors are not the paper's: it shows
  that every row trains and how they order at a small budget, next to the paper's column.

Writes DIR/TABLE.csv (one row per trained row, appended as each finishes; a rerun skips the rows
it has) and DIR/TABLE.md (the paper's column beside ours). Each row is a normal resumable run in
DIR/TABLE/ROW.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from experiments.shared_data import append_csv_row, image_folder, read_csv_rows, write_markdown  # noqa: E402
from resnet_jax import config as config_lib  # noqa: E402
from resnet_jax import metrics, records, train, xla_flags  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Row:
  name: str  # The paper's name for the row.
  config: str  # A file in experiments/configs.
  changes: dict  # Dotted config fields the row sets over the file (its model, its technique).
  paper_error: float  # Top-1 error (%) as the paper reports it.
  source: str  # Where in the paper.
  cpu: bool = True  # Trained at --budget=cpu (False: too deep for 2 cores).


# Huang et al. 2016, Sec. 4 (CIFAR-10): 500 epochs, lr 0.1 divided by 10 after epochs 250 and 375,
# Nesterov momentum 0.9, weight decay 1e-4, batch 128; p_L = 0.5 with the linear decay rule.
_HUANG2016 = {'num_epochs': 500.0, 'schedule.boundaries': (250.0, 375.0),
              'optimizer.nesterov': True}

TABLES = {
    'he2015_cifar': dict(
        title='He et al. 2015, "Deep Residual Learning for Image Recognition", Table 6: '
              'CIFAR-10 test error (%)', dataset='cifar10',
        rows=(Row('ResNet-20', 'cifar10_resnet20', {'model.name': 'cifar_resnet20'}, 8.75,
                  'Table 6'),
              Row('ResNet-32', 'cifar10_resnet20', {'model.name': 'cifar_resnet32'}, 7.51,
                  'Table 6'),
              Row('ResNet-44', 'cifar10_resnet20', {'model.name': 'cifar_resnet44'}, 7.17,
                  'Table 6'),
              Row('ResNet-56', 'cifar10_resnet20', {'model.name': 'cifar_resnet56'}, 6.97,
                  'Table 6'),
              Row('ResNet-110', 'cifar10_resnet20', {'model.name': 'cifar_resnet110'}, 6.43,
                  'Table 6 (best of 5; mean 6.61 +- 0.16). The paper warms up at lr 0.01 for '
                  '~400 iterations; this recipe does not', cpu=False))),
    'he2016_preact': dict(
        title='He et al. 2016, "Identity Mappings in Deep Residual Networks", Table 3: '
              'CIFAR-10 test error (%), original vs pre-activation units', dataset='cifar10',
        rows=(Row('ResNet-110 (original)', 'cifar10_resnet20', {'model.name': 'cifar_resnet110'},
                  6.61, 'Table 3', cpu=False),
              Row('ResNet-110 (pre-act)', 'cifar10_resnet20', {'model.name': 'preact_resnet110'},
                  6.37, 'Table 3', cpu=False),
              Row('ResNet-164 (pre-act)', 'cifar10_resnet20', {'model.name': 'preact_resnet164'},
                  5.46, 'Table 3', cpu=False),
              Row('ResNet-1001 (pre-act)', 'cifar10_resnet20',
                  {'model.name': 'preact_resnet1001'}, 4.92, 'Table 3', cpu=False))),
    'huang2016_sd': dict(
        title='Huang et al. 2016, "Deep Networks with Stochastic Depth", Table 1: CIFAR-10 '
              '(with augmentation) test error (%)', dataset='cifar10',
        rows=(Row('110-layer, constant depth', 'cifar10_resnet20',
                  {'model.name': 'cifar_resnet110', **_HUANG2016}, 6.41, 'Table 1', cpu=False),
              Row('110-layer, stochastic depth', 'cifar10_resnet20',
                  {'model.name': 'cifar_resnet110', 'model.stochastic_depth': 0.5,
                   **_HUANG2016}, 5.25, 'Table 1', cpu=False))),
    'lecun1998': dict(
        title='LeCun et al. 1998, "Gradient-Based Learning Applied to Document Recognition": '
              'MNIST test error (%)', dataset='mnist',
        rows=(Row('LeNet-5, C3 table', 'mnist_lenet5', {'model.sparse_c3': True}, 0.95,
                  'Sec. III.C (no distortions; the paper trains with stochastic diagonal '
                  'Levenberg-Marquardt, this recipe with SGD)'),
              Row('LeNet-5, full C3', 'mnist_lenet5', {'model.sparse_c3': False}, 0.95,
                  'Sec. III.C, for the C3 table; full C3 is the modern reading'))),
}

# The CPU miniature (see the module docstring).
CPU_EPOCHS, CPU_PER_CLASS = 2.0, 500

# Sustained training TFLOP/s for the hour estimates. CPU: measured (docs/benchmarks.md,
# cifar_resnet20 training, 159 img/s x 0.228 GFLOP/img). Accelerators: ASSUMED at 30% of the
# dense bf16 peak, not measured here; small CIFAR nets usually reach less.
ACCELERATORS = (('cpu-2 (measured)', 0.036), ('A100 (30% of 312)', 94.0),
                ('H100 (30% of 989)', 297.0), ('TPU v4 chip (30% of 275)', 83.0))
EXAMPLES = {'cifar10': 50_000, 'mnist': 60_000}

_TABLE = flags.DEFINE_enum('table', None, list(TABLES), 'The paper table to reproduce.',
                           required=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where the runs, CSV and table go.',
                               required=True)
_BUDGET = flags.DEFINE_enum('budget', 'cpu', ['cpu', 'full'],
                            "cpu: the miniature; full: the paper's recipe.")
_ROWS = flags.DEFINE_list('rows', [], 'Only these rows (their names, as in TABLES).')
_EPOCHS = flags.DEFINE_float('epochs', 0.0, "Scale each row's schedule to E epochs (0: the "
                             "budget's).")
_PER_CLASS = flags.DEFINE_integer('per_class', 0, 'At --budget=cpu: images per class of the '
                                  'shared folder (0: CPU_PER_CLASS).')
_DATA = flags.DEFINE_string('data', '', 'An image folder (DATA/train/<class>/*); 10% is held out '
                            'as the test set.')
_ESTIMATE = flags.DEFINE_bool('estimate', False, 'Print the expected hours and stop.')

FIELDS = ['row', 'model', 'paper_error', 'source', 'our_error', 'split', 'epochs', 'steps',
          'seconds']


def row_config(row: Row):
  """The row's config: its paper config file with the row's changes."""
  config = config_lib.load_file(os.path.join(REPO, 'experiments', 'configs', f'{row.config}.py'))
  with config.unlocked():
    for name, value in row.changes.items():
      parent, leaf = records.parent_of(config, name)
      parent[leaf] = value
  return config


def expected_hours(table: dict, rows: list[Row]) -> list[str]:
  """Markdown lines: each row's training FLOPs and its hours on each of ACCELERATORS."""
  from resnet_jax.bench.complexity import forward_flops
  lines = ['| row | model | epochs | training PFLOP | ' +
           ' | '.join(f'hours on {name}' for name, _ in ACCELERATORS) + ' |',
           '|---|---|---:|---:|' + '---:|' * len(ACCELERATORS)]
  for row in rows:
    config = row_config(row)
    flops = 3 * forward_flops(config.model.name) * EXAMPLES[table['dataset']] * config.num_epochs
    hours = [flops / (rate * 1e12) / 3600 for _, rate in ACCELERATORS]
    lines.append(f'| {row.name} | {config.model.name} | {config.num_epochs:g} | '
                 f'{flops / 1e15:.1f} | ' + ' | '.join(f'{h:,.1f}' for h in hours) + ' |')
  return lines


def markdown(title: str, budget: str, rows: list[dict]) -> list[str]:
  lines = [f'{title}; ours at --budget={budget}.', '',
           '| row | model | paper error (%) | our error (%) | our split | epochs | where in the '
           'paper |', '|---|---|---:|---:|---|---:|---|']
  for r in rows:
    lines.append(f"| {r['row']} | {r['model']} | {float(r['paper_error']):.2f} | "
                 f"{float(r['our_error']):.2f} | {r['split']} | {float(r['epochs']):g} | "
                 f"{r['source']} |")
  return lines


def main(argv) -> None:
  del argv
  table = TABLES[_TABLE.value]
  unknown = [name for name in _ROWS.value if name not in [r.name for r in table['rows']]]
  if unknown:
    raise app.UsageError(f'--rows: {unknown[0]!r} is not a row of {_TABLE.value}; rows: '
                         f'{", ".join(r.name for r in table["rows"])}')
  rows = [r for r in table['rows'] if not _ROWS.value or r.name in _ROWS.value]
  if _BUDGET.value == 'full':
    print('\n'.join(['Expected training time (one accelerator):', *expected_hours(table, rows)]))
    if _ESTIMATE.value:
      return
  elif _ESTIMATE.value:
    raise app.UsageError('--estimate goes with --budget=full')
  workdir = os.path.join(_WORKDIR.value, f'{_TABLE.value}_{_BUDGET.value}')
  os.makedirs(workdir, exist_ok=True)
  logging.get_absl_handler().addFilter(metrics.QuietLibraries())
  csv_path = os.path.join(workdir, f'{_TABLE.value}.csv')
  done = {r['row'] for r in read_csv_rows(csv_path)}
  folder = None
  if _BUDGET.value == 'cpu' or _DATA.value:
    per_class = None if _DATA.value else (_PER_CLASS.value or CPU_PER_CLASS)
    folder = image_folder(table['dataset'], workdir, _DATA.value, per_class)
  for row in rows:
    if row.name in done:
      continue
    if _BUDGET.value == 'cpu' and not row.cpu and not _ROWS.value:
      logging.info('%s: skipped at --budget=cpu (too deep for 2 cores; --rows trains it)',
                   row.name)
      continue
    config = row_config(row)
    epochs = _EPOCHS.value or (CPU_EPOCHS if _BUDGET.value == 'cpu' else 0)
    if epochs:
      config = config_lib.with_epochs(config, epochs)
    if folder:
      config.dataset.source = f'folder:{folder}'
      config.dataset.eval_split = 'validation'
      config.dataset.val_fraction = 0.1
    run_dir = os.path.join(workdir, row.name.replace(' ', '_').replace(',', ''))
    start = time.perf_counter()
    results = train.train_and_evaluate(config, run_dir)
    if results.get('preempted'):
      sys.exit(f'{row.name} was stopped (SIGTERM) and saved; run the same command to resume.')
    append_csv_row(csv_path, dict(
        row=row.name, model=config.model.name, paper_error=row.paper_error, source=row.source,
        our_error=round(100 * (1 - results['accuracy']), 2), split=config.dataset.eval_split,
        epochs=config.num_epochs, steps=results['step'],
        seconds=round(time.perf_counter() - start)), FIELDS)
    logging.info('%s: error %.2f%% (paper %.2f%%)', row.name, 100 * (1 - results['accuracy']),
                 row.paper_error)
  lines = markdown(table['title'], _BUDGET.value, read_csv_rows(csv_path))
  write_markdown(os.path.join(workdir, f'{_TABLE.value}.md'), lines)


if __name__ == '__main__':
  xla_flags.set_cpu_defaults()  # Before JAX starts its backends.
  app.run(main)
