"""The run that every inference test uses, made once per test session.

A tiny demo config (tests/end_to_end_test.py's TINY sizes, random initial weights) whose
checkpoints are written by the training code's own pieces: `train_state.create_train_state`
(the state the trainer starts from, with whatever it holds) saved by `checkpoint.save` with the
record the trainer writes (epoch, history, best, config) and `config.json` beside them, as
`train.train_and_evaluate` writes it: a best checkpoint (epoch 1) and a latest one (epoch 2,
other weights). Training itself is left out: it would cost minutes, and what inference reads
of a run is exactly this. `eval.flip` is on, so the flip-averaging of the extraction is
exercised, and each modality has a stem of its own. Under pytest-xdist the test processes share the run: the first to get the lock
writes it, the others wait and reuse it.
"""

import contextlib
import fcntl
import os

import numpy as np
import pytest
from PIL import Image

from end_to_end_test import demo_config

# Random weights with a stem of its own per modality (identical_stems would make the two
# stems equal before training, and a test could not tell which one ran).
RUN_OVERRIDES = {'model.pretrained': 'none', 'model.identical_stems': False, 'eval.flip': True,
                 'eval.batch_size': 16, 'eval.ranklist_queries': 2}
HEIGHT, WIDTH = 32, 16  # end_to_end_test.TINY's image size


@contextlib.contextmanager
def _locked(path: str):
  with open(path, 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def shared_dir(tmp_path_factory) -> str:
  """A folder every test process of this session sees (xdist workers share the parent of
  their base temporary folders; one process uses its own)."""
  base = tmp_path_factory.getbasetemp()
  return str(base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base)


def write_run(config, workdir: str) -> None:
  """Checkpoints best/1 and latest/2 of `config` (other weights each), as the trainer
  records them, and config.json."""
  # pylint: disable=import-outside-toplevel
  from vireid_jax import models
  from vireid_jax import train_state
  from vireid_jax.runtime import checkpoint
  from vireid_jax.runtime import files
  from vireid_jax.runtime import sharding
  model = models.build_model(config.model)
  mesh = sharding.make_mesh()
  for kind, epoch, seed in ((checkpoint.BEST, 1, 1), (checkpoint.LATEST, 2, 2)):
    seeded = config.copy_and_resolve_references()
    seeded.seed = seed
    state = train_state.create_train_state(seeded, model, mesh, say=lambda _: None)
    # train.Trainer._record's fields.
    record = {'epoch': epoch, 'history': [], 'config': config.to_json_best_effort(),
              'best': {'mAP': 1.0, 'rank1': 1.0, 'epoch': 0}}
    checkpoint.save(workdir, kind, epoch, state, record)
  files.write_text(os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=2))


def trained_run(tmp_path_factory) -> tuple[str, object]:
  """(workdir, config) of the session's run, written by the first caller."""
  root = os.path.join(shared_dir(tmp_path_factory), 'inference_run')
  os.makedirs(root, exist_ok=True)
  workdir = os.path.join(root, 'run')
  config = demo_config(os.path.join(root, 'data'), **RUN_OVERRIDES)
  with _locked(os.path.join(root, 'lock')):
    if not os.path.exists(os.path.join(root, 'done')):
      write_run(config, workdir)
      open(os.path.join(root, 'done'), 'w').close()
  return workdir, config


def write_image(path, size=(40, 80), seed=0, mode='RGB', fmt=None) -> str:
  """A smooth random image (width, height) = size, saved at `path`."""
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (max(1, size[1] // 8), max(1, size[0] // 8), 3), np.uint8)
  image = Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)
  if mode != 'RGB':
    image = image.convert(mode)
  os.makedirs(os.path.dirname(str(path)) or '.', exist_ok=True)
  image.save(str(path), format=fmt)
  return str(path)


def write_folder(folder, count: int, seed: int = 0, sizes=((40, 80), (24, 48), (64, 128))):
  """`count` images of mixed sizes and formats (JPEG, PNG, BMP; some greyscale) in `folder`
  and a subfolder; returns their paths in the order a folder listing gives them."""
  formats = ('jpg', 'png', 'bmp')
  paths = []
  for i in range(count):
    sub = 'b' if i % 3 == 2 else ''
    name = os.path.join(str(folder), sub, f'{i:03d}.{formats[i % 3]}')
    paths.append(write_image(name, size=sizes[i % len(sizes)], seed=seed + i,
                             mode='L' if i % 4 == 3 else 'RGB'))
  return sorted(paths, key=lambda p: os.path.relpath(p, str(folder)).split(os.sep))


@pytest.fixture(scope='session')
def run(tmp_path_factory):
  return trained_run(tmp_path_factory)
