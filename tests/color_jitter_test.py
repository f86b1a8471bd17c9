"""Tests for vireid_jax.augment.color_jitter: equal to the uint8 to torchvision 0.9.2's PIL ColorJitter.

torchvision is not installed; its `functional_pil.adjust_*` (a few lines each over PIL) and
`ColorJitter.forward` are transcribed below. The installed Pillow's Blend.c, Convert.c
(rgb2l, rgb2hsv_row, hsv2rgb), ImageEnhance and ImageStat compute what Pillow 8.x (the
reference's era) computes: their sources differ only in layout and alpha-channel handling.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance

from vireid_jax.augment import color_jitter as cj

# --------------------------------------------------------------------------------------------
# Transcription of torchvision 0.9.2 (functional_pil.py, transforms.ColorJitter.forward).


def tv_adjust_brightness(img, factor):
  return ImageEnhance.Brightness(img).enhance(factor)


def tv_adjust_contrast(img, factor):
  return ImageEnhance.Contrast(img).enhance(factor)


def tv_adjust_saturation(img, factor):
  return ImageEnhance.Color(img).enhance(factor)


def tv_adjust_hue(img, hue_factor):
  if not -0.5 <= hue_factor <= 0.5:
    raise ValueError(hue_factor)
  h, s, v = img.convert('HSV').split()
  np_h = np.array(h, dtype=np.uint8)
  # `np_h += np.uint8(hue_factor * 255)`: numpy 1.x converts the float with int() and wraps
  # modulo 256 (numpy 2 raises for a negative value instead).
  np_h += np.uint8(int(hue_factor * 255) % 256)
  h = Image.fromarray(np_h, 'L')
  return Image.merge('HSV', (h, s, v)).convert('RGB')


def tv_color_jitter(img, fn_idx, b, c, s, h):
  """ColorJitter.forward with get_params' draws given (None = that operation off)."""
  for fn_id in fn_idx:
    if fn_id == 0 and b is not None:
      img = tv_adjust_brightness(img, b)
    elif fn_id == 1 and c is not None:
      img = tv_adjust_contrast(img, c)
    elif fn_id == 2 and s is not None:
      img = tv_adjust_saturation(img, s)
    elif fn_id == 3 and h is not None:
      img = tv_adjust_hue(img, h)
  return img


def _pil(fn, image, *args):
  return np.asarray(fn(Image.fromarray(np.asarray(image), 'RGB'), *args))


# --------------------------------------------------------------------------------------------
# Inputs


def _images(seed, count, height, width):
  """Random uint8 images mixing noise, grey pixels, saturated pixels and flat patches."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)
  for image in images:
    rows = rng.integers(0, height, height * width // 3)
    cols = rng.integers(0, width, len(rows))
    kind = rng.integers(0, 4, len(rows))
    value = rng.integers(0, 256, len(rows)).astype(np.uint8)
    grey = kind == 0  # r = g = b
    image[rows[grey], cols[grey]] = value[grey, None]
    for channel, level in ((1, 0), (2, 255)):  # a channel at 0 / 255
      hit = kind == channel
      image[rows[hit], cols[hit], rng.integers(0, 3, hit.sum())] = level
    ties = kind == 3  # two channels equal (the hue case order)
    image[rows[ties], cols[ties], 1] = image[rows[ties], cols[ties], 0]
  return images


def _blend_factors(seed, count):
  """float32 factors: random over [0, 2] plus the edges of the jitter's [0.5, 1.5]."""
  edges = [0.0, 1e-7, 0.25, 0.5, np.nextafter(np.float32(0.5), 1), np.nextafter(np.float32(1), 0),
           1.0, np.nextafter(np.float32(1), 2), 1.5, np.nextafter(np.float32(1.5), 0), 2.0]
  random = np.random.default_rng(seed).uniform(0.0, 2.0, count)
  return np.concatenate([np.asarray(edges, np.float32), random.astype(np.float32)])


def _fused_blend_cases():
  """(alpha, in1, in2) where one rounding of in1 + alpha * (in2 - in1) (a fused multiply-add)
  truncates differently from PIL's two float32 roundings: the cases an FMA would get wrong."""
  rng = np.random.default_rng(7)
  values = np.arange(256)
  in1, in2 = (a.reshape(-1) for a in np.meshgrid(values, values, indexing='ij'))
  found = []
  for alpha in rng.uniform(0.0, 2.0, 4000).astype(np.float32):
    product = alpha * (in2 - in1).astype(np.float32)
    two_roundings = np.trunc(np.clip(in1.astype(np.float32) + product, 0, 255))
    one_rounding = np.trunc(np.clip((in1 + np.float64(alpha) * (in2 - in1)).astype(np.float32),
                                    0, 255))
    for k in np.flatnonzero(two_roundings != one_rounding):
      found.append((alpha, in1[k], in2[k]))
  return found


# --------------------------------------------------------------------------------------------
# The four operations


def test_grey_and_contrast_grey_match_pil():
  for image in _images(0, 6, 23, 11):
    luma = np.asarray(Image.fromarray(image, 'RGB').convert('L'))
    np.testing.assert_array_equal(np.asarray(cj.grey(jnp.asarray(image))), luma)
    stat_mean = int(np.mean(luma, dtype=np.float64) + 0.5)
    assert int(cj.contrast_grey(jnp.asarray(image))) == stat_mean


def test_contrast_grey_rounds_exact_halves_up():
  # Means exactly k + 0.5 (two pixels k and k + 1) and just below/above it.
  for k in (0, 17, 127, 254):
    pair = np.array([[[k] * 3, [k + 1] * 3]], np.uint8)
    assert int(cj.contrast_grey(jnp.asarray(pair))) == int(
        np.asarray(Image.fromarray(pair).convert('L')).mean() + 0.5) == k + 1
    triple = np.array([[[k] * 3, [k] * 3, [k + 1] * 3]], np.uint8)
    assert int(cj.contrast_grey(jnp.asarray(triple))) == k


@pytest.mark.parametrize('name', ['brightness', 'contrast', 'saturation'])
def test_blend_operations_match_pil(name):
  ours = {'brightness': cj.adjust_brightness, 'contrast': cj.adjust_contrast,
          'saturation': cj.adjust_saturation}[name]
  theirs = {'brightness': tv_adjust_brightness, 'contrast': tv_adjust_contrast,
            'saturation': tv_adjust_saturation}[name]
  images = _images(1, 4, 24, 16)
  factors = _blend_factors(2, 40)
  got = jax.jit(jax.vmap(jax.vmap(ours, (None, 0)), (0, None)))(images, factors)
  for i, image in enumerate(images):
    for j, factor in enumerate(factors):
      np.testing.assert_array_equal(np.asarray(got[i, j]), _pil(theirs, image, float(factor)),
                                    err_msg=f'{name} factor {factor!r} image {i}')


def test_blend_is_exact_where_a_fused_multiply_add_would_not_be():
  cases = _fused_blend_cases()
  assert len(cases) >= 100  # the test below is sensitive to the rounding order
  alpha = np.array([c[0] for c in cases], np.float32)
  in1 = np.array([c[1] for c in cases])
  in2 = np.array([c[2] for c in cases])
  got = np.asarray(jax.jit(jax.vmap(cj.blend))(jnp.asarray(in1), jnp.asarray(in2),
                                                jnp.asarray(alpha)))
  for k, (a, x, y) in enumerate(cases):
    # PIL on a 1x1 'L' image pair is the same C loop.
    want = np.asarray(Image.blend(Image.new('L', (1, 1), int(x)), Image.new('L', (1, 1), int(y)),
                                  float(a)))[0, 0]
    assert got[k] == want, (a, x, y)


def test_hue_shift_is_numpys_uint8_of_hue_times_255():
  # A float32 product h * 255 can truncate differently from the reference's double product only
  # within a rounding error of an integer k, i.e. for h next to k / 255: take the 64 float32 on
  # each side of every k / 255, plus random hues and the ends.
  near = []
  for k in range(1, 128):
    h = np.float32(k / 255)
    for _ in range(64):
      h = np.nextafter(h, np.float32(0))
    for _ in range(129):
      near += [h, -h]
      h = np.nextafter(h, np.float32(1))
  hues = np.concatenate([np.random.default_rng(3).uniform(-0.5, 0.5, 2000).astype(np.float32),
                         np.asarray([-0.5, 0.0, 0.5, 1e-9, -1e-9] + near, np.float32)])
  want = np.array([int(float(h) * 255) % 256 for h in hues])
  np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(cj.hue_shift))(hues)), want)


def test_hsv_conversions_match_pil_on_every_colour():
  convert = jax.jit(lambda x: (cj.rgb_to_hsv(x), cj.hsv_to_rgb(x)))
  colours = np.arange(2**24, dtype=np.uint32)
  for chunk in np.split(colours, 16):
    image = np.stack([chunk >> 16, (chunk >> 8) & 255, chunk & 255], -1).astype(np.uint8)
    image = image.reshape(1024, 1024, 3)
    hsv, rgb = convert(image)
    np.testing.assert_array_equal(np.asarray(hsv),
                                  np.asarray(Image.fromarray(image, 'RGB').convert('HSV')))
    np.testing.assert_array_equal(np.asarray(rgb),
                                  np.asarray(Image.fromarray(image, 'HSV').convert('RGB')))


def test_adjust_hue_matches_torchvision():
  images = _images(4, 3, 20, 12)
  hues = np.concatenate([[-0.5, -0.25, 0.0, 1e-3, 0.25, 0.5],
                         np.random.default_rng(5).uniform(-0.5, 0.5, 20)]).astype(np.float32)
  got = jax.jit(jax.vmap(jax.vmap(cj.adjust_hue, (None, 0)), (0, None)))(images, hues)
  for i, image in enumerate(images):
    for j, hue in enumerate(hues):
      np.testing.assert_array_equal(np.asarray(got[i, j]), _pil(tv_adjust_hue, image, float(hue)),
                                    err_msg=f'hue {hue!r} image {i}')


# --------------------------------------------------------------------------------------------
# The jitter


def test_apply_jitter_matches_torchvision_in_every_order():
  images = _images(6, 2, 18, 10)
  rng = np.random.default_rng(8)
  orders, factors = [], []
  for order in itertools.permutations(range(4)):
    for _ in range(2):
      orders.append(order)
      factors.append(np.concatenate([rng.uniform(0.5, 1.5, 3), rng.uniform(-0.5, 0.5, 1)]))
  orders = np.asarray(orders, np.int32)
  factors = np.asarray(factors, np.float32)
  got = jax.jit(jax.vmap(jax.vmap(cj.apply_jitter, (None, 0, 0)), (0, None, None)))(
      images, orders, factors)
  for i, image in enumerate(images):
    for j, (order, (b, c, s, h)) in enumerate(zip(orders, factors)):
      want = _pil(tv_color_jitter, image, order, float(b), float(c), float(s), float(h))
      np.testing.assert_array_equal(np.asarray(got[i, j]), want, err_msg=f'order {order}')


def test_color_jitter_is_torchvision_with_its_own_draws():
  images = _images(9, 8, 16, 8)
  keys = jax.random.split(jax.random.key(0), len(images))
  got = jax.jit(jax.vmap(cj.color_jitter))(keys, images)
  orders, factors = jax.jit(jax.vmap(cj.jitter_params))(keys)
  for image, out, order, (b, c, s, h) in zip(images, got, np.asarray(orders),
                                             np.asarray(factors).tolist()):
    want = _pil(tv_color_jitter, image, order, b, c, s, h)
    np.testing.assert_array_equal(np.asarray(out), want)


def test_zero_hue_skips_the_hsv_round_trip():
  images = _images(10, 6, 12, 6)
  keys = jax.random.split(jax.random.key(1), len(images))
  jitter = jax.jit(jax.vmap(lambda k, x: cj.color_jitter(k, x, 0.4, 0.3, 0.2, 0.0)))
  orders, factors = jax.jit(jax.vmap(lambda k: cj.jitter_params(k, 0.4, 0.3, 0.2, 0.0)))(keys)
  for image, out, order, (b, c, s, _) in zip(images, jitter(keys, images), np.asarray(orders),
                                             np.asarray(factors).tolist()):
    want = _pil(tv_color_jitter, image, order, b, c, s, None)
    np.testing.assert_array_equal(np.asarray(out), want)
  # The round trip alone is lossy, so skipping it is observable.
  image = _images(11, 1, 12, 6)[0]
  assert (_pil(tv_adjust_hue, image, 0.0) != image).any()


def test_jitter_params_follow_torchvisions_ranges():
  keys = jax.random.split(jax.random.key(2), 4000)
  orders, factors = jax.jit(jax.vmap(lambda k: cj.jitter_params(k, 0.5, 0.2, 1.5, 0.1)))(keys)
  orders, factors = np.asarray(orders), np.asarray(factors)
  assert (np.sort(orders, axis=1) == np.arange(4)).all()
  assert len({tuple(o) for o in orders}) == 24
  for column, (low, high) in enumerate([(0.5, 1.5), (0.8, 1.2), (0.0, 2.5), (-0.1, 0.1)]):
    assert low <= factors[:, column].min() < low + 0.01
    assert high - 0.01 < factors[:, column].max() <= high
    assert abs(factors[:, column].mean() - (low + high) / 2) < 0.03 * (high - low)
  # Every position of every operation, about equally often.
  counts = np.stack([(orders == op).sum(0) for op in range(4)])
  assert (abs(counts - 1000) < 150).all()


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match='hue'):
    cj.jitter_params(jax.random.key(0), hue=0.6)
  with pytest.raises(ValueError, match='non-negative'):
    cj.jitter_params(jax.random.key(0), brightness=-0.1)
  with pytest.raises(TypeError, match='uint8'):
    cj.adjust_brightness(jnp.zeros((2, 2, 3), jnp.float32), 1.0)
