"""Plain vs residual nets on ImageNet, exactly as He, Zhang, Ren & Sun 2015 ("Deep Residual
Learning for Image Recognition"), Sec. 3.4 and 4.1: Fig. 4 and Table 2 (top-1 error, 10-crop:
plain-18 27.94, plain-34 28.54, ResNet-18 27.88, ResNet-34 25.03).

One net per run; the four of Fig. 4:
  python -m resnet_jax.main --config=experiments/configs/imagenet_plain_vs_residual.py \\
      --config.model.name=plain18|plain34|resnet18|resnet34 --workdir=DIR/NAME
then `python experiments/plain_vs_residual.py --workdir=DIR` draws Fig. 4 from the four runs
(or trains the missing ones itself with --train). The residual nets use option A shortcuts here
(Sec. 4.1: "identity mapping for all shortcuts and zero-padding for increasing dimensions"), so
they have no more parameters than the plain ones; --config.model.shortcut=B|C gives Table 3's.
Data: `tfds:imagenet2012` prepared in ArrayRecord format, or --config.dataset.source=folder:PATH
(PATH/train/<wnid>/*.JPEG and PATH/val/<wnid>/*.JPEG, --config.dataset.eval_split=val).
"""
from resnet_jax.config import base_config

TRAIN_EXAMPLES, BATCH = 1_281_167, 256
STEPS_PER_EPOCH = TRAIN_EXAMPLES // BATCH  # 5,004.


def iterations(n: int) -> float:
  """Iterations -> the epochs that reach them at STEPS_PER_EPOCH."""
  return n / STEPS_PER_EPOCH


def get_config():
  config = base_config()
  config.model.name = 'resnet34'
  config.model.shortcut = 'A'  # Sec. 4.1, Table 2 / Fig. 4: option A for the residual nets.
  config.model.init = 'kaiming'  # Sec. 3.4: "We initialize the weights as in [13]".
  config.model.zero_init_residual = False  # BN as [16] (Sec. 3.4): every BN scale starts at 1.
  config.model.dropout_rate = 0.0  # Sec. 3.4: "We do not use dropout [14]".
  config.dataset.source = 'tfds:imagenet2012'
  config.dataset.eval_split = 'validation'  # Fig. 4's bold curves: validation error.
  config.dataset.image_size = 224  # Sec. 3.4: "A 224x224 crop is randomly sampled".
  # Sec. 3.4: "The image is resized with its shorter side randomly sampled in [256, 480] for scale
  # augmentation [41]. A 224x224 crop is randomly sampled from an image or its horizontal flip
  # ... The standard color augmentation in [21] is used" (Krizhevsky's PCA lighting).
  config.dataset.augment = 'resnet_imagenet'
  config.dataset.scale_range = (256, 480)
  config.dataset.pca_lighting_std = 0.1
  config.dataset.preprocess = 'mean'  # Sec. 3.4: "with the per-pixel mean subtracted [21]".
  config.dataset.std = (1.0,)
  config.dataset.fit_examples = 50_000  # The mean image from a fixed 50k-image subset.
  config.dataset.num_workers = 16
  config.batch_size = BATCH  # Sec. 3.4: "SGD with a mini-batch size of 256".
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9  # Sec. 3.4: "a momentum of 0.9".
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 1e-4  # Sec. 3.4: "a weight decay of 0.0001".
  config.optimizer.decay_norm_and_bias = True  # On every weight: the paper excludes none.
  config.optimizer.decay_style = 'l2'
  config.label_smoothing = 0.0
  # Sec. 3.4: "The learning rate starts from 0.1 and is divided by 10 when the error plateaus,
  # and the models are trained for up to 60 x 10^4 iterations." Fig. 4's drops are at about 15 and
  # 30 x 10^4 iterations (30 and 60 epochs, as fb.resnet.torch schedules them); we keep those.
  config.schedule.name = 'multistep'
  config.schedule.base_lr = 0.1
  config.schedule.scale_by_batch = False
  config.schedule.warmup_epochs = 0.0
  config.schedule.boundaries = (iterations(150_000), iterations(300_000))
  config.schedule.decay_factor = 0.1
  config.num_epochs = iterations(600_000)
  config.eval_every_epochs = 1.0
  config.checkpoint_every_steps = 5000
  config.log_every_steps = 500
  return config
