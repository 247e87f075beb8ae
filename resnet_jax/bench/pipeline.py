"""`--mode pipeline`: the host input pipeline alone. Decode + random-resized crop + flip of
JPEGs (a folder's, or synthetic photo-like ones), in this process and through Grain's workers."""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np


def synthetic_jpegs(folder: str, count: int, seed: int = 0) -> list[str]:
  """`count` 500x375 photo-like JPEGs (quality 90): smooth colour fields with grain, about the
  size and entropy of ImageNet training images (their mean is about 110 KB at ~400x350)."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(count):
    coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.BICUBIC), np.float32)
    pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    path = os.path.join(folder, f'{i:05d}.jpg')
    Image.fromarray(pixels).save(path, quality=90)
    paths.append(path)
  return paths


def pipeline_row(images: str, count: int, image_size: int, workers: int) -> dict:
  """Images/s of decode + random-resized crop + flip, in this process (one core) and, with
  `workers`, through Grain's worker processes (the training loader's own path)."""
  import grain

  from resnet_jax.data.augment import TrainAugment
  from resnet_jax.data.sources import FolderSource
  with tempfile.TemporaryDirectory() as tmp:
    if images:
      paths = sorted(os.path.join(images, f) for f in os.listdir(images)
                     if f.lower().endswith(('.jpg', '.jpeg')))[:count]
      if not paths:
        raise ValueError(f'--images {images}: no .jpg/.jpeg files there')
    else:
      paths = synthetic_jpegs(tmp, count)
    source = FolderSource(paths, [0] * len(paths), 'RGB')
    augment = TrainAugment('imagenet', image_size)
    rng = np.random.default_rng(0)
    for i in range(min(8, len(paths))):  # Warm-up: imports, PIL's codecs, caches.
      augment.random_map(source[i], rng)
    start = time.perf_counter()
    for i in range(len(paths)):
      augment.random_map(source[i], rng)
    one_core = len(paths) / (time.perf_counter() - start)
    row = {'mode': 'pipeline', 'images': images or 'synthetic 500x375 q90',
           'mean_kb': float(np.mean([os.path.getsize(p) for p in paths]) / 1024),
           'count': len(paths), 'image_size': image_size, 'images_per_sec_per_core': one_core}
    if workers:
      from absl import flags
      if not flags.FLAGS.is_parsed():  # Grain's workers read its absl flags (their defaults).
        flags.FLAGS.mark_as_parsed()
      dataset = (grain.MapDataset.source(source).seed(0).shuffle().repeat(None)
                 .random_map(augment).batch(32))
      it = iter(dataset.to_iter_dataset().mp_prefetch(
          grain.MultiprocessingOptions(num_workers=workers)))
      next(it)
      batches = max(1, 4 * len(paths) // 32)
      start = time.perf_counter()
      for _ in range(batches):
        next(it)
      row['workers'] = workers
      row['images_per_sec_workers'] = batches * 32 / (time.perf_counter() - start)
  return row
