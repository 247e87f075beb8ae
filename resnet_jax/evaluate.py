"""Evaluation modes (center crop, 10-crop, multi-scale, dense) and ensembles (softmax averages).

  python -m resnet_jax.evaluate --workdirs=A,B,C [--eval_mode=center|ten_crop|multi_scale|dense] \\
      [--scales=224,256,288] [--scale_crop=center|ten_crop] [--ema] [--out=DIR] \\
      [--config.dataset.eval_split=S ...]
  python -m resnet_jax.evaluate --weights=DIR[,DIR] --config.dataset.source=folder:PATH \\
      --config.dataset.eval_split=val [--eval_mode=...]     (converted weights: resnet_jax.convert)

prints one row per checkpoint and one for their ensemble (accuracy, loss) on
`config.dataset.eval_split`, writes each member's row to its workdir (eval_SPLIT[_MODE].json),
and with --out writes DIR/evaluate.csv. The config is the one the first workdir was trained
with (config.json; the members must share its model); only evaluation fields may be set on top.

Views are cut on the host, in NumPy, per example, in a Grain map, with the resize and crop
functions of the data pipeline (data/augment.py): so the center view is the evaluation
pipeline's to the bit, and images of any size (ImageNet) become fixed-size views before
batching. The device gets [N, V, size, size, C] uint8 batches, normalizes them as `eval_step`
does (data.preprocess.apply, with each member's own fitted preprocessing), averages the softmax
over the V views, then over the members; the loss is the negative log of that average.

Dense evaluation (`dense_views`) scores whole images at several sizes with the model run as a
fully convolutional net (Sermanet et al. 2013, Sec. 3.3-3.5; Simonyan & Zisserman 2015, Sec. 3.2):
views of different sizes travel packed into one flat uint8 vector per example (`pack_views`).

With --weights (`evaluate_pretrained`) the members are converted weights and everything about
their input comes from their pretrained_cfg.json: the views are cut at its input size from the
shorter side resized to input / crop_fraction with its interpolation (`ViewRecipe.of_pretrained`,
torchvision's and timm's evaluation transform) and normalised by its mean and std; the split's
classes are matched to the weights' by name (`pretrained_labels`).

`evaluate_checkpoint` is the main job's `--mode=eval`. Seed ensembles trained together live in
`sweep.train_seed_ensemble`.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import math
import os
from typing import Any, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from etils import epath
from jax import lax

from resnet_jax import compilation, convert, data, metrics, records, train, xla_flags
from resnet_jax.checkpoint import Checkpointer
from resnet_jax.configs import command_line
from resnet_jax.data import augment as augment_lib
from resnet_jax.parallel import AXIS, DataParallel

EVAL_MODES = ('center', 'ten_crop', 'multi_scale', 'dense')
# Sermanet et al. 2013, Table 5: the shorter sides of the six test scales (221 training crops).
OVERFEAT_SCALES = (245, 281, 317, 389, 425, 461)
SCALE_CROPS = ('center', 'ten_crop')
COLUMNS = ('model', 'members', 'eval_mode', 'accuracy', 'loss', 'examples')


# ---------------------------------------------------------------------------------------------
# Views of a batch of uint8 [N, H, W, C] images (same-sized; the pipeline passes one at a time).


@dataclasses.dataclass(frozen=True)
class ViewRecipe:
  """The canvas evaluation's views are cut from, and how images are resized.

  `crop_fraction` None: the image resized to size x size, padded by `pad` on every side (the
  canvas of training's pad_crop); a fraction: the shorter side resized to size / crop_fraction
  (the canvas of scale and random_resized_crop, or what pretrained weights' library does).
  Every resize, the scales' included, uses `interpolation` (data.augment.INTERPOLATIONS). The
  shorter side is round(size / crop_fraction), as data.augment.eval_view, or with `floor` the
  floor, as timm's evaluation transform (timm.data.transforms_imagenet_eval: 235 for 224 at
  0.95, where rounding gives 236).
  """
  crop_fraction: float | None = None
  interpolation: str = 'bilinear'
  pad: int = 0
  floor: bool = False

  @classmethod
  def of_training(cls, augment: str, pad: int = 0) -> ViewRecipe:
    """The views of a model trained with `augment` (and config.dataset.pad): their center is
    data.augment.eval_view, the view train.evaluate scores."""
    ops = augment_lib.parse_augment(augment)
    if 'scale' in ops or 'random_resized_crop' in ops:
      return cls(augment_lib.EVAL_CROP_FRACTION)
    return cls(pad=pad if 'pad_crop' in ops else 0)

  @classmethod
  def of_pretrained(cls, cfg: dict) -> ViewRecipe:
    """The views of converted weights (convert.PRETRAINED_CFG): their library's evaluation
    transform, e.g. torchvision's resize 256 (bilinear) and center crop 224."""
    return cls(cfg['crop_fraction'], cfg['interpolation'], floor=True)

  def short_side(self, size: int) -> int:
    """The shorter side the canvas is resized to for `size` views (crop_fraction given)."""
    exact = size / self.crop_fraction
    # The tolerance keeps a ratio stored as 224 / 232 from flooring 231.99999999999997 to 231.
    return math.floor(exact + 1e-6) if self.floor else int(round(exact))

  def canvas(self, images: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """([N, H, W, C] resized images, the padding that `ten_crop` adds to them)."""
    if self.crop_fraction is None:
      return np.stack([augment_lib.resize(image, size, size, self.interpolation)
                       for image in images]), self.pad
    short = self.short_side(size)
    return np.stack([augment_lib.resize_shorter_side(image, short, self.interpolation)
                     for image in images]), 0


def center_crop(images: np.ndarray, size: int, recipe: ViewRecipe = ViewRecipe()) -> np.ndarray:
  """[N, size, size, C]: the central view of the `recipe`'s canvas (the unpadded image when
  it pads); for `ViewRecipe.of_training(augment)` the view train.evaluate scores."""
  def one(image):
    canvas = recipe.canvas(image[None], size)[0][0]
    top, left = (augment_lib.center_offset(n, size) for n in canvas.shape[:2])  # As ten_crop's.
    return canvas[top:top + size, left:left + size]
  return np.stack([one(image) for image in images])


def ten_crop(images: np.ndarray, size: int, pad: int = 0) -> np.ndarray:
  """[10, N, size, size, C]: the top-left, top-right, bottom-left, bottom-right and center
  crops, then the same five crops of the image flipped horizontally (Krizhevsky et al. 2012,
  Sec. 4.1), as torchvision's TenCrop cuts them (where the margin is odd, the flipped center
  is one pixel off the center flipped).

  `pad` zero pixels are added on every side first, the canvas of training's pad_crop (He et al.
  2015, Sec. 4.2): a 32x32 CIFAR image padded by 4 gives four corners shifted 4 pixels each way,
  the extreme crops training sampled, and the unshifted image as the center.
  """
  images = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  height, width = images.shape[1:3]
  if size > min(height, width):
    raise ValueError(f'ten_crop: a {size}x{size} crop of {height}x{width} images')
  bottom, right = height - size, width - size
  # The center as data.augment.center_crop (and torchvision) rounds it.
  center = augment_lib.center_offset(height, size), augment_lib.center_offset(width, size)
  offsets = ((0, 0), (0, right), (bottom, 0), (bottom, right), center)
  return np.stack([canvas[:, y:y + size, x:x + size] for canvas in (images, images[:, :, ::-1])
                   for y, x in offsets])


def default_scales(size: int) -> tuple[int, ...]:
  """(size, 8/7 size, 9/7 size): Simonyan & Zisserman 2015, Sec. 3.2's Q = {S - 32, S, S + 32}
  around the training scale S = 256 of 224 crops (224 = 7/8 S), in proportion: 224, 256, 288."""
  return (size, round(size * 8 / 7), round(size * 9 / 7))


def multi_scale(images: np.ndarray, scales: Sequence[int], size: int,
                crop: str = 'center', interpolation: str = 'bilinear') -> np.ndarray:
  """[S, N, size, size, C] (crop 'center') or [10 S, N, ...] ('ten_crop'): for each scale Q the
  shorter side resized to Q (bilinear, as scale augmentation, unless `interpolation` says
  otherwise), then the central crop or the 10-crop; the softmax is averaged over all of them
  (Simonyan & Zisserman 2015, Sec. 3.2; He et al. 2015, Sec. 3.4, who average the scores over
  scales)."""
  if crop not in SCALE_CROPS:
    raise ValueError(f"multi_scale crop {crop!r} (--scale_crop) is not one of {SCALE_CROPS}")
  small = [q for q in scales if q < size]
  if not scales or small:
    raise ValueError(f'multi_scale scales {tuple(scales)} (--scales): give at least one, each at '
                     f'least the crop size {size}')
  views = []
  for q in scales:
    canvas = np.stack([augment_lib.resize_shorter_side(image, q, interpolation)
                       for image in images])
    crops = ten_crop(canvas, size)
    views.append(crops if crop == 'ten_crop' else crops[4:5])
  return np.concatenate(views)


def default_dense_scales(size: int) -> tuple[int, ...]:
  """OverFeat's six test scales (Sermanet et al. 2013, Table 5: shorter sides 245 to 461 for
  221x221 training crops), in proportion to `size`: the paper's own at 221."""
  return tuple(round(size * q / 221) for q in OVERFEAT_SCALES)


def check_dense_scales(scales: Sequence[int], size: int) -> None:
  """Dense views need a scale or more, each at least the training size (see `dense_views`)."""
  if not scales or any(q < size for q in scales):
    raise ValueError(f'dense scales {tuple(scales)} (--scales): give at least one, each at least '
                     f'the training size {size}')


def dense_views(images: np.ndarray, scales: Sequence[int], size: int,
                interpolation: str = 'bilinear') -> list[np.ndarray]:
  """One [N, Q, Q, C] view per scale Q: the shorter side resized to Q (as multi_scale), then
  the central Q x Q square.

  The square is the least cropping that batches: images of any aspect ratio all hold a Q x Q
  square, and one shape per scale is what a batch needs; padding the longer side instead would
  add blank borders to the averaged class map, and the paper's own non-square sizes (281x317,
  ...) follow its 4:3-ish validation images, not ours. A square image loses nothing. Each Q must
  be at least the training size `size`, whose last map is the first FC layer's window.
  """
  check_dense_scales(scales, size)
  views = []
  for q in scales:
    canvas = np.stack([augment_lib.resize_shorter_side(image, q, interpolation)
                       for image in images])
    views.append(ten_crop(canvas, q)[4])  # The center crop, rounded as data.augment's.
  return views


def pack_views(views: Sequence[np.ndarray]) -> np.ndarray:
  """[N, sum of H W C]: views of different sizes, each flattened, side by side (`unpack_views`)."""
  return np.concatenate([v.reshape(v.shape[0], -1) for v in views], axis=1)


def unpack_views(packed: jax.Array, scales: Sequence[int]) -> list[jax.Array]:
  """`pack_views`' inverse for square views of sides `scales`: [N, Q, Q, C] per scale."""
  channels = packed.shape[1] // sum(q * q for q in scales)
  views, start = [], 0
  for q in scales:
    size = q * q * channels
    views.append(packed[:, start:start + size].reshape(packed.shape[0], q, q, channels))
    start += size
  return views


def dense_model(model, variables: dict, image_shapes: Sequence[tuple[int, ...]], key=None):
  """`model` run densely: with `fully_conv=True` where it has that field (VGG, AlexNet, OverFeat:
  the FC layers as convolutions, the class map averaged), else as it is (a global average pool
  head is dense already). Raises a ValueError naming --eval_mode if it cannot run at each of the
  [H, W, C] `image_shapes` with `variables` (a flatten + dense head without the field)."""
  if 'fully_conv' in {f.name for f in dataclasses.fields(model)}:
    model = model.clone(fully_conv=True)
  rngs = {} if key is None else {'fmp': key}
  for shape in image_shapes:
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    try:
      logits = jax.eval_shape(functools.partial(model.apply, train=False, rngs=rngs), variables, x)
    except Exception as err:  # Shape errors come as several types (flax, jax, TypeError)...
      raise ValueError(
          f'--eval_mode=dense: {type(model).__name__} cannot run on {shape[0]}x{shape[1]} images '
          f'(a flatten + dense head without a fully_conv field?); use another --eval_mode. '
          f'The error: {type(err).__name__}: {str(err)[:300]}') from err
    if logits.ndim != 2:
      raise ValueError(f'--eval_mode=dense: {type(model).__name__} gives logits of shape '
                       f'{logits.shape} on {shape[0]}x{shape[1]} images')
  return model


def eval_views(images: np.ndarray, mode: str, *, recipe: ViewRecipe, size: int,
               scales: Sequence[int] = (), scale_crop: str = 'center') -> np.ndarray:
  """[V, N, size, size, C]: the views `mode` scores, cut as `recipe` says.

  center: the evaluation view (V = 1). ten_crop (V = 10): crops of the recipe's canvas; for a
  model trained with `augment`, the canvas training's crops came from: the image resized to size
  and padded by config.dataset.pad (pad_crop); the shorter side resized to size / 0.875 (scale,
  random_resized_crop: the canvas of eval_view); else the image resized to size, whose corners
  are its center (so 2 distinct views: the image and its flip). Its center view is the
  evaluation view. multi_scale: `multi_scale(images, scales, size, scale_crop)`. dense has
  views of several sizes: see `dense_views`.
  """
  if mode not in EVAL_MODES:
    raise ValueError(f'eval mode {mode!r} (--eval_mode) is not one of {EVAL_MODES}')
  if mode == 'dense':
    raise ValueError('eval_views: dense views differ in size; use dense_views')
  if mode == 'center':
    return center_crop(images, size, recipe)[None]
  if mode == 'multi_scale':
    return multi_scale(images, scales, size, scale_crop, recipe.interpolation)
  canvas, pad = recipe.canvas(images, size)
  return ten_crop(canvas, size, pad)


@dataclasses.dataclass(frozen=True)
class ViewsMap(grain.transforms.Map):
  """One example -> its [V, size, size, C] views (see `eval_views`), or in mode 'dense' its
  `dense_views` packed (`pack_views`); with `labels`, its label becomes labels[label] (the
  dataset's classes as the weights number them: `pretrained_labels`)."""
  mode: str
  recipe: ViewRecipe
  size: int
  scales: tuple[int, ...] = ()
  scale_crop: str = 'center'
  labels: tuple[int, ...] | None = None

  def map(self, element):
    images = element['image'][None]
    if self.mode == 'dense':
      image = pack_views(dense_views(images, self.scales, self.size,
                                     self.recipe.interpolation))[0]
    else:
      image = eval_views(images, self.mode, recipe=self.recipe, size=self.size,
                         scales=self.scales, scale_crop=self.scale_crop)[:, 0]
    label = element['label'] if self.labels is None else self.labels[element['label']]
    return {'image': np.ascontiguousarray(image), 'label': label}


# ---------------------------------------------------------------------------------------------
# Averaged softmax: over views, then over members.


def stack_members(variables_list: Sequence[dict], pre_list: Sequence[dict]) -> dict:
  """Members' {'params', 'batch_stats'} and preprocessing arrays, stacked on a leading axis."""
  stack = lambda *xs: np.stack([np.asarray(x) for x in xs])
  return {'variables': jax.tree.map(stack, *variables_list), 'pre': jax.tree.map(stack, *pre_list)}


def member_log_probs(model, members: dict, views: jax.Array, key: jax.Array | None = None, *,
                     dtype) -> jax.Array:
  """[M, N, classes]: log of each member's softmax averaged over the [V, N, H, W, C] uint8
  `views`, one member and one view at a time (lax.map: the memory of one forward pass), or
  over a list of [N, H, W, C] views of different sizes (`dense_views`).

  `members` come from `stack_members`; `key` is the fixed 'fmp' key eval_step passes.
  """
  rngs = {} if key is None else {'fmp': key}

  def one_member(member):
    def one_view(images):
      x = data.preprocess.apply(member['pre'], images, dtype)
      logits = model.apply(member['variables'], x, train=False, rngs=rngs)
      return jax.nn.log_softmax(logits.astype(jnp.float32))
    if isinstance(views, (list, tuple)):  # Different sizes: one program per size.
      each = jnp.stack([one_view(v) for v in views])
    else:
      each = lax.map(one_view, views)
    return jax.nn.logsumexp(each, axis=0) - math.log(len(views))

  return lax.map(one_member, members)


def ensemble_log_probs(log_probs: jax.Array) -> jax.Array:
  """[N, classes]: log of the members' probabilities averaged (axis 0 of `log_probs`)."""
  return jax.nn.logsumexp(log_probs, axis=0) - math.log(log_probs.shape[0])


@functools.partial(jax.jit, static_argnames=('model', 'dtype'))
def _predict(members, views, key, *, model, dtype):
  return jnp.exp(ensemble_log_probs(member_log_probs(model, members, views, key, dtype=dtype)))


def predict(variables_list: Sequence[dict], model, views: np.ndarray,
            pre: dict | Sequence[dict], *, key: jax.Array | None = None,
            dtype=None) -> jax.Array:
  """[N, classes] probabilities: the softmax averaged over the [V, N, H, W, C] uint8 `views`
  (see `eval_views`; [N, H, W, C] is one view; a list of views of different sizes, as
  `dense_views`', with a model made by `dense_model`), then over the members `variables_list`
  ({'params', 'batch_stats'} each).

  `pre` is the preprocessing (`Experiment.preprocessing.arrays()`), one for all members or one
  per member; `dtype` the computation dtype (default: the model's).
  """
  pres = [pre] * len(variables_list) if isinstance(pre, dict) else list(pre)
  if len(pres) != len(variables_list):
    raise ValueError(f'predict: {len(variables_list)} members but {len(pres)} preprocessings')
  if isinstance(views, (list, tuple)):
    views = [jnp.asarray(v) for v in views]
  else:
    views = jnp.asarray(views)
    views = views[None] if views.ndim == 4 else views
  return _predict(stack_members(variables_list, pres), views, key, model=model,
                  dtype=model.dtype if dtype is None else dtype)


def ensemble_eval_step(members: dict, batch: dict, key: jax.Array, *, model, dtype,
                       dense_scales: tuple[int, ...] | None = None) -> dict:
  """Per device (under DataParallel.map): sums over the global batch (psum, mask-aware) of the
  loss and correct predictions of each member and, last, of their ensemble; and `examples`.
  `dense_scales`: the batch's images are packed dense views of these sides (`pack_views`)."""
  if dense_scales:
    views = unpack_views(batch['image'], dense_scales)
  else:
    views = jnp.moveaxis(batch['image'], 1, 0)
  log_probs = member_log_probs(model, members, views, key, dtype=dtype)
  log_probs = jnp.concatenate([log_probs, ensemble_log_probs(log_probs)[None]])
  labels, mask = batch['label'], batch['mask']
  loss = -jnp.take_along_axis(log_probs, labels[None, :, None], axis=-1)[..., 0]
  correct = jnp.argmax(log_probs, axis=-1) == labels
  return lax.psum({'loss': jnp.sum(loss * mask, axis=-1),
                   'correct': jnp.sum(correct * mask, axis=-1), 'examples': jnp.sum(mask)},
                  AXIS)


def evaluate_members(config, exp: train.Experiment, names: Sequence[str],
                     variables_list: Sequence[dict], pre_list: Sequence[dict],
                     mode: str = 'center', *, scales: Sequence[int] | None = None,
                     scale_crop: str = 'center') -> list[dict]:
  """Each member alone and their ensemble on `exp.eval_split`, scored on the views of `mode`
  (cut as the training's augment implies: `ViewRecipe.of_training`): one row per member, then
  one named 'ensemble' (COLUMNS). In mode 'dense' the model runs through `dense_model` (default
  scales: `default_dense_scales`)."""
  d = config.dataset
  return score_members(
      exp.parallel, exp.model, exp.eval_split, exp.eval_key, names, variables_list, pre_list,
      mode, recipe=ViewRecipe.of_training(d.augment, d.pad), size=d.image_size,
      batch_size=config.batch_size, num_workers=d.num_workers, scales=scales,
      scale_crop=scale_crop)


def score_members(parallel, model, split, key: jax.Array, names: Sequence[str],
                  variables_list: Sequence[dict], pre_list: Sequence[dict], mode: str, *,
                  recipe: ViewRecipe, size: int, batch_size: int, num_workers: int = 0,
                  scales: Sequence[int] | None = None, scale_crop: str = 'center',
                  labels: Sequence[int] | None = None) -> list[dict]:
  """`evaluate_members` with its parts given: `model` (every member's), the data.Split `split`
  (its labels mapped through `labels` when given), views of `mode` cut as `recipe` says at
  `size`, `key` the fixed 'fmp' key, `parallel` a parallel.DataParallel."""
  dense_scales, dtype = None, model.dtype
  if mode == 'dense':
    scales = tuple(default_dense_scales(size) if not scales else scales)
    check_dense_scales(scales, size)
    if any('whiten' in pre or np.ndim(pre['mean']) > 1 for pre in pre_list):
      raise ValueError('--eval_mode=dense: whitening and per-pixel means are fitted at the '
                       'training size; use another --eval_mode')
    channels = split.records[0]['image'].shape[-1]
    dense_scales = scales
    model = dense_model(model, variables_list[0], [(q, q, channels) for q in scales], key)
  scales = tuple(default_scales(size) if not scales else scales)
  views_map = ViewsMap(mode, recipe, size, scales, scale_crop,
                       None if labels is None else tuple(labels))
  step = parallel.map(
      functools.partial(ensemble_eval_step, model=model, dtype=dtype, dense_scales=dense_scales),
      ('state', 'batch', 'const'))
  members = parallel.replicate(stack_members(variables_list, pre_list))
  batches = data.eval_batches(split, global_batch_size=batch_size, num_workers=num_workers,
                              view=views_map)
  totals = parallel.sum_batches(step, batches, members, key)
  n = float(totals['examples'])
  labels = [*names, 'ensemble']
  return [{'model': name, 'members': 1 if i < len(names) else len(names), 'eval_mode': mode,
           'accuracy': float(totals['correct'][i]) / n, 'loss': float(totals['loss'][i]) / n,
           'examples': int(n)} for i, name in enumerate(labels)]


PRETRAINED_VIEW = ('model', 'input_size', 'mean', 'std', 'crop_fraction', 'interpolation')


def pretrained_labels(split, cfg: dict, where: str) -> list[int] | None:
  """The weights' class index of each of `split`'s labels: by name when every class of the
  split is one of the weights' class_names (a folder of some of their classes: 'tench/',
  'goldfish/'), else the split's own labels (None) when it has as many classes as the weights
  (ImageNet's, in their order). Anything else is a ValueError naming both class lists."""
  names, theirs = split.class_names or (), cfg['class_names']
  if names and theirs and set(names) <= set(theirs):
    return [theirs.index(name) for name in names]
  if split.num_classes == cfg['num_classes']:
    return None
  raise ValueError(
      f'{split.name} has {split.num_classes} classes ({", ".join(names[:4])}...) and the weights '
      f'{where} have {cfg["num_classes"]} ({", ".join(theirs[:4])}...): name the class folders '
      f"after the weights' class_names ({convert.PRETRAINED_CFG}), or evaluate on all "
      f'{cfg["num_classes"]} classes in their order')


def evaluate_pretrained(config, weights: Sequence[str], mode: str = 'center', *,
                        scales: Sequence[int] | None = None,
                        scale_crop: str = 'center') -> list[dict]:
  """Converted weights (`resnet_jax.convert` directories) alone and their ensemble on
  `config.dataset.eval_split`, preprocessed as their pretrained_cfg.json says: the views of
  `ViewRecipe.of_pretrained` at its input size, its mean and std. The members must share the
  model and that preprocessing; the split's labels map to the weights' classes by
  `pretrained_labels`. Only the dataset, batch size, parallelism and seed of `config` count.
  """
  if not weights:
    raise ValueError('--weights: give at least one converted weights directory (comma-separated)')
  cfgs = [convert.load_pretrained_cfg(path) if os.path.isdir(path) else None for path in weights]
  for path, other in zip(weights, cfgs):
    if other is None:
      raise FileNotFoundError(f'--weights {path}: not a directory with a {convert.PRETRAINED_CFG}'
                              '; write one with python -m resnet_jax.convert --model NAME '
                              '--weights FILE --out DIR')
    differ = [k for k in PRETRAINED_VIEW if other[k] != cfgs[0][k]]
    if differ:
      raise ValueError(f'--weights: {path} differs from {weights[0]} in {", ".join(differ)}; an '
                       'ensemble here shares the model and its preprocessing')
  cfg = cfgs[0]
  channels, size = cfg['input_size'][0], cfg['input_size'][1]
  if mode not in EVAL_MODES:
    raise ValueError(f'eval mode {mode!r} (--eval_mode) is not one of {EVAL_MODES}')
  d = config.dataset
  split = data.load_split(d, d.eval_split)
  if split.records[0]['image'].shape[-1] != channels:
    raise ValueError(f'{split.name} has images of {split.records[0]["image"].shape[-1]} channels; '
                     f'the weights {weights[0]} take {channels}')
  labels = pretrained_labels(split, cfg, weights[0])
  mean, std = (np.asarray(cfg[k], np.float32) * 255 for k in ('mean', 'std'))
  pre = data.Preprocessing('fixed', mean, std).arrays()
  logging.info('Evaluating %s weights (%s) on %s: %dx%d views, crop fraction %.4f, %s.',
               cfg['model'], cfg['source'], split.name, size, size, cfg['crop_fraction'],
               cfg['interpolation'])
  loaded = [convert.create_model(weights=path) for path in weights]
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), train.EVAL)
  return score_members(
      DataParallel(config.parallelism), loaded[0].model, split, key, list(weights),
      [p.variables for p in loaded], [pre] * len(loaded), mode,
      recipe=ViewRecipe.of_pretrained(cfg), size=size, batch_size=config.batch_size,
      num_workers=d.num_workers, scales=scales, scale_crop=scale_crop, labels=labels)


def evaluate_checkpoint(config, workdir: str) -> dict:
  """`--mode=eval`: the latest checkpoint of `workdir` on `config.dataset.eval_split`; writes
  WORKDIR/eval_SPLIT.json (results.json stays the training run's own result)."""
  exp = train.setup(config, train=False, workdir=workdir)
  state, step = restore_latest(config, workdir, exp.parallel.unreplicate(exp.state))
  results = {**train.evaluate(exp, exp.parallel.replicate(state)), 'step': step}
  records.write_json(workdir, records.eval_results_file(results['split']), results)
  logging.info('Eval of step %d on %s: accuracy %.4f loss %.4f (%d examples)%s', step,
               results['split'], results['accuracy'], results['loss'], results['examples'],
               metrics.describe_ema(results))
  return results


def restore_latest(config, workdir: str, template) -> tuple[Any, int]:
  """The latest readable checkpoint of `workdir`, shaped like `template`, and its step."""
  checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints,
                              fallback=config.restore_fallback)
  try:
    if checkpointer.latest_step() is None:
      raise FileNotFoundError(f'no checkpoint to evaluate in {os.path.join(workdir, "checkpoints")}'
                              ': train first, or pass the --workdir of a finished run')
    return checkpointer.restore(template)
  finally:
    checkpointer.close()


def evaluate_checkpoints(config, workdirs: Sequence[str], mode: str = 'center', *,
                         scales: Sequence[int] | None = None, scale_crop: str = 'center',
                         ema: bool = False) -> list[dict]:
  """The latest checkpoint of each workdir alone and their softmax-average ensemble on
  `config.dataset.eval_split`, in `mode` (EVAL_MODES): rows of COLUMNS, the ensemble last.

  Checkpoints are read as evaluate_checkpoint reads them, each with its workdir's own
  preprocess.npz; `ema` scores the weight averages (runs with config.ema_decay > 0).
  """
  if not workdirs:
    raise ValueError('--workdirs: give at least one workdir (comma-separated)')
  if mode not in EVAL_MODES:
    raise ValueError(f'eval mode {mode!r} (--eval_mode) is not one of {EVAL_MODES}')
  if ema and not config.ema_decay > 0:
    raise ValueError('--ema needs config.ema_decay > 0, as in the runs that wrote the checkpoints')
  missing = [w for w in workdirs if not epath.Path(w).exists()]
  if missing:
    raise FileNotFoundError(f'--workdirs: {", ".join(missing)} does not exist')
  exp = train.setup(config, train=False, workdir=workdirs[0])
  template = exp.parallel.unreplicate(exp.state)
  variables_list, pre_list = [], []
  for workdir in workdirs:
    state, step = restore_latest(config, workdir, template)
    logging.info('Member %s: step %d.', workdir, step)
    variables_list.append(jax.device_get(
        state.ema if ema else {'params': state.params, 'batch_stats': state.batch_stats}))
    pre_list.append(data.preprocess.load_or_fit(os.path.join(workdir, 'preprocess.npz'), None,
                                                config.dataset).arrays())
  return evaluate_members(config, exp, list(workdirs), variables_list, pre_list, mode,
                          scales=scales, scale_crop=scale_crop)


# ---------------------------------------------------------------------------------------------
# The table and the command line.


def markdown_table(rows: Sequence[dict]) -> str:
  fmt = lambda v: f'{v:.4f}' if isinstance(v, float) else str(v)
  lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
  lines += ['| ' + ' | '.join(fmt(r[c]) for c in COLUMNS) + ' |' for r in rows]
  return '\n'.join(lines) + '\n'


def write_csv(path: str, rows: Sequence[dict]) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)


def define_flags() -> None:
  """The command line's flags (only when run as a program: resnet_jax.main defines --config)."""
  command_line.define_config_flag(
      "Optional: the first workdir's config.json is used; a config given must match it outside "
      f'the evaluation fields ({", ".join(records.EVAL_FIELDS)}).')
  flags.DEFINE_list('workdirs', [], 'Workdirs of finished runs, comma-separated: the members.')
  flags.DEFINE_list('weights', [], 'Instead of --workdirs: converted weights directories '
                    '(python -m resnet_jax.convert), preprocessed as their pretrained_cfg.json '
                    'says; give the data with --config.dataset.source=... and .eval_split=...')
  flags.DEFINE_enum('eval_mode', 'center', list(EVAL_MODES), 'The views scored (see eval_views; '
                    'dense: whole images at --scales through the fully convolutional model).')
  flags.DEFINE_list('scales', [], 'multi_scale: shorter sides, e.g. 224,256,288 (default '
                    'image_size x (1, 8/7, 9/7)); dense: the sides of its square views (default '
                    "OverFeat's 245,281,317,389,425,461 x image_size / 221).")
  flags.DEFINE_enum('scale_crop', 'center', list(SCALE_CROPS), 'multi_scale: crops per scale.')
  flags.DEFINE_bool('ema', False, 'Score the EMA weights (runs with config.ema_decay > 0).')
  flags.DEFINE_string('out', None, 'Write OUT/evaluate.csv.')


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]} (config fields go as --config.a.b=V)')
  f = flags.FLAGS
  xla_flags.set_cpu_defaults()
  if bool(f.workdirs) == bool(f.weights):
    raise app.UsageError('give one of --workdirs (comma-separated workdirs of finished runs) and '
                         '--weights (converted weights directories)')
  try:
    scales = [int(s) for s in f.scales]
  except ValueError:
    raise app.UsageError(f'--scales {f.scales}: give integers, e.g. 224,256,288') from None
  if f.weights:
    if f.ema:
      raise app.UsageError('--ema: converted weights hold no EMA; leave it out with --weights')
    config = f.config
    rows = evaluate_pretrained(config, f.weights, f.eval_mode, scales=scales,
                               scale_crop=f.scale_crop)
    print(markdown_table(rows))
    if f.out:
      os.makedirs(f.out, exist_ok=True)
      write_csv(os.path.join(f.out, 'evaluate.csv'), rows)
    return
  config = command_line.eval_config(f.workdirs[0])
  compilation.enable_cache(config.compilation_cache_dir)
  stored = [w for w in f.workdirs if records.has_config(w)]
  records.check_same_model(stored)
  rows = evaluate_checkpoints(config, f.workdirs, f.eval_mode, scales=scales,
                              scale_crop=f.scale_crop, ema=f.ema)
  print(markdown_table(rows))
  name = records.eval_results_file(config.dataset.eval_split,
                                   f'{f.eval_mode}_ema' if f.ema else f.eval_mode)
  for workdir, row in zip(f.workdirs, rows):
    records.write_json(workdir, name, {**row, 'split': config.dataset.eval_split})
  if f.out:
    os.makedirs(f.out, exist_ok=True)
    write_csv(os.path.join(f.out, 'evaluate.csv'), rows)


if __name__ == '__main__':
  define_flags()
  flags.FLAGS.alsologtostderr = True
  app.run(main, flags_parser=command_line.parse_flags)
