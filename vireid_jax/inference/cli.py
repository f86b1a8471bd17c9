"""`--mode embed`, `--mode search` and `--mode export` of main.py: options in, printed text out.

main.py parses the flags into `Options` and prints what `run` returns; every bad input raises
`InferenceError` (one line, printed by main.py as `error: ...`).
"""

import dataclasses
import json
import os
from typing import Optional, Sequence

import numpy as np

from vireid_jax.data.types import MODALITIES
from vireid_jax.inference import embedding
from vireid_jax.inference import export as export_lib
from vireid_jax.inference import images as images_lib
from vireid_jax.inference import picture
from vireid_jax.inference import run as run_lib
from vireid_jax.inference import search as search_lib
from vireid_jax.inference import store
from vireid_jax.inference.errors import InferenceError
from vireid_jax.runtime import files

MODES = ('embed', 'search', 'export')


@dataclasses.dataclass
class Options:
  """The flags of the inference modes (main.py documents each)."""
  checkpoint: str = 'best'
  images: Sequence[str] = ()
  modality: str = ''
  out: str = ''
  query: Sequence[str] = ()
  query_modality: str = ''
  gallery: Sequence[str] = ()
  gallery_modality: str = ''
  top_k: int = 10
  id_pattern: str = ''
  id_rules: str = 'none'
  force: bool = False
  batch_size: int = 0
  workers: int = 0
  ranklist_queries: int = 8


def _modality(value: str, flag: str) -> str:
  if not value:
    raise InferenceError(f'{flag} is needed: {" or ".join(MODALITIES)} (the camera the images '
                         f'come from)')
  return value


def _skipped_note(count: int) -> str:
  return f'; skipped {count} image(s) that could not be used (named above)' if count else ''


def embed(run, options: Options, paths: Sequence[str]) -> str:
  modality = run.check_modality(_modality(options.modality, '--modality'))
  embedder = embedding.Embedder(run, options.batch_size or None)
  summary = embedder.to_file(paths, modality, options.out, workers=options.workers)
  return (f'embedded {summary.embedded} {modality} image(s) with {run.checkpoint} (epoch '
          f'{run.epoch}): {run.model.num_features} features each, written to {options.out}'
          f'{_skipped_note(len(summary.skipped))}')


@dataclasses.dataclass
class _Side:
  """The query or the gallery, checked: embeddings files, or images and their modality."""
  flag: str
  saved: list
  images: list
  modality: str


def _check_side(run, sources: Sequence[str], modality_flag: str, flag: str) -> _Side:
  """Everything about one side that can be wrong, found before anything is embedded."""
  sources = [s for s in sources if s]
  if not sources:
    raise InferenceError(f'--mode search needs --{flag}: image files, folders, list files or '
                         f'an embeddings file (.npz of --mode embed)')
  saved = [s for s in sources if store.is_embeddings_file(s)]
  if saved and len(saved) < len(sources):
    raise InferenceError(f'--{flag} mixes embeddings files and images: pass one kind')
  if saved:
    return _Side(flag, saved, [], modality_flag)
  modality = run.check_modality(_modality(modality_flag, f'--{flag}_modality'))
  return _Side(flag, [], images_lib.list_images(sources), modality)


def _load_side(run, side: _Side, options: Options,
               embedder: embedding.Embedder) -> store.Embeddings:
  """Embeddings files as they are (if this checkpoint made them), or the images embedded now."""
  if side.images:
    return embedder.to_memory(side.images, side.modality, workers=options.workers)
  loaded = []
  for path in side.saved:
    embeddings = store.load(path)
    store.check_same_model(embeddings, run, path, force=options.force)
    if side.modality and side.modality != embeddings.modality:
      raise InferenceError(f'{path} holds {embeddings.modality} embeddings, but '
                           f'--{side.flag}_modality says {side.modality}')
    if loaded and embeddings.modality != loaded[0].modality:
      raise InferenceError(f'--{side.flag} mixes {loaded[0].modality} and '
                           f'{embeddings.modality} embeddings files')
    loaded.append(embeddings)
  if len(loaded) == 1:
    return loaded[0]
  return dataclasses.replace(loaded[0],
                             features=np.concatenate([e.features for e in loaded]),
                             paths=np.concatenate([e.paths for e in loaded]))


def search(run, options: Options) -> str:
  out = options.out or os.path.join(os.fspath(files.path(run.checkpoint).parent.parent.parent),
                                    'search')
  pattern = (search_lib.compile_pattern(options.id_pattern, options.id_rules)
             if options.id_pattern else None)
  sides = (_check_side(run, options.query, options.query_modality, 'query'),
           _check_side(run, options.gallery, options.gallery_modality, 'gallery'))
  if pattern is not None:  # a path without an identity stops before anything is embedded
    for side in sides:
      search_lib.identities(side.images, pattern, side.flag)
  embedder = embedding.Embedder(run, options.batch_size or None)  # one compilation per modality
  query, gallery = (_load_side(run, side, options, embedder) for side in sides)
  if not len(query):
    raise InferenceError('no query image could be used (each is named above)')
  if not len(gallery):
    raise InferenceError('no gallery image could be used (each is named above)')
  ids = None
  if pattern is not None:
    query_ids, query_cams = search_lib.identities(query.paths, pattern, 'query')
    gallery_ids, gallery_cams = search_lib.identities(gallery.paths, pattern, 'gallery')
    ids = (query_ids, gallery_ids)
  result = search_lib.search(query.features, gallery.features, options.top_k)
  out_path = files.path(out)
  csv_path = search_lib.write_csv(str(out_path / 'search.csv'), list(query.paths),
                                  list(gallery.paths), result)
  lines = [f'ranked {len(gallery)} {gallery.modality} gallery image(s) for {len(query)} '
           f'{query.modality} quer(ies) with {run.checkpoint} (epoch {run.epoch}); distance '
           f'-cosine, top {result.indices.shape[1]} each in {csv_path}']
  codes = search_lib.identity_codes(*ids) if ids is not None else None
  if options.ranklist_queries > 0:
    height, width = run.image_size
    chosen = picture.choose(options.ranklist_queries, len(query),
                            codes[0] if codes is not None else None,
                            seed=int(run.config.seed))
    png = picture.save(str(out_path / 'ranklist.png'), list(query.paths), list(gallery.paths),
                       result.indices, result.distances, height, width, chosen,
                       query_ids=ids[0] if ids else None, gallery_ids=ids[1] if ids else None)
    lines.append(f'rank list of {len(chosen)} quer(ies): {png}')
  if codes is not None:
    scores = search_lib.score(query.features, gallery.features, *codes,
                              query_cams, gallery_cams, options.id_rules,
                              max_rank=int(run.config.eval.max_rank))
    path = files.write_text(out_path / 'scores.json', json.dumps(
        dict(dataclasses.asdict(scores), id_pattern=options.id_pattern,
             checkpoint=run.checkpoint, weights_sha256=run.weights_sha256), indent=2) + '\n')
    lines.append(f'{search_lib.format_scores(scores)}; in {path}')
  return '\n'.join(lines)


def export(run, options: Options) -> str:
  artifact, contract = export_lib.export_run(run, options.out)
  return (f'exported {run.checkpoint} (epoch {run.epoch}) for {", ".join(export_lib.PLATFORMS)}:'
          f' {artifact}\ninput contract: {contract}\nload it without vireid_jax: '
          f'jax.export.deserialize(open(path, "rb").read()).call(images_uint8, '
          f'np.int32(0 visible | 1 infrared))')


def run(mode: str, workdir: Optional[str], config, options: Options) -> str:
  """Runs inference mode `mode` on checkpoint `options.checkpoint` of the run in `workdir`;
  returns what to print."""
  import jax  # pylint: disable=import-outside-toplevel
  if mode not in MODES:
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
  if jax.process_count() > 1:
    raise InferenceError(f'--mode {mode} runs in one process (it uses every local device): '
                         f'start it without --coordinator_address / --num_processes')
  # What needs no network is checked before the run is opened.
  if mode == 'embed':
    if not options.out:
      raise InferenceError('--mode embed needs --out FILE.npz: where the embeddings go')
    _modality(options.modality, '--modality')
    paths = images_lib.list_images(options.images)
  if mode == 'search':
    if options.top_k < 1:
      raise InferenceError(f'--top_k={options.top_k}: expected at least 1')
    if options.id_pattern:
      search_lib.compile_pattern(options.id_pattern, options.id_rules)
  trained = run_lib.load_run(workdir, options.checkpoint, config)
  if mode == 'embed':
    return embed(trained, options, paths)
  if mode == 'search':
    return search(trained, options)
  return export(trained, options)
