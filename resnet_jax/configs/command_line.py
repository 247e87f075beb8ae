"""The config on the command line of every entry point: `--config=FILE` plus `--config.a.b=V`
overrides, checked before absl parses them (an unknown field names the nearest valid ones), a
`--help` that exits 0, and an evaluation's config read from the run it evaluates."""
from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from resnet_jax import config as config_lib
from resnet_jax import configs, records

HELP_FLAGS = ('-h', '--help', '-?', '--helpshort', '--helpfull')
FIELDS_HELP = ('Config fields: any field is set as --config.SECTION.FIELD=VALUE; '
               '`--mode=show_config [--config=FILE]` prints every field with its value, and '
               'docs/config.md explains each one.')


def overrides(argv, name: str = 'config') -> list[str]:
  """The dotted field names `argv` sets: --config.a.b=V, --config.a.b V, --[no]config.flag (for
  the config flag `name`)."""
  names = []
  for arg in argv[1:]:
    for prefix in (f'--{name}.', f'--no{name}.'):
      if arg.startswith(prefix):
        names.append(arg[len(prefix):].split('=', 1)[0])
  return names


def define_config_flag(help_text: str, name: str = 'config', default: str = configs.DEFAULT):
  """--config (default: the packaged default config; or the config flag `name`). ml_collections
  applies the command line's overrides as the flag is defined: an unknown field is checked
  first, and named with the nearest valid fields and its section's fields instead of a bare
  AttributeError."""
  try:  # Every config file starts from base_config() and is locked: its fields are these.
    records.check_fields(overrides(sys.argv, name), config_lib.base_config())
  except ValueError as e:
    print(f'FATAL Flags parsing error: {e}', file=sys.stderr)
    sys.exit(1)
  config_flags.DEFINE_config_file(name, default, help_text, lock_config=True)


def parse_flags(argv) -> list[str]:
  """absl's flag parsing (app.run's `flags_parser`), but `--help` prints the flags and how to
  list the config fields with exit status 0 (absl's exits 1)."""
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    main_module = sys.modules['__main__']
    print((main_module.__doc__ or '').strip(), end='\n\n')
    print(flags.FLAGS.main_module_help() if '--helpfull' not in argv else str(flags.FLAGS))
    print('\n' + FIELDS_HELP)
    sys.exit(0)
  return app.parse_flags_with_usage(argv)


def config_given() -> bool:
  return flags.FLAGS['config'].present


def eval_config(workdir: str, argv=None):
  """The config to evaluate `workdir` with: the run's stored config (config.json) with the
  command line's overrides of evaluation fields (records.EVAL_FIELDS) on top; with --config, that
  config, which must then match the stored one outside those fields. A workdir with no stored
  config takes --config (or the default) as it is."""
  given = flags.FLAGS.config
  if not records.has_config(workdir):
    return given
  stored = records.load_config(workdir)
  return records.eval_config(stored, given, overrides(argv or sys.argv),
                             config_given=config_given())
