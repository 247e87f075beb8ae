"""Torch twins for the weight-import tests: random weights, BatchNorms that are not identities.

Which twin a model has is declared at its registration (`model_spec(name)['torch_twin']`);
`resnet_jax.torch_peers.torch_peer` builds it.
"""
import torch

from resnet_jax.torch_peers import torch_peer


def randomize_batch_norms(model: torch.nn.Module) -> torch.nn.Module:
  """Draws every BatchNorm's statistics and affine parameters away from the identity (in place),
  so that eval-mode BN, and its import, are really exercised. Seed torch first."""
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):  # timm's BatchNormAct2d too.
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.5, 0.5)
  return model


def random_twin(name: str, **kwargs) -> torch.nn.Module:
  """The registered twin of model `name` (torch seed 0, randomised BatchNorms) in eval mode;
  `kwargs` go to its constructor."""
  torch.manual_seed(0)
  return randomize_batch_norms(torch_peer(name, **kwargs)).eval()
