"""What a side of a lockstep run reports, and the one place it is kept (no vireid_jax, no torch).

A side calls, in this order: `initial(state)` (the starting weights under the authors' names),
`data(arrays)` (our side only: the training images, paths, identities and cameras the
reference extracts), then per epoch `epoch(e, record)` before the epoch's first step and
`step(s, record)` after each optimiser step (`s` counts the steps of the whole run from 0).

Epoch record keys: 'epoch', 'stage', 'features/{visible,infrared}' (N, C) float32 (the
features clustered), 'labels/{visible,infrared}' (N,) int (-1 outlier, each side's own cluster
numbering), 'association/<key>' (MBCCM 'match_mask' (K_i, K_v); PGM 'visible_to_infrared'
(K_v,) and 'infrared_to_visible' (K_i,), stage 2 only), 'memories/<table>' (K, C) as
initialised, 'start/<authors' name>' the parameters and BatchNorm statistics the epoch starts
from, 'restart/from_epoch' (PGM's first stage-2 epoch: the stage-1 epoch restored).

Step record keys: 'epoch', 'stage', 'lr', 'grad_norm', 'loss/<term>' (the method's terms and
'total'), 'state/<authors' name>' after the optimiser step, 'memories/<table>' after the
step's updates; our side also 'inputs/{visible,infrared}' (NCHW float32, the network inputs)
and 'labels/{visible,infrared}' (the step's cluster labels) that the reference is fed.

`Recording` keeps a side's reports on disk (one .npz per epoch and per step: a ResNet-50's
state is about 100 MB a step), so that the reference can run after our side has finished.
"""

import json
import os
from typing import Dict, Iterator

import numpy as np

Record = Dict[str, object]


def _save(path: str, record: Record) -> None:
  arrays = {k: np.asarray(v) for k, v in record.items()}
  tmp = path + '.tmp.npz'
  np.savez(tmp, **{k.replace('/', '|'): v for k, v in arrays.items()})
  os.replace(tmp, path)


def _load(path: str) -> Record:
  with np.load(path, allow_pickle=False) as f:
    out = {}
    for key in f.files:
      value = f[key]
      out[key.replace('|', '/')] = value.item() if value.ndim == 0 else value
    return out


class Recording:
  """A side's reports in `directory` (created): initial.npz, data.npz, epoch_NNN.npz,
  step_NNNN.npz and index.json (the epochs and steps written)."""

  def __init__(self, directory: str):
    self.directory = directory
    os.makedirs(directory, exist_ok=True)
    self._index = {'epochs': [], 'steps': [], 'step_epochs': []}
    index = os.path.join(directory, 'index.json')
    if os.path.exists(index):
      with open(index) as f:
        self._index = json.load(f)

  def _write_index(self) -> None:
    with open(os.path.join(self.directory, 'index.json'), 'w') as f:
      json.dump(self._index, f)

  # --- the sink --------------------------------------------------------------------------

  def initial(self, state: Record) -> None:
    _save(os.path.join(self.directory, 'initial.npz'), state)

  def data(self, arrays: Record) -> None:
    _save(os.path.join(self.directory, 'data.npz'), arrays)

  def epoch(self, epoch: int, record: Record) -> None:
    _save(os.path.join(self.directory, f'epoch_{epoch:03d}.npz'), record)
    self._index['epochs'].append(int(epoch))
    self._write_index()

  def step(self, step: int, record: Record) -> None:
    _save(os.path.join(self.directory, f'step_{step:04d}.npz'), record)
    self._index['steps'].append(int(step))
    self._index['step_epochs'].append(int(record['epoch']))
    self._write_index()

  # --- reading back ----------------------------------------------------------------------

  @property
  def epochs(self) -> list:
    return list(self._index['epochs'])

  @property
  def steps(self) -> list:
    return list(self._index['steps'])

  def read_initial(self) -> Record:
    return _load(os.path.join(self.directory, 'initial.npz'))

  def read_data(self) -> Record:
    return _load(os.path.join(self.directory, 'data.npz'))

  def read_epoch(self, epoch: int) -> Record:
    return _load(os.path.join(self.directory, f'epoch_{epoch:03d}.npz'))

  def read_step(self, step: int) -> Record:
    return _load(os.path.join(self.directory, f'step_{step:04d}.npz'))

  def steps_of_epoch(self, epoch: int) -> Iterator[int]:
    """The steps of `epoch`, in order."""
    for step, step_epoch in zip(self._index['steps'], self._index['step_epochs']):
      if step_epoch == epoch:
        yield step


class Tee:
  """A sink that hands every report to several sinks, in order."""

  def __init__(self, *sinks):
    self.sinks = sinks

  def __getattr__(self, name):
    if name in ('initial', 'data', 'epoch', 'step'):
      def every(*args):
        for sink in self.sinks:
          getattr(sink, name)(*args)
      return every
    return getattr(self.sinks[0], name)
