"""MBCCM's three training views, on the device, from uint8 images.

The reference's views: docs/mbccm.md, "Step 6: augmentation".

  visible view A: flip, pad + crop, [0, 1], multiplicative rectangles (p 0.8), normalise, erase
  visible view B: flip, pad + crop, [0, 1], normalise, erase, copy one channel into all three
  infrared:       flip, pad + crop, [0, 1], normalise, erase, channel copy / grey / unchanged

Views A and B come from the same source image but, as in the reference (two independent
torchvision pipelines), draw their own flip, crop and everything after. The ops are the core's
(vireid_jax/augment); ClusterContrast reuses these views.
"""

import functools
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp

from vireid_jax.augment import (AugmentConfig, adapt_grey, erase_fill_value, exchange_channel,
                                flip_pad_crop, linear_transform_batch, random_erasing,
                                standardize, to_unit)


# --- the three views (one image each) --------------------------------------------------------

def augment_visible_a_batch(rngs: jax.Array, images: jax.Array, cfg: AugmentConfig,
                            mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """Visible view A of uint8 (B, H, W, 3) images, rngs (B,) keys -> normalised float32.

  Per image as `augment_visible_a`; the rectangles loop runs over the batch at once, so its
  'two_phase' form can gather the images still drawing.
  """
  keys = jax.vmap(lambda k: jax.random.split(k, 3))(rngs)
  k_geom, k_linear, k_erase = keys[:, 0], keys[:, 1], keys[:, 2]
  unit = jax.vmap(lambda k, x: to_unit(flip_pad_crop(k, x, cfg.flip_prob, cfg.pad)))(
      k_geom, images)
  unit = linear_transform_batch(k_linear, unit, cfg)
  fill = erase_fill_value(cfg, mean, std)
  return jax.vmap(lambda k, x: random_erasing(k, standardize(x, mean, std), fill, cfg))(
      k_erase, unit)


def augment_visible_a(rng: jax.Array, image: jax.Array, cfg: AugmentConfig,
                      mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """Visible view A of one uint8 (H, W, 3) image -> normalised (H, W, 3) float32: flip, pad +
  crop, [0, 1], multiplicative rectangles (p 0.8), normalise, erase."""
  return augment_visible_a_batch(rng[None], image[None], cfg, mean, std)[0]


def augment_visible_b(rng: jax.Array, image: jax.Array, cfg: AugmentConfig,
                      mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """Visible view B: erase, then one channel (R, G or B uniformly) copied into all three."""
  k_geom, k_erase, k_channel = jax.random.split(rng, 3)
  normed = standardize(to_unit(flip_pad_crop(k_geom, image, cfg.flip_prob, cfg.pad)), mean, std)
  normed = random_erasing(k_erase, normed, erase_fill_value(cfg, mean, std), cfg)
  return exchange_channel(k_channel, normed)


def augment_infrared(rng: jax.Array, image: jax.Array, cfg: AugmentConfig,
                     mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """Infrared view: erase, then copy R, G or B (1/4 each), else grey with `infrared_grey_prob`."""
  k_geom, k_erase, k_channel = jax.random.split(rng, 3)
  normed = standardize(to_unit(flip_pad_crop(k_geom, image, cfg.flip_prob, cfg.pad)), mean, std)
  normed = random_erasing(k_erase, normed, erase_fill_value(cfg, mean, std), cfg)
  return adapt_grey(k_channel, normed, cfg.infrared_grey_prob)


@functools.partial(jax.jit, static_argnames=('aug_cfg',))
def augment_batch(rng: jax.Array, visible: jax.Array, infrared: jax.Array,
                  aug_cfg: AugmentConfig, mean: Sequence[float],
                  std: Sequence[float]) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """The three training views of a step, every sample with its own random draws.

  Args:
    rng: PRNG key for this step.
    visible: (B, H, W, 3) uint8, the sampled visible images.
    infrared: (B', H, W, 3) uint8, the sampled infrared images (B' = B in training).
    aug_cfg: `AugmentConfig.from_config(config.augment)` (static).
    mean, std: per-channel normalisation, e.g. `config.data.mean`, `config.data.std`.
  Returns:
    (view_a (B, H, W, 3), view_b (B, H, W, 3), infrared_view (B', H, W, 3)), float32,
    normalised; view A and view B of row i both come from visible[i].
  """
  if visible.dtype != jnp.uint8 or infrared.dtype != jnp.uint8:
    raise TypeError('augment_batch expects uint8 images (the prepared arrays), got '
                    f'{visible.dtype} and {infrared.dtype}')
  k_a, k_b, k_ir = jax.random.split(rng, 3)

  def per_sample(fn, key, images):
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, x: fn(k, x, aug_cfg, mean, std))(keys, images)

  return (augment_visible_a_batch(jax.random.split(k_a, visible.shape[0]), visible, aug_cfg,
                                  mean, std),
          per_sample(augment_visible_b, k_b, visible),
          per_sample(augment_infrared, k_ir, infrared))
