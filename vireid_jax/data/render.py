"""Synthetic people seen by visible and by infrared cameras.

An identity is a body shape (height, build, head, leg thickness), a set of garments (upper and
lower, sleeve and trouser length, coat, hair or cap, bag) and, for each garment, a colour AND an
independent material, plus a texture pattern on the upper garment. A picture paints the person
with signed-distance shapes into a 4-channel canvas (R, G, B, heat) in one pass:

* visible cameras show the colour channels, with the camera's colour cast, lighting and noise;
* infrared cameras show only the heat channel: skin is warm and bright, each garment glows by
  its material (thin cotton bright, down jacket dark), NOT by its colour, and the pattern shows
  as a change of yarn (the lighter yarn is the warmer one, so a pattern keeps its polarity);
  then the camera's gain, blur and noise.

So colour identifies a person only within the visible modality; what crosses modalities is the
shape, the garment layout (short sleeves, shorts, a coat, a bag, a cap) and the pattern. Each
picture also jitters scale, position, stance and arm swing, may mirror the person, and puts
them in front of the camera's scene with random clutter and, sometimes, an occluder.

How hard that is, measured with a small supervised CNN probe (4 conv layers, 64x32 input,
trained 12 epochs on the 48 training ids of the default set, visible views half RGB, half one
channel): infrared-to-visible retrieval on the 24 unseen test ids went from Rank-1 5% / mAP 6%
(random weights) to 40% / 34%, while retrieval within a modality reached about 95% Rank-1.

Every random draw comes from a generator seeded by (seed, what is drawn, its indices), so a
picture does not depend on the order pictures are made in.
"""

import colorsys
import dataclasses
import functools

import numpy as np

# Heat of garment materials (0 cold .. 1 hot): how much body heat passes the fabric. Clothes
# worn over a warm body differ from each other far less than from skin (0.84-0.95) or from the
# scene (mostly 0.05-0.3), so the materials span 0.38-0.54: the garment layout (where the warm
# skin shows) and the pattern are what an infrared picture shows best, as in real ones.
MATERIAL_HEAT = {
    'linen': 0.54, 'cotton': 0.51, 'polyester': 0.49, 'nylon': 0.47, 'denim': 0.45,
    'wool': 0.43, 'leather': 0.41, 'down': 0.38,
}
_MATERIAL_JITTER = 0.012  # the same material varies by weave and fit
PATTERNS = ('plain', 'hstripes', 'vstripes', 'checks', 'dots', 'diagonal')
_SKIN_TONES = ((0.96, 0.80, 0.69), (0.89, 0.69, 0.56), (0.76, 0.57, 0.42), (0.55, 0.38, 0.26),
               (0.38, 0.26, 0.18))
_HAIR_COLOURS = ((0.08, 0.06, 0.05), (0.25, 0.16, 0.09), (0.45, 0.32, 0.18),
                 (0.75, 0.62, 0.38), (0.5, 0.5, 0.5))

# Draw tags: the second entry of every seed, so streams of different purpose never coincide.
_IDENTITY, _PICTURE, _SCENE, _SENSOR = 1, 2, 3, 4


def rng_for(seed: int, *indices: int) -> np.random.Generator:
  """An independent generator for (seed, indices)."""
  return np.random.default_rng([seed, *indices])


def _colour(rng: np.random.Generator) -> np.ndarray:
  """A garment colour: any hue, from greys to saturated, dark to light."""
  saturation = rng.uniform(0.0, 0.25) if rng.random() < 0.2 else rng.uniform(0.35, 0.95)
  return np.array(colorsys.hsv_to_rgb(rng.random(), saturation, rng.uniform(0.15, 0.95)),
                  np.float32)


def _contrasting(rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
  """A second colour clearly lighter or darker than `colour`, so a pattern shows in grey too."""
  value = float(colour.max())
  step = rng.uniform(0.35, 0.55)
  value = value - step if value - step >= 0.08 else min(value + step, 0.97)
  return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.9), value), np.float32)


def _material(rng: np.random.Generator) -> float:
  names = sorted(MATERIAL_HEAT)
  return (MATERIAL_HEAT[names[rng.integers(len(names))]]
          + rng.uniform(-_MATERIAL_JITTER, _MATERIAL_JITTER))


def _lower_pattern(rng: np.random.Generator, lower_colour: np.ndarray) -> dict:
  """The lower garment's pattern fields of `Identity` (plain with probability 1/2)."""
  second = _contrasting(rng, lower_colour)
  polarity = 1.0 if second.max() > lower_colour.max() else -1.0
  pattern = 'plain' if rng.random() < 0.5 else PATTERNS[1 + rng.integers(len(PATTERNS) - 1)]
  return dict(lower_second=second, lower_pattern=pattern,
              lower_pattern_period=rng.uniform(0.1, 0.2),
              lower_pattern_phase=rng.uniform(0, 2 * np.pi),
              lower_pattern_heat=polarity * rng.uniform(0.18, 0.28))


@dataclasses.dataclass(frozen=True)
class Identity:
  """What stays the same in every picture of one person. Lengths are in person heights."""
  height: float  # person height / image height
  shoulder: float  # half shoulder width
  hip: float  # half hip width
  head: float  # head radius
  limb: float  # half thickness of arms and legs
  torso: float  # shoulder-to-waist length
  coat: bool  # upper garment reaches mid-thigh
  long_sleeves: bool
  lower: str  # 'trousers' | 'shorts' | 'skirt'
  hair: str  # 'short' | 'long' | 'cap'
  bag: str  # 'none' | 'backpack' | 'shoulder'
  pattern: str
  pattern_period: float
  pattern_phase: float
  pattern_heat: float  # heat difference of the pattern's second yarn
  skin: np.ndarray  # (3,) RGB
  skin_heat: float
  hair_colour: np.ndarray
  upper: np.ndarray
  upper_second: np.ndarray  # the pattern's second colour
  lower_colour: np.ndarray
  lower_second: np.ndarray  # the lower garment pattern's second colour
  shoes: np.ndarray
  bag_colour: np.ndarray
  cap_colour: np.ndarray
  upper_heat: float
  lower_heat: float
  bag_heat: float
  cap_heat: float
  lower_pattern: str  # trousers, shorts and skirts have patterns too (plain more often)
  lower_pattern_period: float
  lower_pattern_phase: float
  lower_pattern_heat: float
  # Where each garment ends, within its kind's range (0 shortest .. 1 longest): sleeves, the
  # hem of the upper garment, shorts and skirts. Skin is the warmest thing in infrared, so these
  # lengths show in both modalities.
  sleeve_cut: float
  hem_cut: float
  leg_cut: float


def sample_identity(seed: int, pid: int) -> Identity:
  """The person with id `pid` of the synthetic population `seed`."""
  rng = rng_for(seed, _IDENTITY, pid)
  upper = _colour(rng)
  upper_second = _contrasting(rng, upper)
  # The pattern keeps its polarity across modalities: the lighter yarn is the warmer one.
  polarity = 1.0 if upper_second.max() > upper.max() else -1.0
  lower_colour = _colour(rng)
  return Identity(
      height=rng.uniform(0.72, 0.94), shoulder=rng.uniform(0.09, 0.16),
      hip=rng.uniform(0.07, 0.12), head=rng.uniform(0.05, 0.072),
      limb=rng.uniform(0.03, 0.055), torso=rng.uniform(0.28, 0.36),
      coat=rng.random() < 0.3, long_sleeves=rng.random() < 0.55,
      lower=('trousers', 'shorts', 'skirt')[rng.choice(3, p=(0.55, 0.2, 0.25))],
      hair=('short', 'long', 'cap')[rng.choice(3, p=(0.5, 0.3, 0.2))],
      bag=('none', 'backpack', 'shoulder')[rng.choice(3, p=(0.5, 0.25, 0.25))],
      pattern=PATTERNS[rng.integers(len(PATTERNS))], pattern_period=rng.uniform(0.1, 0.2),
      pattern_phase=rng.uniform(0, 2 * np.pi), pattern_heat=polarity * rng.uniform(0.18, 0.28),
      skin=np.array(_SKIN_TONES[rng.integers(len(_SKIN_TONES))], np.float32)
      * rng.uniform(0.92, 1.05),
      skin_heat=rng.uniform(0.84, 0.95),
      hair_colour=np.array(_HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))], np.float32),
      upper=upper, upper_second=upper_second, lower_colour=lower_colour,
      shoes=_colour(rng) * 0.5, bag_colour=_colour(rng), cap_colour=_colour(rng),
      upper_heat=_material(rng), lower_heat=_material(rng), bag_heat=_material(rng) * 0.7,
      cap_heat=_material(rng) * 0.8, **_lower_pattern(rng, lower_colour),
      sleeve_cut=rng.random(), hem_cut=rng.random(), leg_cut=rng.random())


# --- drawing: signed distances (negative inside, in pixels) evaluated only near each shape --


@functools.lru_cache(maxsize=8)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """(y, x) pixel-centre coordinates, (H, W) float32 each."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  return y, x


class _Canvas:
  """A (H, W, 4) RGB + heat float32 picture that shapes are composited onto."""

  def __init__(self, values: np.ndarray):
    self.values = values
    self.y, self.x = _grid(*values.shape[:2])

  def region(self, x0, x1, y0, y1):
    """The pixel window covering [x0, x1] x [y0, y1] plus an anti-aliasing margin, or None."""
    height, width = self.values.shape[:2]
    c0, c1 = max(int(np.floor(x0)) - 1, 0), min(int(np.ceil(x1)) + 2, width)
    r0, r1 = max(int(np.floor(y0)) - 1, 0), min(int(np.ceil(y1)) + 2, height)
    if c0 >= c1 or r0 >= r1:
      return None
    return slice(r0, r1), slice(c0, c1)

  def paint(self, shape, colour, heat: float = 0.0) -> None:
    """Composites a shape of one colour and heat, or of per-pixel (H, W, 4) values."""
    if shape is None:
      return
    distance, region = shape
    alpha = np.clip(0.5 - distance, 0.0, 1.0)[..., None]  # anti-aliased coverage
    if np.ndim(colour) == 1:
      value = np.array([*colour, heat], np.float32)
    else:
      value = colour[region]
    window = self.values[region]
    window += alpha * (value - window)


def _box(canvas, cx, cy, half_w, half_h, radius=0.0):
  region = canvas.region(cx - half_w, cx + half_w, cy - half_h, cy + half_h)
  if region is None:
    return None
  qx = np.abs(canvas.x[region] - cx) - half_w + radius
  qy = np.abs(canvas.y[region] - cy) - half_h + radius
  outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
  return outside + np.minimum(np.maximum(qx, qy), 0) - radius, region


def _ellipse(canvas, cx, cy, rx, ry):
  region = canvas.region(cx - rx, cx + rx, cy - ry, cy + ry)
  if region is None:
    return None
  distance = np.hypot((canvas.x[region] - cx) / rx, (canvas.y[region] - cy) / ry) - 1.0
  return distance * min(rx, ry), region


def _capsule(canvas, x0, y0, x1, y1, radius):
  region = canvas.region(min(x0, x1) - radius, max(x0, x1) + radius, min(y0, y1) - radius,
                         max(y0, y1) + radius)
  if region is None:
    return None
  x, y = canvas.x[region], canvas.y[region]
  dx, dy = x1 - x0, y1 - y0
  t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-9), 0.0, 1.0)
  return np.hypot(x - x0 - t * dx, y - y0 - t * dy) - radius, region


def _tapered(canvas, cx, y0, y1, half_w0, half_w1):
  """A trapezoid from y0 (half width half_w0) down to y1 (half_w1)."""
  half = max(half_w0, half_w1)
  region = canvas.region(cx - half, cx + half, y0, y1)
  if region is None:
    return None
  x, y = canvas.x[region], canvas.y[region]
  t = np.clip((y - y0) / (y1 - y0), 0.0, 1.0)
  return np.maximum(np.abs(x - cx) - (half_w0 + t * (half_w1 - half_w0)),
                    np.abs(y - (y0 + y1) / 2) - (y1 - y0) / 2), region


# --- scenes ---------------------------------------------------------------------------------


_SCENE_MARGIN = (8, 10)  # (rows, cols) the crop may move by: people are not always centred


@functools.lru_cache(maxsize=32)
def _scene_layout(seed: int, location: int, height: int, width: int, outdoor: bool) -> np.ndarray:
  """What a location looks like, a margin larger than a picture on every side.

  Returns:
    (height + 2 * rows, width + 2 * cols, 4) float32 RGB + heat; read-only.
  """
  layout = rng_for(seed, _SCENE, location)
  rows, cols = _SCENE_MARGIN
  full_h, full_w = height + 2 * rows, width + 2 * cols
  y, _ = _grid(full_h, full_w)
  horizon = layout.uniform(0.55, 0.8) * height + rows
  if outdoor:
    top = [*layout.uniform(0.45, 0.8, 3), 0.08]  # sky: cold
    bottom = [*layout.uniform(0.25, 0.5, 3), layout.uniform(0.3, 0.45)]  # sun-warmed ground
  else:
    top = [*layout.uniform(0.4, 0.9, 3), layout.uniform(0.2, 0.3)]  # wall
    bottom = [*layout.uniform(0.2, 0.6, 3), layout.uniform(0.22, 0.32)]  # floor
  values = np.where((y < horizon)[..., None], np.array(top, np.float32),
                    np.array(bottom, np.float32))
  values *= np.sqrt(0.85 + 0.3 * (y - rows) / height)[..., None]  # light falls off upwards
  canvas = _Canvas(values)
  for _ in range(layout.integers(2, 5)):  # doors, windows, pillars, trees, lamps
    cx, cy = layout.uniform(-0.2, 1.2) * width + cols, layout.uniform(0, 0.8) * height + rows
    heat = layout.uniform(0.6, 0.8) if layout.random() < 0.05 else layout.uniform(0.05, 0.3)
    canvas.paint(_box(canvas, cx, cy, layout.uniform(4, 18), layout.uniform(8, 40), 2.0),
                 layout.uniform(0.1, 0.95, 3), heat)
  values.flags.writeable = False
  return values


def _scene(seed: int, location: int, height: int, width: int, rng: np.random.Generator,
           outdoor: bool) -> _Canvas:
  """A picture's background: the location seen from a shifted crop, plus passing clutter."""
  rows, cols = _SCENE_MARGIN
  dy, dx = rng.integers(0, 2 * rows + 1), rng.integers(0, 2 * cols + 1)
  layout = _scene_layout(seed, location, height, width, outdoor)
  canvas = _Canvas(layout[dy:dy + height, dx:dx + width].copy())
  for _ in range(rng.integers(0, 4)):  # things passing by: new in every picture
    cx, cy = rng.uniform(0, width), rng.uniform(0.2, 1.0) * height
    if rng.random() < 0.5:
      shape = _ellipse(canvas, cx, cy, rng.uniform(3, 12), rng.uniform(3, 12))
    else:
      shape = _box(canvas, cx, cy, rng.uniform(3, 14), rng.uniform(3, 20), 1.0)
    canvas.paint(shape, rng.uniform(0.05, 0.95, 3), rng.uniform(0.05, 0.3))
  return canvas


# --- the person -----------------------------------------------------------------------------


def _pattern(pattern: str, period: float, phase: float, u, v):
  """Second-yarn weight in [0, 1] of a garment at person coordinates (u, v)."""
  k = 2 * np.pi / period
  if pattern == 'plain':
    return np.zeros_like(u)
  if pattern == 'hstripes':
    wave = np.sin(k * v + phase)
  elif pattern == 'vstripes':
    wave = np.sin(k * u + phase)
  elif pattern == 'checks':
    wave = np.sin(k * u + phase) * np.sin(k * v)
  elif pattern == 'dots':
    wave = np.sin(k * u + phase) * np.sin(k * v) - 0.45
  else:  # diagonal
    wave = np.sin(0.7 * k * (u + v) + phase)
  return np.clip(0.5 + 2.5 * wave, 0.0, 1.0)


def _garment(canvas_shape, rows: slice, u, v, colour, second, heat, pattern_heat, pattern,
             period, phase, shade=1.0) -> np.ndarray:
  """(H, W, 4) per-pixel colour and heat of a patterned garment on `rows` (zero elsewhere)."""
  weave = _pattern(pattern, period, phase, u, v)[..., None]
  values = np.zeros(canvas_shape, np.float32)
  values[rows, :, :3] = (colour + weave * (second - colour)) * shade
  values[rows, :, 3:] = heat + pattern_heat * (weave - 0.5)
  return values


def paint_person(canvas: _Canvas, person: Identity, rng: np.random.Generator) -> None:
  """Paints `person` in a random pose over the canvas."""
  height, width = canvas.values.shape[:2]
  x, y = canvas.x, canvas.y
  size = person.height * height * rng.uniform(0.93, 1.05)  # person height in pixels
  cx = width / 2 + rng.normal(0, 0.05 * width)
  foot = height * (0.5 + person.height / 2) + rng.uniform(-0.03, 0.02) * height
  top = foot - size
  side = -1.0 if rng.random() < 0.5 else 1.0  # mirrored view: the bag changes side
  shoulder, hip, limb = person.shoulder * size, person.hip * size, person.limb * size
  head_r = person.head * size
  neck_y = top + 2 * head_r
  shoulder_y = neck_y + 0.02 * size
  waist_y = shoulder_y + person.torso * size
  crotch_y = waist_y + 0.08 * size
  stride = rng.uniform(0.0, 0.12) * (foot - crotch_y)
  swing = rng.uniform(-0.25, 0.25)
  hem_y = waist_y + ((0.12 + 0.13 * person.hem_cut) if person.coat
                     else 0.05 * person.hem_cut) * size
  leg_end_y = crotch_y + (0.25 + 0.5 * person.leg_cut) * (foot - crotch_y)  # shorts, skirts
  hand_y = waist_y + 0.06 * size
  # The upper garment's colour and heat per pixel (pattern in person coordinates, shading),
  # computed on the rows it can cover.
  band = slice(max(int(shoulder_y) - 2, 0), min(int(max(hem_y, hand_y + limb)) + 3, height))
  u, v = (x[band] - cx) * side / size, (y[band] - top) / size
  shade = np.clip(1.0 - 0.3 * (u / person.shoulder) ** 2, 0.55, 1.0)[..., None]
  upper = _garment(canvas.values.shape, band, u, v, person.upper, person.upper_second,
                   person.upper_heat, person.pattern_heat, person.pattern, person.pattern_period,
                   person.pattern_phase, shade)
  legs = slice(max(int(waist_y) - 2, 0), height)
  lower = _garment(canvas.values.shape, legs, (x[legs] - cx) * side / size,
                   (y[legs] - top) / size, person.lower_colour, person.lower_second,
                   person.lower_heat, person.lower_pattern_heat, person.lower_pattern,
                   person.lower_pattern_period, person.lower_pattern_phase)

  def leg_pair(y0, y1, spread0, spread1, radius, colour, heat=0.0):
    for s in (-1.0, 1.0):
      canvas.paint(_capsule(canvas, cx + s * spread0, y0, cx + s * spread1, y1, radius), colour,
                   heat)

  if person.bag == 'backpack':
    canvas.paint(_box(canvas, cx + side * 0.55 * shoulder, (shoulder_y + waist_y) / 2,
                      0.8 * shoulder, 0.45 * (waist_y - shoulder_y), 3.0),
                 person.bag_colour, person.bag_heat)
  # Legs: skin below the garment; trousers cover to the ankle, shorts to above the knee.
  leg_top = 0.55 * hip
  leg_pair(crotch_y - limb, foot - limb, leg_top, leg_top + stride, limb, person.skin,
           person.skin_heat)
  if person.lower == 'trousers':
    leg_pair(crotch_y - limb, foot - 1.6 * limb, leg_top, leg_top + 0.95 * stride, 1.1 * limb,
             lower)
  elif person.lower == 'shorts':
    leg_pair(crotch_y - limb, leg_end_y, leg_top, leg_top + 0.4 * stride, 1.2 * limb, lower)
  for s in (-1.0, 1.0):  # shoes
    canvas.paint(_ellipse(canvas, cx + s * (leg_top + stride + 0.3 * limb), foot - 0.6 * limb,
                          1.4 * limb, 0.8 * limb), person.shoes, 0.3)
  if person.lower == 'skirt':
    canvas.paint(_tapered(canvas, cx, waist_y, leg_end_y, hip, 1.5 * hip), lower)
  else:
    canvas.paint(_box(canvas, cx, (waist_y + crotch_y) / 2, hip, (crotch_y - waist_y) / 2, 2.0),
                 lower)
  # Upper garment: torso (down to mid-thigh for a coat), then arms with their sleeves.
  canvas.paint(_tapered(canvas, cx, shoulder_y, hem_y, shoulder,
                        hip * (1.25 if person.coat else 1.0)), upper)
  # The part of the arm the sleeve covers.
  sleeve = (0.72 + 0.23 * person.sleeve_cut) if person.long_sleeves else (
      0.25 + 0.3 * person.sleeve_cut)
  for s in (-1.0, 1.0):
    x0, y0 = cx + s * (shoulder - 0.6 * limb), shoulder_y + limb
    x1 = cx + s * (shoulder + 0.3 * limb + swing * 0.3 * (hand_y - shoulder_y))
    canvas.paint(_capsule(canvas, x0, y0, x1, hand_y, 0.9 * limb), person.skin,
                 person.skin_heat)
    canvas.paint(_capsule(canvas, x0, y0, x0 + sleeve * (x1 - x0), y0 + sleeve * (hand_y - y0),
                          limb), upper)
  # Head: long hair falls behind the neck; a cap sits on top.
  head_cy = top + head_r
  if person.hair == 'long':
    canvas.paint(_box(canvas, cx, head_cy + 1.2 * head_r, 1.15 * head_r, 1.6 * head_r, head_r),
                 person.hair_colour, 0.5)
  canvas.paint(_box(canvas, cx, neck_y, 0.45 * head_r, 0.6 * head_r), person.skin,
               person.skin_heat)
  canvas.paint(_ellipse(canvas, cx, head_cy, 0.85 * head_r, head_r), person.skin,
               person.skin_heat)
  if person.hair == 'cap':
    canvas.paint(_box(canvas, cx + side * 0.2 * head_r, top + 0.35 * head_r, 1.1 * head_r,
                      0.45 * head_r, 0.3 * head_r), person.cap_colour, person.cap_heat)
  else:
    canvas.paint(_ellipse(canvas, cx, top + 0.55 * head_r, 0.92 * head_r, 0.6 * head_r),
                 person.hair_colour, 0.5)
  if person.bag == 'shoulder':
    canvas.paint(_capsule(canvas, cx - side * 0.7 * shoulder, shoulder_y, cx + side * 1.2 * hip,
                          waist_y, 0.012 * size), person.bag_colour, person.bag_heat)
    canvas.paint(_box(canvas, cx + side * (hip + 0.05 * size), waist_y + 0.04 * size,
                      0.06 * size, 0.05 * size, 2.0), person.bag_colour, person.bag_heat)


def _occlude(canvas: _Canvas, rng: np.random.Generator) -> None:
  """Sometimes a bench, railing or passer-by hides a part of the lower body."""
  if rng.random() >= 0.15:
    return
  height, width = canvas.values.shape[:2]
  half_w = rng.uniform(0.2, 0.45) * width
  cx = half_w if rng.random() < 0.5 else width - half_w
  canvas.paint(_box(canvas, cx, height, half_w, rng.uniform(0.15, 0.35) * height, 2.0),
               rng.uniform(0.1, 0.9, 3), rng.uniform(0.15, 0.6))


# --- cameras --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Camera:
  """A camera: where it stands and how it renders."""
  location: int  # cameras sharing a location see the same scene (SYSU cam2 and cam3)
  infrared: bool
  outdoor: bool
  cast: tuple[float, float, float] = (1.0, 1.0, 1.0)  # visible: per-channel gain
  # Visible: the light reaching the sensor (1 daylight; LLCM's low-light scenes about 0.3).
  # A dark picture keeps the sensor's noise, so its signal-to-noise ratio drops.
  exposure: float = 1.0
  gain: float = 1.0  # infrared: contrast and offset of the heat-to-grey mapping
  offset: float = 0.0
  noise: float = 0.015


def _noise(rng: np.random.Generator, shape, std: float) -> np.ndarray:
  """Zero-mean sensor noise of standard deviation `std` (uniform: cheaper than Gaussian)."""
  return (rng.random(shape, dtype=np.float32) - 0.5) * np.float32(std * np.sqrt(12.0))


def _to_visible(canvas: np.ndarray, camera: Camera, rng: np.random.Generator) -> np.ndarray:
  # The camera's cast and light level, this picture's exposure and a white-balance drift, in
  # one gain.
  gain = (np.asarray(camera.cast) * camera.exposure * rng.uniform(0.8, 1.15)
          * rng.uniform(0.95, 1.05, 3))
  rgb = canvas[..., :3] * (255 * gain).astype(np.float32)
  rgb += _noise(rng, rgb.shape, 255 * camera.noise)
  return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _to_infrared(canvas: np.ndarray, camera: Camera, rng: np.random.Generator) -> np.ndarray:
  heat = canvas[..., 3]
  # Thermal optics are soft: a 3x3 box blur.
  padded = np.pad(heat, 1, mode='edge')
  h, w = heat.shape
  heat = sum(padded[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0
  gain = 255 * camera.gain * rng.uniform(0.9, 1.1)
  grey = heat * gain + 255 * (camera.offset + rng.uniform(-0.04, 0.04))
  grey += _noise(rng, grey.shape, 255 * camera.noise)
  grey = np.clip(grey + 0.5, 0, 255).astype(np.uint8)
  return np.repeat(grey[..., None], 3, axis=-1)  # stored as 3 channels, as in SYSU-MM01


def render(person: Identity, camera: Camera, seed: int, picture: tuple[int, ...],
           size: tuple[int, int] = (128, 64)) -> np.ndarray:
  """One picture of `person` by `camera`.

  Args:
    person: from `sample_identity`.
    camera: the camera.
    seed: the population seed.
    picture: indices of this picture's pose, background and sensor noise, e.g. (pid, cam, n).
      A visible and an infrared camera at the same location given the same indices see the
      same moment (RegDB's paired cameras): same pose and scene, each its own sensor noise.
    size: (height, width) in pixels.

  Returns:
    (height, width, 3) uint8 RGB (grey in all channels for infrared cameras).
  """
  pose_rng = rng_for(seed, _PICTURE, *picture)
  canvas = _scene(seed, camera.location, size[0], size[1], pose_rng, camera.outdoor)
  paint_person(canvas, person, pose_rng)
  _occlude(canvas, pose_rng)
  sensor_rng = rng_for(seed, _SENSOR, int(camera.infrared), *picture)
  if camera.infrared:
    return _to_infrared(canvas.values, camera, sensor_rng)
  return _to_visible(canvas.values, camera, sensor_rng)
