"""The real training images of ../shared/data as image folders, and the results tables (CSV) the
experiment scripts append to as each run finishes."""
from __future__ import annotations

import csv
import os
import tarfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), 'shared', 'data')
ARCHIVES = {'mnist': 'mnist-train-png.tar.gz', 'cifar10': 'cifar10-train-jpeg.tar.gz'}


def image_folder(name: str, workdir: str, given: str = '', per_class: int | None = None) -> str:
  """`given` (a --data flag) if set, else the first `per_class` images of each class (all when
  None) of the shared `name` archive, unpacked once into WORKDIR/data as train/<class>/<image>
  (into a temporary folder first, so an interrupted unpacking leaves none)."""
  if given:
    return given
  folder = os.path.join(workdir, 'data')
  if os.path.isdir(os.path.join(folder, 'train')):
    return folder
  archive = os.path.join(SHARED_DATA, ARCHIVES[name])
  if not os.path.exists(archive):
    raise FileNotFoundError(f'no --data given and {archive} not found: pass --data=FOLDER '
                            'holding train/<class>/<image>')
  partial, taken = folder + '.partial', {}
  with tarfile.open(archive) as tar:
    for member in tar:
      parts = member.name.split('/')  # train/<class>/<image>
      if member.isfile() and len(parts) == 3 and (per_class is None
                                                  or taken.get(parts[1], 0) < per_class):
        taken[parts[1]] = taken.get(parts[1], 0) + 1
        tar.extract(member, partial, filter='data')
  os.rename(partial, folder)
  return folder


def read_csv_rows(path: str) -> list[dict]:
  """The rows of the CSV table at `path` ([] before its first row)."""
  if not os.path.exists(path):
    return []
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def append_csv_row(path: str, row: dict, fields: list[str]) -> None:
  """Appends `row` to the CSV table at `path`, writing its header first if it is new."""
  new = not os.path.exists(path) or os.path.getsize(path) == 0
  with open(path, 'a', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    if new:
      writer.writeheader()
    writer.writerow(row)


def write_markdown(path: str, lines: list[str]) -> None:
  """Writes a script's markdown summary to `path` and prints it."""
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))
