"""ResNet-20 on CIFAR-10, exactly as He, Zhang, Ren & Sun 2015 ("Deep Residual Learning for Image
Recognition"), Sec. 4.2; every field the paper states is set here with its place in the paper.

64k iterations of batch 128 on the 50k training images (the schedule the paper fixed on a 45k/5k
split, then trained on all 50k and reported on the 10k test images: Table 6, 8.75% error for
ResNet-20). Other depths: --config.model.name=cifar_resnet56 (or plain56, cifar_resnet110, ...).
The modern additions (zero-init, no BN/bias decay, cosine, label smoothing) are not here: see
cifar10_resnet20_tricks.py. The JPEG folder of ../shared/data has only train/: add
  --config.dataset.source=folder:/data/cifar10 --config.dataset.eval_split=validation
  --config.dataset.val_fraction=0.1   (the paper's 45k/5k train/val split)
"""
from resnet_jax.config import base_config

TRAIN_EXAMPLES, BATCH = 50_000, 128
STEPS_PER_EPOCH = TRAIN_EXAMPLES // BATCH  # 390, as the training loop counts them.


def iterations(n: int) -> float:
  """Iterations -> the epochs that reach them at STEPS_PER_EPOCH."""
  return n / STEPS_PER_EPOCH


def get_config():
  config = base_config()
  # Sec. 4.2: 3x3 stem, 3 stages of n=3 basic units (16/32/64 filters), option A shortcuts.
  config.model.name = 'cifar_resnet20'
  config.model.init = 'kaiming'  # Sec. 4.2: "the weight initialization in [13]" (He et al. 2015b).
  config.model.zero_init_residual = False  # Every BN scale starts at 1 (BN as [16], Sec. 3.4).
  config.model.dropout_rate = 0.0  # Sec. 4.2: "BN [16] but with no dropout".
  config.dataset.source = 'tfds:cifar10'
  config.dataset.eval_split = 'test'  # Table 6 reports test error.
  config.dataset.image_size = 32
  # Sec. 4.2: "4 pixels are padded on each side, and a 32x32 crop is randomly sampled from the
  # padded image or its horizontal flip"; testing: "the single view of the original 32x32 image".
  config.dataset.augment = 'cifar'
  config.dataset.pad = 4
  # Sec. 4.2: "The network inputs are 32x32 images, with the per-pixel mean subtracted" (no
  # scaling is stated: std 1; with BN after the first convolution the scale changes nothing).
  config.dataset.preprocess = 'mean'
  config.dataset.std = (1.0,)
  config.dataset.fit_examples = TRAIN_EXAMPLES  # The mean of every training image.
  config.dataset.num_workers = 2
  config.batch_size = BATCH  # Sec. 4.2: "a mini-batch size of 128".
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9  # Sec. 4.2: "momentum of 0.9".
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 1e-4  # Sec. 4.2: "a weight decay of 0.0001".
  config.optimizer.decay_norm_and_bias = True  # On every weight: the paper excludes none.
  config.optimizer.decay_style = 'l2'  # Into the gradient, as Caffe's and torch's SGD.
  config.label_smoothing = 0.0
  # Sec. 4.2: "We start with a learning rate of 0.1, divide it by 10 at 32k and 48k iterations,
  # and terminate training at 64k iterations".
  config.schedule.name = 'multistep'
  config.schedule.base_lr = 0.1
  config.schedule.warmup_epochs = 0.0  # (ResNet-110 alone warms up at 0.01 for 400 iterations.)
  config.schedule.boundaries = (iterations(32_000), iterations(48_000))
  config.schedule.decay_factor = 0.1
  config.num_epochs = iterations(64_000)
  config.checkpoint_every_steps = 2000
  config.log_every_steps = 100
  return config
