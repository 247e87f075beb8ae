"""The real training images of ../shared/data as image folders, for the experiment scripts."""
from __future__ import annotations

import os
import tarfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), 'shared', 'data')
ARCHIVES = {'mnist': 'mnist-train-png.tar.gz', 'cifar10': 'cifar10-train-jpeg.tar.gz'}


def image_folder(name: str, workdir: str, given: str = '') -> str:
  """`given` (a --data flag) if set, else the shared `name` archive unpacked once into
  WORKDIR/data, as train/<class>/<image>."""
  if given:
    return given
  folder = os.path.join(workdir, 'data')
  if not os.path.isdir(os.path.join(folder, 'train')):
    archive = os.path.join(SHARED_DATA, ARCHIVES[name])
    if not os.path.exists(archive):
      raise FileNotFoundError(f'no --data given and {archive} not found: pass --data=FOLDER '
                              'holding train/<class>/<image>')
    with tarfile.open(archive) as tar:
      tar.extractall(folder, filter='data')
  return folder
