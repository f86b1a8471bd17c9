r"""The ImageNet stand-in: supervised pretraining of the demo's network on other people.

MBCCM starts from torchvision's ImageNet ResNet-50: weights learnt with labels, from visible
images only, on classes that never occur in re-identification. No ImageNet exists in this
environment, so the demo builds the same kind of start on synthetic data:

  * a population of `config.pretrain.num_ids` people drawn with their own population seed, so
    none of them is one of the demo's training or test identities (tests/pretrain_test.py
    compares the drawn records), seen only by visible cameras;
  * the visible stem and trunk of the demo's network trained as a plain ResNet classifier
    (models/classifier.py: average pooling and a linear head, one class per person) with the
    standard supervised recipe: SGD with Nesterov momentum, L2 weight decay, linear warm-up
    then cosine decay, label smoothing, and ImageNet-style augmentation (random resized crop,
    horizontal flip, colour jitter, random greyscale, inversion);
  * the result written as a torchvision-layout state dict (.npz: conv1, bn1, layer1..layer4, fc)
    that `config.model.pretrained` loads through `models.weights.load_imagenet_resnet`, the
    same code that loads `resnet50-0676ba61.pth`: both stems and the trunk, BN statistics
    included, the classifier dropped.

`config.model.pretrained = SYNTHETIC_IMAGENET` asks for these weights. `pretrain_on_main`
(called by initial_weights.resolve) resolves it to a file under `config.pretrain.output_dir`
whose name is a hash of everything that shapes the weights (the pretrain settings, the network,
the image size), and pretrains first when that file is missing, so a changed setting never
loads stale weights. The run is deterministic for a given machine; the file is written under a
temporary name and renamed.

  python main.py --mode pretrain --config configs/demo.py
"""

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from PIL import Image

from vireid_jax import augment
from vireid_jax import config as config_lib
from vireid_jax.runtime import console
from vireid_jax.runtime import multihost
from vireid_jax.data import render
from vireid_jax.data import synthetic
from vireid_jax.models import classifier as classifier_lib
from vireid_jax.models import weights as weights_lib

# config.model.pretrained value that asks for the synthetic ImageNet stand-in.
SYNTHETIC_IMAGENET = config_lib.PRETRAINED_SYNTHETIC
# Bump when the population, the recipe or the file layout changes, so old files are not reused.
PRETRAIN_VERSION = 1
# Stand-ins shipped with the code, named as `pretrained_path` names them (the demo configs'
# settings), made with `python main.py --mode pretrain --config configs/demo.py`.
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'assets')
# The visible cameras of the synthetic SYSU-MM01; the pretraining population's own seed gives
# them other scenes than the demo's.
_VISIBLE_CAMERAS = tuple(cam for cam, camera in synthetic.SYSU_CAMERAS.items()
                         if not camera.infrared)


# --------------------------------------------------------------------------------------------
# The population


def population_pids(pretrain_cfg) -> np.ndarray:
  """(num_ids,) the person ids drawn, 1..num_ids of population `population_seed`."""
  return np.arange(1, pretrain_cfg.num_ids + 1)


def render_population(pretrain_cfg, image_size: tuple[int, int],
                      progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Visible pictures of every person of the pretraining population.

  Each picture is rendered at the synthetic dataset's file size and resized with Lanczos, as
  the demo's images are when they are prepared, so both see the same kind of pixels.

  Returns:
    images (N, H, W, 3) uint8 and labels (N,) int32 in 0..num_ids-1, N = num_ids *
    images_per_id, person-major.
  """
  seed = pretrain_cfg.population_seed
  if seed == synthetic.POPULATION_SEED:
    raise config_lib.ConfigError(
        f'config.pretrain.population_seed = {seed} is the synthetic datasets\' own '
        f'population: pretraining would see the people it is evaluated on; choose another seed')
  pids = population_pids(pretrain_cfg)
  height, width = image_size
  images = np.empty((len(pids) * pretrain_cfg.images_per_id, height, width, 3), np.uint8)
  labels = np.repeat(np.arange(len(pids), dtype=np.int32), pretrain_cfg.images_per_id)
  index = 0
  for pid in console.bar(pids, desc='render pretraining population', unit='id',
                         enabled=progress):
    person = render.sample_identity(seed, int(pid))
    for n in range(pretrain_cfg.images_per_id):
      cam = _VISIBLE_CAMERAS[n % len(_VISIBLE_CAMERAS)]
      picture = render.render(person, synthetic.SYSU_CAMERAS[cam], seed, (int(pid), cam, n),
                              synthetic.IMAGE_SIZE)
      if picture.shape[:2] != (height, width):
        picture = np.asarray(Image.fromarray(picture).resize((width, height),
                                                             Image.Resampling.LANCZOS))
      images[index] = picture
      index += 1
  return images, labels


# --------------------------------------------------------------------------------------------
# ImageNet-style augmentation, on the device


@dataclasses.dataclass(frozen=True)
class PretrainAugment:
  """Hashable augmentation settings; fields follow `config.pretrain` (see config.py)."""
  crop_area: tuple[float, float]
  crop_aspect: tuple[float, float]
  flip_prob: float
  brightness: float
  contrast: float
  saturation: float
  hue: float
  grey_prob: float
  invert_prob: float

  @classmethod
  def from_config(cls, pretrain_cfg) -> 'PretrainAugment':
    return cls(crop_area=tuple(float(a) for a in pretrain_cfg.crop_area),
               crop_aspect=tuple(float(a) for a in pretrain_cfg.crop_aspect),
               flip_prob=float(pretrain_cfg.flip_prob),
               brightness=float(pretrain_cfg.brightness),
               contrast=float(pretrain_cfg.contrast),
               saturation=float(pretrain_cfg.saturation),
               hue=float(pretrain_cfg.hue),
               grey_prob=float(pretrain_cfg.grey_prob),
               invert_prob=float(pretrain_cfg.invert_prob))


def _random_resized_crop(u: jax.Array, image: jax.Array, cfg: PretrainAugment) -> jax.Array:
  """torchvision RandomResizedCrop + RandomHorizontalFlip, bilinear, from u (6,) ~ U[0, 1).

  A box of area fraction U(crop_area) and aspect (relative to the image's own) log-uniform in
  crop_aspect, clipped to the image, placed uniformly, resampled back to the full size.
  """
  height, width = image.shape[:2]
  lo, hi = cfg.crop_area
  area = lo + (hi - lo) * u[0]
  log_lo, log_hi = np.log(cfg.crop_aspect[0]), np.log(cfg.crop_aspect[1])
  aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[1])
  box_h = jnp.minimum(jnp.sqrt(area / aspect), 1.0) * height
  box_w = jnp.minimum(jnp.sqrt(area * aspect), 1.0) * width
  top = u[2] * (height - box_h)
  left = u[3] * (width - box_w)
  rows = top + (jnp.arange(height) + 0.5) * box_h / height - 0.5
  cols = left + (jnp.arange(width) + 0.5) * box_w / width - 0.5
  cols = jnp.where(u[4] < cfg.flip_prob, cols[::-1], cols)
  grid_r, grid_c = jnp.meshgrid(rows, cols, indexing='ij')
  channels = [jax.scipy.ndimage.map_coordinates(image[..., c], [grid_r, grid_c], order=1,
                                                mode='nearest') for c in range(3)]
  return jnp.stack(channels, axis=-1)


# RGB <-> YIQ (NTSC): Y is the luma of augment.to_grey, I and Q carry the chroma.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def _rotate_hue(image: jax.Array, turns: jax.Array) -> jax.Array:
  """Rotates the chroma of a [0, 1] RGB image by `turns` of a full circle (luma kept)."""
  angle = 2.0 * jnp.pi * turns
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  rotation = jnp.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
  matrix = jnp.asarray(_YIQ_TO_RGB) @ rotation @ jnp.asarray(_RGB_TO_YIQ)
  return image @ matrix.T


def _colour_jitter(u: jax.Array, image: jax.Array, cfg: PretrainAugment) -> jax.Array:
  """ColorJitter, RandomGrayscale, then Invert, from u (6,) ~ U[0, 1), on a [0, 1] image.

  Brightness, contrast and saturation factors U(1 - s, 1 + s), a hue rotation of U(-h, h)
  turns (torchvision ColorJitter); grey (all channels the luma) with probability grey_prob
  (RandomGrayscale); 1 - image with probability invert_prob (AutoAugment's Invert).
  """
  factor = lambda v, strength: 1.0 + strength * (2.0 * v - 1.0)
  image = image * factor(u[0], cfg.brightness)
  grey = augment.to_grey(image)
  image = grey.mean() + (image - grey.mean()) * factor(u[1], cfg.contrast)
  grey = augment.to_grey(image)
  image = grey + (image - grey) * factor(u[2], cfg.saturation)
  if cfg.hue > 0:  # static
    image = _rotate_hue(jnp.clip(image, 0.0, 1.0), cfg.hue * (2.0 * u[3] - 1.0))
  image = jnp.clip(image, 0.0, 1.0)
  image = jnp.where(u[4] < cfg.grey_prob, augment.to_grey(image), image)
  return jnp.where(u[5] < cfg.invert_prob, 1.0 - image, image)


def augment_pretrain_batch(rng: jax.Array, images: jax.Array, cfg: PretrainAugment,
                           mean, std) -> jax.Array:
  """(B, H, W, 3) uint8 -> (B, H, W, 3) float32 normalised, each sample its own draws."""

  def one(u, image):
    image = _random_resized_crop(u[:5], augment.to_unit(image), cfg)
    return augment.standardize(_colour_jitter(u[5:], image, cfg), mean, std)

  u = jax.random.uniform(rng, (images.shape[0], 11))
  return jax.vmap(one)(u, images)


# --------------------------------------------------------------------------------------------
# Training


@flax.struct.dataclass
class PretrainState:
  params: dict
  batch_stats: dict
  opt_state: optax.OptState


def learning_rate_schedule(pretrain_cfg, steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up over `warmup_epochs`, then cosine decay to zero (per step)."""
  total = pretrain_cfg.epochs * steps_per_epoch
  warmup = min(int(round(pretrain_cfg.warmup_epochs * steps_per_epoch)), total - 1)
  return optax.warmup_cosine_decay_schedule(0.0, pretrain_cfg.learning_rate, max(warmup, 1),
                                            max(total, 2))


def make_optimizer(pretrain_cfg, steps_per_epoch: int) -> optax.GradientTransformation:
  """PyTorch SGD: L2 weight decay added to the gradient, Nesterov momentum."""
  return optax.chain(
      optax.add_decayed_weights(pretrain_cfg.weight_decay),
      optax.sgd(learning_rate_schedule(pretrain_cfg, steps_per_epoch),
                momentum=pretrain_cfg.momentum, nesterov=True))


def make_pretrain_step(model, tx, aug: PretrainAugment, mean, std, label_smoothing: float,
                       num_classes: int):
  """(state, images (N,H,W,3) uint8, labels (N,), index (B,), rng) -> (state, metrics)."""

  def loss_fn(params, batch_stats, batch, labels):
    logits, new_vars = model.apply({'params': params, 'batch_stats': batch_stats}, batch,
                                   train=True, mutable=['batch_stats'])
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, (new_vars['batch_stats'], {'loss': loss, 'accuracy': accuracy})

  @functools.partial(jax.jit, donate_argnums=(0,))
  def step(state, images, labels, index, rng):
    batch = augment_pretrain_batch(rng, images[index], aug, mean, std)
    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, batch, labels[index])
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return PretrainState(optax.apply_updates(state.params, updates), batch_stats,
                         opt_state), metrics

  return step


def train_classifier(config: ml_collections.ConfigDict, images: np.ndarray, labels: np.ndarray,
                     progress: bool = True) -> tuple[dict, dict]:
  """Trains the classifier on (images, labels) with config.pretrain's recipe.

  Returns:
    (variables {'params', 'batch_stats'} of models.classifier.ResNetClassifier, summary of the
    last epoch: loss and accuracy on its augmented batches).
  """
  p = config.pretrain
  num_classes = int(labels.max()) + 1
  batch_size = min(p.batch_size, len(images))
  steps_per_epoch = len(images) // batch_size
  model = classifier_lib.build_classifier(config.model, num_classes, p.last_stride)
  shape = jax.ShapeDtypeStruct((1, config.data.image_height, config.data.image_width, 3),
                               jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(p.seed), jnp.zeros(shape.shape, shape.dtype))
  tx = make_optimizer(p, steps_per_epoch)
  state = PretrainState(variables['params'], variables['batch_stats'],
                        tx.init(variables['params']))
  step = make_pretrain_step(model, tx, PretrainAugment.from_config(p), tuple(config.data.mean),
                            tuple(config.data.std), p.label_smoothing, num_classes)
  images, labels = jax.device_put(images), jax.device_put(labels)
  summary = {}
  bar = console.bar(total=p.epochs * steps_per_epoch, desc='pretrain', unit='step',
                    enabled=progress)
  for epoch in range(p.epochs):
    order = np.random.default_rng([p.seed, epoch]).permutation(len(labels))
    epoch_key = jax.random.fold_in(jax.random.PRNGKey(p.seed), epoch)
    metrics = []
    for k in range(steps_per_epoch):
      index = order[k * batch_size:(k + 1) * batch_size].astype(np.int32)
      state, m = step(state, images, labels, index, jax.random.fold_in(epoch_key, k))
      metrics.append(m)
      bar.update()
    metrics = jax.device_get(metrics)
    summary = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
    if not np.isfinite(summary['loss']):
      # A setting to change, reported in one line like the trainer's own config errors.
      raise config_lib.ConfigError(f'pretraining loss became {summary["loss"]} in epoch '
                                   f'{epoch + 1}; lower config.pretrain.learning_rate')
    bar.set_postfix(epoch=epoch + 1, loss=f'{summary["loss"]:.3f}',
                    acc=f'{summary["accuracy"]:.2f}')
  bar.close()
  return {'params': state.params, 'batch_stats': state.batch_stats}, summary


def torchvision_state_dict(variables: dict) -> dict[str, np.ndarray]:
  """The classifier as torchvision names it: conv1, bn1, layer1..layer4, fc (weights OIHW)."""
  state = weights_lib.export_torch_state_dict(variables, stem='visible')
  fc = variables['params']['fc']
  state['fc.weight'] = np.asarray(fc['kernel'], np.float32).T  # torch Linear: (out, in)
  state['fc.bias'] = np.asarray(fc['bias'], np.float32)
  return state


def _write_atomically(path: str, write) -> None:
  """`write(binary file)` into a temporary beside `path`, renamed to `path` once complete: a
  crash leaves either the whole file or none, and no temporary."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  temporary = f'{path}.incomplete-{os.getpid()}'
  try:
    with open(temporary, 'wb') as f:
      write(f)
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def save_state_dict(variables: dict, path: str) -> str:
  """Writes the classifier's torchvision state dict to `path` (.npz) atomically; returns path."""
  # A file object: np.savez would append '.npz' to a name.
  _write_atomically(path, lambda f: np.savez(f, **torchvision_state_dict(variables)))
  return path


# --------------------------------------------------------------------------------------------
# Where the weights live


def _fingerprint(config: ml_collections.ConfigDict) -> dict:
  """Everything the weights depend on."""
  return {
      'version': PRETRAIN_VERSION,
      'renderer': synthetic.GENERATOR_VERSION,  # the people and pictures it learns from
      'pretrain': {k: v for k, v in config.pretrain.to_dict().items() if k != 'output_dir'},
      'model': {k: config.model[k] for k in ('block', 'stage_sizes', 'width', 'dtype')},
      'image_size': [config.data.image_height, config.data.image_width],
      'mean': list(config.data.mean), 'std': list(config.data.std),
  }


def pretrained_path(config: ml_collections.ConfigDict) -> str:
  """`<output_dir>/synthetic_imagenet_<hash of the settings>.npz`."""
  blob = json.dumps(_fingerprint(config), sort_keys=True, default=list).encode()
  digest = hashlib.sha1(blob).hexdigest()[:12]
  return os.path.abspath(os.path.join(os.path.expanduser(config.pretrain.output_dir),
                                      f'{SYNTHETIC_IMAGENET}_{digest}.npz'))


def pretrain_variables(config: ml_collections.ConfigDict,
                       progress: bool = True) -> tuple[dict, dict]:
  """Renders the population and trains the classifier on it.

  Returns:
    (variables of models.classifier.ResNetClassifier, a record: the last epoch's loss and
    accuracy, seconds spent rendering and training).
  """
  start = time.time()
  images, labels = render_population(
      config.pretrain, (config.data.image_height, config.data.image_width), progress=progress)
  rendered = time.time()
  variables, summary = train_classifier(config, images, labels, progress=progress)
  return variables, {'last_epoch': summary, 'seconds': {'render': rendered - start,
                                                        'train': time.time() - rendered}}


def _copy_shipped(path: str) -> bool:
  """Copies the shipped stand-in of `path`'s name (the demo's settings) to `path`, if any."""
  shipped = os.path.join(SHIPPED_DIR, os.path.basename(path))
  if not os.path.isfile(shipped):
    return False
  for source, target in ((shipped[:-len('.npz')] + '.json', path[:-len('.npz')] + '.json'),
                         (shipped, path)):  # the weights last: their presence means complete
    if os.path.isfile(source):
      with open(source, 'rb') as original:
        _write_atomically(target, functools.partial(shutil.copyfileobj, original))
  console.line(f'Using the shipped ImageNet stand-in for these settings ({shipped}; delete the '
               f'copy and run `--mode pretrain` to make it on this machine): {path}')
  return True


def pretrain(config: ml_collections.ConfigDict, progress: bool = True,
             use_shipped: bool = True) -> str:
  """Pretrains the stand-in and writes its state dict, unless it exists; returns the path.

  An existing file for the same settings is kept (pretraining is deterministic on a given
  machine); delete it to pretrain again. A JSON record beside it says how it was made. The
  demo's own settings have a shipped copy (vireid_jax/assets/, made by `--mode pretrain`),
  which `use_shipped` takes instead of pretraining: every machine then starts the demo from the
  same weights, and the first run is six minutes shorter.
  """
  path = pretrained_path(config)
  if os.path.isfile(path):  # the run's "weights:" line names it
    return path
  if use_shipped and _copy_shipped(path):
    return path
  p = config.pretrain
  console.line(f'Pretraining the ImageNet stand-in: {p.num_ids} synthetic people (visible cameras '
        f'only, none of them in the dataset), {p.images_per_id} images each, {p.epochs} '
        f'epochs; first run only, cached at {path}')
  variables, record = pretrain_variables(config, progress=progress)
  save_state_dict(variables, path)
  with open(path[:-len('.npz')] + '.json', 'w', encoding='utf-8') as f:
    json.dump(dict(_fingerprint(config), **record), f, indent=1, sort_keys=True, default=list)
  summary, seconds = record['last_epoch'], sum(record['seconds'].values())
  console.line(f'Pretrained in {seconds:.0f} s (last epoch: loss {summary["loss"]:.3f}, accuracy on '
        f'augmented batches {summary["accuracy"]:.2f}): {path}')
  return path


def pretrain_on_main(config: ml_collections.ConfigDict, use_shipped: bool = True) -> str:
  """`pretrain` on process 0 only; every process waits for it and gets the file's path.

  One process writes the file and the others read it, as for the dataset cache: a shared disk
  must not see N writers.
  """
  multihost.run_on_main(lambda: pretrain(config, use_shipped=use_shipped),
                        'pretraining the ImageNet stand-in')
  return pretrained_path(config)
