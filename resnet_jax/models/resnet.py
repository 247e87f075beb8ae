"""ResNet family: v1 (ImageNet, CIFAR), plain twins and pre-activation v2, as one `ResNet` module.

- He, Zhang, Ren & Sun 2015, "Deep Residual Learning for Image Recognition" (ResNet v1):
  ImageNet nets (Sec. 3.4, Table 1) in the torchvision layout, CIFAR nets (Sec. 4.2), plain nets
  (Sec. 4.1).
- He, Zhang, Ren & Sun 2016, "Identity Mappings in Deep Residual Networks" (pre-activation, v2):
  BN-ReLU-conv units (Sec. 4.1, Fig. 4e); ImageNet nets in timm's ResNetV2 layout, CIFAR
  ResNet-164/1001 (Sec. 5, Table 3).
- Huang, Sun, Liu, Sedra & Weinberger 2016, "Deep Networks with Stochastic Depth": residual
  branches dropped per example with linearly decaying survival probabilities (Sec. 3).

Variants are data: a registered name binds `stage_sizes`, `block`, `widths`, `stem`, `preact`,
`shortcut` and `residual`; the registrations are at the end of this file.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import layers
from resnet_jax.models.registry import register

ModuleDef = Any


def _conv(conv: ModuleDef, features: int, kernel: int, strides: int, name: str) -> nn.Module:
  """A k x k convolution padded k // 2 on every side, as PyTorch, so imported weights line up."""
  pad = ((kernel // 2, kernel // 2),) * 2
  return conv(features, (kernel, kernel), strides=(strides, strides), padding=pad, name=name)


def _shortcut(
    x: jax.Array,
    features: int,
    strides: int,
    kind: str,
    conv: ModuleDef,
    norm: ModuleDef | None,
    x_proj: jax.Array | None = None,
) -> jax.Array:
  """The shortcut path of a residual unit: the identity unless the shape changes (or kind C).

  He et al. 2015, Sec. 3.3: 'A' subsamples by striding and zero-pads the new channels (no
  parameters); 'B' projects with a 1x1 convolution (+ BN when `norm` is given); 'C' projects in
  every unit, also where the shape is unchanged (Sec. 4.1, Table 3). `x_proj` is what the
  projection reads (the pre-activated input in v2 units, He et al. 2016, Appendix).
  """
  if strides == 1 and x.shape[-1] == features and kind != 'C':
    return x
  if kind == 'A':
    x = x[:, ::strides, ::strides, :]
    extra = features - x.shape[-1]
    if extra < 0:
      raise ValueError(f"shortcut 'A' cannot reduce channels ({x.shape[-1]} -> {features})")
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
  if kind in ('B', 'C'):
    proj = conv(features, (1, 1), strides=(strides, strides), padding='VALID', name='proj_conv')
    y = proj(x if x_proj is None else x_proj)
    return y if norm is None else norm(name='proj_bn')(y)
  raise ValueError(f"unknown shortcut {kind!r}; valid: 'A', 'B', 'C'")


class _Block(nn.Module):
  """Fields every residual unit shares. `features` is the width of the unit's 3x3 convolution(s);
  the unit outputs `features * expansion` channels. `conv` and `norm` are partials from ResNet."""

  features: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[[jax.Array], jax.Array]
  shortcut: str = 'B'
  residual: bool = True
  zero_init_last: bool = False
  stride_on_1x1: bool = False

  expansion: ClassVar[int] = 1

  def _last_scale_init(self) -> layers.Initializer:
    # Goyal et al. 2017, Sec. 5.1: gamma = 0 in each branch's last BN, so units start as identities.
    return nn.initializers.zeros if self.zero_init_last else nn.initializers.ones

  @staticmethod
  def _gate(y: jax.Array, gate: jax.Array | None) -> jax.Array:
    """The residual branch times its per-example stochastic-depth gate ([batch]: 0/1 in
    training, the survival probability p_l at test; Huang et al. 2016, Sec. 3, Eq. 5); None:
    no stochastic depth."""
    return y if gate is None else y * gate.astype(y.dtype)[:, None, None, None]


class BasicBlock(_Block):
  """Two 3x3 convolutions, post-activation (He et al. 2015, Sec. 3.3, Fig. 5 left)."""

  @nn.compact
  def __call__(self, x: jax.Array, gate: jax.Array | None = None) -> jax.Array:
    y = _conv(self.conv, self.features, 3, self.strides, 'conv1')(x)
    y = self.act(self.norm(name='bn1')(y))
    y = _conv(self.conv, self.features, 3, 1, 'conv2')(y)
    y = self.norm(name='bn2', scale_init=self._last_scale_init())(y)
    if not self.residual:
      return self.act(y)
    s = _shortcut(x, self.features, self.strides, self.shortcut, self.conv, self.norm)
    return self.act(self._gate(y, gate) + s)


class Bottleneck(_Block):
  """1x1 reduce, 3x3, 1x1 expand (x4), post-activation (He et al. 2015, Sec. 4.1, Fig. 5 right).

  The stride sits on the 3x3 convolution (torchvision's "v1.5"); `stride_on_1x1=True` puts it on
  the first 1x1 as in the paper. The parameter count is the same either way.
  """

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jax.Array, gate: jax.Array | None = None) -> jax.Array:
    s1, s3 = (self.strides, 1) if self.stride_on_1x1 else (1, self.strides)
    out = self.features * self.expansion
    y = _conv(self.conv, self.features, 1, s1, 'conv1')(x)
    y = self.act(self.norm(name='bn1')(y))
    y = _conv(self.conv, self.features, 3, s3, 'conv2')(y)
    y = self.act(self.norm(name='bn2')(y))
    y = _conv(self.conv, out, 1, 1, 'conv3')(y)
    y = self.norm(name='bn3', scale_init=self._last_scale_init())(y)
    if not self.residual:
      return self.act(y)
    s = _shortcut(x, out, self.strides, self.shortcut, self.conv, self.norm)
    return self.act(self._gate(y, gate) + s)


class PreActBasicBlock(_Block):
  """BN-ReLU-conv3x3 twice, nothing after the addition (He et al. 2016, Sec. 4.1, Fig. 4e).

  A projection shortcut (1x1 conv, no BN) reads the pre-activated input, as timm's PreActBasic.
  """

  @nn.compact
  def __call__(self, x: jax.Array, gate: jax.Array | None = None) -> jax.Array:
    p = self.act(self.norm(name='norm1')(x))
    y = _conv(self.conv, self.features, 3, self.strides, 'conv1')(p)
    y = self.act(self.norm(name='norm2')(y))
    y = _conv(self.conv, self.features, 3, 1, 'conv2')(y)
    if not self.residual:
      return y
    return self._gate(y, gate) + _shortcut(x, self.features, self.strides, self.shortcut,
                                           self.conv, None, p)


class PreActBottleneck(_Block):
  """BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1 (x4) (He et al. 2016, Sec. 4.1, Table 3).

  timm's PreActBottleneck layout: stride on the 3x3 (`stride_on_1x1=True` as in the authors'
  Torch code), projection shortcut = 1x1 conv without BN on the pre-activated input.
  """

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jax.Array, gate: jax.Array | None = None) -> jax.Array:
    s1, s3 = (self.strides, 1) if self.stride_on_1x1 else (1, self.strides)
    out = self.features * self.expansion
    p = self.act(self.norm(name='norm1')(x))
    y = _conv(self.conv, self.features, 1, s1, 'conv1')(p)
    y = self.act(self.norm(name='norm2')(y))
    y = _conv(self.conv, self.features, 3, s3, 'conv2')(y)
    y = self.act(self.norm(name='norm3')(y))
    y = _conv(self.conv, out, 1, 1, 'conv3')(y)
    if not self.residual:
      return y
    return self._gate(y, gate) + _shortcut(x, out, self.strides, self.shortcut, self.conv, None, p)


class _ScanUnit(nn.Module):
  """Gives a unit the (carry, x) -> (carry, y) signature that nn.scan wants; the scanned input
  is the unit's stochastic-depth gate (None without stochastic depth)."""

  unit: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array, gate: jax.Array | None) -> tuple[jax.Array, None]:
    return self.unit(name='unit')(x, gate), None


BLOCKS: dict[tuple[str, bool], type[_Block]] = {
    ('basic', False): BasicBlock,
    ('bottleneck', False): Bottleneck,
    ('basic', True): PreActBasicBlock,
    ('bottleneck', True): PreActBottleneck,
}


class ResNet(layers.Classifier):
  """ResNet v1 / plain / pre-activation v2 for ImageNet-style or CIFAR-style inputs.

  Structure:
    stem='imagenet': 7x7/2 conv (widths[0]) [BN, act], 3x3/2 max pool with padding 1
      (He et al. 2015, Table 1).
    stem='cifar': 3x3 conv (widths[0]) [BN, act], no pool (He et al. 2015, Sec. 4.2).
    [BN, act] is left out when `preact`: the first unit's own BN-ReLU follows the stem conv
      (He et al. 2016, Appendix).
    Stages: `stage_sizes[i]` units of `block` with width `widths[i]`; the first unit of every
      stage but the first has stride 2.
    If `preact`, a final BN + act (He et al. 2016, Sec. 4.1). Global average pool, [dropout],
      dense head.

  Arguments:
    block: 'basic' or 'bottleneck' (expansion 4); `preact` picks the v2 (BN-ReLU-conv) units.
    shortcut: 'A' (zero-padding identity, no parameters), 'B' (1x1 projection when the shape
      changes) or 'C' (a 1x1 projection in every unit); He et al. 2015, Sec. 3.3 and Table 3.
    residual: False gives the plain twin (He et al. 2015, Sec. 4.1): same layers, no shortcuts.
    stride_on_1x1: bottleneck stride on the first 1x1 (the papers) instead of the 3x3
      (torchvision, timm); same parameters.
    dtype: computation dtype; parameters are float32 and the logits are cast to float32.
    act / kernel_init / norm: names in layers.ACTIVATIONS / KERNEL_INITS / NORMS. Convolutions
      have no bias unless norm='none'.
    head_init: the dense head's init, a name in layers.HEAD_INITS: 'lecun' (flax's default,
      LeCun normal weights, zero bias) or 'torch' (torch's nn.Linear, as torchvision's ResNets
      keep it: weights and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))).
    bn_axis_name: the mapped axis ('batch') for cross-replica BatchNorm statistics.
    bn_momentum / bn_epsilon: flax convention (momentum 0.9 == PyTorch's 0.1).
    zero_init_residual: zero the scale of the last BN of each residual branch (Goyal et al.
      2017, Sec. 5.1). Off by default, as He et al. 2015 (every BN scale starts at 1). It does
      nothing in plain nets (no residual branch: zeroing would make the output constant) and
      nothing in preact nets (their branches end in a conv, not a BN; timm leaves those convs at
      their default init too).
    dropout_rate: dropout before the head (the `dropout` RNG stream).
    dropconnect_rate: DropConnect on the head's weights (layers.DropConnectDense, Wan et al.
      2013; the `dropout` stream); 0 keeps a plain nn.Dense, with the same parameters either way.
    stochastic_depth: 1 - p_L, the drop probability of the last of the L residual units (Huang
      et al. 2016, Sec. 3; 0.5 is the paper's p_L = 0.5). Unit l (1..L, in order over all
      stages) survives with p_l = 1 - (l / L)(1 - p_L). In training its residual branch is kept
      or zeroed PER EXAMPLE (Bernoulli(p_l), from the `drop_path` stream; the shortcut always
      stays); at test it is multiplied by p_l (Eq. 5), with no rescaling in training. The gates
      of a training pass are sown as intermediates['drop_path_gates'] ([batch, L]). Branches
      are still computed (per-example gates under jit), so there is no training speed-up; BN
      statistics see every example. 0: off, the unit code path is unchanged.
    scan_blocks: run the identical units 1..n-1 of each stage as one nn.scan (parameters stacked
      under 'stage{i}_scan', same count). Tracing and compiling then cost O(stages), not
      O(depth), which matters for ResNet-1202/1001; `count_params` uses it. Off by default: the
      per-unit layout is the one checkpoints and weight import expect.
  """

  stage_sizes: Sequence[int]
  num_classes: int
  block: str = 'basic'
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = 'imagenet'
  preact: bool = False
  shortcut: str = 'B'
  residual: bool = True
  stride_on_1x1: bool = False
  dtype: Any = jnp.float32
  act: str = 'relu'
  kernel_init: str = 'kaiming'
  head_init: str = 'lecun'
  norm: str = 'batch'
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  zero_init_residual: bool = False
  dropout_rate: float = 0.0
  dropconnect_rate: float = 0.0
  stochastic_depth: float = 0.0
  scan_blocks: bool = False

  def _depth_gates(self, batch: int, train: bool) -> jax.Array | None:
    """[batch, L] stochastic-depth gates of the L residual units, or None when it is off."""
    if self.stochastic_depth == 0:
      return None
    if not 0 < self.stochastic_depth <= 1:
      raise ValueError(f'stochastic_depth (1 - p_L) must be in [0, 1], got {self.stochastic_depth}')
    if not self.residual:
      raise ValueError('stochastic_depth drops residual branches, and a plain net '
                       '(residual=False) has none; use stochastic_depth=0')
    num_units = sum(self.stage_sizes)
    # Huang et al. 2016, Sec. 3, Eq. 4: linear decay rule p_l = 1 - (l / L)(1 - p_L).
    survival = 1.0 - jnp.arange(1, num_units + 1) / num_units * self.stochastic_depth
    if not train:
      return jnp.broadcast_to(survival, (batch, num_units))
    gates = jax.random.bernoulli(self.make_rng('drop_path'), survival, (batch, num_units))
    self.sow('intermediates', 'drop_path_gates', gates)
    return gates.astype(jnp.float32)

  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    if (self.block, self.preact) not in BLOCKS:
      raise ValueError(f"unknown block {self.block!r}; valid: 'basic', 'bottleneck'")
    if len(self.widths) != len(self.stage_sizes):
      raise ValueError(f'{len(self.widths)} widths for {len(self.stage_sizes)} stages')
    act = layers.get_activation(self.act)
    conv = functools.partial(
        nn.Conv,
        use_bias=self.norm == 'none',
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=layers.get_kernel_init(self.kernel_init),
    )
    norm = functools.partial(
        layers.make_norm,
        self.norm,
        train=train,
        dtype=self.dtype,
        axis_name=self.bn_axis_name,
        momentum=self.bn_momentum,
        epsilon=self.bn_epsilon,
    )

    # Feature maps (timm's feature_info): the stem's output (before the pool), each stage's end.
    if self.stem == 'imagenet':
      x = _conv(conv, self.widths[0], 7, 2, 'stem_conv')(x)
      if not self.preact:
        x = act(norm(name='stem_bn')(x))
      x = nn.max_pool(self.stage_end(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    elif self.stem == 'cifar':
      x = _conv(conv, self.widths[0], 3, 1, 'stem_conv')(x)
      if not self.preact:
        x = act(norm(name='stem_bn')(x))
      x = self.stage_end(x)
    else:
      raise ValueError(f"unknown stem {self.stem!r}; valid: 'imagenet', 'cifar'")

    gates = self._depth_gates(x.shape[0], train)

    def gate(unit_index: int) -> jax.Array | None:  # counted over all stages, from 0
      return None if gates is None else gates[:, unit_index]

    first = 0  # the stage's first unit, counted over all stages
    for i, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      unit = functools.partial(
          BLOCKS[(self.block, self.preact)],
          features=width,
          conv=conv,
          norm=norm,
          act=act,
          shortcut=self.shortcut,
          residual=self.residual,
          zero_init_last=self.zero_init_residual and self.residual and not self.preact,
          stride_on_1x1=self.stride_on_1x1,
      )
      x = unit(strides=2 if i > 0 else 1, name=f'stage{i}_block0')(x, gate(first))
      if self.scan_blocks and num_blocks > 1:
        scan = nn.scan(
            _ScanUnit,
            variable_axes={'params': 0, 'batch_stats': 0},
            split_rngs={'params': True, 'dropout': True},
            length=num_blocks - 1,
        )
        scan_gates = None if gates is None else gates[:, first + 1:first + num_blocks].T
        x, _ = scan(functools.partial(unit, strides=1), name=f'stage{i}_scan')(x, scan_gates)
      else:
        for j in range(1, num_blocks):
          x = unit(strides=1, name=f'stage{i}_block{j}')(x, gate(first + j))
      first += num_blocks
      if i < len(self.stage_sizes) - 1 or not self.preact:
        x = self.stage_end(x)

    if self.preact:  # the last map is taken after the final BN-ReLU, as timm's ResNetV2
      x = self.stage_end(act(norm(name='final_norm')(x)))
    return x

  def classify(self, x: jax.Array, *, train: bool, pre_logits: bool) -> jax.Array:
    x = jnp.mean(x, axis=(1, 2))
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    if pre_logits:
      return x.astype(layers.output_dtype(self.dtype))
    head = dict(dtype=self.dtype, param_dtype=jnp.float32, name='head',
                **layers.head_init(self.head_init, x.shape[-1]))
    if self.dropconnect_rate > 0:
      x = layers.DropConnectDense(self.num_classes, rate=self.dropconnect_rate, **head)(
          x, deterministic=not train)
    else:
      x = nn.Dense(self.num_classes, **head)(x)
    return x.astype(layers.output_dtype(self.dtype))


# He et al. 2015, Table 1: ImageNet nets, 224x224 crops, 1000 classes, widths 64/128/256/512.
# The paper gives no parameter counts for them: the counts are torchvision's (sum of numel).
_IMAGENET = dict(input_size=224, num_classes=1000, classifier='head', stem='imagenet',
                 widths=(64, 128, 256, 512))
register('resnet18', ResNet, stage_sizes=(2, 2, 2, 2), block='basic', **_IMAGENET,
         torch_twin='torchvision resnet18', paper_params=11_689_512)
register('resnet34', ResNet, stage_sizes=(3, 4, 6, 3), block='basic', **_IMAGENET,
         torch_twin='torchvision resnet34', paper_params=21_797_672)
register('resnet50', ResNet, stage_sizes=(3, 4, 6, 3), block='bottleneck', **_IMAGENET,
         torch_twin='torchvision resnet50', paper_params=25_557_032)
register('resnet101', ResNet, stage_sizes=(3, 4, 23, 3), block='bottleneck', **_IMAGENET,
         torch_twin='torchvision resnet101', paper_params=44_549_160)
register('resnet152', ResNet, stage_sizes=(3, 8, 36, 3), block='bottleneck', **_IMAGENET,
         torch_twin='torchvision resnet152', paper_params=60_192_808)

# He et al. 2015, Table 1 and Sec. 4.1: the 18- and 34-layer plain nets of Table 2 / Fig. 4 left,
# the ResNets without shortcuts (and so without the three projections of option B: 173,824 fewer
# parameters than resnet18 / resnet34). No library has them: no torch twin.
register('plain18', ResNet, stage_sizes=(2, 2, 2, 2), block='basic', residual=False, **_IMAGENET)
register('plain34', ResNet, stage_sizes=(3, 4, 6, 3), block='basic', residual=False, **_IMAGENET)

# He et al. 2015, Sec. 4.2: 3 stages of n units (6n+2 layers), filters 16/32/64, option A;
# Table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M, 19.4M parameters. No library has them: their torch
# twin is torch_peers.CifarResNet, written with our module names.
_CIFAR = dict(input_size=32, num_classes=10, classifier='head', stem='cifar', widths=(16, 32, 64))
_CIFAR_TWIN = 'resnet_jax.torch_peers CifarResNet'
register('cifar_resnet20', ResNet, stage_sizes=(3, 3, 3), shortcut='A', **_CIFAR,
         torch_twin=_CIFAR_TWIN, paper_params=270_000)
register('cifar_resnet32', ResNet, stage_sizes=(5, 5, 5), shortcut='A', **_CIFAR,
         torch_twin=_CIFAR_TWIN, paper_params=460_000)
register('cifar_resnet44', ResNet, stage_sizes=(7, 7, 7), shortcut='A', **_CIFAR,
         torch_twin=_CIFAR_TWIN, paper_params=660_000)
register('cifar_resnet56', ResNet, stage_sizes=(9, 9, 9), shortcut='A', **_CIFAR,
         torch_twin=_CIFAR_TWIN, paper_params=850_000)
register('cifar_resnet110', ResNet, stage_sizes=(18, 18, 18), shortcut='A', **_CIFAR,
         torch_twin=_CIFAR_TWIN, paper_params=1_700_000)
register('cifar_resnet1202', ResNet, stage_sizes=(200, 200, 200), shortcut='A', **_CIFAR,
         torch_twin=_CIFAR_TWIN, paper_params=19_400_000)

# He et al. 2015, Sec. 4.2, Fig. 6 left: the plain counterparts, same layers without shortcuts
# (the paper gives them no parameter count; option A adds none, so they are the ResNets').
register('plain20', ResNet, stage_sizes=(3, 3, 3), residual=False, **_CIFAR, torch_twin=_CIFAR_TWIN)
register('plain32', ResNet, stage_sizes=(5, 5, 5), residual=False, **_CIFAR, torch_twin=_CIFAR_TWIN)
register('plain44', ResNet, stage_sizes=(7, 7, 7), residual=False, **_CIFAR, torch_twin=_CIFAR_TWIN)
register('plain56', ResNet, stage_sizes=(9, 9, 9), residual=False, **_CIFAR, torch_twin=_CIFAR_TWIN)
register('plain110', ResNet, stage_sizes=(18, 18, 18), residual=False, **_CIFAR,
         torch_twin=_CIFAR_TWIN)

# He et al. 2016 on ImageNet, timm's ResNetV2 layout (resnetv2_50 ...): no stem BN, final BN-ReLU.
# The counts are timm's.
_V2_IMAGENET = dict(preact=True, shortcut='B', **_IMAGENET)
register('preact_resnet18', ResNet, stage_sizes=(2, 2, 2, 2), block='basic', **_V2_IMAGENET,
         torch_twin='timm resnetv2_18', paper_params=11_687_720)
register('preact_resnet34', ResNet, stage_sizes=(3, 4, 6, 3), block='basic', **_V2_IMAGENET,
         torch_twin='timm resnetv2_34', paper_params=21_795_880)
register('preact_resnet50', ResNet, stage_sizes=(3, 4, 6, 3), block='bottleneck', **_V2_IMAGENET,
         torch_twin='timm resnetv2_50', paper_params=25_549_352)
register('preact_resnet101', ResNet, stage_sizes=(3, 4, 23, 3), block='bottleneck',
         **_V2_IMAGENET, torch_twin='timm resnetv2_101', paper_params=44_541_480)
register('preact_resnet152', ResNet, stage_sizes=(3, 8, 36, 3), block='bottleneck',
         **_V2_IMAGENET, torch_twin='timm resnetv2_152', paper_params=60_185_128)

# He et al. 2016, Sec. 5, Table 3: CIFAR v2 nets, bottleneck depth 9n+2 (164: n=18, 1001: n=111),
# outputs 64/128/256; projections where the shape changes, as the authors' resnet-pre-act.lua.
# Table 3: 1.7M and 10.2M parameters; the 10.2M leaves out BatchNorm's scales and offsets.
_V2_CIFAR = dict(preact=True, shortcut='B', **_CIFAR)
register('preact_resnet110', ResNet, stage_sizes=(18, 18, 18), block='basic', **_V2_CIFAR)
register('preact_resnet164', ResNet, stage_sizes=(18, 18, 18), block='bottleneck', **_V2_CIFAR,
         paper_params=1_700_000)
register('preact_resnet1001', ResNet, stage_sizes=(111,) * 3, block='bottleneck', **_V2_CIFAR,
         paper_params=10_200_000)
