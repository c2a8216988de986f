"""Procedural street scenes with dense labels: the renderer behind `SyntheticStreets`.

A scene is a one-point-perspective street: a vanishing point on the horizon, a road whose width
shrinks towards it, sidewalks and terrain beside it, building facades along both sides, and
trees, poles with traffic signs, cars and people placed at random depths. Objects are sized in
metres at their depth (the road is ~7 m wide), so far objects are small and near ones large,
and they are painted far to near so that near objects occlude far ones. Then lighting (global
gain, colour cast, cast shadows, vignetting), blur and sensor noise are applied.

Labels use Cityscapes train IDs (`classes.CITYSCAPES_CLASSES`) for the classes a scene can hold
(`SYNTHETIC_CLASS_IDS`); the label map has no ignored pixels.

Everything is drawn with numpy from one `numpy.random.Generator`, so a scene is a pure function
of its seed. Rendering a 128×256 scene takes ~40 ms on one CPU core; datasets cache them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROAD, SIDEWALK, BUILDING, FENCE, POLE, SIGN = 0, 1, 2, 4, 5, 7
VEGETATION, TERRAIN, SKY, PERSON, CAR = 8, 9, 10, 11, 13
SYNTHETIC_CLASS_IDS: tuple[int, ...] = (
    ROAD, SIDEWALK, BUILDING, FENCE, POLE, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR,
)  # fmt: skip

_ROAD_WIDTH_M = 7.0

Array = np.ndarray


@dataclass
class _Canvas:
    """The image being painted (H, W, 3) float32 in [0, 1] and its label map (H, W) uint8."""

    image: Array
    label: Array
    yy: Array  # (H, W) row coordinate of every pixel
    xx: Array  # (H, W) column coordinate

    def paint(self, mask: Array, color: Array | tuple[float, ...], cls: int | None) -> None:
        per_pixel = isinstance(color, np.ndarray) and color.ndim == 3
        self.image[mask] = color[mask] if per_pixel else color
        if cls is not None:
            self.label[mask] = cls


@dataclass
class _Street:
    """The perspective geometry: everything below the horizon is a function of depth."""

    height: int
    width: int
    horizon: float  # row of the horizon
    vanish_x: float  # column of the vanishing point
    center_bottom: float  # road centre at the bottom row
    half_width_bottom: float  # road half width at the bottom row, pixels
    sidewalk_ratio: float  # sidewalk width / road half width

    def t(self, y: Array | float) -> Array:
        """Nearness in (0, 1] of a ground row: 0 at the horizon, 1 at the bottom row."""
        return np.clip((np.asarray(y, dtype=np.float32) - self.horizon) / (self.height - self.horizon), 1e-3, None)

    def center(self, y: Array | float) -> Array:
        return self.vanish_x + self.t(y) * (self.center_bottom - self.vanish_x)

    def half_width(self, y: Array | float) -> Array:
        return self.t(y) * self.half_width_bottom

    def metre(self, y: Array | float) -> Array:
        """Pixels per metre at ground row y."""
        return 2 * self.half_width(y) / _ROAD_WIDTH_M


def render_scene(rng: np.random.Generator, height: int, width: int) -> tuple[Array, Array]:
    """Render one scene: (image (H, W, 3) uint8, label (H, W) uint8 with Cityscapes train IDs)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    canvas = _Canvas(
        image=np.zeros((height, width, 3), np.float32),
        label=np.full((height, width), SKY, np.uint8),
        yy=yy,
        xx=xx,
    )
    street = _Street(
        height=height,
        width=width,
        horizon=rng.uniform(0.32, 0.5) * height,
        vanish_x=rng.uniform(0.3, 0.7) * width,
        center_bottom=rng.uniform(0.35, 0.65) * width,
        half_width_bottom=rng.uniform(0.25, 0.5) * width,
        sidewalk_ratio=rng.uniform(0.25, 0.7),
    )
    _paint_sky(canvas, street, rng)
    _paint_ground(canvas, street, rng)
    for side in (-1, 1):
        _paint_facades(canvas, street, rng, side)
    _paint_objects(canvas, street, rng)
    _apply_lighting(canvas, street, rng)
    image = np.clip(canvas.image, 0.0, 1.0)
    return (image * 255 + 0.5).astype(np.uint8), canvas.label


# --- Textures --------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> Array:
    """Low-frequency noise in [-1, 1]: a random grid of spacing `cell`, bilinearly upsampled."""
    gh, gw = height // cell + 2, width // cell + 2
    grid = rng.uniform(-1, 1, size=(gh, gw)).astype(np.float32)
    ys = np.arange(height, dtype=np.float32) / cell
    xs = np.arange(width, dtype=np.float32) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _textured(base: Array, amount: Array | float, noise: Array) -> Array:
    """Per-pixel colour (H, W, 3): `base` colour modulated by a noise field."""
    return np.clip(base[None, None, :] * (1 + amount * noise[..., None]), 0, 1)


def _random_color(rng: np.random.Generator, low: float, high: float, tint: float) -> Array:
    gray = rng.uniform(low, high)
    return np.clip(gray + rng.uniform(-tint, tint, size=3), 0, 1).astype(np.float32)


# --- Background: sky, ground, facades ------------------------------------------------------


def _paint_sky(canvas: _Canvas, street: _Street, rng: np.random.Generator) -> None:
    height, width = canvas.label.shape
    kind = rng.choice(["clear", "overcast", "dusk"], p=[0.5, 0.3, 0.2])
    top, bottom = {
        "clear": ((0.25, 0.45, 0.8), (0.65, 0.8, 0.95)),
        "overcast": ((0.6, 0.62, 0.66), (0.8, 0.8, 0.82)),
        "dusk": ((0.25, 0.25, 0.5), (0.95, 0.6, 0.35)),
    }[kind]
    s = np.clip(canvas.yy / max(street.horizon, 1.0), 0, 1)[..., None]
    sky = (1 - s) * np.asarray(top, np.float32) + s * np.asarray(bottom, np.float32)
    clouds = np.clip(_smooth_noise(rng, height, width, 24), 0, 1)[..., None]
    sky = sky + rng.uniform(0.0, 0.35) * clouds * (1 - sky)
    canvas.image[:] = sky
    canvas.label[:] = SKY


def _paint_ground(canvas: _Canvas, street: _Street, rng: np.random.Generator) -> None:
    yy, xx = canvas.yy, canvas.xx
    height, width = canvas.label.shape
    below = yy >= street.horizon
    offset = np.abs(xx - street.center(yy))
    half = street.half_width(yy)
    fine = rng.standard_normal((height, width)).astype(np.float32)
    patches = _smooth_noise(rng, height, width, 12)

    terrain = _textured(
        np.array([rng.uniform(0.25, 0.45), rng.uniform(0.4, 0.6), rng.uniform(0.15, 0.3)], np.float32),
        0.25,
        0.5 * fine + patches,
    )
    canvas.paint(below, terrain, TERRAIN)

    # Sidewalk: paving tiles whose joints converge to the vanishing point.
    sidewalk_outer = half * (1 + street.sidewalk_ratio)
    sidewalk = below & (offset < sidewalk_outer)
    depth = 1.0 / street.t(yy)
    joints = (np.mod(depth * rng.uniform(1.5, 3.0), 1.0) < 0.12) | (
        np.mod(offset / np.maximum(half, 1) * 6, 1.0) < 0.08
    )
    pave = _textured(_random_color(rng, 0.5, 0.7, 0.05), 0.12, 0.4 * fine + 0.6 * patches)
    pave = pave * np.where(joints, 0.8, 1.0)[..., None]
    canvas.paint(sidewalk, pave, SIDEWALK)

    # Road: asphalt with worn patches, lane markings dashed in depth.
    road = below & (offset < half)
    asphalt = _textured(_random_color(rng, 0.22, 0.42, 0.02), 0.18, 0.5 * fine + 0.8 * patches)
    canvas.paint(road, asphalt, ROAD)
    marking_width = np.maximum(0.12 * street.metre(yy), 0.6)
    dashes = np.mod(depth * rng.uniform(0.8, 1.6) + rng.uniform(), 1.0) < 0.5
    for lane in (0.0, *(rng.uniform(-0.95, -0.85), rng.uniform(0.85, 0.95))):
        line = road & (np.abs(xx - street.center(yy) - lane * half) < marking_width)
        if lane == 0.0:
            line &= dashes
        canvas.paint(line, np.full(3, rng.uniform(0.75, 0.95), np.float32), ROAD)
    curb = below & (np.abs(offset - half) < np.maximum(0.15 * street.metre(yy), 0.5))
    canvas.paint(curb, np.full(3, 0.75, np.float32), SIDEWALK)


def _paint_facades(canvas: _Canvas, street: _Street, rng: np.random.Generator, side: int) -> None:
    """Buildings (or a fence and hedge) along one side, as planes parallel to the road."""
    yy, xx = canvas.yy, canvas.xx
    height, width = canvas.label.shape
    outer_bottom = street.center_bottom + side * street.half_width_bottom * (1 + street.sidewalk_ratio)
    # Column x lies on the facade's ground line at nearness t(x) (linear in x, 1 at the bottom).
    t_x = (xx - street.vanish_x) / (outer_bottom - street.vanish_x)
    ground_y = street.horizon + t_x * (height - street.horizon)
    in_front = (t_x > 0) & (yy <= ground_y)
    depth = 1.0 / np.maximum(t_x, 1e-3)
    if rng.uniform() < 0.15:  # no buildings here: a fence with vegetation behind it
        metre = (ground_y - street.horizon) / (height - street.horizon) * 2 * street.half_width_bottom / _ROAD_WIDTH_M
        hedge = in_front & (yy > ground_y - rng.uniform(2.0, 4.0) * metre)
        canvas.paint(
            hedge,
            _textured(np.array([0.2, 0.45, 0.15], np.float32), 0.35, _smooth_noise(rng, height, width, 4)),
            VEGETATION,
        )
        fence = in_front & (yy > ground_y - 1.2 * metre) & (np.mod(depth * 8, 1.0) < 0.35)
        canvas.paint(fence, _random_color(rng, 0.45, 0.65, 0.08), FENCE)
        return
    z = rng.uniform(0.9, 1.3)
    max_depth = rng.uniform(6, 20)
    fine = rng.standard_normal((height, width)).astype(np.float32)
    while z < max_depth:
        length = rng.uniform(0.6, 2.5)  # building length in units of the road's half-width·depth
        span = in_front & (depth >= z) & (depth < z + length)
        if rng.uniform() < 0.2:  # a gap between buildings: trees or open sky
            z += length * 0.6
            continue
        storeys = rng.uniform(0.8, 3.5)
        top_y = street.horizon - storeys * (ground_y - street.horizon)
        facade = span & (yy >= top_y)
        color = _random_color(rng, 0.3, 0.8, 0.12)
        canvas.paint(facade, _textured(color, 0.08, fine), BUILDING)
        # Windows on a grid in (depth, relative height) coordinates.
        rel = (ground_y - yy) / np.maximum(ground_y - top_y, 1e-3)
        cols, rows = rng.integers(2, 6), rng.integers(2, 7)
        window = (
            facade
            & (np.mod((depth - z) / length * cols, 1.0) > 0.3)
            & (np.mod(rel * rows, 1.0) > 0.35)
            & (rel > 0.12)
            & (rel < 0.95)
        )
        glass = _random_color(rng, 0.1, 0.4, 0.08) * np.array([0.9, 0.95, 1.1], np.float32)
        canvas.paint(window, np.clip(glass, 0, 1), BUILDING)
        z += length


# --- Objects ---------------------------------------------------------------------------------


def _paint_objects(canvas: _Canvas, street: _Street, rng: np.random.Generator) -> None:
    """Trees, poles with signs, cars and people, painted far to near so near ones occlude."""
    height = canvas.label.shape[0]
    objects: list[tuple[float, str, float]] = []  # (ground row, kind, lateral position)

    def place(kind: str, count: int, lateral_low: float, lateral_high: float) -> None:
        for _ in range(count):
            t = rng.uniform(0.08, 1.05) ** 0.7  # more objects far away, as in real streets
            y = street.horizon + t * (height - street.horizon)
            side = rng.choice([-1.0, 1.0])
            objects.append((y, kind, side * rng.uniform(lateral_low, lateral_high)))

    sidewalk_mid = (1.05, 1 + 0.9 * street.sidewalk_ratio)
    place("car", int(rng.integers(0, 6)), 0.0, 0.65)
    place("person", int(rng.integers(0, 6)), *sidewalk_mid)
    place("pole", int(rng.integers(1, 5)), 1.0 + 0.7 * street.sidewalk_ratio, 1 + 0.95 * street.sidewalk_ratio)
    place("tree", int(rng.integers(0, 5)), 1.0 + 0.5 * street.sidewalk_ratio, 1 + 1.5 * street.sidewalk_ratio)
    if rng.uniform() < 0.3:  # someone crossing the road
        place("person", 1, 0.0, 0.8)

    for y, kind, lateral in sorted(objects):
        x = float(street.center(y) + lateral * street.half_width(y))
        metre = float(street.metre(y))
        {"car": _paint_car, "person": _paint_person, "pole": _paint_pole, "tree": _paint_tree}[kind](
            canvas, rng, x, y, metre
        )


def _box(canvas: _Canvas, x0: float, x1: float, y0: float, y1: float) -> Array:
    return (canvas.xx >= x0) & (canvas.xx < x1) & (canvas.yy >= y0) & (canvas.yy < y1)


def _ellipse(canvas: _Canvas, cx: float, cy: float, rx: float, ry: float) -> Array:
    return ((canvas.xx - cx) / max(rx, 0.5)) ** 2 + ((canvas.yy - cy) / max(ry, 0.5)) ** 2 <= 1


def _paint_car(canvas: _Canvas, rng: np.random.Generator, x: float, y: float, metre: float) -> None:
    w, h = rng.uniform(1.6, 2.0) * metre, rng.uniform(1.3, 1.7) * metre
    if w < 2:
        return
    body_color = _random_color(rng, 0.05, 0.9, 0.3)
    shadow = _ellipse(canvas, x, y, 0.6 * w, 0.08 * h + 0.5)
    canvas.image[shadow] *= 0.55
    body = _box(canvas, x - w / 2, x + w / 2, y - 0.62 * h, y - 0.12 * h)
    cabin_w = w * rng.uniform(0.7, 0.85)
    cabin = _box(canvas, x - cabin_w / 2, x + cabin_w / 2, y - h, y - 0.6 * h)
    wheels = _box(canvas, x - 0.45 * w, x - 0.25 * w, y - 0.2 * h, y) | _box(
        canvas, x + 0.25 * w, x + 0.45 * w, y - 0.2 * h, y
    )
    canvas.paint(wheels, np.full(3, 0.06, np.float32), CAR)
    canvas.paint(body | cabin, body_color, CAR)
    window = _box(canvas, x - 0.42 * cabin_w, x + 0.42 * cabin_w, y - 0.93 * h, y - 0.64 * h)
    canvas.paint(window, _random_color(rng, 0.08, 0.25, 0.03), CAR)
    for side in (-1, 1):
        light = _box(canvas, x + side * 0.45 * w - 0.06 * w, x + side * 0.45 * w + 0.06 * w, y - 0.52 * h, y - 0.42 * h)
        canvas.paint(light, np.array([0.85, 0.1, 0.08], np.float32), CAR)


def _paint_person(canvas: _Canvas, rng: np.random.Generator, x: float, y: float, metre: float) -> None:
    h = rng.uniform(1.5, 1.95) * metre
    w = 0.45 * h / 1.75
    if h < 3:
        return
    skin = np.array(rng.choice([(0.9, 0.75, 0.6), (0.6, 0.42, 0.3), (0.35, 0.25, 0.18)]), np.float32)
    shirt = _random_color(rng, 0.05, 0.95, 0.4)
    pants = _random_color(rng, 0.05, 0.5, 0.15)
    stride = rng.uniform(0, 0.15) * h
    legs = _box(canvas, x - w / 2 + stride / 3, x - 0.05 * w, y - 0.48 * h, y) | _box(
        canvas, x + 0.05 * w, x + w / 2 - stride / 3, y - 0.48 * h, y
    )
    torso = _box(canvas, x - w / 2, x + w / 2, y - 0.82 * h, y - 0.46 * h)
    head = _ellipse(canvas, x, y - 0.9 * h, 0.14 * h / 1.2, 0.09 * h)
    canvas.paint(legs, pants, PERSON)
    canvas.paint(torso, shirt, PERSON)
    canvas.paint(head, skin, PERSON)


def _paint_pole(canvas: _Canvas, rng: np.random.Generator, x: float, y: float, metre: float) -> None:
    h = rng.uniform(3.5, 6.0) * metre
    w = max(0.15 * metre, 0.7)
    pole = _box(canvas, x - w / 2, x + w / 2, y - h, y)
    canvas.paint(pole, _random_color(rng, 0.3, 0.6, 0.03), POLE)
    if rng.uniform() < 0.65:
        size = rng.uniform(0.5, 0.9) * metre
        cy = y - h + size * 0.6
        shape = rng.choice(["circle", "triangle", "square"])
        if shape == "circle":
            sign = _ellipse(canvas, x, cy, size / 2, size / 2)
            inner = _ellipse(canvas, x, cy, size / 3, size / 3)
            canvas.paint(sign, np.array([0.8, 0.1, 0.1], np.float32), SIGN)
            canvas.paint(inner, np.array([0.92, 0.92, 0.92], np.float32), SIGN)
        elif shape == "triangle":
            rel = (canvas.yy - (cy - size / 2)) / max(size, 1)
            sign = (rel >= 0) & (rel <= 1) & (np.abs(canvas.xx - x) <= rel * size / 2)
            canvas.paint(sign, np.array([0.95, 0.8, 0.1], np.float32), SIGN)
        else:
            sign = _box(canvas, x - size / 2, x + size / 2, cy - size / 2, cy + size / 2)
            canvas.paint(sign, np.array([0.1, 0.3, 0.75], np.float32), SIGN)


def _paint_tree(canvas: _Canvas, rng: np.random.Generator, x: float, y: float, metre: float) -> None:
    trunk_h = rng.uniform(1.5, 3.0) * metre
    crown = rng.uniform(0.9, 1.8) * metre
    trunk = _box(canvas, x - 0.12 * metre - 0.3, x + 0.12 * metre + 0.3, y - trunk_h - 0.5 * crown, y)
    canvas.paint(trunk, np.array([0.3, 0.22, 0.14], np.float32), VEGETATION)
    cy = y - trunk_h - crown
    # A ragged crown: the ellipse boundary is perturbed by low-frequency noise.
    angle = np.arctan2(canvas.yy - cy, canvas.xx - x)
    radius = 1 + 0.25 * np.sin(angle * rng.integers(3, 7) + rng.uniform(0, 6.3))
    crown_mask = (
        _ellipse(canvas, x, cy, crown * 1.0, crown * 1.1)
        if crown < 2
        else ((((canvas.xx - x) / crown) ** 2 + ((canvas.yy - cy) / (1.1 * crown)) ** 2) <= radius**2)
    )
    height, width = canvas.label.shape
    leaves = _textured(
        np.array([0.2, rng.uniform(0.35, 0.55), 0.12], np.float32), 0.45, _smooth_noise(rng, height, width, 3)
    )
    canvas.paint(crown_mask, leaves, VEGETATION)


# --- Lighting and sensor ---------------------------------------------------------------------


def _apply_lighting(canvas: _Canvas, street: _Street, rng: np.random.Generator) -> None:
    image = canvas.image
    height, width = canvas.label.shape
    # A cast shadow: a band across the ground from a building outside the frame.
    if rng.uniform() < 0.5:
        slope = rng.uniform(-1.5, 1.5)
        edge = rng.uniform(0, width)
        shadow = (canvas.yy > street.horizon) & ((canvas.xx - edge) - slope * (canvas.yy - height) < 0)
        if rng.uniform() < 0.5:
            shadow = (canvas.yy > street.horizon) & ~shadow
        image[shadow] *= rng.uniform(0.45, 0.75)
    gain = rng.uniform(0.55, 1.3)
    cast = 1 + rng.uniform(-0.08, 0.08, size=3).astype(np.float32)
    image *= gain * cast
    r2 = ((canvas.xx - width / 2) / width) ** 2 + ((canvas.yy - height / 2) / height) ** 2
    image *= (1 - rng.uniform(0, 0.6) * r2)[..., None]
    if rng.uniform() < 0.3:  # slight defocus / motion blur: a 3-tap horizontal box filter
        image[:, 1:-1] = (image[:, :-2] + image[:, 1:-1] + image[:, 2:]) / 3
    image += rng.normal(0, rng.uniform(0.005, 0.04), size=image.shape).astype(np.float32)
