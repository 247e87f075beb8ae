"""One recipe trained here and in PyTorch, seed for seed: is our training at parity?

  python experiments/parity.py --workdir=DIR [--recipe=experiments/configs/cifar10_resnet20.py]
      [--recipe.FIELD=VALUE ...] [--epochs=4] [--seeds=2] [--data=CIFAR_FOLDER] [--per_class=N]

For each seed, the recipe's network is trained twice: by this package (`train.train_and_evaluate`)
and by its torch twin (`resnet_jax.torch_peers`: torch's usual initialisation, torch.optim.SGD,
torch's BatchNorm), then both are scored on the same held-out test split. The torch side is fed
the very batches our run trains on: the on-device pipeline's order and augmentation draws
(`data.on_device.device_batch`, a pure function of seed and step) and our fitted preprocessing,
so data order, crops (their zero padding included), flips and input scaling are identical by
construction. Its learning rate is our schedule's value at each step, and the step count is ours.

What still differs, each a config choice on our side (docs/results.md, "Parity with PyTorch"):
- conv init: both Kaiming normal, fan-out (`model.init`, 'kaiming'), but drawn from other RNGs;
- classifier init: ours LeCun normal with zero bias, torch's nn.Linear U(+-1/sqrt(fan_in)) for
  weights and bias (`model.head_init=torch` gives torch's);
- BatchNorm running variance: ours averages the biased batch variance, torch the unbiased one
  (`model.norm=torch_batch` gives torch's); momentum and epsilon are equal by default
  (`model.bn_momentum`, `model.bn_epsilon`, flax's convention: 0.9 == torch's 0.1);
- arithmetic: XLA's and oneDNN's convolution kernels, float32 both.

The test split: `--recipe.dataset.val_fraction` (default 0.1: 5,000 of the folder's 50,000 images,
a fixed carve) is held out and never trained on; both sides report accuracy on it. `--epochs`
shortens the recipe, scaling every epoch count of its schedule (boundaries, warm-up) by the same
factor, so the schedule keeps its shape. Writes DIR/parity.csv (one row per run, appended as each
finishes: a rerun skips the runs it has) and DIR/parity.md (the table).
"""
from __future__ import annotations

import json
import math
import os
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from experiments.shared_data import append_csv_row, image_folder, read_csv_rows, write_markdown  # noqa: E402
from resnet_jax import config as config_lib  # noqa: E402
from resnet_jax import data, metrics, train, xla_flags  # noqa: E402
from resnet_jax.configs import command_line  # noqa: E402
from resnet_jax.data import on_device, preprocess  # noqa: E402
from resnet_jax.models import create_model  # noqa: E402

DEFAULT_RECIPE = os.path.join(REPO, 'experiments/configs/cifar10_resnet20.py')
command_line.define_config_flag('The recipe both sides train: a config file.', name='recipe',
                                default=DEFAULT_RECIPE)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where the runs, CSV and table go.')
_EPOCHS = flags.DEFINE_float('epochs', 4.0, "Epochs of the shortened recipe (0: the recipe's).")
_SEEDS = flags.DEFINE_integer('seeds', 2, 'Seeds 0..N-1 on each side.')
_DATA = flags.DEFINE_string('data', '', 'A CIFAR-10 image folder (DATA/train/<class>/*).')
_SAME_INIT = flags.DEFINE_bool(
    'same_init', False, "Start ours from the torch twin's initial weights (config.init_from), so "
    'the two sides differ only in how they train: their per-step losses should then agree.')
_PER_CLASS = flags.DEFINE_integer('per_class', 0, 'Use the first N images of each class of the '
                                  'shared archive (0: all); ignored with --data.')

# Model fields the twins take too (torch_peers.CifarVGG's width).
TWIN_FIELDS = ('width',)
FIELDS = ['recipe', 'model', 'side', 'seed', 'epochs', 'steps', 'test_accuracy', 'seconds']
# Structural model options the torch twins do not mirror: parity needs them unset.
STRUCTURAL = ('act', 'residual', 'shortcut', 'dropout_rate', 'dropconnect_rate',
              'stochastic_depth', 'zero_init_residual', 'aux_logits', 'lrn', 'sparse_c3')


def check_parity_config(config) -> None:
  """Recipes the torch side can follow exactly; anything else names the field."""
  o = config.optimizer
  rules = [
      (o.name == 'sgd', f"optimizer.name is '{o.name}'; the torch side runs torch.optim.SGD"),
      (o.decay_style in (None, 'l2'), "optimizer.decay_style must be unset or 'l2' (torch's SGD)"),
      (config.dtype == 'float32', 'dtype must be float32 (torch trains in float32 here)'),
      (not (config.mixup_alpha or config.cutmix_alpha), 'mixup_alpha and cutmix_alpha must be 0'),
      (config.ema_decay == 0, 'ema_decay must be 0'),
      (config.grad_accum_steps == 1, 'grad_accum_steps must be 1'),
      (o.clip_norm == 0, 'optimizer.clip_norm must be 0'),
      (not (config.freeze or o.lr_multipliers),
       'freeze and optimizer.lr_multipliers must be unset'),
      (not config.skip_nonfinite, 'skip_nonfinite must be False'),
      (not on_device.unsupported_ops(config.dataset.augment),
       f"dataset.augment '{config.dataset.augment}' must run on device: the torch side trains on "
       f'the on-device batches ({", ".join(on_device.SUPPORTED_OPS)})'),
  ]
  built = train.build_model(config, num_classes=10)
  registered = create_model(config.model.name, num_classes=10)
  structural = [k for k in STRUCTURAL
                if hasattr(registered, k) and getattr(built, k) != getattr(registered, k)]
  rules.append((not structural, f'model.{", model.".join(structural)} must keep the registered '
                              "model's value: the torch twin has that structure only"))
  for ok, message in rules:
    if not ok:
      raise ValueError(f'--recipe: {message}')


def torch_twin(config, num_classes: int):
  """The torch twin of config.model.name, initialised from torch's RNG seeded by config.seed."""
  import torch

  from resnet_jax.torch_peers import torch_peer
  torch.manual_seed(config.seed)
  return torch_peer(config.model.name, num_classes=num_classes, **twin_options(config))


def twin_options(config) -> dict:
  """The set fields of config.model that the twins mirror (TWIN_FIELDS)."""
  return {k: config.model[k] for k in TWIN_FIELDS if config.model[k] is not None}


def save_torch_init(config, path: str) -> str:
  """The torch twin's initial weights as a converted checkpoint at `path` (config.init_from)."""
  from resnet_jax import convert
  if not os.path.isdir(path):
    net = torch_twin(config, num_classes=10)
    convert.save_variables(convert.from_torch(config.model.name, net.state_dict(),
                                              num_classes=10, **twin_options(config)), path)
  return path


def torch_run(config, preprocess_dir: str, losses_path: str) -> tuple[float, int, float]:
  """Trains the torch twin of config.model.name on our batches: (test accuracy, steps, seconds).
  `preprocess_dir` holds our run's fitted preprocessing (preprocess.npz). Writes the mean loss of
  each `log_every_steps` interval to `losses_path` (JSON lines {step, train/loss}: the intervals
  and key of our metrics.jsonl)."""
  import torch

  torch.set_num_threads(os.cpu_count() or 1)
  exp = train.setup(config, workdir=preprocess_dir)
  d = config.dataset
  net = torch_twin(config, exp.eval_split.num_classes)
  for m in net.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.momentum, m.eps = 1.0 - exp.model.bn_momentum, exp.model.bn_epsilon
  net = net.to(memory_format=torch.channels_last)
  o = config.optimizer
  decayed = [p for p in net.parameters() if o.decay_norm_and_bias or p.ndim > 1]
  kept = [p for p in net.parameters() if not (o.decay_norm_and_bias or p.ndim > 1)]
  sgd = torch.optim.SGD([{'params': decayed, 'weight_decay': o.weight_decay},
                         {'params': kept, 'weight_decay': 0.0}],
                        lr=0.0, momentum=o.momentum, nesterov=o.nesterov)

  arrays = jax.device_put(on_device.load_arrays(exp.train_split, d))
  pre = jax.device_put(exp.pre_arrays)
  augment = on_device.DeviceAugment(d.augment, data.augment.AugmentOptions.from_config(d),
                                    exp.preprocessing.lighting,
                                    exp.preprocessing.zero_image(exp.image_shape))
  data_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), train.DATA)
  order_of = jax.jit(on_device.epoch_order, static_argnums=2)
  num_examples = int(arrays['label'].shape[0])

  @jax.jit
  def batch_at(arrays, order, step, pre):
    batch = on_device.device_batch(arrays, order, step, data_key, augment,
                                   batch_size=config.batch_size,
                                   steps_per_epoch=exp.steps_per_epoch, num_devices=1,
                                   device_index=0)
    return preprocess.apply(pre, batch['image'], jnp.float32), batch['label']

  def to_torch(images):
    return torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last)

  start, epoch, order, losses = time.perf_counter(), -1, None, []
  log = open(losses_path, 'w')
  net.train()
  for step in range(exp.total_steps):
    if step // exp.steps_per_epoch != epoch:
      epoch = step // exp.steps_per_epoch
      order = order_of(data_key, epoch, num_examples)
    images, labels = batch_at(arrays, order, step, pre)
    for group in sgd.param_groups:
      group['lr'] = float(exp.schedule(step))
    loss = torch.nn.functional.cross_entropy(
        net(to_torch(images)), torch.from_numpy(np.asarray(labels)).long(),
        label_smoothing=config.label_smoothing)
    sgd.zero_grad(set_to_none=True)
    loss.backward()
    sgd.step()
    losses.append(float(loss))
    if (step + 1) % config.log_every_steps == 0 or step + 1 == exp.total_steps:
      logging.info('torch step %d/%d: loss %.4f (mean of the last %d), %.0f s', step + 1,
                   exp.total_steps, statistics.fmean(losses), len(losses),
                   time.perf_counter() - start)
      log.write(json.dumps({'step': step + 1, 'train/loss': statistics.fmean(losses)}) + '\n')
      losses = []
      if not math.isfinite(float(loss)):
        raise FloatingPointError(f'the torch side diverged at step {step + 1}')
  seconds = time.perf_counter() - start
  log.close()

  correct = total = 0.0
  net.eval()
  with torch.no_grad():
    for batch in exp.eval_batches():
      images = preprocess.apply(pre, batch['image'], jnp.float32)
      predicted = net(to_torch(images)).argmax(1).numpy()
      correct += float(((predicted == batch['label']) * batch['mask']).sum())
      total += float(batch['mask'].sum())
  return correct / total, exp.total_steps, seconds


def recipe_label(recipe_file: str, argv, same_init: bool) -> str:
  """The recipe's name in the table: its file's, with the command line's overrides (and
  'same_init') after it, so that variants of one recipe keep separate rows."""
  changes = [arg[len('--recipe.'):] for arg in argv[1:] if arg.startswith('--recipe.')]
  changes += [arg[2:] for arg in argv[1:] if arg.startswith('--norecipe.')]
  return ' '.join([os.path.splitext(os.path.basename(recipe_file))[0], *changes,
                   *(['same_init'] if same_init else [])])


def summary(rows: list[dict]) -> list[str]:
  """The markdown table: per recipe, each side's accuracies, mean +- std, and the difference in
  units of the pooled std."""
  lines = ['| recipe | model | epochs | side | seeds | test accuracy | mean +- std | s/run |',
           '|---|---|---|---|---|---|---|---|']
  verdicts = []
  for recipe in dict.fromkeys(r['recipe'] for r in rows):
    stats = {}
    for side in ('ours', 'torch'):
      mine = [r for r in rows if r['recipe'] == recipe and r['side'] == side]
      if not mine:
        continue
      accs = [float(r['test_accuracy']) for r in mine]
      std = statistics.stdev(accs) if len(accs) > 1 else float('nan')
      stats[side] = (statistics.fmean(accs), std, len(accs))
      lines.append(f"| {recipe} | {mine[0]['model']} | {mine[0]['epochs']} | {side} | "
                   f"{', '.join(r['seed'] for r in mine)} | "
                   f"{', '.join(f'{a:.4f}' for a in accs)} | {stats[side][0]:.4f} +- {std:.4f} | "
                   f"{statistics.fmean(float(r['seconds']) for r in mine):.0f} |")
    if len(stats) == 2:
      (m1, s1, n1), (m2, s2, n2) = stats['ours'], stats['torch']
      if min(n1, n2) < 2:
        verdicts.append(f'{recipe}: ours - torch = {m1 - m2:+.4f}; the seed noise needs 2 or '
                        'more seeds a side (--seeds)')
        continue
      pooled = math.sqrt((s1 ** 2 + s2 ** 2) / 2)
      verdict = 'within' if abs(m1 - m2) <= pooled else 'OUTSIDE'
      verdicts.append(f'{recipe}: ours - torch = {m1 - m2:+.4f}, pooled std {pooled:.4f}: '
                      f'{verdict} one pooled std')
  return lines + [''] + verdicts


def main(argv) -> None:
  del argv
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required: where the runs, parity.csv and parity.md go')
  if jax.device_count() != 1:
    raise app.UsageError(
        f'parity compares one device with one torch process, but JAX sees {jax.device_count()} '
        'devices (BatchNorm would normalise each device\'s slice): run with one, e.g. '
        'CUDA_VISIBLE_DEVICES=0 or XLA_FLAGS=--xla_force_host_platform_device_count=1')
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  logging.get_absl_handler().addFilter(metrics.QuietLibraries())  # No orbax chatter.
  recipe = recipe_label(flags.FLAGS['recipe'].config_filename, sys.argv, _SAME_INIT.value)
  runs = os.path.join(workdir, re.sub(r'[^\w.=+-]+', '_', recipe))
  config = flags.FLAGS.recipe
  if _EPOCHS.value:
    config = config_lib.with_epochs(config, _EPOCHS.value)
  folder = image_folder('cifar10', workdir, _DATA.value, _PER_CLASS.value or None)
  config.dataset.source = f'folder:{folder}'
  config.dataset.eval_split = 'validation'  # The held-out test split of the folder.
  config.dataset.val_fraction = config.dataset.val_fraction or 0.1
  config.dataset.on_device = 'always'  # The batches the torch side is given.
  config.eval_every_epochs = config.num_epochs  # Only at the end.
  config.checkpoint_every_steps = 10 ** 9
  check_parity_config(config)
  table = os.path.join(workdir, 'parity.csv')
  done = {(r['recipe'], r['side'], r['seed']) for r in read_csv_rows(table)}
  for seed in range(_SEEDS.value):
    config.seed = seed
    ours_dir = os.path.join(runs, f'ours_seed{seed}')
    if _SAME_INIT.value:
      config.init_from = save_torch_init(config, os.path.join(runs, f'torch_init_seed{seed}'))
    for side in ('ours', 'torch'):
      if (recipe, side, str(seed)) in done:
        continue
      start = time.perf_counter()
      if side == 'ours':
        results = train.train_and_evaluate(config, ours_dir)
        if results.get('preempted'):
          sys.exit('stopped (SIGTERM) and saved; run the same command to resume.')
        accuracy, steps = results['accuracy'], results['step']
        seconds = time.perf_counter() - start
      else:
        accuracy, steps, seconds = torch_run(config, ours_dir,
                                             os.path.join(runs, f'torch_seed{seed}.jsonl'))
      logging.info('%s %s seed %d: test accuracy %.4f in %.0f s', recipe, side, seed, accuracy,
                   seconds)
      append_csv_row(table, dict(recipe=recipe, model=config.model.name, side=side, seed=seed,
                                 epochs=config.num_epochs, steps=steps, test_accuracy=accuracy,
                                 seconds=round(seconds, 1)), FIELDS)
  lines = summary(read_csv_rows(table))
  write_markdown(os.path.join(workdir, 'parity.md'), lines)


if __name__ == '__main__':
  xla_flags.set_cpu_defaults()  # Before JAX starts its backends.
  app.run(main, flags_parser=command_line.parse_flags)
