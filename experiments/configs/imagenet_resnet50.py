"""ResNet-50 on ImageNet (ILSVRC-2012): the 90-epoch recipe of the flax and torchvision examples.

Batch 256 (32 per device on 8 devices) with lr 0.1, scaled linearly for other batch sizes
(Goyal et al. 2017: --config.batch_size=1024 gives lr 0.4); SGD momentum 0.9, weight decay 1e-4,
lr divided by 10 at epochs 30, 60 and 80 (He et al. 2015, Sec. 3.4); random-resized crops and
flips for training, resize to 256 and center crop 224 for evaluation.
Data: `tfds:imagenet2012` prepared in ArrayRecord format, or --config.dataset.source=folder:PATH
with PATH/train/<wnid>/*.JPEG and PATH/val/<wnid>/*.JPEG (--config.dataset.eval_split=val).
"""
from resnet_jax.config import base_config


def get_config():
  config = base_config()
  config.model.name = 'resnet50'
  config.dataset.source = 'tfds:imagenet2012'
  config.dataset.eval_split = 'validation'
  config.dataset.image_size = 224
  config.dataset.augment = 'imagenet'
  config.dataset.mean = (123.675, 116.28, 103.53)  # The torchvision ImageNet statistics.
  config.dataset.std = (58.395, 57.12, 57.375)
  config.dataset.num_workers = 16
  config.dtype = 'bfloat16'
  config.num_epochs = 90
  config.batch_size = 256
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.schedule.name = 'multistep'
  config.schedule.base_lr = 0.1
  config.schedule.scale_by_batch = True
  config.schedule.boundaries = (30.0, 60.0, 80.0)
  config.schedule.decay_factor = 0.1
  config.checkpoint_every_steps = 5000
  config.log_every_steps = 100
  return config
