"""Augmentation ops: each op's defining property, determinism, the fixed order, the loader."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from resnet_jax import train
from resnet_jax.config import base_config
from resnet_jax.data import augment, load_split, make_train_loader, preprocess
from resnet_jax.data.augment import AugmentOptions, EvalPreprocess, TrainAugment, parse_augment


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
  """A smooth colour image (no two columns alike, so flips and shifts are visible)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width]
  base = np.stack([x * 200 / width, y * 200 / height, (x + y) * 100 / (height + width)], -1)
  return np.clip(base + 30 + rng.integers(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)


def test_flip_mirrors_half_the_time():
  image = photo(8, 10)
  rng = np.random.default_rng(0)
  flips = [augment.random_flip(image, rng) for _ in range(400)]
  mirrored = [np.array_equal(f, image[:, ::-1]) for f in flips]
  assert all(m or np.array_equal(f, image) for f, m in zip(flips, mirrored))
  assert 160 < sum(mirrored) < 240  # Binomial(400, 1/2): 200 +- 4 sigma.


def test_pad_crop_is_a_window_of_the_zero_padded_image():
  image = photo(32, 32)
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
  rng = np.random.default_rng(1)
  offsets = []
  for _ in range(300):
    crop = augment.pad_and_random_crop(image, rng, 32, 4)
    found = [(t, s) for t in range(9) for s in range(9)
             if np.array_equal(crop, padded[t:t + 32, s:s + 32])]
    assert len(found) == 1  # Exactly one window of the padded image.
    offsets.append(found[0])
  assert len(set(offsets)) > 70  # Of the 81 offsets, nearly all are drawn in 300 tries.


def test_random_resized_crop_area_and_aspect_within_bounds():
  rng = np.random.default_rng(2)
  shares, aspects = [], []
  for _ in range(500):
    top, left, h, w = augment.random_resized_crop_box(300, 400, rng)
    assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
    shares.append(h * w / (300 * 400))
    aspects.append(w / h)
  # Szegedy et al. 2015, Sec. 6: 8%..100% of the area, aspect 3/4..4/3 (up to pixel rounding).
  assert 0.08 * 0.97 <= min(shares) < 0.12 and 0.85 < max(shares) <= 1.0
  assert 0.75 * 0.97 <= min(aspects) < 0.8 and 1.25 < max(aspects) <= 4 / 3 * 1.03
  crop = augment.random_resized_crop(photo(300, 400), rng, 64)
  assert crop.shape == (64, 64, 3)
  # No draw fits a 10x400 strip at 90%+ of its area: torchvision's fallback, the central 13x10.
  assert augment.random_resized_crop_box(10, 400, rng, scale=(0.9, 1.0)) == (0, 193, 10, 13)


def test_scale_augmentation_shorter_side_within_256_480():
  image = photo(300, 400)
  rng = np.random.default_rng(3)
  shorter = []
  for _ in range(200):
    resized = augment.scale_resize(image, rng, (256, 480))
    s = resized.shape[0]
    assert 256 <= s <= 480 and resized.shape[1] == round(400 * s / 300)  # Aspect kept.
    shorter.append(s)
  assert min(shorter) < 270 and max(shorter) > 465 and len(set(shorter)) > 100
  # The crop is a window of that resized image (same draws replayed).
  crop = augment.scale_augment(image, np.random.default_rng(9), 224, (256, 480))
  replay = np.random.default_rng(9)
  resized = augment.scale_resize(image, replay, (256, 480))
  top, left = replay.integers(0, resized.shape[0] - 223), replay.integers(0, resized.shape[1] - 223)
  assert np.array_equal(crop, resized[top:top + 224, left:left + 224])


def test_colour_adjustments_equal_torchvision():
  image = photo(16, 20)
  tensor = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)
  ours = lambda name, f: augment.adjust_colour(image.astype(np.float32), name, f) / 255
  theirs = {'brightness': TF.adjust_brightness, 'contrast': TF.adjust_contrast,
            'saturation': TF.adjust_saturation}
  for name, fn in theirs.items():
    for factor in (0.6, 1.3):
      reference = fn(tensor, factor).permute(1, 2, 0).numpy()
      assert np.abs(ours(name, factor) - reference).max() < 1e-5, (name, factor)


def test_colour_jitter_factors_within_range_and_identity_at_zero():
  rng = np.random.default_rng(4)
  draws = [augment.colour_jitter_factors(rng, 0.4, 0.4, 0.4) for _ in range(300)]
  factors = np.array([f for draw in draws for _, f in draw])
  assert 0.6 <= factors.min() < 0.62 and 1.38 < factors.max() <= 1.4
  assert len({tuple(name for name, _ in draw) for draw in draws}) == 6  # Every order occurs.
  image = photo(16, 16)
  assert np.array_equal(augment.colour_jitter(image, rng, 0.0, 0.0, 0.0), image)
  # Brightness alone: each pixel times one factor in [0.6, 1.4], rounded and clipped.
  factor = augment.colour_jitter_factors(np.random.default_rng(5), 0.4, 0.0, 0.0)[0][1]
  out = augment.colour_jitter(image, np.random.default_rng(5), 0.4, 0.0, 0.0)
  assert np.array_equal(out, np.clip(np.round(image * np.float32(factor)), 0, 255))
  assert not np.array_equal(out, image)


def test_pca_lighting_shift_lies_along_the_eigenvectors_with_alexnet_scale():
  eigvec, _ = np.linalg.qr(np.random.default_rng(6).normal(size=(3, 3)))
  eigval = np.array([0.2, 0.02, 0.0])  # p_3 gets no shift at all.
  rng = np.random.default_rng(7)
  shifts = np.array([augment.pca_lighting_shift(rng, eigval, eigvec, 0.1) for _ in range(4000)])
  coefficients = shifts @ eigvec  # Coordinates along p_1, p_2, p_3.
  assert np.abs(coefficients[:, 2]).max() < 1e-12
  # Krizhevsky et al. 2012, Sec. 4.1: alpha_i lambda_i with alpha_i ~ N(0, 0.1).
  alpha = coefficients[:, :2] / eigval[:2]
  assert np.allclose(alpha.std(0), 0.1, rtol=0.05) and np.abs(alpha.mean(0)).max() < 0.01
  grey = np.full((4, 4, 3), 128, np.uint8)
  shift = augment.pca_lighting_shift(np.random.default_rng(8), eigval, eigvec, 0.1)
  lit = augment.pca_lighting(grey, np.random.default_rng(8), eigval, eigvec, 0.1)
  assert np.array_equal(lit, np.broadcast_to(np.round(128 + 255 * shift), lit.shape))


def test_cutout_fills_exactly_one_clipped_16x16_square():
  image = np.random.default_rng(9).integers(1, 255, (32, 32, 3), dtype=np.uint8)
  fill = np.array([0, 0, 0], np.uint8)
  rng = np.random.default_rng(10)
  sizes = set()
  for _ in range(400):
    state = rng.bit_generator.state
    out = augment.cutout(image, rng, 16, fill)
    rng.bit_generator.state = state
    cy, cx = rng.integers(0, 32), rng.integers(0, 32)  # The centre, uniform over the image.
    box = np.zeros((32, 32), bool)
    box[max(0, cy - 8):cy + 8, max(0, cx - 8):cx + 8] = True
    changed = (out != image).any(-1)
    assert np.array_equal(changed, box) and (out[box] == 0).all()
    sizes.add((box.any(1).sum(), box.any(0).sum()))
  assert (16, 16) in sizes and min(min(s) for s in sizes) <= 9  # Inside, and clipped at edges.


def test_same_rng_seed_same_output():
  ops = 'random_resized_crop,flip,colour_jitter,pca_lighting,cutout'
  lighting = (np.array([0.17, 0.012, 0.003]), np.eye(3))
  op = TrainAugment(ops, 24, lighting=lighting, fill=np.full(3, 120, np.uint8))
  element = {'image': photo(40, 50), 'label': 3}
  run = lambda seed: op.random_map(element, np.random.default_rng(seed))['image']
  assert np.array_equal(run(11), run(11))
  assert not np.array_equal(run(11), run(12))


def test_ops_run_in_the_fixed_order_whatever_the_listing():
  assert parse_augment('cutout, flip,pad_crop') == ('pad_crop', 'flip', 'cutout')
  assert parse_augment('cifar,cutout') == parse_augment('cifar_cutout')
  fill = np.full(3, 7, np.uint8)
  listed = TrainAugment('cutout,colour_jitter,flip,pad_crop', 32, fill=fill)
  ordered = TrainAugment('pad_crop,flip,colour_jitter,cutout', 32, fill=fill)
  element = {'image': photo(32, 32), 'label': 0}
  for seed in range(5):
    a = listed.random_map(element, np.random.default_rng(seed))['image']
    b = ordered.random_map(element, np.random.default_rng(seed))['image']
    rng = np.random.default_rng(seed)  # By hand, in the order of augment.OPS.
    o = AugmentOptions.from_config()
    by_hand = augment.pad_and_random_crop(element['image'], rng, 32, 4)
    by_hand = augment.random_flip(by_hand, rng)
    by_hand = augment.colour_jitter(by_hand, rng, o.brightness, o.contrast, o.saturation)
    by_hand = augment.cutout(by_hand, rng, 16, fill)
    assert np.array_equal(a, b) and np.array_equal(a, by_hand)


def test_unknown_and_conflicting_ops_name_the_field_and_the_valid_names():
  with pytest.raises(ValueError, match=r"config.dataset.augment 'flip,mixup'.*'pad_crop'"):
    parse_augment('flip,mixup')
  with pytest.raises(ValueError, match=r"config.dataset.augment 'imagenet,pad_crop'.*at most one"):
    parse_augment('imagenet,pad_crop')
  config = base_config()
  config.dataset.augment = 'scale,random_resized_crop'
  with pytest.raises(ValueError, match='config.dataset.augment'):
    train.check(config)
  config.dataset.augment, config.dataset.image_size = 'scale,flip', 300
  with pytest.raises(ValueError, match=r'config.dataset.scale_range \(256, 480\)'):
    train.check(config)
  with pytest.raises(ValueError, match='needs the training split'):
    TrainAugment('resnet_imagenet', 224)


def test_evaluation_view_follows_the_ops():
  image = photo(300, 400)
  element = {'image': image, 'label': 0}
  resize = augment.resize(image, 32, 32)
  center = augment.center_crop(image, 224, crop_fraction=0.875)  # 256 -> 224.
  assert center.shape == (224, 224, 3)
  assert np.array_equal(EvalPreprocess('cifar_cutout', 32).map(element)['image'], resize)
  assert np.array_equal(EvalPreprocess('flip,colour_jitter', 32).map(element)['image'], resize)
  for ops in ('imagenet', 'resnet_imagenet', 'scale,flip'):
    assert np.array_equal(EvalPreprocess(ops, 224).map(element)['image'], center)


def test_loader_with_ops_gives_identical_batches_for_the_same_seed():
  config = base_config().dataset
  config.update(source='digits', augment='pad_crop,flip,colour_jitter,pca_lighting,cutout',
                image_size=16, pad=2, cutout_size=6, preprocess='standardize')
  split = load_split(config, 'train')
  prep = preprocess.fit(split, config)
  make = lambda seed, workers=0: iter(make_train_loader(
      split, global_batch_size=64, seed=seed, augment=config.augment, image_size=16,
      num_workers=workers, dataset_config=config, preprocessing=prep))
  first, second, third = make(0), make(0), make(0, workers=1)
  batches = [next(first) for _ in range(5)]
  for batch in batches:
    for other in (next(second), next(third)):  # Workers get the same (pickled) parameters.
      assert np.array_equal(batch['image'], other['image'])
  fill = prep.zero_image((16, 16, 1))
  # cutout wrote standardize's zero (the training mean) over at least a clipped 3x3 of each image.
  assert all(((b['image'] == fill).all(-1).sum((1, 2)) >= 9).all() for b in batches)
  assert not np.array_equal(next(make(1))['image'], batches[0]['image'])
