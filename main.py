r"""Command line of vireid_jax: parse flags and the config, then dispatch on --mode.

  python main.py --config configs/demo.py --workdir runs/demo              # train (default)
  python main.py --config configs/sysu.py --workdir runs/sysu --config.data.root /data
  python main.py --config configs/sysu.py --workdir runs/sysu --mode eval  # best and latest
  python main.py --config configs/sysu.py --mode prepare                   # decode + cache data
  python main.py --config configs/demo.py --mode pretrain                  # ImageNet stand-in
  python main.py --mode aggregate --workdir runs/regdb                     # RegDB trials 1-10
  python main.py --mode embed --workdir runs/demo --images photos/ --modality visible \
      --out photos.npz                                                    # features of any images
  python main.py --mode search --workdir runs/demo --query a.jpg --query_modality visible \
      --gallery photos.npz                                                # rank a gallery
  python main.py --mode export --workdir runs/demo                        # a jax.export artifact

Any config field can be overridden with --config.<path>=<value>; a mistyped path is an error
that names it. Training starts from torchvision's ImageNet ResNet-50, found in PyTorch's cache
or downloaded before any data is read (--config.model.pretrained=/path/to/resnet50.pth for a
file of your own, =none for random weights). One run over several processes (hosts): start
every process with the same command plus --coordinator_address=HOST:PORT --num_processes=N
--process_id=I (under SLURM, Open MPI or on a Cloud TPU pod they are found automatically); see
docs/multihost.md.
"""

import ast
import gc
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, logs, reports.')
_INFERENCE_MODES = ('embed', 'search', 'export')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'prepare', 'pretrain', 'aggregate',
                                            *_INFERENCE_MODES],
                          'train: train (resuming from --workdir) and evaluate; eval: evaluate '
                          'a checkpoint with the full protocol; prepare: generate/decode the '
                          'dataset cache; pretrain: train the synthetic ImageNet stand-in '
                          '(config.pretrain); aggregate: average the RegDB trial runs under '
                          '--workdir; embed: features of any images (--images, --modality, '
                          '--out); search: rank a gallery for queries (--query, --gallery); '
                          'export: the network as a jax.export artifact (docs/usage.md, '
                          '"Using a trained model").')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', '', 'HOST:PORT of process 0 of a multi-process run (every process '
    'passes the same); empty: a single process, or found automatically under SLURM / Open MPI / '
    'on a Cloud TPU pod.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 0, 'Processes of the run (with '
                                      '--coordinator_address).')
_PROCESS_ID = flags.DEFINE_integer('process_id', -1, 'This process, 0..num_processes-1 (with '
                                   '--coordinator_address).')
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    'heartbeat_timeout', 60, 'Seconds after which a silent process counts as dead and the '
    'others of a multi-process run stop too, instead of waiting for it.')
# The inference modes (embed, search, export) read the run's config from --workdir: --config is
# optional there, and compared with the run's as --mode eval compares it.
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', 'embed/search/export: the checkpoint '
                                  'of --workdir: best, latest or a checkpoint folder.')
_IMAGES = flags.DEFINE_list('images', [], 'embed: image files, folders (searched recursively '
                            'for JPEG/PNG/BMP) or list files (one path per line), comma-separated.')
_MODALITY = flags.DEFINE_string('modality', '', 'embed: visible or infrared, the camera of '
                                '--images.')
_OUT = flags.DEFINE_string('out', '', 'embed: the embeddings file (.npz); search: the folder of '
                           'search.csv, ranklist.png, scores.json (default <workdir>/search); '
                           'export: the artifact (default <workdir>/export/<kind>_epoch<n>'
                           '.jaxexport).')
_QUERY = flags.DEFINE_list('query', [], 'search: query images (files, folders, list files) or '
                           'an embeddings file of --mode embed.')
_QUERY_MODALITY = flags.DEFINE_string('query_modality', '', 'search: visible or infrared, the '
                                      'camera of --query images.')
_GALLERY = flags.DEFINE_list('gallery', [], 'search: gallery images or embeddings files.')
_GALLERY_MODALITY = flags.DEFINE_string('gallery_modality', '', 'search: visible or infrared, '
                                        'the camera of --gallery images.')
_TOP_K = flags.DEFINE_integer('top_k', 10, 'search: gallery images listed per query.')
_ID_PATTERN = flags.DEFINE_string(
    'id_pattern', '', 'search: identities from the paths, to report Rank-k and mAP: sysu '
    '(cam<c>/<pid>/...), market (<pid>_c<cam>...), folder (<pid>/<file>) or a regular expression '
    'with a group (?P<pid>...) (and (?P<cam>...) for --id_rules sysu or llcm).')
_ID_RULES = flags.DEFINE_string('id_rules', 'none', 'search: gallery images a query may not '
                                'see when scoring: none, sysu (cam2 for cam3 queries) or llcm '
                                '(its own identity and camera).')
_FORCE = flags.DEFINE_bool('force', False, 'search: rank embeddings files of another checkpoint '
                           'anyway.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 0, 'embed/search: images per device call (0: '
                                   "the run's eval.batch_size).")
_WORKERS = flags.DEFINE_integer('workers', 0, 'embed/search: image decoding threads (0: one per '
                                'core).')
_RANKLIST_QUERIES = flags.DEFINE_integer('ranklist_queries', 8, 'search: queries drawn in '
                                         'ranklist.png (0: none).')
_INIT_TIMEOUT = flags.DEFINE_integer('initialization_timeout', 300, 'Seconds to wait for every '
                                     'process of a multi-process run to connect.')


def _show_traceback() -> bool:
  """--verbosity=1 (or more) keeps the full traceback of errors, for developers."""
  return flags.FLAGS['verbosity'].present and flags.FLAGS.verbosity >= 1


def _fail(message: str, code: int = 1) -> None:
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(code)


def _exit_now(code: int) -> None:
  """Ends a process of a multi-process run without waiting at JAX's shutdown barrier, which
  the other processes may never reach (they learn of it at their next collective)."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


_MAIN_STARTED = False


def main(argv):
  global _MAIN_STARTED
  _MAIN_STARTED = True
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}; settings go in --config.<field>=<value>')
  mode, workdir, config = _MODE.value, _WORKDIR.value, _CONFIG.value
  # Orbax and JAX log every checkpoint write at INFO; a person reads our printed lines.
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  if not _show_traceback():
    # After a failed checkpoint save or restore, orbax's threads and event loops repeat the
    # error at length; once it is explained in one line, that stays off the terminal.
    from vireid_jax.runtime import async_noise  # pylint: disable=import-outside-toplevel
    async_noise.install()
  if mode == 'aggregate':
    from vireid_jax.evaluation import driver as evaluate_lib  # pylint: disable=import-outside-toplevel
    if not workdir:
      _fail('--mode aggregate needs --workdir: the folder holding one run folder per trial')
    try:
      print(evaluate_lib.aggregate_runs(workdir))
    except FileNotFoundError as error:
      _fail(str(error))
    return
  if config is None and mode not in _INFERENCE_MODES:
    _fail('--config is required, e.g. --config configs/demo.py')
  # Before anything else touches JAX: the processes of a multi-process run connect here.
  from vireid_jax.runtime import multihost  # pylint: disable=import-outside-toplevel
  try:
    multihost.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT.value,
                         initialization_timeout=_INIT_TIMEOUT.value)
  except ValueError as error:
    _fail(str(error))
  several = multihost.process_count() > 1
  try:
    _run(mode, config, workdir, multihost)
  except SystemExit:
    raise
  except BaseException as error:  # pylint: disable=broad-except
    code = _report(error, multihost)
    gc.collect()  # what a failed save or restore left behind reports itself now, filtered
    if several and not _raised_on_every_process(error, multihost):
      _exit_now(code)
    sys.exit(code)  # every process stopped at the same point: they leave JAX together


def _raised_on_every_process(error: BaseException, multihost) -> bool:
  """Errors that every process of a run meets at the same point (after a collective)."""
  # pylint: disable=import-outside-toplevel
  from vireid_jax import config as config_lib
  from vireid_jax import methods
  from vireid_jax.runtime import run_lock
  from vireid_jax import train as train_lib
  from vireid_jax.models import imagenet
  return isinstance(error, (train_lib.RunStopped, train_lib.TrainingDiverged,
                            train_lib.NoClustersStop, multihost.MainProcessFailed,
                            methods.MethodStop,
                            run_lock.WorkdirLocked, config_lib.ConfigError,
                            imagenet.WeightsUnavailable))


def _run(mode: str, config, workdir: str, multihost) -> None:
  # pylint: disable=import-outside-toplevel
  from vireid_jax import config as config_lib
  from vireid_jax.runtime import console
  from vireid_jax.evaluation import driver as evaluate_lib
  from vireid_jax import train as train_lib
  from vireid_jax.data import shared as shared_data

  console.line(f'vireid_jax: {multihost.describe()}')
  if mode in _INFERENCE_MODES:
    from vireid_jax.inference import cli
    print(cli.run(mode, workdir, config, _inference_options(cli)), flush=True)
    return
  config_lib.validate(config)
  if mode == 'prepare':
    prepared = shared_data.prepare_on_main(config.data)
    console.line(f'prepared: {prepared}')
    return
  if mode == 'pretrain':
    from vireid_jax.models import pretrain as pretrain_lib
    console.line(f'pretrained: {pretrain_lib.pretrain_on_main(config, use_shipped=False)}')
    return
  if not workdir:
    _fail(f'--mode {mode} needs --workdir (e.g. runs/{config.data.dataset})')
  # Before anything is restored: a workdir's checkpoints belong to the config it was trained
  # with, and arrays of another shape would otherwise look like damage.
  from vireid_jax.runtime import run_config
  multihost.run_on_main(lambda: run_config.check_workdir_config(config, workdir, mode),
                        "comparing the config with the workdir's")
  if mode == 'train':
    from vireid_jax.runtime import checkpoint
    from vireid_jax.models import initial_weights
    if not (checkpoint.epochs(workdir, checkpoint.LATEST) or
            checkpoint.epochs(workdir, checkpoint.BEST)):
      # A fresh start: its weights before any data, so a run that cannot get them (offline,
      # a wrong path) stops at once. A resumed run takes them from its checkpoint.
      config = initial_weights.resolved_config(config)
    train_lib.train_and_evaluate(config, workdir)
    console.line(evaluate_lib.summary_after_training(workdir))
  else:
    table = evaluate_lib.run_eval(config, workdir)
    if table is not None:
      print(table)


def _inference_options(cli):
  return cli.Options(
      checkpoint=_CHECKPOINT.value, images=_IMAGES.value, modality=_MODALITY.value,
      out=_OUT.value, query=_QUERY.value, query_modality=_QUERY_MODALITY.value,
      gallery=_GALLERY.value, gallery_modality=_GALLERY_MODALITY.value, top_k=_TOP_K.value,
      id_pattern=_ID_PATTERN.value, id_rules=_ID_RULES.value, force=_FORCE.value,
      batch_size=_BATCH_SIZE.value, workers=_WORKERS.value,
      ranklist_queries=_RANKLIST_QUERIES.value)


def _report(error: BaseException, multihost) -> int:
  """Prints one line for `error` (a traceback only with --verbosity >= 1); the exit code."""
  # pylint: disable=import-outside-toplevel
  import jax
  from vireid_jax.runtime import async_noise
  from vireid_jax.runtime import checkpoint
  from vireid_jax import config as config_lib
  from vireid_jax.runtime import console
  from vireid_jax import data as data_lib
  from vireid_jax.inference import errors as inference_errors
  from vireid_jax import methods
  from vireid_jax.runtime import run_lock
  from vireid_jax import train as train_lib
  from vireid_jax.models import imagenet
  from vireid_jax.models import weights as weights_lib

  known = (config_lib.ConfigError, data_lib.DatasetError, weights_lib.WeightsMismatchError,
           weights_lib.WeightsFileError, imagenet.WeightsUnavailable, ImportError,
           train_lib.TrainingDiverged, train_lib.NoClustersStop, checkpoint.CheckpointError,
           methods.MethodStop, run_lock.WorkdirLocked, FileNotFoundError, OSError,
           inference_errors.InferenceError)
  peer_lost = (isinstance(error, jax.errors.JaxRuntimeError) and
               multihost.is_peer_lost(error))
  if peer_lost or isinstance(error, (train_lib.RunStopped, KeyboardInterrupt,
                                     multihost.MainProcessFailed, *known)):
    async_noise.explained()  # one line below says it all: what orbax left behind stays quiet
  if isinstance(error, train_lib.RunStopped):
    console.line(str(error))
    return error.exit_code
  if isinstance(error, KeyboardInterrupt):
    print('\ninterrupted.', file=sys.stderr, flush=True)
    return 130
  if _show_traceback():
    import traceback
    traceback.print_exception(error)
    return 1
  if isinstance(error, multihost.MainProcessFailed):
    return 1  # process 0 printed the reason
  if peer_lost:
    print('error: lost contact with another process of this run (it stopped or crashed: see '
          'its output). Checkpoints are intact; start every process again to resume.',
          file=sys.stderr, flush=True)
    return 1
  if isinstance(error, known):
    # The same error stops every process; one line from process 0 is enough, except for
    # errors of one process alone (its own files, its own download).
    if multihost.is_main() or isinstance(error, (OSError, imagenet.WeightsUnavailable)):
      print(f'error: {error}', file=sys.stderr, flush=True)
    return 1
  import traceback  # an unexpected error is a bug: its traceback is what a report needs
  traceback.print_exception(error)
  return 1


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
