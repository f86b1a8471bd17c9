"""vireid_jax: unsupervised visible-infrared person re-id (MBCCM) in JAX/Flax."""

# The API for trained models, loaded on first use: `import vireid_jax.train` (and every other
# module) does not pull the inference code in.
_LAZY = {'Model': 'vireid_jax.inference.model', 'search': 'vireid_jax.inference.model',
         'load_embeddings': 'vireid_jax.inference.model'}


def __getattr__(name):
  if name in _LAZY:
    import importlib  # pylint: disable=import-outside-toplevel
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + list(_LAZY))
