"""The data layer: readers of SYSU-MM01, RegDB and LLCM, the synthetic sets, prepared caches.

  visible, infrared = vireid_jax.data.load_train(config.data)  # ImageSets, uint8 in memory
  visible, infrared = vireid_jax.data.load_test(config.data)
  path = vireid_jax.data.prepare(config.data)  # decode + resize once (main.py --mode prepare)

With several processes, `vireid_jax.data.shared` prepares on process 0 and loads on every one.

Every problem with the user's files raises `DatasetError` with the path and what was expected.
"""

from vireid_jax.data.errors import DatasetError
from vireid_jax.data.prepare import find_dataset
from vireid_jax.data.prepare import load_test
from vireid_jax.data.prepare import load_train
from vireid_jax.data.prepare import prepare
from vireid_jax.data.types import ImageSet
from vireid_jax.data.types import INFRARED
from vireid_jax.data.types import VISIBLE

__all__ = ['DatasetError', 'ImageSet', 'INFRARED', 'VISIBLE', 'find_dataset', 'load_test',
           'load_train', 'prepare']
