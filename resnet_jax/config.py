"""The fields every training config has, with defaults; experiment files start from `base_config()`.

The returned ConfigDict is locked: a misspelt field in an experiment file or on the command line
(`--config.optimizer.momentun=0.9`) is an error naming it, never a silent default.
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections
from ml_collections import config_dict

DTYPES = ('float32', 'bfloat16')
PARALLELISM = ('shard_map', 'pmap')


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # The root PRNG key: initialisation, data order, augmentation, dropout.
  c.num_epochs = 10.0  # Passes over the training split (fractions allowed).
  c.batch_size = 128  # Global, over every device of every host.
  c.dtype = 'float32'  # Computation dtype; parameters and optimizer state stay float32.
  c.parallelism = 'shard_map'  # Or 'pmap': the same per-device step, mapped by jax.pmap.
  c.label_smoothing = 0.0  # Szegedy et al. 2016, Sec. 7: 0.1 on ImageNet.
  # Micro-batches per device, run in turn with one update: the memory of batch_size / k, the
  # update of batch_size (BatchNorm sees each micro-batch on its own).
  c.grad_accum_steps = 1
  c.ema_decay = 0.0  # Polyak averaging of the weights, evaluated too; 0.9999: Tan & Le 2019.
  c.mixup_alpha = 0.0  # Zhang et al. 2018, Sec. 3: Beta(alpha, alpha); 0.2 ImageNet, 1.0 CIFAR.
  c.cutmix_alpha = 0.0  # Yun et al. 2019, Sec. 4: 1.0.
  c.mix_prob = 1.0  # Chance a batch is mixed at all (timm's mixup `prob`).
  c.mix_switch_prob = 0.5  # With both alphas set: chance of CutMix rather than mixup (timm).

  c.model = ml_collections.ConfigDict()
  c.model.name = 'lenet5'  # A registered model (resnet_jax.models.list_models()).
  c.model.sync_bn = False  # True: BatchNorm statistics over the global batch (cross-replica).
  # Overrides passed to create_model when set; unset means the registered model's default.
  # layers.ACTIVATIONS name, or 'leaky_relu:0.2' (Maas et al. 2013); 'selu': Klambauer et al. 2017;
  # 'prelu' / 'prelu_shared': learned slopes (He et al. 2015b).
  c.model.act = config_dict.placeholder(str)
  # The models' kernel_init: layers.KERNEL_INITS name or 'normal:STD'; 'xavier_normal' (Glorot &
  # Bengio 2010), 'kaiming_in' (He et al. 2015b, Sec. 2.2). Unset with act=selu: 'lecun'.
  c.model.init = config_dict.placeholder(str)
  # 'batch' (Ioffe & Szegedy 2015; layers.BatchNorm) | 'flax_batch' (forward-mode AD) | 'none'
  c.model.norm = config_dict.placeholder(str)
  # ResNets: each residual branch's last BN scale starts at 0 (Goyal et al. 2017, Sec. 5.1; not
  # He et al. 2015's, so off by default).
  c.model.zero_init_residual = config_dict.placeholder(bool)
  # ResNets: False gives the plain twin (He et al. 2015, Sec. 4.1); shortcut 'A' (zero-padding),
  # 'B' (projections where the shape changes) or 'C' (projections everywhere), Sec. 3.3.
  c.model.residual = config_dict.placeholder(bool)
  c.model.shortcut = config_dict.placeholder(str)
  # The classifier's init: 'lecun' (flax's default, LeCun normal, zero bias) or 'torch' (torch's
  # nn.Linear: weights and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))). ResNet, VGG.
  c.model.head_init = config_dict.placeholder(str)
  # BatchNorm's running-average momentum, flax convention (0.9 == torch's momentum=0.1), and eps.
  c.model.bn_momentum = config_dict.placeholder(float)
  c.model.bn_epsilon = config_dict.placeholder(float)
  # GoogLeNet (and AlexNet): local response normalization where the paper has it (Szegedy et al.
  # 2015, Table 1 / Fig. 3). GoogLeNet, Inception-v3: the auxiliary classifiers, trained with
  # their loss weight (0.3, Szegedy et al. 2015, Sec. 5) and skipped at evaluation.
  c.model.lrn = config_dict.placeholder(bool)
  c.model.aux_logits = config_dict.placeholder(bool)
  # LeNet-5: C3's sparse connection table (LeCun et al. 1998, Table I) instead of a full conv.
  c.model.sparse_c3 = config_dict.placeholder(bool)
  c.model.dropout_rate = config_dict.placeholder(float)  # Srivastava et al. 2014; models with one.
  # LeNet-5's F6 + output, ResNet's head: per-example weight masks (Wan et al. 2013, Sec. 2-3).
  c.model.dropconnect_rate = config_dict.placeholder(float)
  # ResNet: 1 - p_L of the linear decay rule; 0.5 is Huang et al. 2016's p_L = 0.5 (Sec. 3-4).
  c.model.stochastic_depth = config_dict.placeholder(float)
  # FMP nets: pooling draws averaged at test; Graham 2014, Sec. 4: 12 or more repetitions.
  c.model.test_draws = config_dict.placeholder(int)
  # Every conv/dense bias but the classifier's starts at this value (layers.with_hidden_bias);
  # 0.01: the course notes' remedy for ReLUs that start dead. Unset: each model's own (zeros).
  c.model.bias_init = config_dict.placeholder(float)
  # MobileNet v1/v2: the width multiplier (Howard et al. 2017, Sec. 4.2; Sandler et al. 2018);
  # VGG: the same multiplier of its channel counts (not in its paper; the slim parity runs).
  c.model.width = config_dict.placeholder(float)
  # LeNet-5, AlexNet: 'avg' | 'max' | 'max+avg' (the sum; Mishkin et al. 2016's best pooling).
  c.model.pool = config_dict.placeholder(str)
  # AlexNet: hidden width of a learned 1x1 colour transform at the input (Mishkin et al. 2016:
  # RGB -> 10 -> 3); 0 none.
  c.model.colour_transform = config_dict.placeholder(int)
  # FractalNet: local drop-path probability per join input (Larsson et al. 2016, Sec. 4: 0.15),
  # and `column`: one column alone (0 the shallowest; Sec. 4.3, Table 3).
  c.model.drop_path = config_dict.placeholder(float)
  c.model.column = config_dict.placeholder(int)

  c.dataset = ml_collections.ConfigDict()
  c.dataset.source = 'digits'  # 'digits' | 'tfds:NAME' | 'folder:PATH'
  c.dataset.data_dir = ''  # TFDS data_dir (a local path or a bucket); '' means TFDS's default.
  c.dataset.eval_split = 'test'
  c.dataset.val_fraction = 0.0  # Share of 'train' carved off as 'validation' when none is stored.
  c.dataset.image_size = 32
  # A preset ('none', 'cifar', 'cifar_cutout', 'imagenet', 'resnet_imagenet', 'ciresan') or a
  # comma-separated list of scale|random_resized_crop|pad_crop, affine, elastic, flip,
  # colour_jitter, pca_lighting, cutout (run in that order, whatever the order listed).
  c.dataset.augment = 'none'
  c.dataset.pad = 4  # pad_crop: He et al. 2015, Sec. 4.2: 4 pixels padded on each side.
  c.dataset.scale_range = (256, 480)  # scale: He et al. 2015, Sec. 3.4: shorter side in [256, 480].
  c.dataset.crop_scale = (0.08, 1.0)  # random_resized_crop: Szegedy et al. 2015, Sec. 6: 8%-100%.
  c.dataset.crop_ratio = (3 / 4, 4 / 3)  # random_resized_crop: Szegedy et al. 2015, Sec. 6.
  # colour_jitter strengths, torchvision ColorJitter semantics; 0.4 as fb.resnet.torch's ImageNet
  # recipe (Gross & Wilber 2016); 0 leaves that property alone.
  c.dataset.jitter_brightness = 0.4
  c.dataset.jitter_contrast = 0.4  # colour_jitter's contrast strength.
  c.dataset.jitter_saturation = 0.4  # colour_jitter's saturation strength.
  c.dataset.pca_lighting_std = 0.1  # Krizhevsky et al. 2012, Sec. 4.1: alpha_i ~ N(0, 0.1).
  c.dataset.cutout_size = 16  # DeVries & Taylor 2017, Sec. 4.1: a 16x16 square on CIFAR-10.
  # affine: angle and shear uniform in [-max, max] degrees, scales uniform in (low, high) per
  # axis. Ciresan et al. 2010, Sec. 2: rotation beta = 15 degrees (7.5 for 1s and 7s; one angle
  # for all here), scaling gamma = 15-20% (15 taken); their beta is rotation or horizontal shear.
  c.dataset.affine_angle = 15.0
  c.dataset.affine_shear = 0.0  # tan(shear): sideways shift per row of height (Ciresan 2010).
  c.dataset.affine_scale_x = (0.85, 1.15)  # affine: horizontal scale range (gamma_x).
  c.dataset.affine_scale_y = (0.85, 1.15)  # affine: vertical scale range (gamma_y).
  # elastic: Simard et al. 2003, Sec. 2 (uniform(-1, 1) fields, Gaussian of std sigma, times
  # alpha pixels); sigma and alpha drawn per image from these ranges: Ciresan et al. 2010, Sec. 2.
  c.dataset.elastic_sigma = (5.0, 6.0)
  c.dataset.elastic_alpha = (36.0, 38.0)  # elastic: the smoothed field's scale, pixels.
  # 'fixed' (mean/std below) | 'mean' (training mean image; Krizhevsky et al. 2012, Sec. 2) |
  # 'standardize' | 'pca_whiten' | 'zca_whiten', fitted on the training split (data/preprocess.py).
  c.dataset.preprocess = 'fixed'
  c.dataset.mean = (127.5,)  # Per channel, on the 0..255 scale; one value broadcasts.
  c.dataset.std = (127.5,)
  # Added to the covariance eigenvalues (0..1 pixel scale) before whitening: 0.01, the UFLDL
  # tutorial's start for [0, 1] data (Ng et al., "Data preprocessing"); on CIFAR-10 it whitens
  # the ~490 of 3072 components above it (the eigenvalues average 0.06) and damps the rest.
  c.dataset.whiten_epsilon = 0.01
  c.dataset.fit_examples = 10000  # Training examples (a fixed subset) the statistics come from.
  c.dataset.num_workers = 0  # Grain worker processes for decoding and augmentation.
  c.dataset.skip_corrupt = False  # Image folders: check every file first, drop and count bad ones.
  # 'auto' | 'always' | 'never': the whole training split in device memory, shuffled and
  # augmented there (data/on_device.py); auto: when it fits and every augment op runs on device.
  c.dataset.on_device = 'auto'

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'sgd'  # 'sgd' | 'adam' | 'adamw' | 'rmsprop' | 'lars' | 'lamb'
  c.optimizer.momentum = 0.9  # sgd, rmsprop (0: plain RMSprop), lars.
  c.optimizer.nesterov = False  # Sutskever et al. 2013.
  c.optimizer.weight_decay = 1e-4
  # False: no decay on BatchNorm scales/offsets and biases (Goyal et al. 2017; He et al. 2019,
  # Sec. 3.1); True: on every parameter, as He et al. 2015 and torch.optim.SGD's weight_decay.
  c.optimizer.decay_norm_and_bias = False
  # L1 penalty l1 * sum |w| in the loss, over the weights weight decay touches (decay_norm_and_bias
  # included); with weight_decay too, the elastic net (Zou & Hastie 2005).
  c.optimizer.l1 = 0.0
  # 'l2' (into the gradient) | 'loss' (0.5 wd ||w||^2 in the loss) | 'decoupled' (Loshchilov &
  # Hutter 2019); unset: 'decoupled' for adamw and lamb, 'l2' for the others.
  c.optimizer.decay_style = config_dict.placeholder(str)
  c.optimizer.b1 = 0.9  # Adam/AdamW/LAMB (Kingma & Ba 2015, Sec. 2).
  c.optimizer.b2 = 0.999
  c.optimizer.eps = config_dict.placeholder(float)  # Unset: 1e-8 (Adam, RMSprop), 1e-6 (LAMB).
  c.optimizer.rms_decay = 0.9  # RMSprop's rho (Tieleman & Hinton 2012, lecture 6e).
  c.optimizer.trust_coefficient = 0.001  # LARS's eta (You et al. 2017, Sec. 3).
  c.optimizer.clip_norm = 0.0  # Clip the gradient's global norm; 0 = off (Pascanu et al. 2013).
  # Comma-separated 'REGEX=FACTOR' (same patterns as config.freeze, first match wins): scales
  # those parameters' learning rate, as torch param groups; e.g. 'backbone=0.1' or 'head=10'.
  c.optimizer.lr_multipliers = ''

  c.schedule = ml_collections.ConfigDict()
  # 'constant' | 'step' | 'multistep' | 'exponential' | 'cosine' | 'cosine_restarts' | 'onecycle'
  # | 'onecycle_linear' | 'polynomial' (see optim.learning_rate_schedule).
  c.schedule.name = 'cosine'
  c.schedule.base_lr = 0.1
  c.schedule.scale_by_batch = False  # lr = base_lr * batch_size / 256 (Goyal et al. 2017).
  c.schedule.warmup_epochs = 0.0  # Linear from 0 (Goyal et al. 2017, Sec. 2.2: 5 epochs).
  c.schedule.boundaries = (30.0, 60.0, 80.0)  # Epochs, for 'multistep' (He et al. 2015, 3.4).
  c.schedule.decay_factor = 0.1  # Per drop ('step', 'multistep'), per epoch ('exponential').
  c.schedule.step_epochs = config_dict.placeholder(float)  # 'step': every so many epochs.
  c.schedule.restart_epochs = 10.0  # SGDR's first period T_0 (Loshchilov & Hutter 2017, Sec. 4).
  c.schedule.restart_mult = 2.0  # SGDR's T_mult: each period that much longer.
  c.schedule.pct_start = 0.3  # One-cycle: share of the run rising to base_lr (torch's default).
  c.schedule.div_factor = 25.0  # One-cycle: starts at base_lr / div_factor.
  c.schedule.final_div_factor = 1e4  # One-cycle: ends at base_lr / div_factor / this.
  c.schedule.power = 2.0  # 'polynomial' (You et al. 2017: 2 with LARS).

  c.checkpoint_every_steps = 1000  # Also at every evaluation, at the end and on SIGTERM.
  c.keep_checkpoints = 3  # The latest this many, plus the best by eval accuracy.
  c.log_every_steps = 50  # The progress line and the TensorBoard train scalars.
  # Most steps per host call with the split on device (one lax.scan; a call also stops at each
  # log, eval and checkpoint step); 0: 128, or 1 on CPU (XLA:CPU is slow on convs inside loops).
  c.steps_per_call = 0
  c.eval_every_epochs = 1.0  # On config.dataset.eval_split; also at the last step.
  c.init_from = ''  # A converted (resnet_jax.convert) or trained checkpoint to start from.
  # Comma-separated regular expressions over parameter paths ('stage0_block0/conv1/kernel'), or
  # 'backbone' (all but the classifier head) / 'head': no update, no decay, BatchNorm statistics
  # kept as loaded (optim.param_groups, optim.frozen_batch_norm).
  c.freeze = ''
  c.restore_fallback = False  # Latest checkpoint unreadable: resume from the newest good one.
  c.skip_nonfinite = False  # Drop (and count) updates whose loss or gradient is NaN/Inf.
  # JAX's persistent compilation cache (resnet_jax.compilation): a restart loads the compiled
  # steps instead of compiling them again. '' turns it off.
  c.compilation_cache_dir = '~/.cache/resnet_jax/xla'

  # The checks of resnet_jax/babysit.py (docs/babysitting.md).
  c.babysit = ml_collections.ConfigDict()
  # A fresh run's first loss against log(num_classes), the loss of uniform predictions.
  c.babysit.init_loss = True
  # Each kernel's ||update|| / ||weights|| every step, in the train scalars (~1e-3 is healthy).
  c.babysit.update_ratio = False
  # Every this many steps (0: never), on the first eval batch (<= 64 examples, eval mode):
  # histograms of each layer's output and each parameter's gradient, and the fraction of dead
  # ReLU channels per layer ('babysit/dead_relu/LAYER'; CS231n, "Babysitting").
  c.babysit.histogram_every = 0
  # The first convolution's filters as an image at each evaluation (Krizhevsky et al. 2012,
  # Fig. 3: smooth, oriented filters are a healthy sign; noise is not).
  c.babysit.filters = False
  # --mode=overfit_batch: steps on one batch of batch_size, stopping below this loss.
  c.babysit.overfit_steps = 500
  c.babysit.overfit_loss = 0.01
  # --mode=lr_find: the range test's steps and its learning rates, first to last (Smith 2017).
  c.babysit.lr_find_steps = 200
  c.babysit.lr_find_range = (1e-5, 10.0)
  c.lock()
  return c


def check_config(config) -> None:
  """Rejects top-level values no run could use, naming the field and what would be valid.

  The sections are checked by the parts that use them, where they are built, before the first
  compile: `data.check_dataset_config` (config.dataset), `optim.check_optimizer_config`
  (config.optimizer, config.schedule, config.freeze), `parallel.DataParallel` (parallelism).
  """
  if config.dtype not in DTYPES:
    raise ValueError(f"config.dtype '{config.dtype}' is not one of {DTYPES}")
  if config.parallelism not in PARALLELISM:
    raise ValueError(f"config.parallelism '{config.parallelism}' is not one of {PARALLELISM}")
  for field in ('batch_size', 'checkpoint_every_steps', 'log_every_steps', 'keep_checkpoints'):
    if config[field] < 1:
      raise ValueError(f'config.{field} must be >= 1, got {config[field]}')
  if config.num_epochs <= 0:
    raise ValueError(f'config.num_epochs must be > 0, got {config.num_epochs}')
  if config.steps_per_call < 0:
    raise ValueError(f'config.steps_per_call must be >= 0 (0 = the platform default), got '
                     f'{config.steps_per_call}')
  if config.grad_accum_steps < 1:
    raise ValueError(f'config.grad_accum_steps must be >= 1, got {config.grad_accum_steps}')
  if not 0 <= config.ema_decay < 1:
    raise ValueError(f'config.ema_decay must be in [0, 1) (0 = off), got {config.ema_decay}')
  for field in ('mixup_alpha', 'cutmix_alpha'):
    if config[field] < 0:
      raise ValueError(f'config.{field} must be >= 0, got {config[field]}')
  for field in ('mix_prob', 'mix_switch_prob'):
    if not 0 <= config[field] <= 1:
      raise ValueError(f'config.{field} must be in [0, 1], got {config[field]}')


def with_epochs(config, epochs: float) -> ml_collections.ConfigDict:
  """A copy of `config` that trains for `epochs`, with every epoch count of its schedule
  (boundaries, warm-up, step and restart periods) and its evaluation interval scaled by the same
  factor, so the schedule keeps its shape: the recipe in miniature (or at length)."""
  config = config.copy_and_resolve_references()
  factor = epochs / config.num_epochs
  s = config.schedule
  s.boundaries = tuple(b * factor for b in s.boundaries)
  s.warmup_epochs *= factor
  s.restart_epochs *= factor
  if s.step_epochs is not None:
    s.step_epochs *= factor
  if config.eval_every_epochs:
    config.eval_every_epochs *= factor
  config.num_epochs = epochs
  return config


def load_file(path: str, *args) -> ml_collections.ConfigDict:
  """The config of the config file at `path` (its `get_config(*args)`), as `--config=PATH` loads
  it, for scripts that build runs from several config files."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file {path}: no such file')
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f'_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)
