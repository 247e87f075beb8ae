"""Test setup: eight host CPU devices so the data-parallel paths run for real."""
import os

# Must be set before jax is imported anywhere in the test session.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The XLA:CPU defaults every entry point sets (resnet_jax.xla_flags), before jax starts: tests run
# in-process what the main job runs.
from resnet_jax import xla_flags  # noqa: E402

xla_flags.set_cpu_defaults()
# One compilation cache for the session and the training processes it starts: many tests compile
# the same programs (a LeNet-5 or ResNet-20 step) in fresh processes or from fresh jit objects, and
# a cache hit skips XLA's compile (about a quarter of the suite's time on 2 cores). A new folder
# each session, so nothing carries over between runs.
SESSION_XLA_CACHE = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  import tempfile
  SESSION_XLA_CACHE = tempfile.mkdtemp(prefix='resnet_jax_test_xla_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = SESSION_XLA_CACHE
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'

from absl import flags  # noqa: E402

# Grain reads its options from absl flags, as it would inside the absl app of resnet_jax.main.
flags.FLAGS.mark_as_parsed()

import pathlib  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(
    os.environ.get('RESNET_JAX_SHARED_DATA',
                   pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'))


def extract_image_folder(archive: pathlib.Path, dest: pathlib.Path, per_class: int) -> pathlib.Path:
  """The first `per_class` images of each class of a `train/<class>/<file>` tar.gz, on disk."""
  if not archive.exists():
    pytest.skip(f'{archive} not found (set RESNET_JAX_SHARED_DATA to the folder holding it)')
  taken: dict[str, int] = {}
  with tarfile.open(archive, 'r:gz') as tar:
    for member in tar:
      parts = member.name.split('/')
      if not member.isfile() or len(parts) != 3:
        continue
      if taken.get(parts[1], 0) < per_class:
        taken[parts[1]] = taken.get(parts[1], 0) + 1
        tar.extract(member, dest, filter='data')
  return dest


@pytest.fixture(scope='session')
def mnist_folder(tmp_path_factory) -> pathlib.Path:
  """200 real MNIST PNGs per digit from ../shared/data, laid out as train/<class>/<image>."""
  return extract_image_folder(SHARED_DATA / 'mnist-train-png.tar.gz',
                              tmp_path_factory.mktemp('mnist'), per_class=200)


@pytest.fixture(scope='session')
def cifar_folder(tmp_path_factory) -> pathlib.Path:
  """50 real CIFAR-10 JPEGs per class from ../shared/data, laid out as train/<class>/<image>."""
  return extract_image_folder(SHARED_DATA / 'cifar10-train-jpeg.tar.gz',
                              tmp_path_factory.mktemp('cifar10'), per_class=50)


REPO = pathlib.Path(__file__).resolve().parents[1]


def main_process(*args: str, devices: int = 1, **popen) -> subprocess.Popen:
  """`python -m resnet_jax.main ARGS` in a child process on `devices` host CPU devices."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.Popen([sys.executable, '-m', 'resnet_jax.main', *args], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)


def run_main(*args: str, timeout: float = 300, devices: int = 1) -> subprocess.CompletedProcess:
  """Runs the main job to its end; returns its exit code and log (stderr)."""
  process = main_process(*args, devices=devices)
  _, stderr = process.communicate(timeout=timeout)
  return subprocess.CompletedProcess(process.args, process.returncode, '', stderr)


def restack_stage1(tree: dict) -> dict:
  """Variables of a 3-unit stage 1 laid out as ResNet(scan_blocks=True) holds them: units 1..2
  stacked under 'stage1_scan'."""
  import jax
  import jax.numpy as jnp
  tree = dict(tree)
  units = [tree.pop(f'stage1_block{j}') for j in (1, 2)]
  tree['stage1_scan'] = {'unit': jax.tree_util.tree_map(lambda *a: jnp.stack(a), *units)}
  return tree


def pytest_sessionfinish(session, exitstatus):
  if SESSION_XLA_CACHE is not None:
    shutil.rmtree(SESSION_XLA_CACHE, ignore_errors=True)
