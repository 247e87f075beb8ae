"""The complexity table: FLOPs from XLA's cost analysis against the papers' arithmetic."""
import pytest

from resnet_jax import benchmark


def test_resnet50_forward_flops_match_the_paper():
  # He et al. 2015, Table 1: 3.8e9 FLOPs counted as multiply-adds for the stride-on-1x1 net;
  # torchvision's layout (stride on the 3x3) does 4.09 GMACs. XLA counts 2 FLOPs per MAC.
  assert benchmark.forward_flops('resnet50') == pytest.approx(2 * 4.09e9, rel=0.03)


def test_lenet5_flops_are_its_multiply_adds():
  # C1 28*28*6*25 + C3 10*10*16*150 + C5 120*400 + F6 120*84 + output 84*10 = 416,520 MACs.
  assert benchmark.forward_flops('lenet5') == pytest.approx(2 * 416_520, rel=0.05)


def test_zoo_table_prints_every_column(capsys):
  benchmark.main(['--zoo', '--models', 'cifar_resnet20,resnet18', '--markdown'])
  out = capsys.readouterr().out.splitlines()
  assert out[0] == '| model | input | classes | params | gflops | twin | paper |'
  assert out[3].startswith('| resnet18 | 224x224x3 | 1000 | 11,689,512 | 3.')
  assert 'torchvision resnet18' in out[3] and 'He et al. 2015' in out[3]
