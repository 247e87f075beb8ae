"""Random-access data sources: the embedded digits, TFDS ArrayRecord datasets, image folders.

Every source is a sequence: `len(source)` and `source[i] -> {'image': uint8 HWC, 'label': int}`,
so Grain can sample it by index (exact resume) and split it across hosts and workers.
`load_split(dataset_config, split)` is the one entry point; `config.dataset.source` names the kind.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import difflib
import os
from typing import Any, Sequence

import grain
import numpy as np
from absl import logging
from PIL import Image

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
SOURCE_KINDS = "'digits', 'tfds:NAME' or 'folder:PATH'"


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a dataset: the records plus what the model needs to know about them."""
  records: Sequence[dict[str, Any]]
  num_classes: int
  name: str
  # The name of each label, in label order (what a prediction prints); None when unknown.
  class_names: tuple[str, ...] | None = None

  def __len__(self) -> int:
    return len(self.records)


class ArraySource:
  """In-memory images and labels (the embedded digits)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {'image': self.images[index], 'label': int(self.labels[index])}

  # Grain checks repr(source) when it restores an iterator: keep it stable.
  def __repr__(self) -> str:
    return f'ArraySource(images={self.images.shape}, labels={self.labels.shape})'


def decode_image(path: str, mode: str) -> np.ndarray:
  with Image.open(path) as img:
    return np.asarray(img.convert(mode), dtype=np.uint8)


def _readable(path: str) -> bool:
  try:
    decode_image(path, 'RGB')
    return True
  except (OSError, ValueError, SyntaxError):
    return False


class FolderSource:
  """Image files on disk, decoded with PIL when read (in Grain's worker processes)."""

  def __init__(self, paths: Sequence[str], labels: Sequence[int], mode: str):
    self.paths, self.labels, self.mode = list(paths), np.asarray(labels, np.int32), mode

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict[str, Any]:
    try:
      array = decode_image(self.paths[index], self.mode)
    except (OSError, ValueError, SyntaxError) as e:  # PIL's kinds of "not a readable image".
      raise ValueError(f'cannot decode image {self.paths[index]} ({type(e).__name__}: {e}); '
                       'fix or remove it, or set config.dataset.skip_corrupt=true to check every '
                       'file first and leave out the bad ones') from e
    if array.ndim == 2:
      array = array[:, :, None]
    return {'image': array, 'label': int(self.labels[index])}

  def __repr__(self) -> str:
    first = self.paths[0] if self.paths else ''
    return f'FolderSource({len(self.paths)} images from {os.path.dirname(os.path.dirname(first))})'


class TfdsSource:
  """A TFDS data source, keeping only the image and label features."""

  def __init__(self, source, image_key: str, label_key: str):
    self.source, self.image_key, self.label_key = source, image_key, label_key

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = self.source[index]
    image = np.asarray(record[self.image_key], dtype=np.uint8)
    if image.ndim == 2:
      image = image[:, :, None]
    return {'image': image, 'label': int(record[self.label_key])}

  def __repr__(self) -> str:
    return f'TfdsSource({len(self.source)} records, keys={self.image_key},{self.label_key})'


def holdout_indices(num_examples: int, fraction: float, split: str) -> np.ndarray:
  """The deterministic train/validation carve: a fixed permutation, whatever the run's seed."""
  if not 0.0 < fraction < 1.0:
    raise ValueError(f'config.dataset.val_fraction must be in (0, 1) to carve a validation split, '
                     f'got {fraction}')
  order = np.random.default_rng(0).permutation(num_examples)
  num_val = max(1, int(round(num_examples * fraction)))
  chosen = order[:num_val] if split == 'validation' else order[num_val:]
  return np.sort(chosen)


class Subset:
  """A view of some records of another source."""

  def __init__(self, source, indices: np.ndarray):
    self.source, self.indices = source, indices

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self.source[int(self.indices[index])]

  def __repr__(self) -> str:
    return f'Subset({len(self.indices)} of {self.source!r})'


def _resolve(available: Sequence[str], split: str, val_fraction: float) -> tuple[str, bool]:
  """(the stored split to read, whether to carve it): `validation` and the rest of `train` are
  carved from `train` when the dataset stores no `validation` split."""
  if split == 'validation' and split not in available and 'train' in available:
    return 'train', True
  if split not in available:
    raise ValueError(f"split '{split}' not found; available: {sorted(available)} "
                     "(and 'validation', carved from 'train' by config.dataset.val_fraction)")
  return split, split == 'train' and 'validation' not in available and val_fraction > 0


def load_digits_split(split: str, val_fraction: float) -> Split:
  """scikit-learn's 1,797 8x8 handwritten digits (UCI), shipped inside the package: no network.

  A fixed 80/20 train/test split; `validation` is carved from `train`.
  """
  from sklearn.datasets import load_digits
  digits = load_digits()
  # 0..16 grey levels -> 0..255 so the images look like every other uint8 source.
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, :, :, None]
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(labels))
  num_test = 360
  parts = {'test': np.sort(order[:num_test]), 'train': np.sort(order[num_test:])}
  base_split, carve = _resolve(list(parts), split, val_fraction)
  idx = parts[base_split]
  if carve:
    idx = idx[holdout_indices(len(idx), val_fraction, split)]
  return Split(ArraySource(images[idx], labels[idx]), 10, f'digits/{split}',
               tuple(str(digit) for digit in range(10)))


def _class_names(folder: str) -> list[str]:
  return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))


def load_folder_split(root: str, split: str, val_fraction: float,
                      skip_corrupt: bool = False) -> Split:
  """An image folder `root/<split>/<class>/<image>`; class names sorted; PNG or JPEG.

  Every class folder must hold images; other files (but hidden ones) are errors naming them.
  With `skip_corrupt`, every file is decoded once up front and the unreadable ones are left out
  (and counted in the log) instead.
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(f"config.dataset.source folder '{root}' does not exist; expected an "
                            'image folder laid out as PATH/<split>/<class>/<image>.(png|jpg|jpeg)')
  available = _class_names(root)
  base_split, carve = _resolve(available, split, val_fraction)
  base = os.path.join(root, base_split)
  classes = _class_names(base)
  if not classes:
    raise FileNotFoundError(f"no class folders in '{base}'; expected {base}/<class>/<image>")
  if base_split != 'train' and 'train' in available and _class_names(
      os.path.join(root, 'train')) != classes:
    train_classes = _class_names(os.path.join(root, 'train'))
    differ = sorted(set(classes) ^ set(train_classes))
    raise ValueError(f"the classes of '{base}' differ from those of '{root}/train' "
                     f'(in one but not the other: {differ[:5]}); labels would not match')
  paths, labels = [], []
  for label, name in enumerate(classes):
    folder = os.path.join(base, name)
    files = sorted(f for f in os.listdir(folder) if not f.startswith('.'))
    others = [f for f in files if not f.lower().endswith(IMAGE_EXTENSIONS)]
    if others and not skip_corrupt:
      raise ValueError(f"'{os.path.join(folder, others[0])}' is not a PNG or JPEG file; remove "
                       'it, or set config.dataset.skip_corrupt=true to leave such files out')
    images = [os.path.join(folder, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not images:
      raise FileNotFoundError(f"class folder '{folder}' holds no PNG or JPEG images")
    paths += images
    labels += [label] * len(images)
  if skip_corrupt:
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
      good = list(pool.map(_readable, paths))
    dropped = [p for p, ok in zip(paths, good) if not ok]
    if dropped:
      logging.warning('config.dataset.skip_corrupt: left out %d unreadable images of %s, e.g. %s',
                      len(dropped), base, dropped[0])
    paths = [p for p, ok in zip(paths, good) if ok]
    labels = [lab for lab, ok in zip(labels, good) if ok]
  if not paths:
    raise FileNotFoundError(f"no readable PNG or JPEG images under '{base}'")
  try:
    with Image.open(paths[0]) as first:
      mode = 'L' if first.mode in ('L', 'LA', 'I', 'I;16', '1') else 'RGB'
  except (OSError, ValueError, SyntaxError) as e:
    raise ValueError(f'cannot read image {paths[0]} ({e}); fix or remove it, or set '
                     'config.dataset.skip_corrupt=true') from e
  source = FolderSource(paths, labels, mode)
  if carve:
    source = Subset(source, holdout_indices(len(source), val_fraction, split))
  return Split(source, len(classes), f'{root}/{split}', tuple(classes))


def load_tfds_split(name: str, split: str, data_dir: str | None, val_fraction: float) -> Split:
  """A TFDS dataset prepared in ArrayRecord format, read random-access without TensorFlow."""
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    known = tfds.list_builders(with_community_datasets=False)  # (Community ones need TF.)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f'did you mean {", ".join(close)}?' if close else 'see tfds.list_builders()'
    raise ValueError(f"config.dataset.source 'tfds:{name}': no such TFDS dataset; {hint}") from e
  except Exception as e:  # TFDS raises several types for an unreadable dataset.
    raise ValueError(f"config.dataset.source 'tfds:{name}': {e}") from e
  how = (f'prepare it once where there is network: pip install "resnet_jax[tf]" && '
         f'tfds build {name} --file_format=array_record'
         + (f' --data_dir={data_dir}' if data_dir else '')
         + ' (or copy a prepared copy into config.dataset.data_dir)')
  if not builder.is_prepared():
    raise FileNotFoundError(f"TFDS dataset '{name}' is not prepared in "
                            f"{data_dir or tfds.core.constants.DATA_DIR}; {how}")
  file_format = str(getattr(builder.info.file_format, 'value', builder.info.file_format))
  if file_format != 'array_record':
    raise ValueError(f"TFDS dataset '{name}' is prepared as {file_format}, but random access needs "
                     f'ArrayRecord; {how}')
  splits = list(builder.info.splits.keys())
  base_split, carve = _resolve(splits, split, val_fraction)
  features = builder.info.features
  image_key = 'image' if 'image' in features else next(
      k for k, f in features.items() if isinstance(f, tfds.features.Image))
  label_key = 'label'
  source = TfdsSource(builder.as_data_source(split=base_split), image_key, label_key)
  if carve:
    source = Subset(source, holdout_indices(len(source), val_fraction, split))
  names = getattr(features[label_key], 'names', None)  # A ClassLabel's; other features have none.
  return Split(source, features[label_key].num_classes, f'tfds:{name}/{split}',
               tuple(names) if names else None)


def load_split(dataset_config, split: str) -> Split:
  """The records of `split` from `config.dataset.source`.

  When the dataset has no `validation` split it is carved from `train` by
  `config.dataset.val_fraction`, and then `train` means the rest (never the same examples twice).
  A val_fraction of 0 keeps `train` whole.
  """
  source = dataset_config.source
  val_fraction = dataset_config.val_fraction
  if source == 'digits':
    return load_digits_split(split, val_fraction)
  if source.startswith('folder:'):
    return load_folder_split(os.path.expanduser(source[len('folder:'):]), split, val_fraction,
                             dataset_config.skip_corrupt)
  if source.startswith('tfds:'):
    return load_tfds_split(source[len('tfds:'):], split, dataset_config.data_dir or None,
                           val_fraction)
  raise ValueError(f"config.dataset.source '{source}' is not one of {SOURCE_KINDS}")


def to_iter_dataset(dataset: grain.MapDataset, num_workers: int) -> grain.IterDataset:
  """Reads in this process (no reader threads: they only contend for the GIL on small records)
  or in `num_workers` processes, each producing whole batches, so batches do not depend on it."""
  if num_workers == 0:
    return dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  workers = grain.MultiprocessingOptions(num_workers=num_workers)
  return dataset.to_iter_dataset().mp_prefetch(workers)
