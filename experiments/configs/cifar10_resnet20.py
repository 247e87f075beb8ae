"""ResNet-20 on CIFAR-10 with the schedule of He et al. 2015, Sec. 4.2.

Batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at 32k and 48k iterations,
stop at 64k (= epochs 82, 123, 164 at 390 steps per epoch of 50k images); pad-4 random crops and
flips. Other depths: --config.model.name=cifar_resnet56 (or plain56, preact_resnet110, ...).
The JPEG folder of ../shared/data has only train/: add
  --config.dataset.source=folder:/data/cifar10 --config.dataset.eval_split=validation
  --config.dataset.val_fraction=0.1   (the paper's 45k/5k train/val split)
"""
from resnet_jax.config import base_config


def get_config():
  config = base_config()
  config.model.name = 'cifar_resnet20'
  config.dataset.source = 'tfds:cifar10'
  config.dataset.eval_split = 'test'
  config.dataset.image_size = 32
  config.dataset.augment = 'cifar'
  config.dataset.mean = (125.3, 123.0, 113.9)  # CIFAR-10 per-channel pixel mean and std.
  config.dataset.std = (63.0, 62.1, 66.7)
  config.dataset.num_workers = 2
  config.num_epochs = 164
  config.batch_size = 128
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.schedule.name = 'multistep'
  config.schedule.base_lr = 0.1
  config.schedule.boundaries = (82.0, 123.0)
  config.schedule.decay_factor = 0.1
  config.checkpoint_every_steps = 2000
  config.log_every_steps = 100
  return config
