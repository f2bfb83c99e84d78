"""Chest radiograph phantoms: anatomy, findings and exact lung masks.

A phantom is drawn in *display brightness* (0 = black air, 1 = white dense bone), the way a radiologist
sees a correctly presented image. All geometry is defined analytically in chest units: ``x`` across the chest
from its centre (the rib cage spans about -0.5..0.5) and ``y`` down from the lung apices (the domes sit near
0.75), both divided by the chest width in pixels. The lung fields are a pure function of those coordinates,
so the mask written beside each image is exactly the region that was darkened as lung.

Images are shown as a radiologist views them: the patient's right on the image's left (side ``-1``), the
heart towards the image's right (side ``+1``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

SIDES = (-1, 1)  # image left (patient's right), image right (patient's left)


@dataclass(frozen=True)
class Anatomy:
    """A patient's body: the same for every image of that patient."""

    sex: str  # "M", "F" or "O"
    age: int
    lung_dx: float = 0.24  # lung ellipse centre, |x|
    lung_cy: float = 0.50  # lung ellipse centre, y
    lung_ax: float = 0.20  # lung ellipse half-width
    lung_ay: float = 0.43  # lung ellipse half-height
    dome_peak: tuple[float, float] = (0.72, 0.75)  # dome top y (image left, image right)
    dome_depth: float = 0.12  # how far the costophrenic recess drops below the dome top
    heart_scale: float = 1.0
    rib_gap: float = 0.075
    rib_tilt: float = 0.10
    bone: float = 1.0  # bone brightness factor (falls with age)
    vessel_seed: int = 0


@dataclass(frozen=True)
class Nodule:
    side: int
    x: float  # chest units
    y: float
    radius: float
    amplitude: float


@dataclass(frozen=True)
class Effusion:
    side: int
    height: float  # chest units above the costophrenic recess
    meniscus: float  # how much higher it climbs laterally
    amplitude: float


@dataclass(frozen=True)
class Findings:
    nodules: tuple[Nodule, ...] = ()
    effusions: tuple[Effusion, ...] = ()

    @property
    def nodule(self) -> int:
        return int(bool(self.nodules))

    @property
    def effusion(self) -> int:
        return int(bool(self.effusions))


@dataclass(frozen=True)
class View:
    """One acquisition's geometry and look."""

    rows: int
    cols: int
    position: str  # "PA" or "AP"
    scale: float  # chest width in pixels
    cx: float  # chest centre column (pixels)
    top: float  # lung apex row (pixels)
    noise: float = 0.012
    blur: float = 0.004  # scatter/blur sigma in chest widths
    collimate: tuple[float, float, float, float] | None = None  # unexposed border (fractions: top, bottom, left, right)
    marker_side: int = 1
    heel: float = 0.04
    seed: int = 0


@dataclass
class Phantom:
    """A drawn phantom: display brightness in [0, 1], the exact lung mask, and what was drawn."""

    image: np.ndarray  # float32 (rows, cols), 0 = black
    lungs: np.ndarray  # bool (rows, cols)
    findings: Findings
    extras: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- sampling


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    r = rng.random()
    sex = "F" if r < 0.48 else ("M" if r < 0.96 else "O")
    age = int(np.clip(round(rng.normal(56, 17)), 18, 95))
    right_peak = float(rng.uniform(0.69, 0.74))
    return Anatomy(
        sex=sex,
        age=age,
        lung_dx=float(rng.uniform(0.225, 0.25)),
        lung_cy=float(rng.uniform(0.48, 0.52)),
        lung_ax=float(rng.uniform(0.185, 0.21)),
        lung_ay=float(rng.uniform(0.41, 0.45)),
        dome_peak=(right_peak, right_peak + float(rng.uniform(0.015, 0.045))),
        dome_depth=float(rng.uniform(0.10, 0.14)),
        heart_scale=float(rng.uniform(0.92, 1.08) * (1.0 + 0.004 * (age - 55))),
        rib_gap=float(rng.uniform(0.07, 0.08)),
        rib_tilt=float(rng.uniform(0.07, 0.13)),
        bone=float(np.clip(1.2 - 0.005 * age + rng.normal(0, 0.04), 0.6, 1.2)),
        vessel_seed=int(rng.integers(2**31)),
    )


def sample_view(rng: np.random.Generator, rows: int, cols: int, position: str) -> View:
    scale = min(cols, rows) / 1.3 * float(rng.uniform(0.82, 1.0))
    cx = cols / 2 + float(rng.uniform(-0.04, 0.04)) * scale
    top = rows / 2 - 0.5 * scale + float(rng.uniform(-0.05, 0.05)) * scale
    collimate = None
    if rng.random() < 0.15:
        collimate = tuple(float(v) for v in rng.uniform(0.01, 0.05, size=4))
    return View(
        rows=rows,
        cols=cols,
        position=position,
        scale=scale,
        cx=cx,
        top=top,
        noise=float(rng.uniform(0.006, 0.018)),
        blur=float(rng.uniform(0.003, 0.006)),
        collimate=collimate,  # type: ignore[arg-type]
        marker_side=int(rng.choice(SIDES)),
        heel=float(rng.uniform(-0.05, 0.05)),
        seed=int(rng.integers(2**31)),
    )


def lung_field(x: np.ndarray, y: np.ndarray, a: Anatomy, position: str = "PA") -> np.ndarray:
    """Whether chest coordinates (x, y) lie in a lung field (both lungs; the heart excluded).

    This one function makes both the darkened lung region of the image and its mask.
    """
    ax_ = np.abs(x)
    side = np.where(x < 0, 0, 1)
    ellipse = ((ax_ - a.lung_dx) / a.lung_ax) ** 2 + ((y - a.lung_cy) / a.lung_ay) ** 2 < 1.0
    peak = np.where(side == 0, a.dome_peak[0], a.dome_peak[1])
    dome = peak + a.dome_depth * ((ax_ - a.lung_dx) / a.lung_ax) ** 2
    above_diaphragm = y < dome
    mediastinum = ax_ < 0.045 + 0.035 * np.clip(y, 0.0, 1.0)
    return ellipse & above_diaphragm & ~mediastinum & ~heart_shadow(x, y, a, position)


def heart_shadow(x: np.ndarray, y: np.ndarray, a: Anatomy, position: str = "PA") -> np.ndarray:
    """The cardiac silhouette: an ellipse whose lower half rests on the diaphragm (AP views magnify it)."""
    s = a.heart_scale * (1.12 if position == "AP" else 1.0)
    hx, hy, hax, hay = 0.07 * s, 0.655, 0.19 * s, 0.135 * s
    u = ((x - hx) / hax) ** 2
    return (u + ((y - hy) / hay) ** 2 < 1.0) | ((u < 1.0) & (y > hy))


def sample_findings(rng: np.random.Generator, a: Anatomy, position: str, *, nodule: bool, effusion: bool) -> Findings:
    """Findings drawn inside the lung fields; nodules stay clear of the lung edges."""
    nodules: list[Nodule] = []
    if nodule:
        count = int(rng.choice([1, 1, 1, 2, 2, 3]))
        tries = 0
        while len(nodules) < count and tries < 500:
            tries += 1
            side = int(rng.choice(SIDES))
            radius = float(rng.uniform(0.055, 0.085))
            x = side * float(rng.uniform(a.lung_dx - a.lung_ax, a.lung_dx + a.lung_ax))
            y = float(rng.uniform(a.lung_cy - a.lung_ay, a.dome_peak[0]))
            ang = np.linspace(0, 2 * np.pi, 12, endpoint=False)
            px = np.concatenate([[x], x + 1.3 * radius * np.cos(ang)])
            py = np.concatenate([[y], y + 1.3 * radius * np.sin(ang)])
            if not lung_field(px, py, a, position).all():
                continue
            if any((n.x - x) ** 2 + (n.y - y) ** 2 < (2.5 * max(n.radius, radius)) ** 2 for n in nodules):
                continue
            nodules.append(Nodule(side, x, y, radius, float(rng.uniform(0.22, 0.32))))
        if not nodules:  # pragma: no cover - the lung always has room for one
            raise RuntimeError("could not place a nodule")
    effusions: list[Effusion] = []
    if effusion:
        r = rng.random()
        sides = (-1,) if r < 0.35 else ((1,) if r < 0.7 else (-1, 1))
        for side in sides:
            effusions.append(
                Effusion(
                    side=side,
                    height=float(rng.uniform(0.15, 0.28)),
                    meniscus=float(rng.uniform(0.04, 0.09)),
                    amplitude=float(rng.uniform(0.25, 0.35)),
                )
            )
    return Findings(tuple(nodules), tuple(effusions))


def persist_findings(
    rng: np.random.Generator, previous: Findings, a: Anatomy, position: str, rates: tuple[float, float]
) -> Findings:
    """A later image of the same patient: each finding persists with probability 0.7, else is redrawn.

    A persisting nodule that the new view's heart shadow would cover (AP magnifies it) is dropped; if none
    is left, new ones are drawn, so the label always matches what is drawn.
    """
    keep_n = rng.random() < 0.7
    keep_e = rng.random() < 0.7
    want_n = rng.random() < rates[0]
    want_e = rng.random() < rates[1]
    nodules = previous.nodules if keep_n else ()
    nodules = tuple(n for n in nodules if lung_field(np.array([n.x]), np.array([n.y]), a, position)[0])
    has_n = previous.nodule if keep_n else want_n
    has_e = previous.effusion if keep_e else want_e
    fresh = sample_findings(rng, a, position, nodule=bool(has_n) and not nodules, effusion=bool(has_e))
    return Findings(
        nodules or fresh.nodules,
        previous.effusions if keep_e else fresh.effusions,
    )


# --------------------------------------------------------------------------------------------- drawing


def _to_px(v: View, x: float, y: float) -> tuple[int, int]:
    return int(round(v.cx + x * v.scale)), int(round(v.top + y * v.scale))


def _polylines(layer: np.ndarray, v: View, xs: np.ndarray, ys: np.ndarray, value: float, thickness: float) -> None:
    """Draw curves given in chest units, one per row of ``xs`` / ``ys`` (anti-aliased, sub-pixel)."""
    pts = np.stack([v.cx + np.atleast_2d(xs) * v.scale, v.top + np.atleast_2d(ys) * v.scale], axis=-1)
    pts = np.round(pts * 16).astype(np.int32)  # 4 fractional bits
    t = max(1, int(round(thickness * v.scale)))
    cv2.polylines(layer, list(pts[:, :, None, :]), False, float(value), thickness=t, lineType=cv2.LINE_AA, shift=4)


@lru_cache(maxsize=64)
def _marker(letter: str, size: int) -> np.ndarray:
    """A lead side marker ("R"/"L") glyph, about ``size * 50 / 500`` font scale; cached (text drawing is slow)."""
    font_scale = max(0.4, size / 10)
    box = int(40 * font_scale) + 4
    glyph = np.zeros((box, box), np.uint8)
    cv2.putText(glyph, letter, (2, box - 4), cv2.FONT_HERSHEY_SIMPLEX, font_scale, 255, max(1, size // 5), cv2.LINE_AA)
    glyph = glyph.astype(np.float32) * np.float32(0.95 / 255)
    glyph.setflags(write=False)
    return glyph


def draw(a: Anatomy, v: View, f: Findings) -> Phantom:
    """Draw one radiograph of anatomy ``a`` seen as ``v`` with findings ``f``."""
    rng = np.random.default_rng(v.seed)
    rows, cols = v.rows, v.cols
    f32 = np.float32
    xs = ((np.arange(cols, dtype=f32) - f32(v.cx)) / f32(v.scale))[None, :]
    ys = ((np.arange(rows, dtype=f32) - f32(v.top)) / f32(v.scale))[:, None]
    ax_ = np.abs(xs)

    # body: a rounded torso with a neck; soft tissue thicker in the middle, spine down the centre
    body = (np.abs(xs / f32(0.6)) ** 4 + np.abs((ys - f32(0.55)) / f32(0.8)) ** 4 < 1.0) | ((ax_ < 0.13) & (ys < 0.2))
    tissue = (
        f32(0.36)
        + f32(0.12) * np.clip(1.0 - (xs / f32(0.6)) ** 2, 0.0, 1.0)
        + f32(0.11) * np.exp(-((xs / f32(0.04)) ** 2))
    )
    img = np.where(body, tissue, f32(0.03)).astype(f32)

    # abdomen (liver / spleen) below the domes
    peak = np.where(xs < 0, f32(a.dome_peak[0]), f32(a.dome_peak[1]))
    dome = peak + f32(a.dome_depth) * ((ax_ - f32(a.lung_dx)) / f32(a.lung_ax)) ** 2
    img += (body & (ys > dome)) * f32(0.07)

    # heart and aortic knob (older patients: bigger knob)
    img += (heart_shadow(xs, ys, a, v.position) & body) * f32(0.03)
    knob_r = 0.04 + 0.0006 * (a.age - 40)
    img += ((xs - f32(0.07)) ** 2 + (ys - f32(0.27)) ** 2 < f32(knob_r**2)) * f32(0.04)

    # lung fields: darker, denser towards the bases
    lungs = lung_field(xs, ys, a, v.position)
    img -= lungs * (f32(0.27) - f32(0.07) * np.clip(ys, 0.0, 1.0))

    # bones: clavicles, posterior and anterior ribs
    layer = np.zeros((rows, cols), f32)
    t = np.linspace(0.0, 1.0, 24, dtype=f32)[None, :]
    side = np.array(SIDES, dtype=f32)[:, None]
    _polylines(layer, v, side * (0.05 + 0.35 * t), np.repeat(0.02 - 0.05 * t + 0.04 * t**2, 2, 0), 0.13 * a.bone, 0.028)
    rib_y0 = np.tile(0.05 + np.arange(10, dtype=f32) * f32(a.rib_gap), 2)[:, None]
    rib_side = np.repeat(side, 10, axis=0)
    # posterior ribs leave the spine almost level and curve down along the chest wall; anterior ribs
    # (fainter) run down and inwards from the chest wall
    _polylines(
        layer,
        v,
        rib_side * (0.035 + 0.46 * np.sin(t * np.pi / 2)),
        rib_y0 - 0.03 * t + a.rib_tilt * t**3,
        0.10 * a.bone,
        0.022,
    )
    _polylines(layer, v, rib_side * (0.48 - 0.30 * t), rib_y0 + a.rib_tilt + 0.06 + 0.16 * t, 0.045 * a.bone, 0.018)
    if v.position == "AP":  # scapulae project over the lateral lung fields
        for s in SIDES:
            cv2.ellipse(
                layer, _to_px(v, s * 0.43, 0.30), (int(0.08 * v.scale), int(0.2 * v.scale)), 15 * s, 0, 360, 0.05, -1
            )
    img += layer  # anti-aliased lines; the scatter blur below softens them further

    # vessels fanning out from the hila (lungs only)
    layer[:] = 0
    vr = np.random.default_rng(a.vessel_seed)
    tt = np.linspace(0.0, 1.0, 8, dtype=f32)[None, :]
    vside = np.repeat(side, 7, axis=0)
    ang = vr.uniform(-1.2, 1.2, size=(14, 1)).astype(f32) + np.where(vside > 0, f32(0.0), f32(np.pi))
    length = vr.uniform(0.10, 0.22, size=(14, 1)).astype(f32)
    bend = vr.uniform(-0.04, 0.04, size=(14, 1)).astype(f32)
    _polylines(
        layer,
        v,
        vside * 0.11 + np.cos(ang) * length * tt - bend * tt**2 * np.sin(ang),
        0.45 + np.sin(ang) * length * tt + bend * tt**2 * np.cos(ang),
        0.045,
        0.008,
    )
    img += layer * lungs

    # breast shadows
    if a.sex == "F":
        # drawn and softened at 1/4 resolution: a smooth shadow needs no more
        small = np.zeros(((rows + 3) // 4, (cols + 3) // 4), f32)
        for s in SIDES:
            cx4, cy4 = (v.cx + s * 0.27 * v.scale) / 4, (v.top + 0.86 * v.scale) / 4
            cv2.ellipse(small, (int(cx4), int(cy4)), (int(0.05 * v.scale), int(0.035 * v.scale)), 0, 0, 360, 0.06, -1)
        small = cv2.GaussianBlur(small, (0, 0), max(0.5, 0.0075 * v.scale))
        img += cv2.resize(small, (cols, rows), interpolation=cv2.INTER_LINEAR) * body

    # findings
    for n in f.nodules:
        cxp, cyp = v.cx + n.x * v.scale, v.top + n.y * v.scale
        r = n.radius * v.scale
        half = int(np.ceil(2.2 * r)) + 1
        y0, y1 = max(0, int(cyp) - half), min(rows, int(cyp) + half + 1)
        x0, x1 = max(0, int(cxp) - half), min(cols, int(cxp) + half + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(f32)
        d2 = ((xx - cxp) ** 2 + (yy - cyp) ** 2) / r**2
        img[y0:y1, x0:x1] += f32(n.amplitude) * np.clip(1.15 - d2, 0.0, 1.0) ** f32(0.7)
    for e in f.effusions:
        recess = a.dome_peak[0 if e.side < 0 else 1] + a.dome_depth
        r0 = max(0, int(v.top + (recess - e.height - e.meniscus - 0.01) * v.scale))
        level = recess - e.height - e.meniscus * np.clip((ax_ - f32(0.1)) / f32(0.35), 0.0, 1.0) ** 2
        ramp = np.clip((ys[r0:] - level) / f32(0.04), 0.0, 1.0)
        same_side = (xs < 0) if e.side < 0 else (xs >= 0)
        img[r0:] += f32(e.amplitude) * ramp * (lungs[r0:] & same_side)

    # quantum noise, then the detector's blur (which makes the noise spatially correlated, as on a
    # real detector, and near-Gaussian), then the heel effect; ``v.noise`` is the final noise s.d.
    sigma = max(0.5, v.blur * v.scale)
    amplitude = v.noise * np.sqrt(12.0) * 2.0 * np.sqrt(np.pi) * sigma  # uniform s.d. / blur gain
    img += f32(amplitude) * (rng.random(size=img.shape, dtype=f32) - f32(0.5))
    img = cv2.GaussianBlur(img, (0, 0), sigma)
    img *= f32(1.0) + f32(v.heel) * (np.arange(rows, dtype=f32)[:, None] / f32(rows) - f32(0.5))

    # a lead side marker and, on some films, unexposed collimated borders
    marker = _marker("R" if v.marker_side < 0 else "L", max(1, rows // 50))
    y0 = max(0, int(0.1 * rows) - marker.shape[0] + 4)
    x0 = int(0.06 * cols) if v.marker_side < 0 else int(0.88 * cols)
    patch = img[y0 : y0 + marker.shape[0], x0 : x0 + marker.shape[1]]
    np.maximum(patch, marker[: patch.shape[0], : patch.shape[1]], out=patch)
    if v.collimate is not None:
        ct, cb, cl, cr = v.collimate
        img[: int(ct * rows)] = 0.96
        img[rows - int(cb * rows) :] = 0.96
        img[:, : int(cl * cols)] = 0.96
        img[:, cols - int(cr * cols) :] = 0.96
    np.clip(img, 0.0, 1.0, out=img)
    return Phantom(image=img, lungs=lungs, findings=f)
