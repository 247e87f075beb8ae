"""Converted weights that carry their preprocessing: convert writes pretrained_cfg.json,
`convert.create_model(name, weights=PATH)` loads by path, and `predict --weights` and `evaluate
--weights` preprocess as the weights' library does (here torchvision's evaluation transform,
compared end to end, and timm's, compared view by view)."""
import json
import os

import jax
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from twins import random_twin

from resnet_jax import convert, data, evaluate, predict
from resnet_jax.config import base_config

V1 = torchvision.models.ResNet50_Weights.IMAGENET1K_V1


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """A random torchvision ResNet-50 saved as safetensors and converted as IMAGENET1K_V1."""
  from safetensors.torch import save_file
  tmp = tmp_path_factory.mktemp('resnet50')
  twin = random_twin('resnet50')
  weights = str(tmp / 'resnet50.safetensors')
  save_file(twin.state_dict(), weights)
  convert.main(['--model', 'resnet50', '--weights', weights, '--out', str(tmp / 'ckpt'),
                '--source', 'torchvision:IMAGENET1K_V1'])
  return twin, weights, str(tmp / 'ckpt')


def test_the_cfg_is_torchvisions_record_of_the_weights(converted):
  _, _, ckpt = converted
  with open(f'{ckpt}/{convert.PRETRAINED_CFG}') as f:
    cfg = json.load(f)
  assert cfg['model'] == 'resnet50'
  assert cfg['source'] == 'torchvision:ResNet50_Weights.IMAGENET1K_V1'
  assert cfg['mean'] == [0.485, 0.456, 0.406] and cfg['std'] == [0.229, 0.224, 0.225]
  assert cfg['input_size'] == [3, 224, 224] and cfg['crop_fraction'] == 224 / 256
  assert cfg['interpolation'] == 'bilinear' and cfg['num_classes'] == 1000
  assert cfg['class_names'][:2] == ['tench', 'goldfish'] and len(cfg['class_names']) == 1000
  assert 'bsd-3-clause' in cfg['license']


def test_a_converted_resnet50_loads_by_path_and_gives_the_twins_logits(converted):
  twin, weights, ckpt = converted
  x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    theirs = twin(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  for path in (ckpt, weights):  # the converted directory, or the state dict itself
    model, variables = convert.create_model('resnet50', weights=path)
    ours = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-4
  pooled_model, variables = convert.create_model('resnet50', weights=ckpt, num_classes=0)
  pooled = np.asarray(pooled_model.apply(variables, x, train=False))
  head = variables['params']['head']
  np.testing.assert_allclose(pooled @ head['kernel'] + head['bias'], ours, rtol=0,
                             atol=1e-5 * np.abs(ours).max())
  with pytest.raises(ValueError, match="are 'resnet50' weights, not 'resnet18'"):
    convert.create_model('resnet18', weights=ckpt)


def test_predict_with_weights_is_torchvisions_evaluation_pipeline(converted, tmp_path):
  """The same JPEG files through torchvision's V1 transform (resize 256, crop 224, bilinear,
  ImageNet mean/std) and the twin, and through `predict --weights`: the same probabilities."""
  twin, _, ckpt = converted
  rng = np.random.default_rng(1)
  files = []
  for i, (h, w) in enumerate([(300, 400), (480, 360)]):
    files.append(str(tmp_path / f'{i}.jpg'))
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(files[-1], quality=95)
  with torch.no_grad():
    batch = torch.stack([V1.transforms()(Image.open(f).convert('RGB')) for f in files])
    theirs = torch.softmax(twin(batch), -1).numpy()
  run = predict.load_pretrained(ckpt)
  assert run.class_names[0] == 'tench' and run.image_shape == (224, 224, 3)
  ours = predict.probabilities(run, [predict.read_image(f, 3) for f in files])
  np.testing.assert_allclose(ours, theirs, atol=2e-5)
  rows = predict.predict(run, files, top_k=3)
  assert [r['top'][0]['class'] for r in rows] == [V1.meta['categories'][i]
                                                  for i in theirs.argmax(-1)]


def test_a_bad_cfg_names_the_field_and_a_missing_one_says_how_to_write_it(converted, tmp_path):
  _, _, ckpt = converted
  cfg = json.load(open(f'{ckpt}/{convert.PRETRAINED_CFG}'))
  with pytest.raises(ValueError, match='interpolation .lanczos.; valid: bilinear'):
    convert.check_pretrained_cfg({**cfg, 'interpolation': 'lanczos'}, 'X')
  with pytest.raises(ValueError, match='lacks mean'):
    convert.check_pretrained_cfg({k: v for k, v in cfg.items() if k != 'mean'}, 'X')
  with pytest.raises(FileNotFoundError, match='python -m resnet_jax.convert'):
    predict.load_pretrained(str(tmp_path))


def _random_images(sizes, seed):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in sizes]


def test_pretrained_views_are_the_libraries_transforms_pixel_for_pixel():
  """`ViewRecipe.of_pretrained` against the libraries' own PIL transforms: torchvision V1's
  resize 256 + center crop 224 and its 10-crop, and timm's bicubic crop_pct 0.95 (shorter side
  floor(224 / 0.95) = 235, where rounding would give 236)."""
  import timm.data
  v1 = evaluate.ViewRecipe.of_pretrained(convert.twin_pretrained_cfg('resnet50',
                                                                     'torchvision:IMAGENET1K_V1'))
  resize, ten = torchvision.transforms.Resize(256), torchvision.transforms.TenCrop(224)
  timm_view = timm.data.create_transform(input_size=224, crop_pct=0.95, interpolation='bicubic')
  timm_view = torchvision.transforms.Compose(timm_view.transforms[:2])  # Before the tensor.
  bicubic = evaluate.ViewRecipe.of_pretrained({'crop_fraction': 0.95, 'interpolation': 'bicubic'})
  assert bicubic.short_side(224) == 235 and v1.short_side(224) == 256
  for image in _random_images([(300, 400), (480, 360), (250, 250), (233, 517)], 2):
    pil = Image.fromarray(image)
    ours = evaluate.eval_views(image[None], 'ten_crop', recipe=v1, size=224)[:, 0]
    np.testing.assert_array_equal(ours, np.stack([np.asarray(c) for c in ten(resize(pil))]))
    np.testing.assert_array_equal(evaluate.center_crop(image[None], 224, v1)[0], ours[4])
    np.testing.assert_array_equal(evaluate.center_crop(image[None], 224, bicubic)[0],
                                  np.asarray(timm_view(pil)))


def _folder(root, classes, sizes):
  for i, name in enumerate(classes):
    os.makedirs(root / 'val' / name)
    for j, image in enumerate(_random_images(sizes, i)):
      Image.fromarray(image).save(root / 'val' / name / f'{j}.jpg', quality=95)


def test_evaluate_with_weights_scores_a_folder_as_torchvision_does(converted, tmp_path):
  """`evaluate --weights` on a folder of two ImageNet classes (goldfish, 1, and great white
  shark, 2, named as the weights name them): torchvision's V1 transform and the twin give the
  same loss and accuracy, the folder's labels mapped to the weights' class indices."""
  twin, _, ckpt = converted
  classes, sizes = ['goldfish', 'great white shark'], [(300, 400), (480, 360), (256, 300)]
  _folder(tmp_path, classes, sizes)
  config = base_config()
  config.dataset.source, config.dataset.eval_split = f'folder:{tmp_path}', 'val'
  config.batch_size = 8
  rows = evaluate.evaluate_pretrained(config, [ckpt], 'center')
  files = [tmp_path / 'val' / name / f'{j}.jpg' for name in classes for j in range(len(sizes))]
  labels = np.repeat([1, 2], len(sizes))
  with torch.no_grad():
    batch = torch.stack([V1.transforms()(Image.open(f).convert('RGB')) for f in files])
    log_probs = torch.log_softmax(twin(batch), -1).numpy()
  member = rows[0]
  assert member['model'] == ckpt and member['examples'] == 6
  assert member['loss'] == pytest.approx(-log_probs[np.arange(6), labels].mean(), rel=1e-4)
  assert member['accuracy'] == pytest.approx(np.mean(log_probs.argmax(-1) == labels), abs=1e-9)
  assert rows[1]['model'] == 'ensemble' and rows[1]['loss'] == pytest.approx(member['loss'])


def test_evaluate_with_weights_names_what_does_not_fit(converted, tmp_path):
  _, _, ckpt = converted
  cfg = convert.load_pretrained_cfg(ckpt)
  split = data.sources.Split([], 2, 'folder/val', ('goldfish', 'my cat'))
  with pytest.raises(ValueError, match="name the class folders after the weights' class_names"):
    evaluate.pretrained_labels(split, cfg, ckpt)
  imagenet = data.sources.Split([], 1000, 'imagenet/val', tuple(f'n{i:08d}' for i in range(1000)))
  assert evaluate.pretrained_labels(imagenet, cfg, ckpt) is None  # Their order, as it is.
  other = tmp_path / 'other'
  other.mkdir()
  with open(other / convert.PRETRAINED_CFG, 'w') as f:
    json.dump({**cfg, 'crop_fraction': 0.95}, f)
  with pytest.raises(ValueError, match='differs from .* in crop_fraction'):
    evaluate.evaluate_pretrained(base_config(), [ckpt, str(other)])
  with pytest.raises(FileNotFoundError, match='python -m resnet_jax.convert'):
    evaluate.evaluate_pretrained(base_config(), [str(tmp_path)])
