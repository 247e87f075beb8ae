"""Predictions of a trained run on image files: their top-k classes, as evaluation sees them.

  python -m resnet_jax.predict --workdir=DIR [--checkpoint=best|latest|STEP] [--top_k=5] \\
      [--ema] [--json] PATH...
  python -m resnet_jax.predict --weights=DIR PATH...     (converted weights: resnet_jax.convert)

PATH is an image file or a folder (its PNG and JPEG files, recursively, sorted). Prints a table
(file, then class and probability per rank) or, with --json, a list of
`{"file": ..., "top": [{"class": ..., "probability": ...}, ...]}`.

Everything comes from the run's workdir, never from flags: the model and its data from
config.json (records.load_config), the class names from run.json, the weights from checkpoints/
and the input transform from preprocess.npz. Each image is decoded as the folder source decodes
(grey or RGB, as the model was trained), cut to the evaluation view and normalised as
`steps.eval_step` does, with its fixed 'fmp' key: a file holding an evaluation image gets the
probabilities evaluation gave that image.

With --weights (`load_pretrained`), everything comes from the converted checkpoint's
pretrained_cfg.json instead: the model, the class names, the mean and std, and the view (the
shorter side resized to input / crop_fraction with its interpolation, the central square kept),
as the weights' library preprocesses for evaluation.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging
from etils import epath

from resnet_jax import checkpoint as checkpoint_lib
from resnet_jax import convert, data, evaluate, metrics, records, train, xla_flags
from resnet_jax.config import base_config
from resnet_jax.configs import command_line
from resnet_jax.data.augment import EvalPreprocess
from resnet_jax.data.sources import IMAGE_EXTENSIONS, decode_image
from resnet_jax.models import abstract_variables

CHECKPOINTS = ('best', 'latest')  # Or a step number.
# The channel counts the sources produce: grey ('L') or RGB (data.sources).
CHANNELS = (1, 3)


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedRun:
  """A trained run, ready to predict; unpacks as `model, variables, config = load_run(...)`."""
  model: Any  # train.build_model of the stored config.
  variables: dict  # {'params', 'batch_stats'}: host NumPy arrays.
  config: Any  # The stored config (records.load_config).
  workdir: str
  step: int  # The checkpoint's.
  class_names: tuple[str, ...]  # run.json's, or '0', '1', ... when the source named none.
  image_shape: tuple[int, int, int]  # (image_size, image_size, channels) the model takes.
  preprocessing: data.Preprocessing  # preprocess.npz (or the fixed mean/std of the config).
  # uint8 image -> the view the model takes; None: the evaluation view of config.dataset.augment.
  view: Callable[[np.ndarray], np.ndarray] | None = None

  def __iter__(self) -> Iterator[Any]:
    return iter((self.model, self.variables, self.config))


# ---------------------------------------------------------------------------------------------
# Which checkpoint.


def checkpoint_accuracies(workdir: str) -> dict[int, float | None]:
  """Every kept checkpoint's step, with the eval accuracy saved beside it (None for the ones
  saved between evaluations)."""
  directory = checkpoint_lib.checkpoint_dir(workdir)
  if not epath.Path(directory).exists():
    raise FileNotFoundError(f'no checkpoints in {workdir} ({directory} does not exist): train '
                            'first, or pass the --workdir of a trained run')
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True, create=False, save_interval_steps=0))
  try:
    found = {}
    for step in manager.all_steps():
      metrics = manager.metrics(step)
      accuracy = metrics.get('accuracy') if isinstance(metrics, dict) else None
      found[step] = float(accuracy) if isinstance(accuracy, (int, float)) else None
    return found
  finally:
    manager.close()


def choose_step(accuracies: dict[int, float | None], checkpoint: str | int,
                directory: str) -> tuple[int, str]:
  """(the step `checkpoint` names among `accuracies` (checkpoint_accuracies), why that one).

  'best' is the highest eval accuracy (the later step on a tie, the one the Checkpointer's BestN
  keeps), or the latest when no checkpoint holds an accuracy.
  """
  if not accuracies:
    raise FileNotFoundError(f'no checkpoint in {directory}: train first, or pass the --workdir '
                            'of a trained run')
  kept = sorted(accuracies)
  if checkpoint == 'latest':
    return kept[-1], 'the latest'
  if checkpoint == 'best':
    scored = [(accuracy, step) for step, accuracy in accuracies.items() if accuracy is not None]
    if not scored:
      return kept[-1], 'the latest: no checkpoint holds an eval accuracy'
    accuracy, step = max(scored)
    return step, f'the best eval accuracy, {accuracy:.4f}'
  if isinstance(checkpoint, bool) or not (isinstance(checkpoint, int)
                                          or str(checkpoint).isdigit()):
    raise ValueError(f'checkpoint {checkpoint!r} is not one of {CHECKPOINTS} or a step number')
  step = int(checkpoint)
  if step not in accuracies:
    raise FileNotFoundError(f'no checkpoint of step {step} in {directory}; kept: '
                            f'{", ".join(map(str, kept))}')
  return step, 'as asked'


# ---------------------------------------------------------------------------------------------
# Loading a run.


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  return {jax.tree_util.keystr(path): tuple(np.shape(leaf))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def input_channels(model, image_size: int, variables: dict, where: str) -> int:
  """The channel count whose abstract initialisation has exactly the saved variables' shapes
  (the first layer's kernel differs between grey and RGB input)."""
  saved = _shapes(variables)
  for channels in CHANNELS:
    try:
      fresh = abstract_variables(model, (image_size, image_size, channels))
    except Exception:  # A model that cannot take this many channels: not this one.
      continue
    if _shapes(fresh) == saved:
      return channels
  fresh = _shapes(abstract_variables(model, (image_size, image_size, CHANNELS[-1])))
  differ = sorted(name for name in set(saved) | set(fresh) if saved.get(name) != fresh.get(name))
  raise ValueError(f'{where} does not fit {model.__class__.__name__} as config.json builds it, '
                   f'for grey or RGB {image_size}x{image_size} images: {differ[0]} has shape '
                   f'{saved.get(differ[0])} saved and {fresh.get(differ[0])} built')


def load_run(workdir: str, checkpoint: str | int = 'best', *, ema: bool = False) -> LoadedRun:
  """The model, weights and config of the run trained in `workdir`.

  `checkpoint`: 'best' (the highest eval accuracy among the kept checkpoints; the latest when
  none holds one), 'latest' or a step number. `ema`: the EMA weights instead of the raw ones
  (runs with config.ema_decay > 0). Variables are host NumPy arrays; the step chosen is logged.
  """
  workdir = os.fspath(workdir)
  if not epath.Path(workdir).exists():
    raise FileNotFoundError(f'workdir {workdir} does not exist')
  config = records.load_config(workdir)
  directory = checkpoint_lib.checkpoint_dir(workdir)
  step, why = choose_step(checkpoint_accuracies(workdir), checkpoint, directory)
  where = f'checkpoint {os.path.join(directory, str(step))}'
  tree = checkpoint_lib.load_state_tree(workdir, step)
  num_classes = convert.classifier_width(tree['params'], config.model.name, where)
  stored_names = records.read_run(workdir).get('class_names')
  names = tuple(stored_names) if stored_names else tuple(str(i) for i in range(num_classes))
  if len(names) != num_classes:
    raise ValueError(f'{where} has {num_classes} classes, but {workdir}/{records.RUN_FILE} '
                     f'names {len(names)}')
  variables = {'params': tree['params'], 'batch_stats': tree.get('batch_stats') or {}}
  model = train.build_model(config, num_classes)
  channels = input_channels(model, config.dataset.image_size, variables, where)
  if ema:
    if not config.ema_decay > 0 or not tree.get('ema'):
      raise ValueError(f'ema=True: the run in {workdir} kept no EMA weights (its config.ema_decay '
                       f'is {config.ema_decay})')
    variables = {'params': tree['ema']['params'], 'batch_stats': tree['ema'].get('batch_stats')
                 or {}}
  preprocessing = data.preprocess.load_or_fit(os.path.join(workdir, 'preprocess.npz'), None,
                                              config.dataset)
  logging.info('Loaded %s: %s step %d (%s), %d classes, %dx%dx%d input%s.', workdir,
               config.model.name, step, why, num_classes, config.dataset.image_size,
               config.dataset.image_size, channels, ', EMA weights' if ema else '')
  return LoadedRun(model, variables, config, workdir, step, names,
                   (config.dataset.image_size, config.dataset.image_size, channels), preprocessing)


def load_pretrained(weights: str) -> LoadedRun:
  """Converted weights (a `resnet_jax.convert` directory) ready to predict, preprocessed as
  their pretrained_cfg.json says."""
  if not os.path.isdir(weights):
    raise FileNotFoundError(f'--weights {weights}: not a directory; write one with python -m '
                            'resnet_jax.convert --model NAME --weights FILE --out DIR')
  pretrained = convert.create_model(weights=weights)
  cfg = pretrained.cfg
  channels, size = cfg['input_size'][0], cfg['input_size'][1]
  config = base_config()
  config.model.name = cfg['model']
  config.dataset.image_size = size
  mean, std = (np.asarray(cfg[k], np.float32) * 255 for k in ('mean', 'std'))
  names = tuple(cfg['class_names']) or tuple(str(i) for i in range(cfg['num_classes']))
  recipe = evaluate.ViewRecipe.of_pretrained(cfg)
  view = lambda image: evaluate.center_crop(image[None], size, recipe)[0]
  logging.info('Loaded %s: %s weights from %s, %dx%dx%d input, %s.', weights, cfg['model'],
               cfg['source'], size, size, channels, cfg['license'])
  return LoadedRun(pretrained.model, pretrained.variables, config, weights, 0, names,
                   (size, size, channels), data.Preprocessing('fixed', mean, std), view)


# ---------------------------------------------------------------------------------------------
# Images -> probabilities -> top classes.


def image_files(paths: Sequence[str]) -> list[str]:
  """Files as given; folders expanded to their PNG and JPEG files, recursively, sorted."""
  files = []
  for path in map(os.fspath, paths):
    if os.path.isfile(path):
      files.append(path)
    elif os.path.isdir(path):
      found = sorted(os.path.join(root, name) for root, _, names in os.walk(path)
                     for name in names
                     if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith('.'))
      if not found:
        raise FileNotFoundError(f'folder {path} holds no PNG or JPEG images')
      files += found
    else:
      raise FileNotFoundError(f'{path}: no such file or folder')
  return files


def read_image(path: str, channels: int) -> np.ndarray:
  """uint8 [H, W, channels], decoded as data.sources.FolderSource decodes a file."""
  try:
    array = decode_image(path, 'L' if channels == 1 else 'RGB')
  except (OSError, ValueError, SyntaxError) as e:  # PIL's kinds of "not a readable image".
    raise ValueError(f'cannot decode image {path} ({type(e).__name__}: {e})') from e
  return array[:, :, None] if array.ndim == 2 else array


@functools.partial(jax.jit, static_argnames=('model',))
def _softmax(variables: dict, pre: dict, images: jax.Array, key: jax.Array, *, model):
  """eval_step's forward pass (preprocessing, eval mode, the fixed 'fmp' key), then softmax."""
  x = data.preprocess.apply(pre, images, model.dtype)
  logits = model.apply(variables, x, train=False, rngs={'fmp': key})
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
  chunk = []
  for item in items:
    chunk.append(item)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def probabilities(run: LoadedRun, images: Iterable[np.ndarray],
                  batch_size: int | None = None) -> np.ndarray:
  """[N, classes] softmax of the run's model on uint8 [H, W, C] `images` (any sizes), each cut
  to the evaluation view (data.augment.EvalPreprocess) first.

  Batches of `batch_size` (default: config.batch_size, or fewer when `images` is shorter), the
  last one padded: one compilation.
  """
  d = run.config.dataset
  view = run.view or (lambda image: EvalPreprocess(d.augment, d.image_size).map(
      {'image': image, 'label': -1})['image'])
  if batch_size is None:
    batch_size = run.config.batch_size
    if isinstance(images, Sequence):
      batch_size = max(1, min(batch_size, len(images)))
  variables, pre = jax.device_put((run.variables, run.preprocessing.arrays()))
  key = jax.random.fold_in(jax.random.PRNGKey(run.config.seed), train.EVAL)
  out = [np.zeros((0, len(run.class_names)), np.float32)]
  for chunk in _chunks(images, batch_size):
    views = np.zeros((batch_size, *run.image_shape), np.uint8)
    for i, image in enumerate(chunk):
      if image.shape[-1] != run.image_shape[-1]:
        raise ValueError(f'an image of {image.shape[-1]} channels; the model takes '
                         f'{run.image_shape[-1]}')
      views[i] = view(image)
    probs = _softmax(variables, pre, views, key, model=run.model)
    out.append(np.asarray(probs)[:len(chunk)])
  return np.concatenate(out)


def top_classes(probs: np.ndarray, class_names: Sequence[str], top_k: int) -> list[dict]:
  """The `top_k` most probable classes of one softmax row, most probable first."""
  order = np.argsort(-probs, kind='stable')[:top_k]
  return [{'class': class_names[i], 'probability': float(probs[i])} for i in order]


def predict(run: LoadedRun | str, paths: Sequence[str], top_k: int = 5, *,
            checkpoint: str | int = 'best', ema: bool = False) -> list[dict]:
  """One row per image file of `paths` (image_files):
  `{'file': path, 'top': [{'class': name, 'probability': p}, ...]}`, most probable first.

  `run` is a load_run or load_pretrained result, or a workdir (then loaded with `checkpoint`
  and `ema`).
  """
  if top_k < 1:
    raise ValueError(f'top_k must be >= 1, got {top_k}')
  files = image_files(paths)
  if not isinstance(run, LoadedRun):
    run = load_run(run, checkpoint, ema=ema)
  channels = run.image_shape[-1]
  batch_size = max(1, min(run.config.batch_size, len(files)))
  probs = probabilities(run, (read_image(f, channels) for f in files), batch_size)
  return [{'file': f, 'top': top_classes(p, run.class_names, top_k)} for f, p in zip(files, probs)]


# ---------------------------------------------------------------------------------------------
# The command line.


def table(rows: Sequence[dict]) -> str:
  """A Markdown table: the file, then class and probability for each rank."""
  ranks = max((len(row['top']) for row in rows), default=0)
  header = ['file'] + [cell for k in range(1, ranks + 1) for cell in (f'top {k}', 'probability')]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for row in rows:
    cells = [row['file']] + [cell for top in row['top']
                             for cell in (top['class'], f'{top["probability"]:.4f}')]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'The workdir of a trained run.')
  flags.DEFINE_string('weights', None, 'Instead of --workdir: converted weights '
                      '(python -m resnet_jax.convert), preprocessed as their pretrained_cfg.')
  flags.DEFINE_string('checkpoint', 'best', "'best' (highest eval accuracy), 'latest' or a step.")
  flags.DEFINE_integer('top_k', 5, 'Classes per image, most probable first.')
  flags.DEFINE_bool('ema', False, 'The EMA weights (runs with config.ema_decay > 0).')
  flags.DEFINE_bool('json', False, 'Print JSON instead of a table.')


def main(argv) -> None:
  xla_flags.set_cpu_defaults()
  if len(argv) < 2:
    raise app.UsageError('give the image files or folders to classify: python -m '
                         'resnet_jax.predict --workdir=DIR PATH...')
  logging.get_absl_handler().addFilter(metrics.QuietLibraries())
  f = flags.FLAGS
  if (f.workdir is None) == (f.weights is None):
    raise app.UsageError('give one of --workdir (a trained run) and --weights (converted weights)')
  run = load_pretrained(f.weights) if f.weights else f.workdir
  rows = predict(run, argv[1:], f.top_k, checkpoint=f.checkpoint, ema=f.ema)
  print(json.dumps(rows, indent=1) if f.json else table(rows))


if __name__ == '__main__':
  define_flags()
  flags.FLAGS.alsologtostderr = True
  app.run(main, flags_parser=command_line.parse_flags)
