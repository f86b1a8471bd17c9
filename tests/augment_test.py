"""Tests for vireid_jax.augment: invariants, branch reachability, and faithfulness to the
reference's random choices (checked against small numpy re-implementations of its rules)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from vireid_jax import augment
from vireid_jax.methods.mbccm import views as mbccm_views

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
FILL = (0.4914, 0.4822, 0.4465)
DEFAULT = augment.AugmentConfig.from_config(augment.default_config())
# Every random operation off but the channel choices: each view is its source image, up to
# the channel operation.
ALL_OFF = augment.AugmentConfig(flip_prob=0.0, pad=0, linear_transform_prob=0.0,
                                erase_prob=0.0, infrared_grey_prob=0.0)
ERASE_ONLY = dataclasses.replace(ALL_OFF, erase_prob=1.0)
# Normalised values of [0, 1] pixels span this range for ImageNet mean/std.
LOW = min((0 - m) / s for m, s in zip(MEAN, STD))
HIGH = max((1 - m) / s for m, s in zip(MEAN, STD))


def _images(seed, n, height=16, width=8):
  return np.random.RandomState(seed).randint(0, 256, (n, height, width, 3), dtype=np.uint8)


def _np_normalize(images):
  return ((images.astype(np.float64) / 255.0 - MEAN) / STD).astype(np.float32)


def _per_sample(fn, seed, images, *args):
  """Runs a single-image function on every image with its own key, jitted."""
  keys = jax.random.split(jax.random.key(seed), len(images))
  return np.asarray(jax.jit(jax.vmap(lambda k, x: fn(k, x, *args)))(keys, jnp.asarray(images)))


def _reference_rectangle(rs, height, width, area=(0.02, 0.4), aspect=0.3, tries=100):
  """The reference's erasing rectangle (ChannelRandomErasing), in plain Python."""
  for _ in range(tries):
    target = rs.uniform(*area) * height * width
    ratio = rs.uniform(aspect, 1 / aspect)
    h = int(round(math.sqrt(target * ratio)))
    w = int(round(math.sqrt(target / ratio)))
    if w < width and h < height:
      return rs.randint(0, height - h + 1), rs.randint(0, width - w + 1), h, w
  return None


def test_config_from_config_dict_is_hashable_and_validated():
  assert DEFAULT == augment.AugmentConfig()  # config.py defaults == the dataclass defaults
  assert hash(DEFAULT) == hash(augment.AugmentConfig())
  cfg = augment.default_config()
  cfg.erase_area = [0.1, 0.2]  # lists (e.g. from a command-line override) become tuples
  assert augment.AugmentConfig.from_config(cfg).erase_area == (0.1, 0.2)
  with pytest.raises(ValueError, match='erase_area'):
    augment.AugmentConfig(erase_area=(0.5, 0.1))


def test_normalize_matches_numpy():
  images = _images(0, 3)
  out = augment.normalize(jnp.asarray(images), MEAN, STD)
  assert out.dtype == jnp.float32 and out.shape == images.shape
  np.testing.assert_allclose(out, _np_normalize(images), atol=1e-6)


def test_augment_batch_shapes_ranges_and_determinism():
  visible, infrared = jnp.asarray(_images(1, 4)), jnp.asarray(_images(2, 4))
  key = jax.random.key(3)
  views = mbccm_views.augment_batch(key, visible, infrared, DEFAULT, MEAN, STD)
  again = mbccm_views.augment_batch(key, visible, infrared, DEFAULT, MEAN, STD)
  other = mbccm_views.augment_batch(jax.random.key(4), visible, infrared, DEFAULT, MEAN, STD)
  for view, same, different in zip(views, again, other):
    assert view.shape == (4, 16, 8, 3) and view.dtype == jnp.float32
    assert np.all(np.isfinite(view))
    # Every op keeps values inside the normalised range of [0, 1] pixels (the fill is in it).
    assert LOW - 1e-5 <= float(view.min()) and float(view.max()) <= HIGH + 1e-5
    np.testing.assert_array_equal(view, same)
    assert not np.array_equal(view, different)
  with pytest.raises(TypeError, match='uint8'):
    mbccm_views.augment_batch(key, visible.astype(jnp.float32), infrared, DEFAULT, MEAN, STD)


def _channel_copy(image, channel):
  return np.repeat(image[..., channel:channel + 1], 3, axis=-1)


def _explains(view, expected, fill):
  """True if `view` is `expected` with one non-empty region set to `fill` (per channel)."""
  erased = np.all(np.isclose(view, fill, atol=1e-6), axis=-1)
  return erased.any() and np.allclose(view[~erased], expected[~erased], atol=1e-6)


def test_views_come_from_their_source_and_erasing_writes_the_fill():
  visible, infrared = _images(5, 8), _images(6, 8)
  view_a, view_b, infrared_view = map(np.asarray, mbccm_views.augment_batch(
      jax.random.key(0), jnp.asarray(visible), jnp.asarray(infrared), ERASE_ONLY, MEAN, STD))
  normed, normed_ir = _np_normalize(visible), _np_normalize(infrared)
  fill = np.asarray(FILL)  # the reference's quirk: raw fill values in normalised space
  for i in range(8):
    assert _explains(view_a[i], normed[i], fill)
    # View B: the same source, erased on its own, then one channel (fill included) copied.
    assert any(_explains(view_b[i], _channel_copy(normed[i], c), fill[c]) for c in range(3))
    assert any(_explains(infrared_view[i], _channel_copy(normed_ir[i], c), fill[c])
               for c in range(3)) or _explains(infrared_view[i], normed_ir[i], fill)


def test_erase_fill_space_switch():
  np.testing.assert_allclose(augment.erase_fill_value(DEFAULT, MEAN, STD), FILL)
  colour = dataclasses.replace(DEFAULT, erase_fill_in_normalized_space=False)
  np.testing.assert_allclose(augment.erase_fill_value(colour, MEAN, STD),
                             (np.asarray(FILL) - MEAN) / STD, atol=1e-6)


def test_flip_is_the_mirror_image():
  images = _images(7, 4)
  out = _per_sample(augment.flip_pad_crop, 0, images, 1.0, 0)
  np.testing.assert_array_equal(out, images[:, :, ::-1])


def test_pad_and_crop_is_a_shifted_window_with_black_borders():
  pad, images = 3, _images(8, 400, 6, 5)
  out = _per_sample(augment.flip_pad_crop, 1, images, 0.5, pad)
  assert out.dtype == np.uint8
  seen = []
  for image, crop in zip(images, out):
    matches = []
    for flip in (False, True):
      padded = np.pad(image[:, ::-1] if flip else image, ((pad, pad), (pad, pad), (0, 0)))
      for top in range(2 * pad + 1):
        for left in range(2 * pad + 1):
          if np.array_equal(crop, padded[top:top + 6, left:left + 5]):
            matches.append((flip, top, left))
    assert len(matches) == 1, matches  # random images: exactly one window explains the crop
    seen.append(matches[0])
  flips, tops, lefts = map(np.asarray, zip(*seen))
  assert abs(flips.sum() - 200) < 5 * 10  # Binomial(400, 0.5)
  # Offsets uniform over {0, ..., 2 pad}: every one drawn, none far from 400 / 7 = 57 times.
  for offsets in (tops, lefts):
    counts = np.bincount(offsets, minlength=2 * pad + 1)
    assert counts.size == 2 * pad + 1 and np.all(np.abs(counts - 400 / 7) < 5 * 7), counts


def test_sample_rectangle_matches_the_reference_distribution():
  height, width, n = 288, 144, 4000
  keys = jax.random.split(jax.random.key(0), n)
  top, left, h, w, found = map(np.asarray, jax.jit(jax.vmap(
      lambda k: augment.sample_rectangle(k, height, width, (0.02, 0.4), 0.3, 100)))(keys))
  assert found.all()
  assert np.all((h < height) & (w < width) & (h >= 1) & (w >= 1))
  assert np.all((top >= 0) & (left >= 0) & (top + h <= height) & (left + w <= width))
  rs = np.random.RandomState(0)
  ref = np.array([_reference_rectangle(rs, height, width) for _ in range(n)])
  for ours, theirs in zip((top, left, h, w), ref.T):
    stderr = math.sqrt(ours.var() / n + theirs.var() / n)
    assert abs(ours.mean() - theirs.mean()) < 4 * stderr
    assert stats.ks_2samp(ours, theirs).pvalue > 1e-3


def test_random_erasing_fills_one_rectangle():
  normed = _np_normalize(_images(9, 64, 12, 10))
  fill = jnp.asarray(FILL)
  always = augment.AugmentConfig(erase_prob=1.0)
  out = _per_sample(augment.random_erasing, 2, normed, fill, always)
  for before, after in zip(normed, out):
    changed = np.any(after != before, axis=-1)
    rows, cols = np.nonzero(changed)
    assert rows.size > 0
    box = np.zeros_like(changed)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    np.testing.assert_array_equal(changed, box)  # the erased pixels form a rectangle
    np.testing.assert_allclose(after[changed], np.broadcast_to(FILL, after[changed].shape))
  half = _per_sample(augment.random_erasing, 3, normed, fill, DEFAULT)
  erased = np.any(half != normed, axis=(1, 2, 3)).sum()
  assert 14 <= erased <= 50  # Binomial(64, 0.5)


def test_beta_half_is_arcsine_distributed():
  samples = np.asarray(augment._beta_half(jax.random.uniform(jax.random.key(0), (20000,))))
  assert stats.kstest(samples, stats.beta(0.5, 0.5).cdf).pvalue > 1e-3


def test_multiply_rectangles_stops_at_the_first_rectangle_meeting_the_rule():
  images = np.random.RandomState(11).uniform(0.2, 1.0, (64, 24, 12, 3)).astype(np.float32)
  images[0] = 0  # all black: never meets the rule (the reference loops forever)
  keys = jax.random.split(jax.random.key(4), 64)
  run = lambda cfg: map(np.asarray, jax.jit(jax.vmap(
      lambda k, x: augment.multiply_rectangles(k, x, cfg)))(keys, jnp.asarray(images)))
  out, scale, count = run(DEFAULT)
  assert np.all(scale[1:].min(axis=(1, 2, 3)) <= 1e-6)
  assert np.all((out >= 0) & (out <= 1))
  np.testing.assert_allclose(out, images * scale, rtol=1e-4, atol=1e-7)
  # The bound ends the black image's loop, leaving it untouched.
  assert count[0] == DEFAULT.linear_transform_max_rects and np.all(scale[0] == 1)
  cap = 6
  capped_out, capped_scale, capped_count = run(
      augment.AugmentConfig(linear_transform_max_rects=cap))
  np.testing.assert_array_equal(capped_count, np.minimum(count, cap))
  stopped = count <= cap
  assert stopped.sum() > 5 and (~stopped).sum() > 5
  np.testing.assert_array_equal(capped_out[stopped], out[stopped])  # same rectangle sequence
  # Those that went on had not met the rule after `cap` rectangles.
  assert np.all(capped_scale[~stopped].min(axis=(1, 2, 3)) > 1e-6)


def _rectangle_batch():
  """Images whose loops stop after very different counts: noise, dim, flat, and black ones
  (never meet the rule: they run to the bound)."""
  images = np.random.RandomState(18).uniform(0.0, 1.0, (40, 24, 12, 3)).astype(np.float32)
  images[:4] = 0
  images[4:8] *= 1e-3
  images[8:12] = 0.5
  return jnp.asarray(images)


@pytest.mark.parametrize('loop, first_phase, slots', [
    ('fixed', 24, 16), ('two_phase', 24, 16), ('two_phase', 4, 3), ('two_phase', 10, 40),
    ('two_phase', 64, 2)])
def test_rectangle_loop_forms_give_equal_outputs(loop, first_phase, slots):
  images = _rectangle_batch()
  keys = jax.random.split(jax.random.key(19), len(images))
  active = jnp.arange(len(images)) % 5 != 2  # some samples skip the transform
  run = lambda cfg: [np.asarray(a) for a in jax.jit(
      lambda k, x, a: augment.multiply_rectangles_batch(k, x, cfg, a))(keys, images, active)]
  want = run(DEFAULT)  # 'while'
  assert DEFAULT.linear_transform_loop == 'while'
  counts = want[2]
  # The batch spans what the forms must agree on: skipped, early, late and capped samples,
  # and (first_phase 4, 3 slots) more stragglers than slots.
  assert counts.min() == 0 and counts.max() == DEFAULT.linear_transform_max_rects
  assert np.sum((counts > 4) & (counts < DEFAULT.linear_transform_max_rects)) > 3
  cfg = dataclasses.replace(DEFAULT, linear_transform_loop=loop,
                            linear_transform_first_phase=first_phase,
                            linear_transform_straggler_slots=slots)
  for name, got, expected in zip(('images', 'scale', 'num_rects'), run(cfg), want):
    np.testing.assert_array_equal(got, expected, err_msg=name)


@pytest.mark.parametrize('loop', ['fixed', 'two_phase'])
def test_augment_batch_is_the_same_with_every_rectangle_loop(loop):
  visible, infrared = jnp.asarray(_images(20, 12, 24, 12)), jnp.asarray(_images(21, 12, 24, 12))
  cfg = dataclasses.replace(DEFAULT, linear_transform_loop=loop, linear_transform_first_phase=8,
                            linear_transform_straggler_slots=2)
  key = jax.random.PRNGKey(22)  # raw keys, as the train step uses
  for got, want in zip(mbccm_views.augment_batch(key, visible, infrared, cfg, MEAN, STD),
                       mbccm_views.augment_batch(key, visible, infrared, DEFAULT, MEAN, STD)):
    np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match='linear_transform_loop'):
    augment.AugmentConfig(linear_transform_loop='until')


def _reference_rectangle_count(image, rs):
  """Rectangles the reference's LinearTransform loop draws on a (H, W, 3) [0, 1] image."""
  image, scale = image.astype(np.float64).copy(), np.ones(image.shape)
  height, width = image.shape[:2]
  count = 0
  while True:
    top, left, h, w = _reference_rectangle(rs, height, width, tries=10**6)
    count += 1
    for c in range(3):
      region = image[top:top + h, left:left + w, c]
      if region.max() > 0:
        alpha = rs.beta(0.5, 0.5) / region.max()
        image[top:top + h, left:left + w, c] *= alpha
        scale[top:top + h, left:left + w, c] *= alpha
    if scale.min() <= 1e-6:
      return count


def test_rectangle_count_matches_the_reference_loop():
  n = 600
  image = np.random.RandomState(12).uniform(0.0, 1.0, (24, 12, 3)).astype(np.float32)
  rs = np.random.RandomState(13)
  theirs = np.array([_reference_rectangle_count(image, rs) for _ in range(n)])
  keys = jax.random.split(jax.random.key(5), n)
  ours = np.asarray(jax.jit(jax.vmap(
      lambda k: augment.multiply_rectangles(k, jnp.asarray(image), DEFAULT)[2]))(keys))
  stderr = math.sqrt(ours.var() / n + theirs.var() / n)
  assert abs(ours.mean() - theirs.mean()) < 4 * stderr, (ours.mean(), theirs.mean())


def test_linear_transform_probability():
  images = np.random.RandomState(14).uniform(0.2, 1.0, (200, 12, 6, 3)).astype(np.float32)
  out = _per_sample(augment.linear_transform, 6, images, DEFAULT)
  applied = np.any(out != images, axis=(1, 2, 3)).sum()
  assert 140 <= applied <= 180  # Binomial(200, 0.8): mean 160, sd 5.7


def _channel_case(normed, out):
  """Which channel operation turned `normed` (H, W, 3) into `out`: 0/1/2 copy, 3 grey, 4 none."""
  grey = 0.2989 * normed[..., 0] + 0.5870 * normed[..., 1] + 0.1140 * normed[..., 2]
  candidates = [normed[..., c] for c in range(3)] + [grey]
  for case, channel in enumerate(candidates):
    if np.allclose(out, channel[..., None], atol=1e-5):
      return case
  if np.allclose(out, normed, atol=1e-6):
    return 4
  raise AssertionError('output is no channel copy, grey image or the input')


def _infrared_cases(images, grey_prob):
  """How often each channel operation happened to `images`' infrared views (flip etc. off)."""
  cfg = dataclasses.replace(ALL_OFF, infrared_grey_prob=grey_prob)
  out = _per_sample(mbccm_views.augment_infrared, 7, images, cfg, MEAN, STD)
  return np.bincount([_channel_case(x, y) for x, y in zip(_np_normalize(images), out)],
                     minlength=5)


def test_infrared_branches_with_reference_probabilities():
  n, images = 800, _images(15, 800, 4, 3)
  cases = _infrared_cases(images, 0.5)  # copy R, G, B 1/4 each; grey, unchanged 1/8 each
  for case, p in enumerate((0.25, 0.25, 0.25, 0.125, 0.125)):
    assert abs(cases[case] - n * p) < 5 * math.sqrt(n * p * (1 - p)), cases
  always_grey = _infrared_cases(images, 1.0)
  assert always_grey[4] == 0 and abs(always_grey[3] - n / 4) < 5 * math.sqrt(n * 3 / 16)


def test_view_b_copies_each_channel_with_probability_one_third():
  n, images = 600, _images(16, 600, 4, 3)
  normed = _np_normalize(images)
  out = _per_sample(mbccm_views.augment_visible_b, 8, images, ALL_OFF, MEAN, STD)
  cases = np.bincount([_channel_case(x, y) for x, y in zip(normed, out)], minlength=5)
  assert cases[3] == cases[4] == 0
  for c in range(3):
    assert abs(cases[c] - n / 3) < 5 * math.sqrt(n * 2 / 9), cases


def test_grey_uses_the_luma_weights():
  image = np.random.RandomState(17).normal(size=(5, 4, 3)).astype(np.float32)
  grey = np.asarray(augment.to_grey(jnp.asarray(image)))
  expected = 0.2989 * image[..., 0] + 0.5870 * image[..., 1] + 0.1140 * image[..., 2]
  np.testing.assert_allclose(grey, np.repeat(expected[..., None], 3, -1), rtol=1e-6, atol=1e-6)
  copied = np.asarray(augment.copy_channel(jnp.asarray(image), 1))
  np.testing.assert_array_equal(copied, np.repeat(image[..., 1:2], 3, -1))
