"""Transfer learning: a backbone pretrained on MNIST, trained on CIFAR-10 from scratch, frozen
(only a new head trains) and fine-tuned (every layer; and with the backbone at a tenth of the rate).

  python experiments/transfer.py --workdir=DIR [--budget=cpu|full] [--mnist=FOLDER]
      [--cifar=FOLDER] [--per_class=N] [--pretrain_epochs=E] [--epochs=E] [--settings=A,B]

The sources are image folders (FOLDER/train/<class>/<image>) or, by default, the archives of
../shared/data; the first `per_class` images of each class are copied into DIR/data, the grey
digits as RGB. The model (experiments/configs/transfer.py) is pretrained on MNIST in DIR/pretrain;
its variables with the head of a fresh initialisation go to DIR/backbone, the `config.init_from`
of the pretrained settings. Each setting is a normal resumable run in DIR/SETTING. Writes
DIR/transfer.csv (setting, epochs, accuracy, loss, seconds; the first row is the pretraining, on
MNIST's validation split, the others on CIFAR-10's) and DIR/transfer.png.
"""
from __future__ import annotations

import collections
import csv
import functools
import io
import os
import shutil
import sys
import tarfile
import time

from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from experiments.configs import transfer as transfer_config  # noqa: E402
from resnet_jax import train, xla_flags  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'Where the runs, CSV and PNG go.', required=True)
_BUDGET = flags.DEFINE_enum('budget', 'cpu', ['cpu', 'full'], 'experiments/configs/transfer.py')
_MNIST = flags.DEFINE_string('mnist', '', 'MNIST image folder (default: the shared archive).')
_CIFAR = flags.DEFINE_string('cifar', '', 'CIFAR-10 image folder (default: the shared archive).')
_PER_CLASS = flags.DEFINE_integer('per_class', -1, 'Images per class of both (-1: the budget\'s).')
_PRETRAIN_EPOCHS = flags.DEFINE_float('pretrain_epochs', 0.0, 'Override (0: the budget\'s).')
_EPOCHS = flags.DEFINE_float('epochs', 0.0, 'Override the fine-tuning epochs (0: the budget\'s).')
_SETTINGS = flags.DEFINE_list('settings', list(transfer_config.SETTINGS), 'Settings to run.')

SHARED = os.path.join(os.path.dirname(REPO), 'shared', 'data')


def _read(path: str) -> bytes:
  with open(path, 'rb') as f:
    return f.read()


def _train_images(source: str):
  """(class, file name, read()) of each image of SOURCE/train/<class>/, a folder or .tar.gz."""
  if os.path.isdir(source):
    root = os.path.join(source, 'train')
    for name in sorted(os.listdir(root)):
      for file in sorted(os.listdir(os.path.join(root, name))):
        yield name, file, functools.partial(_read, os.path.join(root, name, file))
    return
  with tarfile.open(source) as tar:
    for member in tar:
      parts = member.name.split('/')
      if member.isfile() and len(parts) == 3 and parts[0] == 'train':
        yield parts[1], parts[2], lambda member=member: tar.extractfile(member).read()


def image_folder(source: str, dest: str, per_class: int) -> str:
  """DEST/train/<class>/: the first `per_class` images (0: all) of each class of `source`, grey
  ones as RGB PNGs, others copied as they are; made once (a finished DEST is reused)."""
  if os.path.isdir(os.path.join(dest, 'train')):
    return dest
  if not os.path.exists(source):
    raise FileNotFoundError(f'{source} not found: pass an image folder holding '
                            'train/<class>/<image>')
  from PIL import Image
  partial = dest + '.partial'
  shutil.rmtree(partial, ignore_errors=True)
  taken = collections.Counter()
  for name, file, read in _train_images(source):
    if per_class and taken[name] >= per_class:
      continue
    taken[name] += 1
    os.makedirs(os.path.join(partial, 'train', name), exist_ok=True)
    raw = read()
    with Image.open(io.BytesIO(raw)) as image:
      if image.mode != 'RGB':  # Grey digits: the same level in R, G and B.
        image.convert('RGB').save(os.path.join(partial, 'train', name,
                                               os.path.splitext(file)[0] + '.png'))
        continue
    with open(os.path.join(partial, 'train', name, file), 'wb') as f:
      f.write(raw)
  os.rename(partial, dest)
  logging.info('%s: %d images of %d classes from %s', dest, sum(taken.values()), len(taken), source)
  return dest


def with_fresh_head(pretrained: str, out: str, config) -> str:
  """The variables of the run in `pretrained` with the classifier (models.model_spec) of a
  fresh initialisation of `config` (the head its from-scratch run starts with), saved at `out`
  for config.init_from: the fine-tuning starts with a new head even when the class counts match."""
  if os.path.isdir(out):
    return out
  import jax

  from resnet_jax import convert, data, models
  variables = convert.load_variables(pretrained)
  num_classes = data.load_split(config.dataset, config.dataset.eval_split).num_classes
  size = config.dataset.image_size
  model = train.build_model(config, num_classes)
  # setup()'s initialisation: the same model, key and input shape.
  fresh = jax.jit(lambda key: models.initial_variables(model, key, (size, size, 3))['params'])(
      jax.random.fold_in(jax.random.PRNGKey(config.seed), train.INIT))
  *parents, last = models.model_spec(config.model.name)['classifier'].split('/')
  target = variables['params']
  for name in parents:
    target, fresh = target[name], fresh[name]
  target[last] = jax.device_get(fresh[last])
  convert.save_variables(variables, out)
  return out


def run(setting: str, config, workdir: str) -> dict:
  start = time.perf_counter()
  results = train.train_and_evaluate(config, workdir)
  if results.get('preempted'):
    sys.exit(f'{setting} was stopped (SIGTERM) and saved; run the same command to resume.')
  row = {'setting': setting, 'epochs': config.num_epochs, 'accuracy': results['accuracy'],
         'loss': results['loss'], 'seconds': time.perf_counter() - start}
  logging.info('%s: accuracy %.4f in %.0f s', setting, row['accuracy'], row['seconds'])
  return row


def plot(rows: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  pretrain, rows = rows[0], rows[1:]
  fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
  names = [r['setting'] for r in rows]
  left.bar(names, [100 * r['accuracy'] for r in rows], color='tab:blue')
  left.axhline(10, color='grey', linestyle=':', label='chance')
  left.set_ylabel('CIFAR-10 validation accuracy (%)')
  left.set_title(f'backbone: {100 * pretrain["accuracy"]:.1f}% on MNIST after '
                 f'{pretrain["epochs"]:g} epochs', fontsize=9)
  left.legend(fontsize=8)
  right.bar(names, [r['seconds'] for r in rows], color='tab:orange')
  right.set_ylabel(f'training + evaluation (s), {rows[0]["epochs"]:g} epochs')
  for ax in (left, right):
    ax.tick_params(axis='x', labelrotation=30, labelsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv) -> None:
  del argv
  unknown = sorted(set(_SETTINGS.value) - set(transfer_config.SETTINGS))
  if unknown or not _SETTINGS.value:
    raise app.UsageError(f'--settings {_SETTINGS.value}: give some of '
                         f'{list(transfer_config.SETTINGS)}')
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  c = transfer_config.get_config(_BUDGET.value)
  if _PER_CLASS.value >= 0:
    c.mnist_per_class = c.cifar_per_class = _PER_CLASS.value
  mnist = image_folder(_MNIST.value or os.path.join(SHARED, 'mnist-train-png.tar.gz'),
                       os.path.join(workdir, 'data', f'mnist_rgb_{c.mnist_per_class}'),
                       c.mnist_per_class)
  cifar = image_folder(_CIFAR.value or os.path.join(SHARED, 'cifar10-train-jpeg.tar.gz'),
                       os.path.join(workdir, 'data', f'cifar10_{c.cifar_per_class}'),
                       c.cifar_per_class)
  c.pretrain.dataset.source = f'folder:{mnist}'
  c.finetune.dataset.source = f'folder:{cifar}'
  c.pretrain.num_epochs = _PRETRAIN_EPOCHS.value or c.pretrain.num_epochs
  c.finetune.num_epochs = _EPOCHS.value or c.finetune.num_epochs
  rows = [run('pretrain_mnist', c.pretrain, os.path.join(workdir, 'pretrain'))]
  backbone = with_fresh_head(os.path.join(workdir, 'pretrain'), os.path.join(workdir, 'backbone'),
                             c.finetune)
  for setting in _SETTINGS.value:
    pretrained, overrides = transfer_config.SETTINGS[setting]
    config = c.finetune.copy_and_resolve_references()
    config.update_from_flattened_dict(overrides)
    config.init_from = backbone if pretrained else ''
    rows.append(run(setting, config, os.path.join(workdir, setting)))
  with open(os.path.join(workdir, 'transfer.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=['setting', 'epochs', 'accuracy', 'loss', 'seconds'])
    writer.writeheader()
    writer.writerows(rows)
  plot(rows, os.path.join(workdir, 'transfer.png'))
  for r in rows:
    print(f"{r['setting']:15s} {r['epochs']:g} epochs  accuracy {r['accuracy']:.4f}  "
          f"loss {r['loss']:.4f}  {r['seconds']:.0f} s")


if __name__ == '__main__':
  xla_flags.set_cpu_defaults()  # Before JAX starts its backends.
  app.run(main)
