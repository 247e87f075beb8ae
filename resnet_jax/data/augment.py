"""Per-example augmentation on uint8 HWC images, in NumPy and PIL (runs in Grain's workers).

Every random choice comes from the `np.random.Generator` Grain derives from the seed and the
example's position in the sampling order, so the same seed gives the same augmented batches,
across restarts too. Normalization (the preprocessing of `preprocess.py`) happens later, on
device, in the train step.

`config.dataset.augment` is a preset name (`PRESETS`) or a comma-separated list of op names
(`OPS`) and presets. Whatever order they are listed in, ops run in the one order of `OPS`:
geometry (at most one of scale, random_resized_crop, pad_crop), then the warps (affine and
elastic, one resampling for both), flip, colour_jitter, pca_lighting, cutout.
"""
from __future__ import annotations

import dataclasses
import math

import grain
import numpy as np
from PIL import Image

from resnet_jax.config import base_config

# The fixed order ops run in, whatever order the config lists them in.
OPS = ('scale', 'random_resized_crop', 'pad_crop', 'affine', 'elastic', 'flip', 'colour_jitter',
       'pca_lighting', 'cutout')
GEOMETRY = ('scale', 'random_resized_crop', 'pad_crop')
PRESETS = {
    'none': (),
    'cifar': ('pad_crop', 'flip'),  # He et al. 2015, Sec. 4.2.
    'cifar_cutout': ('pad_crop', 'flip', 'cutout'),  # DeVries & Taylor 2017, Sec. 4.1.
    'imagenet': ('random_resized_crop', 'flip'),  # Szegedy et al. 2015, Sec. 6.
    'resnet_imagenet': ('scale', 'flip', 'pca_lighting'),  # He et al. 2015, Sec. 3.4.
  # Ciresan et al. 2010, Sec. 2: rotation and scaling, then elastic distortion (Simard et al. 2003).
  'ciresan': ('affine', 'elastic'),
}
# Grey-level weights of torchvision's rgb_to_grayscale (ITU-R 601-2 luma), as ColorJitter uses.
LUMA = np.array([0.2989, 0.587, 0.114], np.float32)
# 224 / 256 = 0.875, the evaluation crop of the ResNet and flax/torchvision ImageNet recipes.
EVAL_CROP_FRACTION = 0.875


def parse_augment(augment: str) -> tuple[str, ...]:
  """`config.dataset.augment` -> its op names, in the fixed order of `OPS` (a preset in a list
  stands for its ops: 'cifar,cutout')."""
  listed = [name.strip() for name in augment.split(',') if name.strip()]
  names = [op for name in listed for op in PRESETS.get(name, (name,))]
  unknown = [name for name in names if name not in OPS]
  if unknown or not listed:
    raise ValueError(f"config.dataset.augment '{augment}': unknown op {unknown or [augment]}; "
                     f'give a preset {sorted(PRESETS)} or a comma-separated list of {list(OPS)}')
  geometry = [name for name in OPS if name in names and name in GEOMETRY]
  if len(geometry) > 1:
    raise ValueError(f"config.dataset.augment '{augment}' names {len(geometry)} geometry ops "
                     f'{geometry}; use at most one of {list(GEOMETRY)}')
  return tuple(name for name in OPS if name in names)


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
  """The numbers the ops take, from `config.dataset` (whose defaults are the papers')."""
  pad: int
  scale_range: tuple[int, int]
  crop_scale: tuple[float, float]
  crop_ratio: tuple[float, float]
  brightness: float
  contrast: float
  saturation: float
  pca_lighting_std: float
  cutout_size: int
  affine_angle: float = 15.0  # The warps' numbers: config.dataset's defaults (Ciresan 2010).
  affine_shear: float = 0.0
  affine_scale_x: tuple[float, float] = (0.85, 1.15)
  affine_scale_y: tuple[float, float] = (0.85, 1.15)
  elastic_sigma: tuple[float, float] = (5.0, 6.0)
  elastic_alpha: tuple[float, float] = (36.0, 38.0)

  @classmethod
  def from_config(cls, dataset_config=None) -> AugmentOptions:
    """From `config.dataset`; None means the defaults of `base_config()`."""
    d = base_config().dataset if dataset_config is None else dataset_config
    return cls(pad=int(d.pad), scale_range=tuple(int(s) for s in d.scale_range),
               crop_scale=tuple(float(s) for s in d.crop_scale),
               crop_ratio=tuple(float(r) for r in d.crop_ratio),
               brightness=float(d.jitter_brightness), contrast=float(d.jitter_contrast),
               saturation=float(d.jitter_saturation), pca_lighting_std=float(d.pca_lighting_std),
               cutout_size=int(d.cutout_size), affine_angle=float(d.affine_angle),
               affine_shear=float(d.affine_shear),
               affine_scale_x=tuple(float(s) for s in d.affine_scale_x),
               affine_scale_y=tuple(float(s) for s in d.affine_scale_y),
               elastic_sigma=tuple(float(s) for s in d.elastic_sigma),
               elastic_alpha=tuple(float(s) for s in d.elastic_alpha))


# PIL's resampling filters by the names pretrained cfgs use (timm's `interpolation`).
INTERPOLATIONS = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC, 'nearest': Image.NEAREST}


def resize(image: np.ndarray, height: int, width: int,
           interpolation: str = 'bilinear') -> np.ndarray:
  """Resize of a uint8 HWC image (any number of channels PIL can hold: 1 or 3), bilinear unless
  `interpolation` names another of INTERPOLATIONS."""
  if image.shape[:2] == (height, width):
    return image
  pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
  out = np.asarray(pil.resize((width, height), INTERPOLATIONS[interpolation]))
  return out.reshape(height, width, image.shape[2])


def resize_shorter_side(image: np.ndarray, short: int,
                        interpolation: str = 'bilinear') -> np.ndarray:
  """Resize keeping the aspect ratio, the shorter side to `short` pixels."""
  height, width = image.shape[:2]
  if height <= width:
    return resize(image, short, max(short, int(round(width * short / height))), interpolation)
  return resize(image, max(short, int(round(height * short / width))), short, interpolation)


def random_crop(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
  """A size x size window at a uniformly random offset."""
  top = rng.integers(0, image.shape[0] - size + 1)
  left = rng.integers(0, image.shape[1] - size + 1)
  return image[top:top + size, left:left + size]


def pad_and_random_crop(image: np.ndarray, rng: np.random.Generator, size: int,
                        padding: int) -> np.ndarray:
  """Zero-pad every side, then crop size x size at a random offset (He et al. 2015, Sec. 4.2)."""
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  return random_crop(padded, rng, size)


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Horizontal flip with probability 1/2."""
  return image[:, ::-1] if rng.random() < 0.5 else image


def scale_resize(image: np.ndarray, rng: np.random.Generator,
                 scale_range: tuple[int, int]) -> np.ndarray:
  """The shorter side resized to S, uniform over the integers of `scale_range`."""
  return resize_shorter_side(image, int(rng.integers(scale_range[0], scale_range[1] + 1)))


def scale_augment(image: np.ndarray, rng: np.random.Generator, size: int,
                  scale_range: tuple[int, int]) -> np.ndarray:
  """Scale augmentation (He et al. 2015, Sec. 3.4; Simonyan & Zisserman 2015, Sec. 3.1): the
  shorter side resized to S in `scale_range`, then a random size x size crop."""
  return random_crop(scale_resize(image, rng, scale_range), rng, size)


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                            attempts: int = 10) -> tuple[int, int, int, int]:
  """(top, left, h, w) of an Inception crop: area a `scale` share of the image's, aspect w/h in
  `ratio` (log-uniform); torchvision's fallback after `attempts` misses."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(attempts):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  # The whole image, trimmed to the nearest allowed aspect: torchvision's fallback.
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """Inception-style crop (Szegedy et al. 2015, Sec. 6): random area and aspect, resized to size."""
  top, left, h, w = random_resized_crop_box(image.shape[0], image.shape[1], rng, scale, ratio)
  return resize(image[top:top + h, left:left + w], size, size)


def center_offset(length: int, size: int) -> int:
  """Where a central `size` window of `length` starts: half the margin, rounded half to even as
  torchvision's CenterCrop rounds it (a margin of 11 starts at 6, one of 117 at 58)."""
  return int(round((length - size) / 2))


def center_crop(image: np.ndarray, size: int, crop_fraction: float = 1.0,
                interpolation: str = 'bilinear') -> np.ndarray:
  """Resize the shorter side to size / crop_fraction, then take the central size x size."""
  image = resize_shorter_side(image, int(round(size / crop_fraction)), interpolation)
  top, left = center_offset(image.shape[0], size), center_offset(image.shape[1], size)
  return image[top:top + size, left:left + size]


def colour_jitter_factors(rng: np.random.Generator, brightness: float, contrast: float,
                          saturation: float) -> list[tuple[str, float]]:
  """torchvision ColorJitter's draws: a random order of the adjustments whose strength s is not
  0, each with a factor uniform in [max(0, 1 - s), 1 + s]."""
  strengths = {'brightness': brightness, 'contrast': contrast, 'saturation': saturation}
  order = [list(strengths)[i] for i in rng.permutation(3)]
  return [(name, float(rng.uniform(max(0.0, 1.0 - strengths[name]), 1.0 + strengths[name])))
          for name in order if strengths[name] > 0]


def grey(image: np.ndarray) -> np.ndarray:
  """Luma of a float HWC image, HW1 (a grey image is its own luma)."""
  return image if image.shape[2] == 1 else image @ LUMA[:, None]


def adjust_colour(image: np.ndarray, name: str, factor: float) -> np.ndarray:
  """torchvision's adjust_brightness / _contrast / _saturation on a float 0..255 image: a blend
  with black, the mean grey level, or the image's own grey, clamped to 0..255."""
  if name == 'brightness':
    other = np.zeros((), np.float32)
  elif name == 'contrast':
    other = np.float32(grey(image).mean())
  else:
    other = grey(image)
  return np.clip(factor * image + (1.0 - factor) * other, 0.0, 255.0)


def colour_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float,
                  contrast: float, saturation: float) -> np.ndarray:
  """Random brightness, contrast and saturation in a random order (torchvision ColorJitter)."""
  factors = colour_jitter_factors(rng, brightness, contrast, saturation)
  if not factors:
    return image
  out = image.astype(np.float32)
  for name, factor in factors:
    out = adjust_colour(out, name, factor)
  return np.round(out).astype(np.uint8)  # Rounded once, at the end.


def pca_lighting_shift(rng: np.random.Generator, eigval: np.ndarray, eigvec: np.ndarray,
                       std: float) -> np.ndarray:
  """sum_i alpha_i lambda_i p_i, alpha_i ~ N(0, std) (Krizhevsky et al. 2012, Sec. 4.1), on the
  0..1 scale of `eigval` (eigenvectors p_i are the columns of `eigvec`)."""
  alpha = rng.normal(0.0, std, len(eigval))
  return eigvec @ (alpha * eigval)


def pca_lighting(image: np.ndarray, rng: np.random.Generator, eigval: np.ndarray,
                 eigvec: np.ndarray, std: float) -> np.ndarray:
  """AlexNet lighting noise: one colour shift along the training split's RGB principal
  components, added to every pixel (converted to the 0..255 scale, rounded, clipped)."""
  shift = 255.0 * pca_lighting_shift(rng, eigval, eigvec, std)
  return np.clip(np.round(image + shift.astype(np.float32)), 0, 255).astype(np.uint8)


def cutout_box(height: int, width: int, rng: np.random.Generator,
               size: int) -> tuple[int, int, int, int]:
  """(top, bottom, left, right) of a size x size square centred uniformly anywhere in the image,
  clipped at its borders (DeVries & Taylor 2017, Sec. 3.2)."""
  cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
  top, left = cy - size // 2, cx - size // 2
  return (max(0, top), min(height, top + size), max(0, left), min(width, left + size))


def cutout(image: np.ndarray, rng: np.random.Generator, size: int,
           fill: np.ndarray) -> np.ndarray:
  """One clipped size x size square set to `fill` (broadcast to HWC: the pixel values the
  preprocessing maps to 0, DeVries & Taylor's zero after normalisation)."""
  top, bottom, left, right = cutout_box(image.shape[0], image.shape[1], rng, size)
  out = np.array(image)
  out[top:bottom, left:right] = np.broadcast_to(fill, image.shape)[top:bottom, left:right]
  return out


# Warps: every output pixel p reads the input, bilinearly, at a source point src(p) (zero outside).
# One sampling grid for affine and elastic together, so a digit is interpolated once.


def identity_grid(height: int, width: int) -> np.ndarray:
  """[2, H, W] float32: each pixel's own (row, column), the source map of no warp."""
  return np.stack(np.meshgrid(np.arange(height, dtype=np.float32),
                              np.arange(width, dtype=np.float32), indexing='ij'))


def affine_source_matrix(angle: float, shear: float, scale_y: float, scale_x: float) -> np.ndarray:
  """2x2, (row, column) order: the inverse of the forward map rotation(angle) @ shear @
  scale, angles in degrees. A positive angle turns the image counter-clockwise as displayed
  (90: np.rot90); shear moves each row sideways by tan(shear) times its height above the centre
  (Ciresan et al. 2010, Sec. 2); scale > 1 enlarges."""
  a, t = math.radians(angle), math.tan(math.radians(shear))
  rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
  forward = rotation @ np.array([[1.0, 0.0], [-t, 1.0]]) @ np.diag([scale_y, scale_x])
  return np.linalg.inv(forward).astype(np.float32)


def affine_grid(grid: np.ndarray, matrix: np.ndarray) -> np.ndarray:
  """`grid` mapped about the image centre by `matrix` (affine_source_matrix)."""
  centre = np.array([(grid.shape[1] - 1) / 2, (grid.shape[2] - 1) / 2], np.float32)[:, None, None]
  return np.einsum('ij,jhw->ihw', matrix, grid - centre).astype(np.float32) + centre


def gaussian_matrix(size: int, sigma: float) -> np.ndarray:
  """[size, size]: convolution along one axis with a normalised Gaussian of std `sigma`
  truncated at 3 sigma, zeros beyond the border (Simard et al. 2003, Sec. 2's smoothing)."""
  offsets = np.arange(size, dtype=np.float32)[:, None] - np.arange(size, dtype=np.float32)[None]
  radius = math.ceil(3 * sigma)
  taps = np.exp(-0.5 * (offsets / sigma) ** 2) * (np.abs(offsets) <= radius)
  norm = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).sum()
  return (taps / norm).astype(np.float32)


def elastic_displacement(noise: np.ndarray, sigma: float, alpha: float) -> np.ndarray:
  """Simard et al. 2003, Sec. 2: fields of uniform(-1, 1) `noise` ([2, H, W]: rows, columns)
  convolved with a Gaussian of std `sigma`, times `alpha` (pixels)."""
  g_rows, g_cols = gaussian_matrix(noise.shape[1], sigma), gaussian_matrix(noise.shape[2], sigma)
  return (alpha * np.einsum('ab,kbc,dc->kad', g_rows, noise, g_cols)).astype(np.float32)


def bilinear_sample(image: np.ndarray, grid: np.ndarray) -> np.ndarray:
  """Float [H, W, C]: `image` read at the (row, column) points of `grid` ([2, H, W]) by
  bilinear interpolation, zero outside the image."""
  height, width = image.shape[:2]
  image = image.astype(np.float32)
  top, left = np.floor(grid[0]), np.floor(grid[1])
  dy, dx = (grid[0] - top)[..., None], (grid[1] - left)[..., None]
  top, left = top.astype(np.int64), left.astype(np.int64)

  def pixel(r, c):
    inside = ((r >= 0) & (r < height) & (c >= 0) & (c < width))[..., None]
    return np.where(inside, image[np.clip(r, 0, height - 1), np.clip(c, 0, width - 1)], 0.0)
  return ((1 - dy) * ((1 - dx) * pixel(top, left) + dx * pixel(top, left + 1))
          + dy * ((1 - dx) * pixel(top + 1, left) + dx * pixel(top + 1, left + 1)))


def affine_draws(rng: np.random.Generator, o: AugmentOptions) -> tuple[float, ...]:
  """(angle, shear, scale_y, scale_x): angle and shear uniform in [-max, max] degrees, the
  scales uniform in their ranges (Ciresan et al. 2010, Sec. 2's beta and gamma_x, gamma_y)."""
  angle, shear = rng.uniform(-1.0, 1.0, 2) * np.array([o.affine_angle, o.affine_shear])
  return (float(angle), float(shear), float(rng.uniform(*o.affine_scale_y)),
          float(rng.uniform(*o.affine_scale_x)))


def warp(image: np.ndarray, rng: np.random.Generator, o: AugmentOptions, *, affine: bool,
         elastic: bool) -> np.ndarray:
  """The affine map and / or the elastic distortion, composed into one grid, one resampling:
  src(p) = c + M (p - c) + alpha * (G_sigma * U(-1, 1))(p), rounded back to uint8."""
  grid = identity_grid(*image.shape[:2])
  if affine:
    grid = affine_grid(grid, affine_source_matrix(*affine_draws(rng, o)))
  if elastic:
    sigma, alpha = rng.uniform(*o.elastic_sigma), rng.uniform(*o.elastic_alpha)
    noise = rng.uniform(-1.0, 1.0, grid.shape).astype(np.float32)
    grid = grid + elastic_displacement(noise, sigma, alpha)
  return np.clip(np.round(bilinear_sample(image, grid)), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True, eq=False)
class TrainAugment(grain.transforms.RandomMap):
  """Training augmentation: `augment` (a preset or op list) at `image_size`.

  `lighting` is the (eigenvalues, eigenvectors) pair of the training split's pixel covariance
  (`Preprocessing.lighting`), needed by pca_lighting; `fill` the uint8 pixels cutout writes
  (`Preprocessing.zero_image`), needed by cutout. `options` None means the config's defaults.
  """
  augment: str
  image_size: int
  options: AugmentOptions | None = None
  lighting: tuple[np.ndarray, np.ndarray] | None = None
  fill: np.ndarray | None = None

  def __post_init__(self):
    ops = parse_augment(self.augment)
    object.__setattr__(self, 'ops', ops)
    if self.options is None:
      object.__setattr__(self, 'options', AugmentOptions.from_config())
    if 'pca_lighting' in ops and self.lighting is None:
      raise ValueError(f"config.dataset.augment '{self.augment}' has pca_lighting, which needs "
                       "the training split's colour PCA (lighting=Preprocessing.lighting)")
    if 'cutout' in ops and self.fill is None:
      raise ValueError(f"config.dataset.augment '{self.augment}' has cutout, which needs the "
                       'pixels to fill with (fill=Preprocessing.zero_image(...))')
    if 'scale' in ops and self.options.scale_range[0] < self.image_size:
      raise ValueError(f'config.dataset.scale_range {self.options.scale_range} must start at '
                       f'config.dataset.image_size ({self.image_size}) or above: a '
                       f'{self.image_size} crop of a shorter side of {self.options.scale_range[0]}')

  def random_map(self, element, rng: np.random.Generator):
    image, ops, o, size = element['image'], self.ops, self.options, self.image_size
    if 'scale' in ops:
      image = scale_augment(image, rng, size, o.scale_range)
    elif 'random_resized_crop' in ops:
      image = random_resized_crop(image, rng, size, o.crop_scale, o.crop_ratio)
    elif 'pad_crop' in ops:
      image = pad_and_random_crop(resize(image, size, size), rng, size, o.pad)
    else:
      image = resize(image, size, size)
    if 'affine' in ops or 'elastic' in ops:
      image = warp(image, rng, o, affine='affine' in ops, elastic='elastic' in ops)
    if 'flip' in ops:
      image = random_flip(image, rng)
    if 'colour_jitter' in ops:
      image = colour_jitter(image, rng, o.brightness, o.contrast, o.saturation)
    if 'pca_lighting' in ops:
      image = pca_lighting(image, rng, *self.lighting, o.pca_lighting_std)
    if 'cutout' in ops:
      image = cutout(image, rng, o.cutout_size, self.fill)
    return {'image': np.ascontiguousarray(image), 'label': element['label']}


def eval_view(image: np.ndarray, ops: tuple[str, ...], image_size: int) -> np.ndarray:
  """The deterministic view the ops imply: for crops of a larger image (scale,
  random_resized_crop) the shorter side resized and the central 87.5% taken; otherwise a resize."""
  if 'scale' in ops or 'random_resized_crop' in ops:
    return center_crop(image, image_size, crop_fraction=EVAL_CROP_FRACTION)
  return resize(image, image_size, image_size)


@dataclasses.dataclass(frozen=True)
class EvalPreprocess(grain.transforms.Map):
  """Deterministic evaluation view of `augment` (see `eval_view`)."""
  augment: str
  image_size: int

  def __post_init__(self):
    object.__setattr__(self, 'ops', parse_augment(self.augment))

  def map(self, element):
    image = eval_view(element['image'], self.ops, self.image_size)
    return {'image': np.ascontiguousarray(image), 'label': element['label']}
