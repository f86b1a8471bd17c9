"""torchvision 0.9.2's ColorJitter on PIL uint8 images, equal to it to the uint8, on the device.

PGM's visible view B (docs/pgm.md, "Augmentation") jitters the padded, cropped and flipped PIL crop
with `ColorJitter(0.5, 0.5, 0.5, 0.5)`: factors b, c, s ~ U[0.5, 1.5] and hue ~ U[-0.5, 0.5]
(float32, as `torch.empty(1).uniform_`), the four operations in a random order, each one a PIL
operation that returns a uint8 image:

  brightness  ImageEnhance.Brightness: Image.blend(black, image, b)
  contrast    ImageEnhance.Contrast: Image.blend(grey, image, c), grey = the mean of the 'L'
              conversion, rounded (int(mean + 0.5))
  saturation  ImageEnhance.Color: Image.blend(L, image, s), L = the 'L' conversion as RGB
  hue         functional_pil.adjust_hue: RGB -> HSV (PIL), H += uint8(hue * 255) with
              wrap-around, HSV -> RGB (PIL); applied whenever the hue range is non-zero, so its
              lossy HSV round trip happens even when the shift is 0.

Each function here reproduces PIL's C arithmetic (libImaging Blend.c, Convert.c, ImageStat) to
the bit, including its float32/double roundings and truncations, with computations that give
the same bits on every XLA backend:

- 'L' is Convert.c's fixed point (19595 R + 38470 G + 7471 B + 0x8000) >> 16, in int32.
- The contrast grey is floor(sum / count + 0.5) (ImageStat's double mean), computed exactly in
  integers as (2 sum + count) // (2 count).
- Image.blend computes out = (uint8) clip((float) in1 + alpha * (float) (in2 - in1)) in float32
  with alpha = (float) factor: two roundings (product, then sum), then truncation. XLA fuses a
  multiply feeding an add into one multiply-add, which rounds once (the plain formula fails
  the tests on XLA:CPU already), so the product is formed from two pieces of alpha (16 and 8
  mantissa bits, each giving an exact product with |in2 - in1| <= 255) whose sum rounds once,
  to the float32 product, whether or not the backend fuses one of the multiplies into it.
- RGB -> HSV (Convert.c rgb2hsv_row) mixes float32 divisions, double arithmetic and
  truncations; its saturation depends only on (max, max - min) and its hue only on which
  channel is the maximum and the distances of the other two from it, so both are read from
  small tables built once on the host by numpy with the C operations in the C precisions.
- HSV -> RGB (Convert.c hsv2rgb) rounds v * (1 - fs * f) and the like in double, with
  fs = (float) s / 255 and f = (float) frac(6 h / 255). For every one of the 2^24 inputs these
  double roundings give the same integer as rounding the exact value (checked once with Python
  integers; the tests compare the port with PIL on all 2^24 inputs), so the port rounds the
  exact value: the
  products fs * f, fs * (1 - f) and fs (multiples of 2^-64, from a host table) are multiplied
  by v in 22-bit int32 limbs, and the result's integer part and whether its fraction exceeds
  one half decide the rounding half away from zero.
- hue * 255 is truncated towards zero and wrapped modulo 256, as `np.uint8(hue_factor * 255)`
  does in the numpy of the reference's environment (numpy 1.x; numpy 2 raises for negative
  hues).

Every public function takes one (H, W, 3) uint8 image and scalar factors and is vmappable.
The tests compare each operation, and the whole jitter in a fixed order, with PIL on random
images and factors, and the two HSV conversions with PIL on all 2^24 colours.
"""

import functools
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

# ITU-R 601-2 luma in Convert.c's 16-bit fixed point (the L24 macro of rgb2l).
_L24 = (19595, 38470, 7471)
# torchvision's bound on the hue range.
MAX_HUE = 0.5
# Brightness, contrast, saturation, hue: the operation ids of torchvision's `torch.randperm(4)`.
_NUM_OPS = 4
_HUE_OP = 3
# Limbs of the 2^-64 fixed-point products in hsv_to_rgb: three 22-bit limbs (the top one up to
# 2^20 inclusive), so v * limb < 2^30 stays inside int32.
_LIMB_BITS = 22
_LIMB_MASK = (1 << _LIMB_BITS) - 1
_TOP_BITS = 64 - 2 * _LIMB_BITS  # bits of the top limb below the binary point
# frac(6 h / 255) = n / 255 with n = 6 h mod 255, a multiple of 3: 85 values.
_NUM_HUE_FRACTIONS = 85
# hsv2rgb's (R, G, B) per sector i % 6, as indices into (v, p, q, t).
_SECTOR_CHANNELS = ((0, 3, 1), (2, 0, 1), (1, 0, 3), (1, 2, 0), (3, 1, 0), (0, 1, 2))


def _as_int(image: jax.Array) -> jax.Array:
  if image.dtype != jnp.uint8:
    raise TypeError(f'colour jitter works on uint8 images (as PIL), got {image.dtype}')
  return image.astype(jnp.int32)


def grey(image: jax.Array) -> jax.Array:
  """PIL's `convert('L')` of an RGB image.

  Args:
    image: (H, W, 3) uint8 or int32 in [0, 255].

  Returns:
    (H, W) int32 in [0, 255].
  """
  rgb = image.astype(jnp.int32)
  return (rgb[..., 0] * _L24[0] + rgb[..., 1] * _L24[1] + rgb[..., 2] * _L24[2]
          + 0x8000) >> 16


def blend(degenerate: jax.Array, image: jax.Array, factor) -> jax.Array:
  """PIL's `Image.blend(degenerate, image, factor)` on uint8 values, as int32.

  Args:
    degenerate: int32 in [0, 255], broadcastable to `image`.
    image: int32 in [0, 255].
    factor: scalar; rounded to float32 as PIL's C function takes it.

  Returns:
    int32 in [0, 255], shaped like `image`.
  """
  alpha = jnp.asarray(factor, jnp.float32)
  # alpha = high + low with 16 and 8 significant bits: each times an 8-bit difference is exact
  # in float32, so high * d + low * d rounds once, to the float32 product alpha * d (also when
  # the backend fuses one of the multiplies into the add).
  bits = jax.lax.bitcast_convert_type(alpha, jnp.uint32)
  high = jax.lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFFF00), jnp.float32)
  low = alpha - high
  base = degenerate.astype(jnp.float32)
  difference = (image - degenerate).astype(jnp.float32)
  value = base + (high * difference + low * difference)
  # Blend.c: <= 0 -> 0, >= 255 -> 255, else truncation (the interpolation branch never leaves
  # [0, 255], so one rule covers both).
  return jnp.clip(value, 0.0, 255.0).astype(jnp.int32)


def _blend_u8(degenerate: jax.Array, image: jax.Array, factor) -> jax.Array:
  return blend(degenerate, image, factor).astype(jnp.uint8)


def contrast_grey(image: jax.Array) -> jax.Array:
  """ImageEnhance.Contrast's grey level: int(mean of the 'L' image + 0.5), () int32.

  Args:
    image: (H, W, 3) uint8 or int32 in [0, 255], fewer than 2^22 pixels (2 * sum + count
      stays inside int32).
  """
  luma = grey(image)
  count = luma.size
  if count >= 2**22:
    raise ValueError(f'contrast_grey: a {luma.shape} image has too many pixels for exact int32 '
                     'sums; use images of fewer than 2^22 pixels')
  return (2 * jnp.sum(luma) + count) // (2 * count)


def adjust_brightness(image: jax.Array, factor) -> jax.Array:
  """torchvision `adjust_brightness` on a PIL image: (H, W, 3) uint8 -> (H, W, 3) uint8."""
  return _blend_u8(jnp.zeros((), jnp.int32), _as_int(image), factor)


def adjust_contrast(image: jax.Array, factor) -> jax.Array:
  """torchvision `adjust_contrast` on a PIL image: (H, W, 3) uint8 -> (H, W, 3) uint8."""
  rgb = _as_int(image)
  return _blend_u8(contrast_grey(rgb), rgb, factor)


def adjust_saturation(image: jax.Array, factor) -> jax.Array:
  """torchvision `adjust_saturation` on a PIL image: (H, W, 3) uint8 -> (H, W, 3) uint8."""
  rgb = _as_int(image)
  return _blend_u8(grey(rgb)[..., None], rgb, factor)


# ---------------------------------------------------------------------------------------------
# HSV (PIL's Convert.c), from host tables built with the C operations in the C precisions.


@functools.lru_cache(maxsize=None)
def _rgb_to_hsv_tables() -> Tuple[np.ndarray, np.ndarray]:
  """Saturation (256 max, 256 range) and hue (3 max channel, 256, 256) uint8 tables.

  rgb2hsv_row: s = (float) range / (float) max, then (int) (s * 255.0); the hue of the case
  whose maximum is channel m is base_m + qx - qy with qc = (float) (max - c) / (float) range:
  red max: bc - gc in float32; green max: 2.0 + rc - bc and blue max: 4.0 + gc - rc in double,
  stored in a float h; then h = (float) fmod(h / 6.0 + 1.0, 1.0) and (int) (h * 255.0). Indexed
  by the distances kx = max - x, ky = max - y of the formula's two channels; range =
  max(kx, ky).
  """
  f32, f64 = np.float32, np.float64
  maximum, spread = np.meshgrid(np.arange(256), np.arange(256), indexing='ij')
  with np.errstate(divide='ignore', invalid='ignore'):
    s = spread.astype(f32) / maximum.astype(f32)
  saturation = np.trunc(s.astype(f64) * 255.0)
  saturation = np.where((spread > 0) & (spread <= maximum), np.clip(saturation, 0, 255), 0)

  kx, ky = np.meshgrid(np.arange(256), np.arange(256), indexing='ij')
  cr = np.maximum(kx, ky).astype(f32)
  with np.errstate(divide='ignore', invalid='ignore'):
    qx = kx.astype(f32) / cr
    qy = ky.astype(f32) / cr
  hues = []
  for base in (0.0, 2.0, 4.0):
    if base == 0.0:
      h = qx - qy  # float32 - float32 in C
    else:
      h = ((base + qx.astype(f64)) - qy.astype(f64)).astype(f32)
    h = np.fmod(h.astype(f64) / 6.0 + 1.0, 1.0).astype(f32)
    hue = np.clip(np.trunc(h.astype(f64) * 255.0), 0, 255)
    hues.append(np.where(cr > 0, hue, 0))
  return saturation.astype(np.uint8), np.stack(hues).astype(np.uint8)


def rgb_to_hsv(image: jax.Array) -> jax.Array:
  """PIL's `convert('HSV')`: (..., 3) uint8 RGB -> (..., 3) int32 HSV, each in [0, 255]."""
  rgb = image.astype(jnp.int32)
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  maximum = jnp.maximum(r, jnp.maximum(g, b))
  minimum = jnp.minimum(r, jnp.minimum(g, b))
  saturation_table, hue_table = (jnp.asarray(t.reshape(-1)) for t in _rgb_to_hsv_tables())
  saturation = saturation_table[maximum * 256 + (maximum - minimum)].astype(jnp.int32)
  # Convert.c's case order: red if it is the maximum, else green, else blue.
  case = jnp.where(r == maximum, 0, jnp.where(g == maximum, 1, 2))
  x = jnp.where(case == 0, b, jnp.where(case == 1, r, g))
  y = jnp.where(case == 0, g, jnp.where(case == 1, b, r))
  hue = hue_table[(case * 256 + (maximum - x)) * 256 + (maximum - y)].astype(jnp.int32)
  return jnp.stack([hue, saturation, maximum], axis=-1)


@functools.lru_cache(maxsize=None)
def _hsv_to_rgb_tables() -> Tuple[np.ndarray, np.ndarray]:
  """(256 s, 85 n, 3) int32 limbs of fs * f and of fs * (1 - f) in units of 2^-64.

  hsv2rgb: fs = (float) s / 255.0 and, with i = floor(h * 6.0 / 255.0), f = (float) (h * 6.0 /
  255.0 - i); f depends on h only through n = 6 h mod 255 (asserted). fs, f and 1 - f are
  multiples of 2^-32 (asserted), so the products are exact integers in units of 2^-64, at most
  2^64 (s = 255, f = 0).
  """
  f32, f64 = np.float32, np.float64
  h = np.arange(256)
  sector = np.floor(h.astype(f32).astype(f64) * 6.0 / 255.0)
  f = (h.astype(f32).astype(f64) * 6.0 / 255.0 - sector.astype(f32).astype(f64)).astype(f32)
  n = (6 * h) % 255
  fraction = np.zeros(_NUM_HUE_FRACTIONS, f32)
  fraction[n // 3] = f
  assert (fraction[n // 3] == f).all() and (sector == (6 * h) // 255).all()
  fs = (np.arange(256).astype(f32).astype(f64) / 255.0).astype(f32)

  def units(x):  # exact multiples of 2^-32 as Python ints
    scaled = x.astype(f64) * 2.0**32
    assert (scaled == np.floor(scaled)).all()
    return [int(v) for v in scaled]

  a, b, b_complement = units(fs), units(fraction), units(1.0 - fraction.astype(f64))

  def limbs(products):
    out = np.zeros((256, _NUM_HUE_FRACTIONS, 3), np.int32)
    for s in range(256):
      for k in range(_NUM_HUE_FRACTIONS):
        x = products(s, k)
        assert 0 <= x <= 2**64
        out[s, k] = (x >> (2 * _LIMB_BITS), (x >> _LIMB_BITS) & _LIMB_MASK, x & _LIMB_MASK)
    return out

  return (limbs(lambda s, k: a[s] * b[k]), limbs(lambda s, k: a[s] * b_complement[k]))


def _round_complement(v: jax.Array, limbs: jax.Array) -> jax.Array:
  """round(v * (1 - P)) half away from zero, exactly, for P = limbs in units of 2^-64.

  v (1 - P) = v - (I + F) with I + F = v P, I its integer part and F its fraction; rounding
  half away from zero gives v - I - [F > 1/2].
  """
  high, middle, low = limbs[..., 0], limbs[..., 1], limbs[..., 2]
  carry0 = v * low
  carry1 = v * middle + (carry0 >> _LIMB_BITS)
  carry2 = v * high + (carry1 >> _LIMB_BITS)
  integer = carry2 >> _TOP_BITS
  top = carry2 & ((1 << _TOP_BITS) - 1)
  half = 1 << (_TOP_BITS - 1)
  rest = ((carry1 & _LIMB_MASK) | (carry0 & _LIMB_MASK)) != 0
  above_half = (top > half) | ((top == half) & rest)
  return v - integer - above_half.astype(jnp.int32)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  """PIL's HSV -> RGB conversion: (..., 3) int32 or uint8 HSV -> (..., 3) int32 RGB."""
  hsv = hsv.astype(jnp.int32)
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  sector = (6 * h) // 255  # 0..6; 6 (h = 255) is sector 0 with f = 0
  row = s * _NUM_HUE_FRACTIONS + ((6 * h) % 255) // 3
  q_table, t_table = (jnp.asarray(t.reshape(-1, 3)) for t in _hsv_to_rgb_tables())
  p = _round_complement(v, t_table[s * _NUM_HUE_FRACTIONS])  # fs * (1 - 0)
  q = _round_complement(v, q_table[row])
  t = _round_complement(v, t_table[row])
  # (R, G, B) per sector of hsv2rgb's switch (i % 6); s = 0 gives p = q = t = v, i.e. grey.
  choices = jnp.stack([v, p, q, t], axis=-1)
  pick = jnp.asarray(_SECTOR_CHANNELS, jnp.int32)[sector % 6]
  return jnp.take_along_axis(choices, pick, axis=-1)


def hue_shift(hue_factor) -> jax.Array:
  """`np.uint8(hue_factor * 255)` (numpy 1.x: truncation, then modulo 256), () int32.

  The reference multiplies the float32 hue by 255 in double (exact). The float32 product
  truncates to the same integer for every float32 in [-0.5, 0.5] (checked over all of them
  once; the tests check every float32 near each k / 255, the only places it could differ).
  """
  scaled = jnp.asarray(hue_factor, jnp.float32) * 255.0
  return jnp.trunc(scaled).astype(jnp.int32) % 256


def adjust_hue(image: jax.Array, hue_factor) -> jax.Array:
  """torchvision `adjust_hue` on a PIL RGB image: (H, W, 3) uint8 -> (H, W, 3) uint8.

  hue_factor in [-0.5, 0.5] (torchvision raises outside; here it is not checked on the device).
  """
  return _rotate_hue(_as_int(image), hue_factor).astype(jnp.uint8)


def _rotate_hue(rgb: jax.Array, hue_factor) -> jax.Array:
  """(H, W, 3) int32 RGB -> HSV, H + shift modulo 256, -> RGB (int32)."""
  hsv = rgb_to_hsv(rgb)
  return hsv_to_rgb(hsv.at[..., 0].set((hsv[..., 0] + hue_shift(hue_factor)) & 255))


# ---------------------------------------------------------------------------------------------
# The jitter


def factor_range(strength: float, name: str) -> Tuple[float, float]:
  """torchvision's range of a brightness/contrast/saturation factor: [max(0, 1 - x), 1 + x]."""
  if strength < 0:
    raise ValueError(f'colour jitter {name} must be non-negative, got {strength}')
  return max(0.0, 1.0 - strength), 1.0 + strength


def jitter_params(rng: jax.Array, brightness: float = 0.5, contrast: float = 0.5,
                  saturation: float = 0.5, hue: float = 0.5):
  """torchvision ColorJitter.get_params: the order and the four factors.

  Args:
    rng: a PRNG key.
    brightness, contrast, saturation: static strengths s >= 0: factors ~ U[max(0, 1 - s),
      1 + s] (s = 0 gives factor 1, torchvision's skipped operation).
    hue: static strength in [0, 0.5]: hue factor ~ U[-hue, hue].

  Returns:
    order: (4,) int32, a permutation of 0 brightness, 1 contrast, 2 saturation, 3 hue.
    factors: (4,) float32, the brightness, contrast, saturation factors and the hue factor.
  """
  if not 0.0 <= hue <= MAX_HUE:
    raise ValueError(f'colour jitter hue must be in [0, {MAX_HUE}], got {hue}')
  order_key, factor_key = jax.random.split(rng)
  low, high = zip(factor_range(brightness, 'brightness'), factor_range(contrast, 'contrast'),
                  factor_range(saturation, 'saturation'), (-hue, hue))
  factors = jax.random.uniform(factor_key, (_NUM_OPS,), jnp.float32,
                               jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32))
  order = jnp.argsort(jax.random.uniform(order_key, (_NUM_OPS,)))  # uniform permutation
  return order.astype(jnp.int32), factors


def apply_jitter(image: jax.Array, order: jax.Array, factors: jax.Array,
                 hue_enabled: bool = True) -> jax.Array:
  """The four operations in `order` with `factors` (see jitter_params): uint8 -> uint8.

  The hue operation (the only expensive one) runs once: the three blends before it in `order`,
  then hue, then the blends after it, each blend slot applied or skipped by position. With
  `hue_enabled` False (torchvision's hue=0, where the operation is skipped altogether) only the
  blends run, in their relative order.
  """
  rgb = _as_int(image)
  hue_position = jnp.argmax(order == _HUE_OP)
  # The three blend operations in their order: the positions in `order` other than hue's.
  positions = jnp.arange(_NUM_OPS)
  blend_ops = order[jnp.sort(jnp.where(order == _HUE_OP, _NUM_OPS, positions))[:_NUM_OPS - 1]]

  def blend_op(op, rgb):  # 0 brightness (black), 1 contrast (mean grey), 2 saturation ('L')
    degenerate = jnp.where(op == 0, 0,
                           jnp.where(op == 1, contrast_grey(rgb), grey(rgb)[..., None]))
    return blend(degenerate, rgb, factors[op])

  for slot in range(_NUM_OPS - 1):
    rgb = jnp.where(jnp.logical_or(slot < hue_position, not hue_enabled),
                    blend_op(blend_ops[slot], rgb), rgb)
  if hue_enabled:
    rgb = _rotate_hue(rgb, factors[_HUE_OP])
    for slot in range(_NUM_OPS - 1):
      rgb = jnp.where(slot >= hue_position, blend_op(blend_ops[slot], rgb), rgb)
  return rgb.astype(jnp.uint8)


def color_jitter(rng: jax.Array, image: jax.Array, brightness: float = 0.5,
                 contrast: float = 0.5, saturation: float = 0.5, hue: float = 0.5) -> jax.Array:
  """torchvision 0.9.2 `ColorJitter(brightness, contrast, saturation, hue)` on a PIL image.

  Args:
    rng: a PRNG key; the order and the factors come from it (not torch's stream).
    image: (H, W, 3) uint8.
    brightness, contrast, saturation, hue: static strengths, as torchvision's arguments.

  Returns:
    (H, W, 3) uint8.
  """
  if brightness == contrast == saturation == hue == 0:  # torchvision skips every operation
    return image
  order, factors = jitter_params(rng, brightness, contrast, saturation, hue)
  return apply_jitter(image, order, factors, hue_enabled=hue > 0)
