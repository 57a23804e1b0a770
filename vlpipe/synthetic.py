"""Synthetic scenes with ground truth: LVIS-format datasets generated with their images.

Each category is a coloured shape ("disc", "star", ...) with an LVIS frequency (r/c/f). Two
kinds of scenes (``SCENE_KINDS``), on square, wide (16:9, 4:1), tall and 4:3 images:

* ``default``: a row of several instances of one category side by side, objects cut by the image
  border, small objects, and others scattered around; instances never overlap.
* ``crowded``: rows of 2-4 same-category objects 4-12 px apart (they touch at the resolution of
  an MLLM's vision grid), objects partly hidden behind another (of the same category or not),
  border objects and a few scattered ones. A hidden object's mask is its visible part.

Masks are exact and stored as COCO RLE.

    from vlpipe.synthetic import make_scenes
    gt_path = make_scenes("scenes/", n_images=20, seed=0)   # scenes/annotations.json + images/
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .results import encode_mask


@dataclass(frozen=True)
class Category:
    name: str
    frequency: str  # LVIS: r(are), c(ommon), f(requent)
    colour: tuple[int, int, int]  # RGB
    synonyms: tuple[str, ...] = ()


CATEGORIES = (
    Category("disc", "f", (220, 40, 40), ("circle",)),
    Category("box", "f", (40, 90, 220), ("square",)),
    Category("triangle", "f", (40, 170, 60)),
    Category("star", "f", (240, 200, 30)),
    Category("ring", "c", (150, 60, 200), ("donut",)),
    Category("cross", "c", (20, 170, 170), ("plus sign",)),
    Category("diamond", "c", (240, 120, 20), ("rhombus",)),
    Category("hexagon", "c", (120, 70, 30)),
    Category("arrow", "r", (235, 235, 235)),
    Category("moon", "r", (30, 30, 30), ("crescent",)),
)
# How often a category is drawn for a scene's scattered objects, by frequency.
_WEIGHT = {"f": 6.0, "c": 2.5, "r": 0.6}
# (width, height): square, 16:9, 4:1, tall, 4:3
SIZES = ((640, 640), (960, 540), (1280, 320), (432, 768), (800, 600))


def _polygon(kind: str, cx: float, cy: float, r: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Filled-polygon outlines of one shape of radius r at (cx, cy), in pixel coordinates."""
    def ring(n: int, radius: float, phase: float) -> np.ndarray:
        t = phase + np.arange(n) * 2 * np.pi / n
        return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], 1)

    phase = rng.uniform(0, 2 * np.pi)
    if kind == "triangle":
        return [ring(3, r, phase)]
    if kind == "hexagon":
        return [ring(6, r, phase)]
    if kind == "diamond":
        return [ring(4, r, 0.0)]
    if kind == "box":
        a = r * rng.uniform(0.7, 0.95)
        return [np.array([[cx - a, cy - r], [cx + a, cy - r], [cx + a, cy + r], [cx - a, cy + r]])]
    if kind == "star":
        outer, inner = ring(5, r, phase), ring(5, 0.45 * r, phase + np.pi / 5)
        return [np.stack([outer, inner], 1).reshape(-1, 2)]
    if kind == "cross":
        a = 0.33 * r
        return [np.array([[cx - r, cy - a], [cx + r, cy - a], [cx + r, cy + a], [cx - r, cy + a]]),
                np.array([[cx - a, cy - r], [cx + a, cy - r], [cx + a, cy + r], [cx - a, cy + r]])]
    if kind == "arrow":
        a, head = 0.3 * r, 0.1 * r
        return [np.array([[cx - r, cy - a], [cx + head, cy - a], [cx + head, cy - r], [cx + r, cy],
                          [cx + head, cy + r], [cx + head, cy + a], [cx - r, cy + a]])]
    raise ValueError(kind)


def draw_shape(kind: str, hw: tuple[int, int], cx: float, cy: float, r: float,
               rng: np.random.Generator) -> np.ndarray:
    """(H, W) bool mask of one shape (cut where it leaves the image)."""
    canvas = np.zeros(hw, np.uint8)
    centre, radius = (int(round(cx)), int(round(cy))), max(1, int(round(r)))
    if kind == "disc":
        cv2.circle(canvas, centre, radius, 1, -1)
    elif kind == "ring":
        cv2.circle(canvas, centre, radius, 1, -1)
        cv2.circle(canvas, centre, max(1, int(round(0.5 * r))), 0, -1)
    elif kind == "moon":
        cv2.circle(canvas, centre, radius, 1, -1)
        cv2.circle(canvas, (int(round(cx + 0.55 * r)), int(round(cy - 0.2 * r))), radius, 0, -1)
    else:
        for poly in _polygon(kind, cx, cy, r, rng):
            cv2.fillPoly(canvas, [np.round(poly).astype(np.int32)], 1)
    return canvas.astype(bool)


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 of an object's circumscribed square


def _fits(box: Box, placed: list[Box], gap: float) -> bool:
    x0, y0, x1, y1 = box
    return all(x0 >= p[2] + gap or p[0] >= x1 + gap or y0 >= p[3] + gap or p[1] >= y1 + gap
               for p in placed)


Plan = list[tuple[int, float, float, float]]  # (category index, cx, cy, r), drawing order


class _Planner:
    """Objects placed so far in one scene, and where the next ones may go."""

    def __init__(self, rng: np.random.Generator, w: int, h: int) -> None:
        self.rng, self.w, self.h, self.short = rng, w, h, min(w, h)
        weights = np.array([_WEIGHT[c.frequency] for c in CATEGORIES])
        self.weights = weights / weights.sum()
        self.placed: list[Box] = []
        self.plan: Plan = []

    def category(self) -> int:
        return int(self.rng.choice(len(CATEGORIES), p=self.weights))

    def place(self, cat: int, cx: float, cy: float, r: float, gap: float) -> bool:
        """Add the object if its square keeps ``gap`` px from every placed one."""
        box = (cx - r, cy - r, cx + r, cy + r)
        if not _fits(box, self.placed, gap):
            return False
        self.placed.append(box)
        self.plan.append((cat, cx, cy, r))
        return True

    def row(self, cat: int, count: int, r: float, gap: float) -> None:
        """``count`` objects of ``cat`` side by side along the long side, ``gap`` px apart
        (edge to edge of their squares)."""
        w, h, rng = self.w, self.h, self.rng
        step = 2 * r + gap
        wide = w >= h
        length = (w if wide else h)
        start = rng.uniform(r + 4, max(r + 5, length - (count - 1) * step - r - 4))
        across = rng.uniform(r + 4, (h if wide else w) - r - 4)
        for k in range(count):
            along = start + k * step
            self.place(cat, *((along, across) if wide else (across, along)), r, 0.0)

    def border(self, n: int) -> None:
        """``n`` objects centred on or near an edge, cut by the image border."""
        w, h, rng = self.w, self.h, self.rng
        for _ in range(n):
            r = self.short * rng.uniform(0.07, 0.11)
            for _attempt in range(30):
                side = int(rng.integers(4))
                t = rng.uniform(r, (w if side < 2 else h) - r)
                inset = rng.uniform(-0.3, 0.3) * r
                cx, cy = [(t, inset), (t, h - inset), (inset, t), (w - inset, t)][side]
                if self.place(self.category(), cx, cy, r, 0.05 * self.short):
                    break

    def scatter(self, n: int, radius, gap) -> None:
        """``n`` objects anywhere, radius ``radius()``, ``gap(r)`` px from the others."""
        w, h, rng = self.w, self.h, self.rng
        for _ in range(n):
            r = radius()
            for _attempt in range(50):
                cx, cy = rng.uniform(r + 2, w - r - 2), rng.uniform(r + 2, h - r - 2)
                if self.place(self.category(), cx, cy, r, gap(r)):
                    break


def _plan_scene(rng: np.random.Generator, w: int, h: int) -> Plan:
    """The default scene: one spaced row, border, small and scattered objects, no overlap."""
    p = _Planner(rng, w, h)
    short = p.short
    cat = p.category()
    count = int(rng.integers(3, 5))
    r = short * rng.uniform(0.07, 0.1)
    p.row(cat, count, r, max(0.9 * r, 0.06 * max(w, h)))
    p.border(2)
    n_any = int(rng.integers(4, 8))
    p.scatter(2, lambda: rng.uniform(9, 13), lambda r: max(0.06 * max(w, h), 1.2 * r))
    p.scatter(n_any, lambda: short * rng.uniform(0.05, 0.12),
              lambda r: max(0.06 * max(w, h), 1.2 * r))
    return p.plan


def _plan_crowded(rng: np.random.Generator, w: int, h: int) -> Plan:
    """The crowded scene: two rows of 2-4 same-category objects 4-12 px apart, two pairs in
    which the second object hides part of the first (same category half the time), two border
    objects and 2-3 scattered ones."""
    p = _Planner(rng, w, h)
    short = p.short
    for _ in range(2):
        p.row(p.category(), int(rng.integers(2, 5)), short * rng.uniform(0.06, 0.1),
              rng.uniform(4, 12))
    for _ in range(2):
        r = short * rng.uniform(0.07, 0.1)
        for _attempt in range(50):
            cx, cy = rng.uniform(2 * r + 2, w - 2 * r - 2), rng.uniform(r + 2, h - r - 2)
            shift = r * rng.uniform(1.1, 1.5)  # the front object covers part of the back one
            first = p.category()
            second = first if rng.random() < 0.5 else p.category()
            box = (cx - r - shift / 2, cy - r, cx + r + shift / 2, cy + r)
            if _fits(box, p.placed, 6.0):
                p.placed.append(box)
                p.plan += [(first, cx - shift / 2, cy, r), (second, cx + shift / 2, cy, r)]
                break
    p.border(2)
    p.scatter(int(rng.integers(2, 4)), lambda: short * rng.uniform(0.05, 0.1),
              lambda r: 0.04 * max(w, h))
    return p.plan


_PLANS = {"default": _plan_scene, "crowded": _plan_crowded}
SCENE_KINDS = tuple(_PLANS)
# a partly hidden object whose visible part is under this fraction of its shape is dropped
_MIN_VISIBLE = 0.4


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """(H, W, 3) uint8: smooth muted colour blobs plus fine noise."""
    low = rng.uniform(90, 160, size=(4, 6, 3)).astype(np.float32)
    bg = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    bg += rng.normal(0, 6, size=bg.shape).astype(np.float32)
    return np.clip(bg, 0, 255).astype(np.uint8)


def render_scene(rng: np.random.Generator, w: int, h: int, kind: str = "default"
                 ) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """(image (H, W, 3) uint8 RGB, [(category index, (H, W) bool visible mask), ...]): objects
    drawn in plan order, each hiding what it covers of the earlier ones; an object left with
    nothing, or with under ``_MIN_VISIBLE`` of its shape, is not listed."""
    if kind not in _PLANS:
        raise ValueError(f"unknown scene kind {kind!r} (known: {', '.join(SCENE_KINDS)})")
    image = _background(rng, w, h)
    drawn = []
    shade = 1.0 - 0.18 * ((np.add.outer(np.arange(h), np.arange(w)) // 6) % 2)  # stripes
    for cat, cx, cy, r in _PLANS[kind](rng, w, h):
        mask = draw_shape(CATEGORIES[cat].name, (h, w), cx, cy, r, rng)
        if not mask.any():
            continue
        colour = np.clip(np.array(CATEGORIES[cat].colour) + rng.integers(-12, 13, 3), 0, 255)
        image[mask] = np.clip(colour[None] * shade[mask][:, None], 0, 255).astype(np.uint8)
        drawn.append((cat, mask))
    instances, front = [], np.zeros((h, w), bool)
    for cat, mask in reversed(drawn):
        visible = mask & ~front
        if visible.sum() >= _MIN_VISIBLE * mask.sum():
            instances.append((cat, visible))
        front |= mask
    return image, instances[::-1]


def make_scenes(out_dir: str | Path, n_images: int = 20, seed: int = 0,
                kind: str = "default") -> Path:
    """Write ``n_images`` scenes of ``kind`` (``SCENE_KINDS``) to ``out_dir/images/`` and their
    LVIS-format annotations to ``out_dir/annotations.json`` (returned). Every category absent
    from an image is listed in its ``neg_category_ids``, so naming it there counts as a false
    positive."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(n_images):
        w, h = SIZES[i % len(SIZES)]
        image, instances = render_scene(rng, w, h, kind)
        name = f"images/scene_{i:04d}.png"
        Image.fromarray(image).save(out / name)
        present = sorted({cat + 1 for cat, _ in instances})
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h,
                       "not_exhaustive_category_ids": [],
                       "neg_category_ids": [c for c in range(1, len(CATEGORIES) + 1)
                                            if c not in present]})
        for cat, mask in instances:
            ys, xs = np.nonzero(mask)
            x0, y0 = int(xs.min()), int(ys.min())
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": cat + 1,
                "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
                "area": int(mask.sum()), "segmentation": encode_mask(mask), "iscrowd": 0})
    categories = [{"id": k + 1, "name": c.name, "synonyms": [c.name, *c.synonyms],
                   "frequency": c.frequency} for k, c in enumerate(CATEGORIES)]
    path = out / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))
    return path
