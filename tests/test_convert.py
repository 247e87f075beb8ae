"""Weight import: our ResNets against their registered torchvision and timm twins, on the same
random batch."""
import jax
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from test_train import make_config
from twins import random_twin

from resnet_jax import convert, train
from resnet_jax.config import base_config
from resnet_jax.data import load_split
from resnet_jax.models import create_model


def relative_difference(name: str, twin: torch.nn.Module, size: int = 64) -> float:
  """max |ours - theirs| / max |theirs| of the logits on one random batch of 2 (fp32)."""
  x = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    theirs = twin(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  variables = convert.from_torch(name, twin.state_dict())
  model = create_model(name, num_classes=theirs.shape[-1])
  ours = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
  return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


# Both nets are fully convolutional up to a global pool: 64x64 inputs test every weight, cheaply.
@pytest.mark.parametrize('name', ['resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152'])
def test_resnet_v1_equals_torchvision(name):
  assert relative_difference(name, random_twin(name)) < 1e-4


@pytest.mark.parametrize('depth', [18, 34, 50, 101, 152])
def test_preact_resnet_equals_timm_resnetv2(depth):
  name = f'preact_resnet{depth}'
  assert relative_difference(name, random_twin(name)) < 1e-4


def test_mismatch_names_the_tensor_and_both_shapes():
  state = torchvision.models.resnet18().state_dict()
  with pytest.raises(ValueError, match=r"has no 'layer1\.2\..*for .*stage0_block2"):
    convert.from_torch('resnet34', state)  # resnet34 has 3 blocks in layer1, resnet18 2.
  state['fc.weight'] = torch.zeros(1000, 256)
  with pytest.raises(ValueError, match=r"'fc.weight' has shape \(1000, 256\).*needs \(512, 1000\)"):
    convert.from_torch('resnet18', state)


def test_command_line_writes_a_checkpoint_that_init_from_loads(tmp_path, caplog):
  from safetensors.torch import save_file
  twin = random_twin('resnet18')
  weights = str(tmp_path / 'resnet18.safetensors')
  save_file(twin.state_dict(), weights)
  convert.main(['--model', 'resnet18', '--weights', weights, '--out', str(tmp_path / 'ckpt')])
  loaded = convert.load_variables(str(tmp_path / 'ckpt'))
  np.testing.assert_array_equal(loaded['params']['stem_conv']['kernel'],
                                twin.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))
  # Fine-tuning on 10 classes of RGB images: everything loaded but a new 10-way head.
  records = load_split(base_config().dataset, 'train').records
  for i in range(40):
    folder = tmp_path / 'rgb' / 'train' / str(records[i]['label'])
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(records[i]['image'][:, :, 0]).convert('RGB').save(folder / f'{i}.png')
  config = make_config(**{'model.name': 'resnet18', 'init_from': str(tmp_path / 'ckpt'),
                          'dataset.source': f'folder:{tmp_path}/rgb', 'batch_size': 8,
                          'dataset.eval_split': 'validation', 'dataset.val_fraction': 0.2,
                          'dataset.mean': (127.0,) * 3, 'dataset.std': (64.0,) * 3})
  state = jax.device_get(train.setup(config).state)
  # Its pretrained_cfg (torchvision's ImageNet mean/std) is not this run's normalisation.
  assert 'its weights expect mean [123.675, 116.28, 103.53]' in caplog.text
  np.testing.assert_array_equal(state.params['stage3_block1']['conv2']['kernel'],
                                loaded['params']['stage3_block1']['conv2']['kernel'])
  assert state.params['head']['kernel'].shape == (512, 10)
  torch.save(twin.state_dict(), tmp_path / 'resnet18.pth')
  from_pth = convert.load_state_dict(str(tmp_path / 'resnet18.pth'))
  assert np.array_equal(from_pth['fc.weight'], twin.fc.weight.detach().numpy())
