"""What a batch run reads: the entries of an image, a folder (recursive; earlier runs' output
folders left out) or a COCO/LVIS annotation file (+ an image root)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..io import IMAGE_SUFFIXES, printable_name, scan_folder
from .lock import LOCK
from .predictions import PREDICTIONS


@dataclass(frozen=True)
class Entry:
    """One input image: ``file`` is its name in the results (relative to the input root, valid
    UTF-8); ``(file, image_id)`` identifies its record in ``predictions.jsonl``."""

    file: str
    path: Path
    image_id: int | None = None

    @property
    def key(self) -> tuple[str, int | None]:
        return self.file, self.image_id


@dataclass
class Inputs:
    """What an input names: the entries, the annotation dict (annotation-file inputs), and what
    a folder scan left out: files that are not images, earlier runs' output folders."""

    entries: list[Entry]
    gt: dict | None = None
    not_images: list[Path] = field(default_factory=list)
    output_folders: list[Path] = field(default_factory=list)


def collect_inputs(source: str | Path, images_root: str | Path | None = None,
                   out: str | Path | None = None) -> Inputs:
    """An image, a folder (recursive) or a COCO/LVIS json (+ ``images_root``) -> :class:`Inputs`.

    A folder scan leaves out ``out`` and every folder holding a vlpipe run's output, so outputs
    are never read back as inputs. ValueError / FileNotFoundError for an input that cannot be
    run at all (no images, duplicate image ids, no image under the root)."""
    source = Path(source)
    if source.is_dir():
        return _folder_inputs(source, out)
    if source.suffix.lower() == ".json":
        return _annotation_inputs(source, images_root)
    if not source.exists():
        raise FileNotFoundError(f"no such file or folder: '{source}'")
    if source.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"'{source}' is not an image ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                         "a folder, or a COCO/LVIS .json annotation file")
    return Inputs([Entry(printable_name(str(source)), source)])


def list_inputs(source: str | Path, images_root: str | Path | None = None
                ) -> tuple[list[Entry], dict | None]:
    """The entries of an input and its annotation dict (see :func:`collect_inputs`)."""
    inputs = collect_inputs(source, images_root)
    return inputs.entries, inputs.gt


def is_output_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a vlpipe run's output (its lock file or predictions)."""
    return (folder / LOCK).is_file() or (folder / PREDICTIONS).is_file()


def _folder_inputs(source: Path, out: str | Path | None) -> Inputs:
    out_dir = Path(out).resolve() if out is not None else None
    scan = scan_folder(source, lambda d: d.resolve() == out_dir or is_output_folder(d))
    if not scan.images:
        others = f" ({len(scan.others)} other file(s), e.g. '{scan.others[0].name}')" \
            if scan.others else ""
        raise ValueError(f"no image files in folder '{source}'{others}; images are "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))}")
    entries = [Entry(printable_name(p.relative_to(source).as_posix()), p) for p in scan.images]
    return Inputs(entries, None, scan.others, scan.excluded)


def _annotation_inputs(source: Path, images_root: str | Path | None) -> Inputs:
    from ..eval import load_gt

    gt = load_gt(source)
    root = Path(images_root) if images_root is not None else source.parent
    _check_unique_ids(source, gt["images"])
    entries = []
    for k, img in enumerate(gt["images"]):
        name = img.get("file_name") or _from_url(root, img.get("coco_url", ""))
        if not name:
            raise ValueError(f"{source}: image {img.get('id')} has no file_name or coco_url")
        entries.append(Entry(printable_name(name), _inside(root, name, source),
                             _image_id(source, k, img)))
    if entries and not any(e.path.is_file() for e in entries):
        raise ValueError(f"none of the {len(entries)} images of {source} is under the image "
                         f"root '{root}' (e.g. '{entries[0].path}'); pass the folder that holds "
                         "them with --images")
    return Inputs(entries, gt)


def _image_id(source: Path, k: int, image: dict) -> int:
    try:
        return int(image["id"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{source}: images[{k}] has no integer id") from None


def _check_unique_ids(source: Path, images: list[dict]) -> None:
    """ValueError naming the image ids listed more than once (their detections would merge)."""
    counts = Counter(img.get("id") for img in images)
    repeated = sorted((str(i) for i, n in counts.items() if n > 1))
    if repeated:
        raise ValueError(f"{source}: image id(s) listed more than once: "
                         f"{', '.join(repeated[:10])}{' ...' if len(repeated) > 10 else ''}")


def _from_url(root: Path, url: str) -> str:
    """The file of an image known by its ``coco_url`` only (LVIS): ``split/name`` (e.g.
    ``val2017/000000000139.jpg``; LVIS val mixes COCO's train and val images) when that exists
    under ``root``, else the bare name."""
    parts = [p for p in url.split("/") if p][-2:]
    if len(parts) == 2 and (root / parts[0] / parts[1]).is_file():
        return "/".join(parts)
    return parts[-1] if parts else ""


def _inside(root: Path, name: str, source: Path) -> Path:
    """root / name, refusing names that climb out of root (``..``, absolute). Checked on the
    names, not on resolved paths: an image root made of symbolic links is the user's choice."""
    climbs = os.path.normpath(name.replace("\\", "/"))
    if os.path.isabs(climbs) or climbs == ".." or climbs.startswith("../"):
        raise ValueError(f"{source}: file_name {name!r} points outside the image root")
    return root / os.path.normpath(name)
