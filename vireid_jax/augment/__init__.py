"""On-device augmentation ops, jitted JAX over uint8 image batches: the building blocks of
every method's training views (MBCCM's in methods/mbccm/views.py, PGM's in
methods/pgm/augment.py; torchvision's ColorJitter in `color_jitter`).

Each op follows the reference's torchvision transform: flip, pad + crop, [0, 1], the
multiplicative rectangles, normalise, random erasing, channel exchange, adaptive grey. Each
random choice uses the reference's probability and range; rectangles are built with iota
comparisons (mask arithmetic) rather than dynamic slices so a batch vectorises with `vmap`.

Faithfulness notes:
- Padding happens on the uint8 image (torchvision `Pad(10)` on the PIL image), so the border
  is black, i.e. -mean/std after normalisation.
- The reference draws rectangles in a Python loop until one fits ("up to 100 tries" for
  erasing, forever for the multiplicative rectangles); here all candidates are drawn at once
  and the first that fits is used, which gives the same distribution. At 288x144 about 94%
  of candidates fit, so `erase_tries` (100) candidates fail together with probability
  below 1e-120; the multiplicative rectangles use the same number.
- The multiplicative-rectangles loop stops exactly when the reference does (some pixel's
  accumulated scale <= `linear_transform_stop`). `linear_transform_loop` picks how the batch
  runs it, with equal outputs: 'while' (until the slowest sample stops: a trip count known
  only at run time, which XLA:GPU checks on the host every rectangle), 'fixed' (the bound for
  every sample, finished ones masked) or 'two_phase' (a fixed first phase for the batch, the
  rest for the few samples still drawing). `linear_transform_max_rects` only
  guards against the reference's endless loop on an all-black image: a faithful numpy rerun
  of the reference rule on padded-and-cropped 288x144 images draws 11-13 rectangles on
  average (10.6 on noise, 11.4 on smooth blocks, 12.8 on flat grey; p99 about 25, P(> 32)
  about 6e-4, the most 40 in 22,000 runs), so a bound of 64 leaves the distribution
  unchanged in practice.
"""

import dataclasses
import functools
import math
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections

# How the multiplicative-rectangles loop runs (`multiply_rectangles_batch`).
LINEAR_TRANSFORM_LOOPS = ('while', 'fixed', 'two_phase')
# Luma weights of the reference's grey conversion (`ChannelAdapGray`; MATLAB rgb2gray's Rec. 601).
GREY_WEIGHTS = (0.2989, 0.5870, 0.1140)


def default_config() -> ml_collections.ConfigDict:
  """`config.augment` of a method whose views use these ops: the reference's torchvision
  settings (MBCCM's and PGM's alike), which a method's config changes where it differs."""
  config = ml_collections.ConfigDict()
  config.flip_prob = 0.5  # random horizontal flip
  config.pad = 10  # zero padding before the random crop back to image size
  config.linear_transform_prob = 0.8  # visible view A: multiplicative rectangles
  config.erase_prob = 0.5  # random erasing on every view
  config.erase_area = (0.02, 0.4)  # erased area fraction (also the rectangles' area)
  config.erase_aspect = 0.3  # aspect in (0.3, 1/0.3)
  config.erase_tries = 100
  config.erase_fill = (0.4914, 0.4822, 0.4465)
  # Reference quirk: the fill is written into the already-normalised image. False fills
  # with (fill - mean) / std, i.e. the colour the fill values name.
  config.erase_fill_in_normalized_space = True
  config.linear_transform_max_rects = 64  # bound on rectangles drawn (the reference loops until a pixel's scale <= 1e-6)
  config.linear_transform_stop = 1e-6
  # The rectangles loop (same outputs for the same key in every form): 'while' stops when the
  # batch's slowest sample does (XLA:GPU reads that predicate on the host every rectangle);
  # 'fixed' draws linear_transform_max_rects for every sample, finished ones masked;
  # 'two_phase' runs linear_transform_first_phase for the whole batch, then the remaining
  # rectangles only for the samples still running, compacted into linear_transform_straggler_slots
  # (more stragglers than slots: one lax.cond runs the rest for the whole batch).
  config.linear_transform_loop = 'while'
  config.linear_transform_first_phase = 24
  config.linear_transform_straggler_slots = 16
  config.infrared_grey_prob = 0.5  # the 4th infrared case converts to grey with p 0.5
  return config


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Hashable augmentation settings (a static argument of the jitted functions).

  Field meanings and defaults follow `default_config()`.
  """

  flip_prob: float = 0.5
  pad: int = 10
  linear_transform_prob: float = 0.8
  erase_prob: float = 0.5
  erase_area: Tuple[float, float] = (0.02, 0.4)
  erase_aspect: float = 0.3
  erase_tries: int = 100
  erase_fill: Tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
  erase_fill_in_normalized_space: bool = True
  linear_transform_max_rects: int = 64
  linear_transform_stop: float = 1e-6
  linear_transform_loop: str = 'while'
  linear_transform_first_phase: int = 24
  linear_transform_straggler_slots: int = 16
  infrared_grey_prob: float = 0.5

  def __post_init__(self):
    lo, hi = self.erase_area
    if not 0 < lo <= hi <= 1:
      raise ValueError(f'augment.erase_area must satisfy 0 < lo <= hi <= 1, got {self.erase_area}')
    if not 0 < self.erase_aspect <= 1:
      raise ValueError(f'augment.erase_aspect must be in (0, 1] (aspect range is '
                       f'(a, 1/a)), got {self.erase_aspect}')
    if self.pad < 0 or self.erase_tries < 1 or self.linear_transform_max_rects < 1:
      raise ValueError('augment.pad must be >= 0, augment.erase_tries and '
                       'augment.linear_transform_max_rects >= 1; got '
                       f'{self.pad}, {self.erase_tries}, {self.linear_transform_max_rects}')
    if len(self.erase_fill) != 3:
      raise ValueError(f'augment.erase_fill needs 3 values (R, G, B), got {self.erase_fill}')
    if self.linear_transform_loop not in LINEAR_TRANSFORM_LOOPS:
      raise ValueError(f'augment.linear_transform_loop must be one of {LINEAR_TRANSFORM_LOOPS}, '
                       f'got {self.linear_transform_loop!r}')
    if self.linear_transform_first_phase < 1 or self.linear_transform_straggler_slots < 1:
      raise ValueError('augment.linear_transform_first_phase and '
                       'augment.linear_transform_straggler_slots must be >= 1; got '
                       f'{self.linear_transform_first_phase}, '
                       f'{self.linear_transform_straggler_slots}')

  @classmethod
  def from_config(cls, augment_config) -> 'AugmentConfig':
    """Builds it from `config.augment` (a ConfigDict or any object with those attributes)."""
    return cls(
        flip_prob=float(augment_config.flip_prob),
        pad=int(augment_config.pad),
        linear_transform_prob=float(augment_config.linear_transform_prob),
        erase_prob=float(augment_config.erase_prob),
        erase_area=tuple(float(a) for a in augment_config.erase_area),
        erase_aspect=float(augment_config.erase_aspect),
        erase_tries=int(augment_config.erase_tries),
        erase_fill=tuple(float(f) for f in augment_config.erase_fill),
        erase_fill_in_normalized_space=bool(augment_config.erase_fill_in_normalized_space),
        linear_transform_max_rects=int(augment_config.linear_transform_max_rects),
        linear_transform_stop=float(augment_config.linear_transform_stop),
        linear_transform_loop=str(augment_config.linear_transform_loop),
        linear_transform_first_phase=int(augment_config.linear_transform_first_phase),
        linear_transform_straggler_slots=int(augment_config.linear_transform_straggler_slots),
        infrared_grey_prob=float(augment_config.infrared_grey_prob),
    )


# --- pixel scaling ---------------------------------------------------------------------------

def to_unit(images: jax.Array) -> jax.Array:
  """uint8 (..., 3) -> float32 in [0, 1] (torchvision `ToTensor`)."""
  return images.astype(jnp.float32) / 255.0


def standardize(unit_images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """float32 (..., 3) in [0, 1] -> (x - mean) / std (torchvision `Normalize`)."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (unit_images - mean) / std


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """uint8 (B, H, W, 3) -> normalised float32 (B, H, W, 3); the eval-time input too."""
  return standardize(to_unit(images), mean, std)


# --- random draws ----------------------------------------------------------------------------
# Each operation draws all its variates with one `uniform` call: every PRNG call inlines a
# threefry hash, and fewer of them keep the compiled graph (and its compile time) small.

def _random_index(u: jax.Array, n) -> jax.Array:
  """floor(u * n) for u ~ U[0, 1): an integer uniform in {0, ..., n - 1}; n may be traced."""
  return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)


def _beta_half(u: jax.Array) -> jax.Array:
  """Beta(0.5, 0.5) from U ~ U[0, 1): the arcsine law is exactly sin^2(pi U / 2)."""
  return jnp.sin(0.5 * math.pi * u) ** 2


# --- geometry --------------------------------------------------------------------------------

def flip_pad_crop(rng: jax.Array, image: jax.Array, flip_prob: float, pad: int) -> jax.Array:
  """Random horizontal flip, zero padding by `pad`, random crop back to the input size.

  Args:
    rng: PRNG key.
    image: (H, W, C) any dtype; padding uses 0 (black for uint8).
  Returns:
    (H, W, C), same dtype: output[y, x] = flipped[y + top - pad, x + left - pad], 0 outside,
    with top, left uniform in {0, ..., 2 pad} (torchvision `RandomCrop` on the padded image).
  """
  if flip_prob <= 0 and pad == 0:  # static: the identity
    return image
  height, width = image.shape[:2]
  u = jax.random.uniform(rng, (3,))
  flip = u[0] < flip_prob
  top = _random_index(u[1], 2 * pad + 1)
  left = _random_index(u[2], 2 * pad + 1)
  rows = jnp.arange(height) + top - pad  # (H,) source rows of the flipped image
  cols = jnp.arange(width) + left - pad  # (W,) source columns of the flipped image
  inside = (((rows >= 0) & (rows < height))[:, None]
            & ((cols >= 0) & (cols < width))[None, :])  # (H, W)
  cols = jnp.where(flip, width - 1 - cols, cols)
  crop = image[jnp.clip(rows, 0, height - 1)][:, jnp.clip(cols, 0, width - 1)]
  return jnp.where(inside[..., None], crop, jnp.zeros_like(crop))


def _rectangle_from_uniforms(u: jax.Array, height: int, width: int,
                             area_range: Tuple[float, float],
                             min_aspect: float) -> Tuple[jax.Array, ...]:
  """`sample_rectangle` from u (2 tries + 2,) ~ U[0, 1)."""
  tries = (u.shape[0] - 2) // 2
  lo, hi = area_range
  area = (lo + (hi - lo) * u[:tries]) * (height * width)
  aspect = min_aspect + (1.0 / min_aspect - min_aspect) * u[tries:2 * tries]
  # jnp.round rounds half to even, as Python's round does.
  h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (h < height) & (w < width)  # (tries,)
  first = jnp.argmax(fits)
  found = fits[first]
  h = jnp.where(found, h[first], 0)
  w = jnp.where(found, w[first], 0)
  top = _random_index(u[-2], height - h + 1)
  left = _random_index(u[-1], width - w + 1)
  return top, left, h, w, found


def sample_rectangle(rng: jax.Array, height: int, width: int, area_range: Tuple[float, float],
                     min_aspect: float, tries: int) -> Tuple[jax.Array, ...]:
  """A random rectangle as the reference's erasing draws it, all tries at once.

  Each try draws area ~ U(area_range) * H * W and aspect ~ U(min_aspect, 1 / min_aspect),
  h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)); the first try with h < H
  and w < W is placed with its top-left corner uniform over the positions where it fits.

  Returns:
    (top, left, h, w, found): int32 scalars and a bool scalar (False when no try fits, in
    which case the rectangle is empty).
  """
  u = jax.random.uniform(rng, (2 * tries + 2,))
  return _rectangle_from_uniforms(u, height, width, area_range, min_aspect)


def rectangle_mask(height: int, width: int, top, left, h, w) -> jax.Array:
  """(H, W) bool, True inside rows [top, top + h) and columns [left, left + w)."""
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  return (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)


def _rectangle_mask_from_uniforms(u: jax.Array, height: int, width: int,
                                  cfg: AugmentConfig) -> jax.Array:
  top, left, h, w, _ = _rectangle_from_uniforms(u, height, width, cfg.erase_area,
                                                cfg.erase_aspect)
  return rectangle_mask(height, width, top, left, h, w)


# --- photometric -----------------------------------------------------------------------------

# One sample's rectangles loop state: (count () int32 rectangles drawn, image (H, W, 3) float32,
# scale (H, W, 3) float32 accumulated factors, done () bool: the stop rule was met).
RectangleState = Tuple[jax.Array, jax.Array, jax.Array, jax.Array]


def _still_drawing(state: RectangleState, cfg: AugmentConfig) -> jax.Array:
  count, _, _, done = state
  return (~done) & (count < cfg.linear_transform_max_rects)


def _add_rectangle(rng: jax.Array, state: RectangleState,
                   cfg: AugmentConfig) -> RectangleState:
  """One rectangle of the reference's loop; its draws depend only on (rng, count)."""
  count, image, scale, _ = state
  height, width = image.shape[:2]
  num_rect_uniforms = 2 * cfg.erase_tries + 2
  u = jax.random.uniform(jax.random.fold_in(rng, count), (num_rect_uniforms + 3,))
  mask = _rectangle_mask_from_uniforms(u[:num_rect_uniforms], height, width, cfg)
  mask = mask[..., None]  # (H, W, 1)
  region_max = jnp.max(jnp.where(mask, image, 0.0), axis=(0, 1))  # (3,); image >= 0
  beta = _beta_half(u[num_rect_uniforms:])  # (3,) one draw per channel
  alpha = jnp.where(region_max > 0, beta / region_max, 1.0)
  factor = jnp.where(mask, alpha, 1.0)  # (H, W, 3)
  scale = scale * factor
  return count + 1, image * factor, scale, jnp.min(scale) <= cfg.linear_transform_stop


def _draw_until_done(rng: jax.Array, state: RectangleState,
                     cfg: AugmentConfig) -> RectangleState:
  """The 'while' form: a loop whose trip count is the data's (the slowest sample's in a batch)."""
  return jax.lax.while_loop(functools.partial(_still_drawing, cfg=cfg),
                            functools.partial(_add_rectangle, rng, cfg=cfg), state)


def _draw(rng: jax.Array, state: RectangleState, cfg: AugmentConfig,
          num_steps: int) -> RectangleState:
  """`num_steps` (static) turns of the loop; a sample that stopped keeps its state exactly."""

  def turn(_, state):
    drawing = _still_drawing(state, cfg)
    drawn = _add_rectangle(rng, state, cfg)
    return tuple(jnp.where(drawing, new, old) for new, old in zip(drawn, state))

  return jax.lax.fori_loop(0, num_steps, turn, state)


def _draw_batch(rngs: jax.Array, state: RectangleState, cfg: AugmentConfig,
                num_steps: int) -> RectangleState:
  return jax.vmap(lambda rng, s: _draw(rng, s, cfg, num_steps))(rngs, state)


def _draw_in_two_phases(rngs: jax.Array, state: RectangleState,
                        cfg: AugmentConfig) -> RectangleState:
  """The 'two_phase' form: every sample draws `linear_transform_first_phase` rectangles, then
  the samples still drawing (few: the count's p99 is about 25) draw the rest compacted into
  `linear_transform_straggler_slots` rows; stragglers beyond the slots (none in practice)
  draw the rest under a lax.cond over the whole batch. Every trip count is static."""
  batch = state[1].shape[0]
  cap = cfg.linear_transform_max_rects
  first = min(cfg.linear_transform_first_phase, cap)
  state = _draw_batch(rngs, state, cfg, first)
  rest = cap - first
  if rest == 0:
    return state
  drawing = jax.vmap(functools.partial(_still_drawing, cfg=cfg))(state)  # (B,)
  slots = min(cfg.linear_transform_straggler_slots, batch)
  (taken,) = jnp.nonzero(drawing, size=slots, fill_value=batch)  # B marks an empty slot
  rows = jnp.minimum(taken, batch - 1)
  count, image, scale, done = (a[rows] for a in state)
  stragglers = (count, image, scale, done | (taken == batch))  # empty slots draw nothing
  stragglers = _draw_batch(rngs[rows], stragglers, cfg, rest)
  state = tuple(a.at[taken].set(b, mode='drop') for a, b in zip(state, stragglers))
  if slots == batch:  # static: every sample had a slot
    return state
  left_out = drawing.at[taken].set(False, mode='drop')

  def draw_left_out(state):
    count, image, scale, done = state
    return _draw_batch(rngs, (count, image, scale, done | ~left_out), cfg, rest)

  return jax.lax.cond(jnp.any(left_out), draw_left_out, lambda state: state, state)


def multiply_rectangles_batch(rngs: jax.Array, images: jax.Array, cfg: AugmentConfig,
                              active: jax.Array | None = None
                              ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """The loop of the reference's `LinearTransform` on a batch, each image with its own key.

  Per image: draw a rectangle; for each channel whose current maximum inside it is > 0,
  multiply that channel inside it by Beta(0.5, 0.5) / (that maximum), so the new maximum is the
  Beta draw; track the product of factors per pixel; stop once any pixel's product is
  <= `linear_transform_stop` (or after `linear_transform_max_rects` rectangles, which only an
  image with (almost) no positive pixel reaches; the reference would loop forever there).

  `cfg.linear_transform_loop` picks how the loop runs; all forms give equal outputs for equal
  keys (a rectangle's draws depend only on the image's key and its index, and a stopped image
  is never changed again):
    'while': until the batch's slowest image stops (a trip count known only at run time:
      XLA:GPU reads the predicate on the host every rectangle);
    'fixed': `linear_transform_max_rects` rectangles for every image, stopped ones masked;
    'two_phase': see `_draw_in_two_phases`.

  Args:
    rngs: (B,) PRNG keys (typed, or (B, 2) raw uint32).
    images: (B, H, W, 3) float32 in [0, 1].
    active: (B,) bool; False leaves that image untouched with no rectangle drawn. None = all.
  Returns:
    (images (B, H, W, 3) float32 in [0, 1], scale (B, H, W, 3) float32 accumulated factors,
    num_rects (B,) int32).
  """
  if active is None:
    active = jnp.ones(images.shape[:1], jnp.bool_)
  state = (jnp.zeros(images.shape[:1], jnp.int32), images, jnp.ones_like(images),
           ~jnp.asarray(active, jnp.bool_))
  loop = cfg.linear_transform_loop
  with jax.named_scope('multiply_rectangles'):  # how tests find this loop in compiled HLO
    if loop == 'while':
      state = jax.vmap(lambda rng, s: _draw_until_done(rng, s, cfg))(rngs, state)
    elif loop == 'fixed':
      state = _draw_batch(rngs, state, cfg, cfg.linear_transform_max_rects)
    else:
      state = _draw_in_two_phases(rngs, state, cfg)
  num_rects, images, scale, _ = state
  return images, scale, num_rects


def multiply_rectangles(rng: jax.Array, image: jax.Array, cfg: AugmentConfig,
                        active: jax.Array | bool = True
                        ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """`multiply_rectangles_batch` on one (H, W, 3) [0, 1] image.

  Args:
    rng: PRNG key.
    image: (H, W, 3) float32 in [0, 1].
    active: bool scalar; False returns the image untouched with no rectangle drawn (a
      sample that starts done costs no extra loop iteration under `vmap`).
  Returns:
    (image (H, W, 3) float32 in [0, 1], scale (H, W, 3) float32 accumulated factors,
    num_rects int32 scalar).
  """
  out = multiply_rectangles_batch(rng[None], image[None], cfg,
                                  jnp.asarray(active, jnp.bool_)[None])
  return tuple(a[0] for a in out)


def linear_transform_batch(rngs: jax.Array, images: jax.Array, cfg: AugmentConfig) -> jax.Array:
  """Each image of (B, H, W, 3) [0, 1] float32 through `multiply_rectangles` with probability
  `linear_transform_prob`, else as is; rngs (B,) keys. Images that skip the transform draw no
  rectangle."""
  if cfg.linear_transform_prob <= 0:  # static: leave the loop out of the compiled graph
    return images
  keys = jax.vmap(jax.random.split)(rngs)
  k_apply, k_loop = keys[:, 0], keys[:, 1]
  apply = jax.vmap(jax.random.uniform)(k_apply) < cfg.linear_transform_prob
  return multiply_rectangles_batch(k_loop, images, cfg, apply)[0]


def linear_transform(rng: jax.Array, image: jax.Array, cfg: AugmentConfig) -> jax.Array:
  """`linear_transform_batch` on one (H, W, 3) [0, 1] float32 image."""
  return linear_transform_batch(rng[None], image[None], cfg)[0]


def random_erasing(rng: jax.Array, image: jax.Array, fill: jax.Array,
                   cfg: AugmentConfig) -> jax.Array:
  """With probability `erase_prob`, fills one random rectangle of a normalised image.

  Args:
    rng: PRNG key.
    image: (H, W, 3) float32, normalised.
    fill: (3,) float32 value written per channel (already in the image's space).
  Returns:
    (H, W, 3) float32.
  """
  if cfg.erase_prob <= 0:  # static: nothing to compile
    return image
  height, width = image.shape[:2]
  u = jax.random.uniform(rng, (2 * cfg.erase_tries + 3,))
  apply = u[0] < cfg.erase_prob
  mask = _rectangle_mask_from_uniforms(u[1:], height, width, cfg) & apply
  return jnp.where(mask[..., None], fill, image)


def copy_channel(image: jax.Array, channel) -> jax.Array:
  """(..., 3) -> (..., 3) with every channel equal to channel `channel` (0 R, 1 G, 2 B)."""
  source = jnp.take(image, channel, axis=-1)[..., None]
  return jnp.broadcast_to(source, image.shape)


def to_grey(image: jax.Array) -> jax.Array:
  """(..., 3) -> (..., 3) with every channel 0.2989 R + 0.5870 G + 0.1140 B."""
  grey = (GREY_WEIGHTS[0] * image[..., 0] + GREY_WEIGHTS[1] * image[..., 1]
          + GREY_WEIGHTS[2] * image[..., 2])[..., None]
  return jnp.broadcast_to(grey, image.shape)


def exchange_channel(rng: jax.Array, image: jax.Array) -> jax.Array:
  """Copies R, G or B (uniformly) into all three channels (the reference's ChannelExchange
  with gray=2, MBCCM's and PGM's visible view B)."""
  return copy_channel(image, _random_index(jax.random.uniform(rng), 3))


def adapt_grey(rng: jax.Array, image: jax.Array, grey_prob: float) -> jax.Array:
  """The reference's ChannelAdapGray on the infrared view: k ~ U{0..3}; k < 3 copies channel k
  into all three; k = 3 turns the image grey with probability `grey_prob`, else keeps it."""
  u = jax.random.uniform(rng, (2,))
  case = _random_index(u[0], 4)  # 0, 1, 2: copy that channel; 3: grey or unchanged
  grey = u[1] < grey_prob
  copied = copy_channel(image, jnp.minimum(case, 2))
  out = jnp.where(case < 3, copied, image)
  return jnp.where((case == 3) & grey, to_grey(image), out)


def erase_fill_value(cfg: AugmentConfig, mean: Sequence[float],
                     std: Sequence[float]) -> jax.Array:
  """(3,) float32 value random erasing writes into the normalised image."""
  fill = jnp.asarray(cfg.erase_fill, jnp.float32)
  if cfg.erase_fill_in_normalized_space:  # reference quirk: raw values in normalised space
    return fill
  return (fill - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
