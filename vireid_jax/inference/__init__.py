"""Using a trained model: embed any images, search a gallery, export the network.

  errors.py     InferenceError / BadImage: bad input in one line
  images.py     image files, folders and list files; reading and resizing as the test
                protocol does; a stream of batches decoded ahead by threads
  run.py        a trained run opened for inference: config, network, one checkpoint's
                variables (through evaluation.driver.restore_variables), its weights' SHA-256
  embedding.py  the evaluation's extraction on arrays and on streams of files
  store.py      embeddings files (.npz) written batch by batch, read back, compared
  search.py     top-k by the evaluation's distance; identities from paths; Rank-k / mAP
  picture.py    the rank-list picture of a search
  export.py     the network as a jax.export artifact with its input contract
  model.py      the Python API: Model.from_workdir(...).embed(...), .search(...); also
                vireid_jax.Model, vireid_jax.search, vireid_jax.load_embeddings
  cli.py        --mode embed / search / export of main.py

docs/usage.md, "Using a trained model" shows the commands and the API.
"""

# Loaded on first use, so that `from vireid_jax.inference import errors` (main.py's error report)
# does not import JAX, the model and PIL.
_LAZY = {'BadImage': 'errors', 'InferenceError': 'errors', 'Model': 'model',
         'load_embeddings': 'model'}


def __getattr__(name):
  if name in _LAZY:
    import importlib  # pylint: disable=import-outside-toplevel
    return getattr(importlib.import_module(f'{__name__}.{_LAZY[name]}'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
