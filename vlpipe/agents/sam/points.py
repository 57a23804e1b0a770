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


# A step of the explain-away search must rise above the map's noise. Two robust estimates, each
# blind where the other sees (:func:`_noise_floor`): the cells' median plus NOISE_MADS median
# absolute deviations (Gaussian noise on a 48x48 grid stays under 4.7 sigma = 7 MADs; uniform
# noise under 2 MADs), and NOISE_SIGMAS noise deviations above the minimum, the deviation read
# from neighbouring cells' differences (a 48x48 Gaussian map spans about 7 sigma).
NOISE_MADS = 7.0
NOISE_SIGMAS = 9.0


def inside_cells(grid_hw: tuple[int, int], region_xyxy, image_hw: tuple[int, int]) -> np.ndarray:
    """(gh, gw) bool: the cells of a grid over ``region_xyxy`` (x0, y0, x1, y1, image pixels)
    whose centres lie inside the (H, W) image; a padded view's grid also covers the padding."""
    x0, y0, sx, sy = _region_scale(grid_hw, region_xyxy)
    (gh, gw), (h, w) = grid_hw, image_hw
    xs, ys = x0 + (np.arange(gw) + 0.5) * sx, y0 + (np.arange(gh) + 0.5) * sy
    return ((ys >= 0) & (ys < h))[:, None] & ((xs >= 0) & (xs < w))[None]


def _valid(valid: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    if valid is None:
        return np.ones(shape, bool)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != shape:
        raise ValueError(f"valid cells shape {valid.shape} does not match map shape {shape}")
    return valid if valid.any() else np.ones(shape, bool)


def _centre_prompt(valid: np.ndarray) -> PointPrompt:
    """The middle cell of the valid cells (a rectangle) as the only, positive, point."""
    rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
    r = rows[0] + (rows[-1] - rows[0] + 1) // 2
    c = cols[0] + (cols[-1] - cols[0] + 1) // 2
    return PointPrompt(coords=np.array([[c + 0.5, r + 0.5]], dtype=np.float32),
                       labels=np.ones(1, dtype=np.int32), positive_area=valid.copy())


def _prompt(act: np.ndarray, allowed: np.ndarray, m: np.ndarray, negative_cells: np.ndarray,
            threshold: float, n_positive: int, n_negative: int,
            peak: tuple[int, int] | None = None) -> PointPrompt:
    """VL-SAM's prompt from ``act`` (h, w) >= 0 over the ``allowed`` cells: the positive area is
    the 8-connected component of those with ``act >= threshold * act[peak]`` that holds
    ``peak`` (default: the largest component above ``threshold * act.max()``, ties: the lowest
    label), positives its highest cells moved to their weighted centroids, negatives the lowest
    cells of the map ``m`` among ``negative_cells`` outside the area."""
    height = act.max() if peak is None else act[peak]
    above = (act >= threshold * height) & allowed
    _, components, stats, _ = cv2.connectedComponentsWithStats(above.astype(np.uint8),
                                                               connectivity=8)
    label = (1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])) if peak is None
             else components[peak])
    area = components == label
    positives = [_centroid(act, area, r, c) for r, c in _pick(act, area, n_positive, True)]
    negatives = _pick(m, negative_cells & ~area, n_negative, largest=False)
    rc = np.array(positives + negatives, dtype=np.float32).reshape(-1, 2)
    return PointPrompt(
        coords=rc[:, ::-1] + np.float32(0.5),
        labels=np.array([1] * len(positives) + [0] * len(negatives), dtype=np.int32),
        positive_area=area,
    )


def sample_points(
    m: torch.Tensor | np.ndarray,
    *,
    threshold: float = 0.5,
    n_positive: int = 1,
    n_negative: int = 1,
    mask: np.ndarray | None = None,
    valid: np.ndarray | None = None,
) -> PointPrompt:
    """Sample positive and negative point prompts from an (h, w) attention map.

    Only ``valid`` cells (default: all; see :func:`inside_cells`) take part. The map is cut at
    ``min + threshold * (max - min)``; the positive area is the largest 8-connected component
    above the cut (ties: the lowest component label). Positives are the highest pixels inside
    the area, each moved to the weighted centroid of its 3x3 neighbourhood in the area (sub-cell
    precision), negatives the lowest pixels outside it; further points after the first skip a
    small neighbourhood of the points already chosen.

    Args:
        m: (h, w) attention map.
        threshold: fraction of the map's range, in [0, 1].
        n_positive: number of positive points wanted (fewer if the area is too small).
        n_negative: number of negative points wanted (none if the area covers the whole map).
        mask: optional (h, w) weights in [0, 1], e.g. the fraction of each cell the previous SAM
            mask covers: the prompt is :func:`refined_prompt`'s, unless the mask covers no
            activation (then it is ignored).
        valid: optional (h, w) bool, the cells inside the image.

    Returns:
        PointPrompt. A flat map (max == min) has no peak: the centre of the valid cells is
        returned as the only (positive) point and the positive area is the valid cells.
    """
    if mask is not None:
        refined = refined_prompt(m, mask, threshold=threshold, n_positive=n_positive,
                                 n_negative=n_negative, valid=valid)
        if refined is not None:
            return refined
    m, valid = _checked(m, threshold, n_positive, n_negative, valid)
    act = _activation(m, valid)
    if act.max() <= 0:
        return _centre_prompt(valid)
    return _prompt(act, valid, m, valid, threshold, n_positive, n_negative)


def refined_prompt(m: torch.Tensor | np.ndarray, coverage: np.ndarray, *, threshold: float = 0.5,
                   n_positive: int = 1, n_negative: int = 1, valid: np.ndarray | None = None
                   ) -> PointPrompt | None:
    """VL-SAM's refinement prompt: the map above its minimum weighted by ``coverage`` (h, w),
    the fraction of each cell the previous mask covers (a mask under one cell still counts), cut
    and sampled as in :func:`sample_points`; negatives at the map's true lowest cells the mask
    does not touch. None when the mask covers no activation (the caller keeps its prompt rather
    than jump to another instance's peak)."""
    m, valid = _checked(m, threshold, n_positive, n_negative, valid)
    weight = np.asarray(coverage, dtype=np.float64)
    if weight.shape != m.shape:
        raise ValueError(f"mask shape {weight.shape} does not match map shape {m.shape}")
    act = _activation(m, valid) * weight
    if act.max() <= 0:
        return None
    return _prompt(act, valid & (weight > 0), m, valid & (weight <= 0), threshold, n_positive,
                   n_negative)


def _checked(m, threshold: float, n_positive: int, n_negative: int, valid
             ) -> tuple[np.ndarray, np.ndarray]:
    m = _as_map(m)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if n_positive < 0 or n_negative < 0:
        raise ValueError("n_positive and n_negative must be >= 0")
    return m, _valid(valid, m.shape)


def _activation(m: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(h, w) map above its minimum over the ``valid`` cells; 0 elsewhere."""
    return np.where(valid, m - m[valid].min(), 0.0)


def _noise_floor(m: np.ndarray, valid: np.ndarray) -> float:
    """The activation (above the minimum of the ``valid`` cells) that noise alone reaches: the
    lower of the cells' median + ``NOISE_MADS`` MADs (its median is the background while
    instances fill under half the cells) and ``NOISE_SIGMAS`` deviations estimated from the
    differences of neighbouring valid cells (MAD / (0.6745 sqrt 2)), which instances that fill
    the view but are smooth at the grid's scale leave near zero."""
    cells = m[valid]
    median = np.median(cells)
    floor = median + NOISE_MADS * np.median(np.abs(cells - median)) - cells.min()
    steps = np.concatenate([(m[:, 1:] - m[:, :-1])[valid[:, 1:] & valid[:, :-1]],
                            (m[1:] - m[:-1])[valid[1:] & valid[:-1]]])
    if steps.size:
        sigma = np.median(np.abs(steps)) / (0.6745 * np.sqrt(2.0))
        floor = min(floor, NOISE_SIGMAS * sigma)
    return float(floor)


class InstanceSearch:
    """The instances of one name's map, found by explaining them away one at a time.

    A name's map lights up every instance; touching or overlapping ones merge into one bright
    area at the grid's resolution, so areas are not instances. The first step is VL-SAM's
    prompt (:func:`sample_points`); the caller segments it and :meth:`explain` removes the
    mask from the residual activation; each further step prompts the strongest residual peak,
    with the area around it above ``threshold`` of its height. The search stops after
    ``max_instances`` masks (or twice as many prompts), or when the residual's peak is under
    ``min_peak`` of the map's range or under its noise level (:func:`_noise_floor`, over the
    cells inside the image, so a noisy map gives one prompt). Only
    ``valid`` cells take part.
    """

    def __init__(self, m: torch.Tensor | np.ndarray, *, valid: np.ndarray | None = None,
                 threshold: float = 0.5, min_peak: float = 0.1, max_instances: int = 8,
                 n_positive: int = 1, n_negative: int = 1) -> None:
        self.m, self.valid = _checked(m, threshold, n_positive, n_negative, valid)
        if max_instances < 1:
            raise ValueError(f"max_instances must be >= 1, got {max_instances}")
        self.residual = _activation(self.m, self.valid)
        self.floor = max(min_peak * self.residual.max(), _noise_floor(self.m, self.valid))
        self.threshold, self.n_positive, self.n_negative = threshold, n_positive, n_negative
        self.masks_left, self.prompts_left = max_instances, 2 * max_instances
        self.blocked = np.zeros_like(self.valid)  # peaks that failed since the last mask
        self.peak: tuple[int, int] | None = None
        self.prompt: PointPrompt | None = None  # the last one
        self.retry: PointPrompt | None = None

    def next_prompt(self) -> PointPrompt | None:
        """The next instance's prompt, or None when the search is over."""
        if self.masks_left == 0 or self.prompts_left == 0:
            return None
        self.prompts_left -= 1
        if self.retry is not None:
            self.prompt, self.retry = self.retry, None
            return self.prompt
        if self.peak is None:
            if self.residual.max() <= 0:
                self.masks_left, self.peak = 0, (0, 0)
                self.prompt = _centre_prompt(self.valid)
                return self.prompt
            p = _prompt(self.residual, self.valid, self.m, self.valid, self.threshold,
                        self.n_positive, self.n_negative)
        else:
            open_ = np.where(self.blocked, 0.0, self.residual)
            if open_.max() <= self.floor:
                return None
            peak = divmod(int(np.argmax(open_)), open_.shape[1])
            p = _prompt(open_, self.valid & ~self.blocked, self.m, self.valid, self.threshold,
                        self.n_positive, self.n_negative, peak)
        in_area = np.where(p.positive_area, self.residual, -np.inf)
        self.peak = divmod(int(np.argmax(in_area)), in_area.shape[1])
        self.prompt = p
        return p

    def explain(self, coverage: np.ndarray) -> None:
        """Remove the last prompt's mask: ``coverage`` (h, w), the fraction of each cell it
        covers. The residual loses the coverage times the instance's level in the map (the
        larger of its prompt's peak height and the least-squares fit of the map to the
        coverage; for a map of pooled masks, exactly what the mask put there), clipped at zero.
        A mask that misses the prompt's peak cell (none, or another object's) leaves the peak:
        the next prompt tries the peak cell's centre instead of the sub-cell centroid (which
        two touching instances pull into the gap between them); when that fails too, the peak
        is set aside until another mask changes the residual around it."""
        f = np.where(self.valid, np.asarray(coverage, dtype=np.float64), 0.0)
        r, c = self.peak
        if (f * f).sum() > 0:
            level = max(self.residual[r, c], (self.residual * f).sum() / (f * f).sum())
            self.residual = np.maximum(self.residual - level * f, 0.0)
            self.masks_left -= 1
            self.blocked[:] = False
        if f[r, c] > 0:
            self.residual[r, c] = 0.0
            return
        centre = self.prompt.coords.copy()
        centre[:1] = [c + 0.5, r + 0.5]
        if ((self.prompt.labels[:1] == 1).any() and self.residual[r, c] > self.floor
                and not np.array_equal(centre, self.prompt.coords)):
            self.retry = PointPrompt(centre, self.prompt.labels, self.prompt.positive_area)
        else:
            self.blocked[r, c] = True


def instance_prompts(
    m: torch.Tensor | np.ndarray,
    *,
    threshold: float = 0.5,
    max_instances: int = 8,
    min_peak: float = 0.1,
    n_positive: int = 1,
    n_negative: int = 1,
    valid: np.ndarray | None = None,
    segment=None,
) -> list[PointPrompt]:
    """One prompt per instance of an object, by :class:`InstanceSearch`: ``segment`` (a
    PointPrompt -> (h, w) cell coverage of its mask) explains each prompt away; without it the
    prompt's positive area stands for its mask (a map alone cannot split touching instances;
    :class:`~vlpipe.agents.sam.nodes.SamNode` explains away SAM's masks). Arguments as in
    :class:`InstanceSearch`.

    Returns:
        1 to ``2 * max_instances`` PointPrompts (a prompt whose mask missed its peak is
        retried; at most ``max_instances`` masks); a flat map gives the single centre prompt.
    """
    search = InstanceSearch(m, valid=valid, threshold=threshold, min_peak=min_peak,
                            max_instances=max_instances, n_positive=n_positive,
                            n_negative=n_negative)
    prompts = []
    while (p := search.next_prompt()) is not None:
        prompts.append(p)
        search.explain(p.positive_area if segment is None else segment(p))
    return prompts


def _centroid(m: np.ndarray, area: np.ndarray, r: int, c: int) -> tuple[float, float]:
    """(row, col) of a peak moved to the centroid of its 3x3 neighbourhood inside ``area``,
    weighted by ``m`` (an activation >= 0): an object smaller than a grid cell lights up the
    cells it straddles in proportion, and their centroid lands on it, not on a cell centre."""
    r0, r1, c0, c1 = max(r - 1, 0), r + 2, max(c - 1, 0), c + 2
    weight = m[r0:r1, c0:c1] * area[r0:r1, c0:c1]
    if weight.sum() <= 0:
        return float(r), float(c)
    rows, cols = np.mgrid[r0:r0 + weight.shape[0], c0:c0 + weight.shape[1]]
    return float((rows * weight).sum() / weight.sum()), float((cols * weight).sum() / weight.sum())


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
