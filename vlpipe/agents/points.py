"""Point prompts from an attention map (VL-SAM).

Coordinates are continuous (x, y) in pixel units where pixel (row r, column c) covers
[c, c + 1) x [r, r + 1); a point sampled at that pixel is its centre (c + 0.5, r + 0.5). With this
convention, moving between resolutions is a pure scale and offset (see :func:`points_to_image`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch


@dataclass
class PointPrompt:
    """Point prompts for SAM.

    Attributes:
        coords: (P, 2) float32 (x, y) pixel centres in the map's coordinates, positives first.
        labels: (P,) int32, 1 positive / 0 negative.
        positive_area: (h, w) bool, the connected component above the threshold that the
            positives lie in.
    """

    coords: np.ndarray
    labels: np.ndarray
    positive_area: np.ndarray


def _as_map(m: torch.Tensor | np.ndarray) -> np.ndarray:
    """(h, w) tensor or array -> (h, w) finite float64 array."""
    if isinstance(m, torch.Tensor):
        m = m.detach().to("cpu", torch.float64).numpy()
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"attention map must be 2-D (h, w), got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("attention map contains NaN or inf values")
    return m


def _pick(m: np.ndarray, allowed: np.ndarray, k: int, largest: bool) -> list[tuple[int, int]]:
    """Up to k (row, col) extrema of m inside `allowed`, each followed by suppressing a square
    neighbourhood of radius max(1, min(h, w) // 10) so that the points spread out."""
    h, w = m.shape
    radius = max(1, min(h, w) // 10)
    scores = np.where(allowed, m if largest else -m, -np.inf)
    picked = []
    for _ in range(k):
        idx = int(np.argmax(scores))
        r, c = divmod(idx, w)
        if not np.isfinite(scores[r, c]):
            break
        picked.append((r, c))
        scores[max(0, r - radius) : r + radius + 1, max(0, c - radius) : c + radius + 1] = -np.inf
    return picked


def sample_points(
    m: torch.Tensor | np.ndarray,
    *,
    threshold: float = 0.5,
    n_positive: int = 1,
    n_negative: int = 1,
    mask: np.ndarray | None = None,
) -> PointPrompt:
    """Sample positive and negative point prompts from an (h, w) attention map.

    The map is cut at ``min + threshold * (max - min)``; the positive area is the largest
    8-connected component above the cut (ties: the lowest component label). Positives are the
    highest pixels inside the area, each moved to the weighted centroid of its 3x3 neighbourhood
    in the area (sub-cell precision), negatives the lowest pixels outside it; further points
    after the first skip a small neighbourhood of the points already chosen.

    Args:
        m: (h, w) attention map.
        threshold: fraction of the map's range, in [0, 1].
        n_positive: number of positive points wanted (fewer if the area is too small).
        n_negative: number of negative points wanted (none if the area covers the whole map).
        mask: optional (h, w) bool, e.g. the previous SAM mask (VL-SAM refinement): the map is set
            to its minimum outside the mask before sampling. An empty mask is ignored.

    Returns:
        PointPrompt. A flat map (max == min) has no peak: the centre pixel is returned as the only
        (positive) point and the positive area is the whole map.
    """
    return instance_prompts(m, threshold=threshold, max_instances=1, n_positive=n_positive,
                            n_negative=n_negative, mask=mask)[0]


def instance_prompts(
    m: torch.Tensor | np.ndarray,
    *,
    threshold: float = 0.5,
    max_instances: int = 8,
    min_peak: float = 0.15,
    n_positive: int = 1,
    n_negative: int = 1,
    mask: np.ndarray | None = None,
) -> list[PointPrompt]:
    """One prompt per instance of an object: every 8-connected component above the cut, then
    the weaker peaks.

    A name's map has one bright area per instance (three cups side by side light up three
    areas), so each component above ``min + threshold * (max - min)`` prompts SAM on its own:
    the largest components first (ties: lowest label), each with its highest pixels as
    positives and the lowest pixels outside it as negatives, as in :func:`sample_points` (which
    is the ``max_instances=1`` case). A small instance beside a large one of the same name
    peaks lower than the cut; so, while fewer than ``max_instances`` areas are found, every
    local maximum outside them that reaches ``min + min_peak * (max - min)`` adds the area
    around it above half its own height (strongest first; ``min_peak >= threshold`` turns this
    off). Other arguments as in :func:`sample_points`.

    Returns:
        1 to ``max_instances`` PointPrompts; a flat map gives the single centre prompt.
    """
    m = _as_map(m)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if n_positive < 0 or n_negative < 0:
        raise ValueError("n_positive and n_negative must be >= 0")
    if max_instances < 1:
        raise ValueError(f"max_instances must be >= 1, got {max_instances}")
    h, w = m.shape
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != m.shape:
            raise ValueError(f"mask shape {mask.shape} does not match map shape {m.shape}")
        if mask.any():
            m = np.where(mask, m, m.min())

    lo, hi = m.min(), m.max()
    if hi == lo:
        return [PointPrompt(
            coords=np.array([[w // 2 + 0.5, h // 2 + 0.5]], dtype=np.float32),
            labels=np.ones(1, dtype=np.int32),
            positive_area=np.ones((h, w), dtype=bool),
        )]

    above = (m >= lo + threshold * (hi - lo)).astype(np.uint8)
    _, components, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    by_size = 1 + np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable")
    areas = [components == label for label in by_size[:max_instances]]
    if len(areas) < max_instances and min_peak < threshold:
        areas += _weak_instances(m, above.astype(bool), threshold, min_peak,
                                 max_instances - len(areas))
    prompts = []
    for area in areas:
        positives = [_centroid(m, area, r, c) for r, c in _pick(m, area, n_positive, True)]
        negatives = _pick(m, ~area, n_negative, largest=False)
        rc = np.array(positives + negatives, dtype=np.float32).reshape(-1, 2)
        prompts.append(PointPrompt(
            coords=rc[:, ::-1] + np.float32(0.5),
            labels=np.array([1] * len(positives) + [0] * len(negatives), dtype=np.int32),
            positive_area=area,
        ))
    return prompts


def _centroid(m: np.ndarray, area: np.ndarray, r: int, c: int) -> tuple[float, float]:
    """(row, col) of a peak moved to the centroid of its 3x3 neighbourhood inside ``area``,
    weighted by the map above its minimum: an object smaller than a grid cell lights up the
    cells it straddles in proportion, and their centroid lands on it, not on a cell centre."""
    r0, r1, c0, c1 = max(r - 1, 0), r + 2, max(c - 1, 0), c + 2
    weight = (m[r0:r1, c0:c1] - m.min()) * area[r0:r1, c0:c1]
    if weight.sum() <= 0:
        return float(r), float(c)
    rows, cols = np.mgrid[r0:r0 + weight.shape[0], c0:c0 + weight.shape[1]]
    return float((rows * weight).sum() / weight.sum()), float((cols * weight).sum() / weight.sum())


def _weak_instances(m: np.ndarray, covered: np.ndarray, threshold: float, min_peak: float,
                    limit: int) -> list[np.ndarray]:
    """Up to ``limit`` (h, w) bool areas around local maxima of ``m`` outside ``covered`` that
    reach ``min_peak`` of the range: each the connected part, outside earlier areas, of the
    pixels above ``min + threshold * (peak - min)``."""
    lo, hi = m.min(), m.max()
    covered = covered.copy()
    peaks = (m >= cv2.dilate(m, np.ones((3, 3), np.uint8))) & ~covered
    peaks &= m >= lo + min_peak * (hi - lo)
    rows, cols = np.nonzero(peaks)
    areas = []
    for k in np.argsort(-m[rows, cols], kind="stable"):
        r, c = rows[k], cols[k]
        if covered[r, c]:
            continue
        region = ((m >= lo + threshold * (m[r, c] - lo)) & ~covered).astype(np.uint8)
        _, labels = cv2.connectedComponents(region, connectivity=8)
        area = labels == labels[r, c]
        areas.append(area)
        covered |= area
        if len(areas) == limit:
            break
    return areas


def pool_to_grid(mask: np.ndarray, region, grid: tuple[int, int]) -> np.ndarray:
    """(H, W) mask or map -> (gh, gw) float32: the mean of each grid cell's patch, where the
    grid covers ``region`` = (x0, y0, x1, y1) in the mask's pixels (zero outside the mask)."""
    h, w = mask.shape
    x0, y0, x1, y1 = (int(round(v)) for v in region)
    patch = np.zeros((y1 - y0, x1 - x0), np.float32)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        patch[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = mask[sy0:sy1, sx0:sx1]
    return cv2.resize(patch, grid[::-1], interpolation=cv2.INTER_AREA)


def _region_scale(grid_hw: tuple[int, int], region_xyxy) -> tuple[float, float, float, float]:
    """(x0, y0, sx, sy): image x = x0 + sx * map x (continuous coordinates), likewise y."""
    gh, gw = grid_hw
    x0, y0, x1, y1 = (float(v) for v in region_xyxy)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty region {region_xyxy}")
    return x0, y0, (x1 - x0) / gw, (y1 - y0) / gh


def resize_map(
    m: torch.Tensor | np.ndarray,
    region_xyxy: tuple[float, float, float, float],
    image_hw: tuple[int, int],
) -> np.ndarray:
    """Bilinearly place a grid map onto the original image.

    Args:
        m: (gh, gw) map whose grid covers ``region_xyxy`` (x0, y0, x1, y1) in original image pixel
            coordinates. The region may extend beyond the image (the model padded) or lie inside it
            (the model centre-cropped).
        image_hw: (H, W) of the original image.

    Returns:
        (H, W) float32; pixels whose centre lies outside the region get the map's minimum.
    """
    m = _as_map(m).astype(np.float32)
    H, W = image_hw
    x0, y0, sx, sy = _region_scale(m.shape, region_xyxy)
    # cv2 indexes pixel centres at integers: continuous x = index + 0.5 on both sides.
    warp = np.array([[sx, 0.0, x0 + 0.5 * sx - 0.5], [0.0, sy, y0 + 0.5 * sy - 0.5]])
    out = cv2.warpAffine(m, warp, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    xs, ys = np.arange(W) + 0.5, np.arange(H) + 0.5
    inside = ((ys >= y0) & (ys < region_xyxy[3]))[:, None] & ((xs >= x0) & (xs < region_xyxy[2]))
    out[~inside] = m.min()
    return out


def points_to_image(
    prompt: PointPrompt, grid_hw: tuple[int, int], region_xyxy: tuple[float, float, float, float]
) -> np.ndarray:
    """Map a prompt's (P, 2) map coordinates to (P, 2) float32 original-image coordinates.

    ``x_img = x0 + x_map * (x1 - x0) / gw`` (likewise y), so the centre of grid cell (r, c) lands on
    the centre of that patch's rectangle in the image.
    """
    x0, y0, sx, sy = _region_scale(grid_hw, region_xyxy)
    coords = np.asarray(prompt.coords, dtype=np.float64).reshape(-1, 2)
    return (coords * [sx, sy] + [x0, y0]).astype(np.float32)
