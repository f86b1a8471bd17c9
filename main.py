r"""Command line of vireid_jax: parse flags and the config, then dispatch on --mode.

  python main.py --config configs/demo.py --workdir runs/demo              # train (default)
  python main.py --config configs/sysu.py --workdir runs/sysu --config.data.root /data
  python main.py --config configs/sysu.py --workdir runs/sysu --mode eval  # best checkpoint
  python main.py --config configs/sysu.py --mode prepare                   # decode + cache data
  python main.py --mode aggregate --workdir runs/regdb                     # RegDB trials 1-10

Any config field can be overridden with --config.<path>=<value>; a mistyped path is an error
that names it.
"""

import ast
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, logs, reports.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'prepare', 'aggregate'],
                          'train: train (resuming from --workdir) and evaluate; eval: evaluate '
                          'a checkpoint with the full protocol; prepare: generate/decode the '
                          'dataset cache; aggregate: average the RegDB trial runs under --workdir.')


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


_MAIN_STARTED = False


def main(argv):
  global _MAIN_STARTED
  _MAIN_STARTED = True
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}; settings go in --config.<field>=<value>')
  # Imports after flag parsing so that `--help` is instant and JAX sees the environment.
  from vireid_jax import config as config_lib
  from vireid_jax import data as data_lib
  from vireid_jax import evaluate as evaluate_lib
  from vireid_jax import train as train_lib
  from vireid_jax.models import weights as weights_lib

  mode, workdir, config = _MODE.value, _WORKDIR.value, _CONFIG.value
  # Orbax and JAX log every checkpoint write at INFO; a person reads our printed lines.
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  if mode == 'aggregate':
    if not workdir:
      _fail('--mode aggregate needs --workdir: the folder holding one run folder per trial')
    print(evaluate_lib.aggregate_runs(workdir))
    return
  if config is None:
    _fail('--config is required, e.g. --config configs/demo.py')
  try:
    config_lib.validate(config)
    if mode == 'prepare':
      print(f'prepared: {data_lib.prepare(config.data)}')
      return
    if not workdir:
      _fail(f'--mode {mode} needs --workdir (e.g. runs/{config.data.dataset})')
    if mode == 'train':
      train_lib.train_and_evaluate(config, workdir)
      print(evaluate_lib.summary_after_training(workdir))
    else:
      print(evaluate_lib.run_eval(config, workdir))
  except (config_lib.ConfigError, data_lib.DatasetError, weights_lib.WeightsMismatchError,
          ImportError, train_lib.TrainingDiverged, train_lib.NoClustersStop,
          FileNotFoundError) as error:
    _fail(str(error))


if __name__ == '__main__':
  try:
    app.run(main)
  except (AttributeError, KeyError, TypeError, ValueError) as error:
    if _MAIN_STARTED:
      raise
    # Raised while absl applied a --config.<field> override: a field that does not exist (the
    # message suggests the nearest one) or a value of the wrong type.
    detail = str(error)
    try:  # absl wraps the KeyError's repr in an AttributeError: unwrap the quoting
      detail = str(ast.literal_eval(detail))
    except (ValueError, SyntaxError):
      pass
    _fail('bad --config override: ' + detail.replace('\n', ' '))
