"""Converted weights that carry their preprocessing: convert writes pretrained_cfg.json,
`convert.create_model(name, weights=PATH)` loads by path, and `predict --weights` preprocesses as
the weights' library does (here torchvision's evaluation transform, compared end to end)."""
import json

import jax
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from twins import random_twin

from resnet_jax import convert, predict

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
