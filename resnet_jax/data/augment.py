"""Per-example augmentation on uint8 HWC images, in NumPy and PIL (runs in Grain's workers).

Every random choice comes from the `np.random.Generator` Grain derives from the seed and the
example's position in the sampling order, so the same seed gives the same augmented batches,
across restarts too. Normalization (mean/std) happens later, on device, in the train step.
"""
from __future__ import annotations

import dataclasses
import math

import grain
import numpy as np
from PIL import Image

AUGMENTATIONS = ('none', 'cifar', 'imagenet')


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear resize of a uint8 HWC image (any number of channels PIL can hold: 1 or 3)."""
  if image.shape[:2] == (height, width):
    return image
  pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
  out = np.asarray(pil.resize((width, height), Image.BILINEAR))
  return out.reshape(height, width, image.shape[2])


def pad_and_random_crop(image: np.ndarray, rng: np.random.Generator, size: int,
                        padding: int) -> np.ndarray:
  """Zero-pad every side, then crop size x size at a random offset (He et al. 2015, Sec. 4.2)."""
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  top = rng.integers(0, padded.shape[0] - size + 1)
  left = rng.integers(0, padded.shape[1] - size + 1)
  return padded[top:top + size, left:left + size]


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Horizontal flip with probability 1/2."""
  return image[:, ::-1] if rng.random() < 0.5 else image


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts: int = 10) -> np.ndarray:
  """Inception-style crop (Szegedy et al. 2015, Sec. 6): random area and aspect, resized to size."""
  height, width = image.shape[:2]
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(attempts):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = rng.integers(0, height - h + 1)
      left = rng.integers(0, width - w + 1)
      return resize(image[top:top + h, left:left + w], size, size)
  return center_crop(image, size)  # The fallback torchvision uses too: a whole-image center crop.


def center_crop(image: np.ndarray, size: int, crop_fraction: float = 1.0) -> np.ndarray:
  """Resize the shorter side to size / crop_fraction, then take the central size x size."""
  height, width = image.shape[:2]
  short = int(round(size / crop_fraction))
  if height < width:
    new_h, new_w = short, max(short, int(round(width * short / height)))
  else:
    new_h, new_w = max(short, int(round(height * short / width))), short
  image = resize(image, new_h, new_w)
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return image[top:top + size, left:left + size]


def _check_kind(kind: str) -> None:
  if kind not in AUGMENTATIONS:
    raise ValueError(f"config.dataset.augment '{kind}' is not one of {AUGMENTATIONS}")


@dataclasses.dataclass(frozen=True)
class TrainAugment(grain.transforms.RandomMap):
  """Training augmentation by name: 'none' (resize only), 'cifar', 'imagenet'."""
  kind: str
  image_size: int
  padding: int = 4

  def __post_init__(self):
    _check_kind(self.kind)

  def random_map(self, element, rng: np.random.Generator):
    image = element['image']
    if self.kind == 'cifar':
      image = resize(image, self.image_size, self.image_size)
      image = random_flip(pad_and_random_crop(image, rng, self.image_size, self.padding), rng)
    elif self.kind == 'imagenet':
      image = random_flip(random_resized_crop(image, rng, self.image_size), rng)
    else:
      image = resize(image, self.image_size, self.image_size)
    return {'image': np.ascontiguousarray(image), 'label': element['label']}


@dataclasses.dataclass(frozen=True)
class EvalPreprocess(grain.transforms.Map):
  """Deterministic evaluation view: resize, or for 'imagenet' resize + center crop of 87.5%."""
  kind: str
  image_size: int

  def __post_init__(self):
    _check_kind(self.kind)

  def map(self, element):
    image = element['image']
    if self.kind == 'imagenet':
      # 224 / 256 = 0.875, the crop of the ResNet and flax/torchvision ImageNet recipes.
      image = center_crop(image, self.image_size, crop_fraction=0.875)
    else:
      image = resize(image, self.image_size, self.image_size)
    return {'image': np.ascontiguousarray(image), 'label': element['label']}
