"""PGM's three training views (docs/pgm.md, "Augmentation"), on the device, from uint8 images.

Every view starts with the reference's prefix: Pad(10), RandomCrop, RandomHorizontalFlip on the
(bicubic-resized) uint8 image, here `augment.flip_pad_crop` (the same distribution: flip and a
symmetric pad commute). Views A and B of a visible image are two independent pipelines.

  visible A:  prefix, ToTensor, Normalize, erase
  visible B:  prefix, ColorJitter(0.5, 0.5, 0.5, 0.5) on the uint8 crop (PIL-exact,
              vireid_jax/augment/color_jitter.py), ToTensor, Normalize, erase, ChannelExchange(gray=2)
  infrared:   prefix, [ColorJitter in stage 1 with augment.ir_jitter_stage1], ToTensor,
              Normalize, erase, ChannelAdapGray(0.5)
"""

from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from vireid_jax import augment
from vireid_jax.augment import color_jitter

Jitter = Tuple[float, float, float, float]  # brightness, contrast, saturation, hue


def _normalised(image_u8, cfg, mean, std):
  return augment.standardize(augment.to_unit(image_u8), mean, std)


def visible_a(rng, image, cfg: augment.AugmentConfig, mean, std) -> jax.Array:
  k_geom, k_erase = jax.random.split(rng)
  crop = augment.flip_pad_crop(k_geom, image, cfg.flip_prob, cfg.pad)
  return augment.random_erasing(k_erase, _normalised(crop, cfg, mean, std),
                                augment.erase_fill_value(cfg, mean, std), cfg)


def visible_b(rng, image, cfg: augment.AugmentConfig, jitter: Jitter, mean, std) -> jax.Array:
  k_geom, k_jitter, k_erase, k_channel = jax.random.split(rng, 4)
  crop = augment.flip_pad_crop(k_geom, image, cfg.flip_prob, cfg.pad)
  crop = color_jitter.color_jitter(k_jitter, crop, *jitter)
  normed = augment.random_erasing(k_erase, _normalised(crop, cfg, mean, std),
                                  augment.erase_fill_value(cfg, mean, std), cfg)
  return augment.exchange_channel(k_channel, normed)


def infrared(rng, image, cfg: augment.AugmentConfig, jitter: Optional[Jitter], mean,
             std) -> jax.Array:
  k_geom, k_jitter, k_erase, k_channel = jax.random.split(rng, 4)
  crop = augment.flip_pad_crop(k_geom, image, cfg.flip_prob, cfg.pad)
  if jitter is not None:  # static: SYSU-MM01 stage 1 at the authors' HEAD only (quirk 4)
    crop = color_jitter.color_jitter(k_jitter, crop, *jitter)
  normed = augment.random_erasing(k_erase, _normalised(crop, cfg, mean, std),
                                  augment.erase_fill_value(cfg, mean, std), cfg)
  return augment.adapt_grey(k_channel, normed, cfg.infrared_grey_prob)


def augment_batch(rng: jax.Array, visible: jax.Array, infrared_images: jax.Array,
                  cfg: augment.AugmentConfig, jitter: Jitter, infrared_jitter: Optional[Jitter],
                  mean: Sequence[float], std: Sequence[float]) -> Tuple[jax.Array, jax.Array]:
  """The step's network inputs from uint8 images, every sample with its own draws.

  Args:
    rng: the step's key.
    visible: (Bv, H, W, 3) uint8 visible images.
    infrared_images: (Bi, H, W, 3) uint8 infrared images.
    cfg: `augment.AugmentConfig` (static).
    jitter: view B's ColorJitter strengths.
    infrared_jitter: the infrared view's, or None for none.
    mean, std: per-channel normalisation.

  Returns:
    ([view A; view B] (2 Bv, H, W, 3), infrared view (Bi, H, W, 3)), float32, normalised.
  """
  k_a, k_b, k_ir = jax.random.split(rng, 3)

  def per_sample(fn, key, images):
    return jax.vmap(fn)(jax.random.split(key, images.shape[0]), images)

  view_a = per_sample(lambda k, x: visible_a(k, x, cfg, mean, std), k_a, visible)
  view_b = per_sample(lambda k, x: visible_b(k, x, cfg, jitter, mean, std), k_b, visible)
  infrared_view = per_sample(lambda k, x: infrared(k, x, cfg, infrared_jitter, mean, std), k_ir,
                             infrared_images)
  return jnp.concatenate([view_a, view_b]), infrared_view
