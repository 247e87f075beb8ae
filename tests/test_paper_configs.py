"""The config files named after a paper set that paper's values (a table written from the paper,
with its sections), and the registered paper models default to their paper's choices."""
import os

import pytest
from conftest import REPO

from resnet_jax import config as config_lib
from resnet_jax import records, train
from resnet_jax.models import count_params, create_model, list_models, model_spec

# He, Zhang, Ren & Sun 2015, "Deep Residual Learning for Image Recognition", Sec. 4.2 (CIFAR-10).
HE2015_CIFAR = {
    'model.name': 'cifar_resnet20',  # n = 3: 6n + 2 = 20 layers.
    'model.zero_init_residual': False,  # BN as Ioffe & Szegedy: scales start at 1.
    'model.dropout_rate': 0.0,  # "BN [16] but with no dropout".
    'batch_size': 128,  # "a mini-batch size of 128".
    'optimizer.name': 'sgd',
    'optimizer.momentum': 0.9,  # "momentum of 0.9".
    'optimizer.nesterov': False,
    'optimizer.weight_decay': 1e-4,  # "a weight decay of 0.0001".
    'optimizer.decay_norm_and_bias': True,  # No parameter is excluded.
    'optimizer.decay_style': 'l2',
    'label_smoothing': 0.0,
    'mixup_alpha': 0.0,
    'schedule.name': 'multistep',
    'schedule.base_lr': 0.1,  # "We start with a learning rate of 0.1,
    'schedule.decay_factor': 0.1,  # divide it by 10
    'schedule.warmup_epochs': 0.0,
    'dataset.augment': 'cifar',  # "4 pixels are padded on each side, and a 32x32 crop is
    'dataset.pad': 4,  # randomly sampled from the padded image or its horizontal flip".
    'dataset.image_size': 32,
    'dataset.preprocess': 'mean',  # "with the per-pixel mean subtracted".
    'dataset.std': (1.0,),
    'dataset.eval_split': 'test',  # Table 6: test error.
}
# He et al. 2015, Sec. 3.4 and 4.1 (ImageNet; Fig. 4 and Table 2).
HE2015_IMAGENET = {
    'model.shortcut': 'A',  # Sec. 4.1: zero-padding for increasing dimensions in Table 2.
    'model.zero_init_residual': False,
    'model.dropout_rate': 0.0,  # "We do not use dropout".
    'dataset.image_size': 224,  # "A 224x224 crop is randomly sampled".
    'dataset.augment': 'resnet_imagenet',  # Scale, crop, flip, "the standard color augmentation".
    'dataset.scale_range': (256, 480),  # "shorter side randomly sampled in [256, 480]".
    'dataset.preprocess': 'mean',  # "with the per-pixel mean subtracted".
    'batch_size': 256,  # "SGD with a mini-batch size of 256".
    'optimizer.name': 'sgd',
    'optimizer.momentum': 0.9,  # "a momentum of 0.9".
    'optimizer.weight_decay': 1e-4,  # "a weight decay of 0.0001".
    'optimizer.decay_norm_and_bias': True,
    'schedule.name': 'multistep',
    'schedule.base_lr': 0.1,  # "The learning rate starts from 0.1".
    'schedule.decay_factor': 0.1,  # "is divided by 10".
    'schedule.warmup_epochs': 0.0,
    'label_smoothing': 0.0,
}

# Ciresan, Meier, Gambardella & Schmidhuber 2010, Secs. 2-3 and Table 1 (ID 4). Batch 32 at 32
# times the per-image rate stands in for on-line BP (batch 1): the config's docstring says why.
CIRESAN2010 = {
    'model.name': 'ciresan_mlp4',  # 2500-2000-1500-1000-500-10, the 0.35% net.
    'dataset.image_size': 29,  # 841 inputs: Table 1's weight counts.
    'dataset.augment': 'ciresan',  # Affine then elastic deformations, new every epoch (Sec. 2).
    'dataset.affine_angle': 15.0,  # beta = 15 degrees (7.5 for 1s and 7s).
    'dataset.affine_scale_x': (0.85, 1.15),  # gamma = 15-20%.
    'dataset.elastic_sigma': (5.0, 6.0),  # sigma = 5.0-6.0.
    'dataset.elastic_alpha': (36.0, 38.0),  # alpha = 36.0-38.0.
    'dataset.mean': (127.5,),  # Pixels scaled to [-1, 1].
    'dataset.std': (127.5,),
    'dataset.eval_split': 'test',  # MNIST test error.
    'optimizer.name': 'sgd',  # Plain on-line back-propagation:
    'optimizer.momentum': 0.0,  # no momentum,
    'optimizer.weight_decay': 0.0,  # no weight decay.
    'schedule.name': 'exponential',  # 1e-3 to 1e-6, multiplied each epoch,
    'schedule.decay_factor': 10 ** (-3 / 800),  # over 800 epochs.
    'schedule.warmup_epochs': 0.0,
    'num_epochs': 800,
    'label_smoothing': 0.0,
}

PAPER_CONFIGS = {'cifar10_resnet20': HE2015_CIFAR,
                 'imagenet_plain_vs_residual': HE2015_IMAGENET,
                 'mnist_ciresan2010': CIRESAN2010}


def load_config(name: str):
  return config_lib.load_file(os.path.join(REPO, 'experiments', 'configs', f'{name}.py'))


@pytest.mark.parametrize('name', sorted(PAPER_CONFIGS))
def test_paper_config_sets_the_papers_values(name):
  config = load_config(name)
  wrong = {}
  for field, value in PAPER_CONFIGS[name].items():
    node = config
    for part in field.split('.'):
      node = node[part]
    if node != value:
      wrong[field] = (node, value)
  assert not wrong, f'{name}: field: (config, paper) {wrong}'


def test_he2015_cifar_schedule_counts_the_papers_iterations():
  config = load_config('cifar10_resnet20')
  steps_per_epoch = 50_000 // 128  # As the training loop counts them on 50k images.
  # "divide it by 10 at 32k and 48k iterations, and terminate training at 64k iterations".
  assert [round(b * steps_per_epoch) for b in config.schedule.boundaries] == [32_000, 48_000]
  assert round(config.num_epochs * steps_per_epoch) == 64_000
  model = train.build_model(config, num_classes=10)
  assert (model.stage_sizes, tuple(model.widths), model.shortcut, model.stem) == (
      (3, 3, 3), (16, 32, 64), 'A', 'cifar')  # Sec. 4.2: option A, 16/32/64 filters.
  assert model.zero_init_residual is False and model.kernel_init == 'kaiming'


def test_tricks_config_changes_only_the_named_tricks():
  paper, tricks = load_config('cifar10_resnet20'), load_config('cifar10_resnet20_tricks')
  changed = set(records.config_changes(records.flatten(paper), records.flatten(tricks)))
  assert changed == {'model.zero_init_residual', 'optimizer.decay_norm_and_bias', 'schedule.name',
                     'label_smoothing', 'dataset.preprocess', 'dataset.mean', 'dataset.std'}


def test_registered_he2015_nets_start_as_the_paper():
  # He et al. 2015 (v1 and plain nets): no zero-init of the last BN of a branch by default.
  v1 = [n for n in list_models() if model_spec(n)['module'] == 'ResNet'
        and not model_spec(n)['kwargs'].get('preact')]
  assert len(v1) >= 18
  for name in v1:
    assert create_model(name, num_classes=10).zero_init_residual is False, name


def test_imagenet_plain_vs_residual_trains_up_to_600k_iterations():
  config = load_config('imagenet_plain_vs_residual')
  steps_per_epoch = 1_281_167 // 256
  # Sec. 3.4: "trained for up to 60 x 10^4 iterations"; Fig. 4's lr drops at ~15 and 30 x 10^4.
  assert round(config.num_epochs * steps_per_epoch) == 600_000
  assert [round(b * steps_per_epoch) for b in config.schedule.boundaries] == [150_000, 300_000]
  # Option A: the residual nets have exactly the plain nets' parameters (Sec. 4.1, Table 2).
  for depth in (18, 34):
    config.model.name = f'resnet{depth}'
    assert train.build_model(config, 1000).shortcut == 'A'
    assert count_params(f'resnet{depth}', shortcut='A') == count_params(f'plain{depth}')
