"""Tests for vlpipe.io: image loading in every mode, error paths and file helpers."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from vlpipe.io import (IMAGE_SUFFIXES, ImageLoadError, as_rgb_image, iter_image_files,
                       load_image, safe_filename, scan_folder)

SHARED_IMAGES = Path(__file__).resolve().parent / "data" / "images"


def _pattern(h: int = 32, w: int = 48) -> np.ndarray:
    """A smooth RGB test pattern, (h, w, 3) uint8."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)], -1).astype(np.uint8)


def _check_rgb(a: np.ndarray, shape: tuple[int, int]) -> None:
    assert isinstance(a, np.ndarray)
    assert a.dtype == np.uint8
    assert a.shape == (*shape, 3)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix, kwargs, tol", [
    (".png", {}, 0),
    (".bmp", {}, 0),
    (".tif", {}, 0),
    (".tiff", {"compression": "tiff_lzw"}, 0),
    (".webp", {"lossless": True}, 0),
    (".jpg", {"quality": 95}, 12),
    (".jpeg", {"quality": 95}, 12),
])
def test_round_trip(tmp_path, suffix, kwargs, tol):
    if suffix == ".webp" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    src = _pattern()
    path = tmp_path / f"img{suffix}"
    Image.fromarray(src).save(path, **kwargs)
    out = load_image(path)
    _check_rgb(out, src.shape[:2])
    diff = np.abs(out.astype(int) - src.astype(int))
    assert diff.max() <= tol
    if tol:
        assert diff.mean() < 3


def test_lossy_webp_round_trip(tmp_path):
    if not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    src = np.zeros((32, 32, 3), np.uint8)
    src[:, :16] = (200, 30, 30)
    src[:, 16:] = (30, 30, 200)
    Image.fromarray(src).save(tmp_path / "x.webp", quality=90)
    out = load_image(tmp_path / "x.webp")
    _check_rgb(out, (32, 32))
    assert np.abs(out[8:24, 2:12].astype(int) - (200, 30, 30)).max() < 20
    assert np.abs(out[8:24, 20:30].astype(int) - (30, 30, 200)).max() < 20


def test_output_is_writable_copy(tmp_path):
    Image.fromarray(_pattern()).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    out[0, 0] = 7  # must not raise (np.asarray on a PIL image gives a read-only view)
    assert out.flags.c_contiguous


# ---------------------------------------------------------------- EXIF orientation


def _save_with_orientation(path: Path, arr: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, exif=exif.tobytes(), quality=95)


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    # stored 40 wide x 20 high: left half red, right half blue
    raw = np.zeros((20, 40, 3), np.uint8)
    raw[:, :20] = (255, 0, 0)
    raw[:, 20:] = (0, 0, 255)
    path = tmp_path / "rot6.jpg"
    _save_with_orientation(path, raw, 6)
    out = load_image(path)
    _check_rgb(out, (40, 20))  # width and height swapped
    # rotated 90 degrees clockwise for display: the left (red) half is now on top
    assert np.abs(out[5, 10].astype(int) - (255, 0, 0)).max() < 30
    assert np.abs(out[35, 10].astype(int) - (0, 0, 255)).max() < 30


def test_exif_orientation_3_rotates_180(tmp_path):
    raw = np.zeros((20, 40, 3), np.uint8)
    raw[:10, :] = (0, 255, 0)  # green top, black bottom
    path = tmp_path / "rot3.jpg"
    _save_with_orientation(path, raw, 3)
    out = load_image(path)
    _check_rgb(out, (20, 40))
    assert out[2, 20, 1] < 40 and out[17, 20, 1] > 215  # green is now at the bottom


def test_exif_orientation_shared_file():
    path = SHARED_IMAGES / "exif_orientation.jpg"
    with Image.open(path) as im:
        assert im.getexif().get(0x0112) == 3
        raw = np.asarray(im.convert("RGB"))
    out = load_image(path)
    _check_rgb(out, raw.shape[:2])
    np.testing.assert_array_equal(out, np.rot90(raw, 2))


@pytest.mark.parametrize("name", ["cat_dog.jpeg", "ch_en_num.jpg", "dog.jpg", "en.jpg", "truck.jpg"])
def test_shared_jpegs_load(name):
    path = SHARED_IMAGES / name
    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    out = load_image(path)
    _check_rgb(out, (w, h) if orientation in (5, 6, 7, 8) else (h, w))


# ---------------------------------------------------------------- alpha / transparency


def test_rgba_composited_on_white(tmp_path):
    px = np.array([[[0, 0, 0, 0], [255, 0, 0, 255], [0, 0, 0, 128], [0, 0, 255, 0]]], np.uint8)
    Image.fromarray(px, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    _check_rgb(out, (1, 4))
    assert out[0, 0].tolist() == [255, 255, 255]  # fully transparent -> white
    assert out[0, 1].tolist() == [255, 0, 0]  # opaque red stays red
    assert np.abs(out[0, 2].astype(int) - 128).max() <= 1  # half-transparent black -> mid gray
    assert out[0, 3].tolist() == [255, 255, 255]  # transparent blue is not blue


def test_la_composited_on_white(tmp_path):
    px = np.array([[[0, 0], [0, 255], [100, 255]]], np.uint8)
    Image.fromarray(px, "LA").save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png")
    _check_rgb(out, (1, 3))
    assert out[0].tolist() == [[255, 255, 255], [0, 0, 0], [100, 100, 100]]


def test_shared_transparent_png():
    path = SHARED_IMAGES / "transparent_text.png"
    with Image.open(path) as im:
        w, h = im.size
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
    out = load_image(path)
    _check_rgb(out, (h, w))
    # transparent pixels become white, not black
    assert (out[alpha == 0] == 255).all()


# ---------------------------------------------------------------- other modes


def test_grayscale_l(tmp_path):
    gray = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    _check_rgb(out, (4, 6))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def _palette_image() -> Image.Image:
    im = Image.new("P", (3, 1))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    im.putdata([0, 1, 2])
    return im


def test_palette_without_transparency(tmp_path):
    _palette_image().save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "P"
    out = load_image(tmp_path / "p.png")
    assert out.tolist() == [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]]


def test_palette_with_transparency(tmp_path):
    _palette_image().save(tmp_path / "pt.png", transparency=1)  # index 1 (green) transparent
    out = load_image(tmp_path / "pt.png")
    assert out.tolist() == [[[255, 0, 0], [255, 255, 255], [0, 0, 255]]]


def test_palette_gif_with_transparency(tmp_path):
    _palette_image().save(tmp_path / "pt.gif", transparency=0)
    out = load_image(tmp_path / "pt.gif")
    assert out.tolist() == [[[255, 255, 255], [0, 255, 0], [0, 0, 255]]]


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.mode == "CMYK"
    out = load_image(tmp_path / "c.jpg")
    _check_rgb(out, (16, 16))
    assert np.abs(out.astype(int) - (255, 0, 0)).max() < 10  # no cyan + full magenta/yellow = red


def test_one_bit(tmp_path):
    im = Image.new("1", (4, 2), 0)
    im.putpixel((1, 0), 1)
    im.putpixel((3, 1), 1)
    im.save(tmp_path / "b.png")
    out = load_image(tmp_path / "b.png")
    _check_rgb(out, (2, 4))
    white = (out == 255).all(-1)
    black = (out == 0).all(-1)
    assert white.tolist() == [[False, True, False, False], [False, False, False, True]]
    assert (white | black).all()


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_grayscale(tmp_path, suffix):
    values = np.array([[0, 257, 257 * 77, 257 * 128, 65535, 1000, 128, 129]], np.uint16)
    Image.fromarray(values).save(tmp_path / f"g16{suffix}")
    with Image.open(tmp_path / f"g16{suffix}") as im:
        assert im.mode in ("I;16", "I;16B", "I;16L", "I")
    out = load_image(tmp_path / f"g16{suffix}")
    _check_rgb(out, (1, 8))
    # scaled by /257 and rounded: not clipped to 255, not truncated by >> 8
    assert out[0, :, 0].tolist() == [0, 1, 77, 128, 255, 4, 0, 1]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_sixteen_bit_big_endian(tmp_path):
    values = np.array([[0, 257 * 10, 65535]], np.uint16)
    im = Image.frombytes("I;16B", (3, 1), values.astype(">u2").tobytes())
    im.save(tmp_path / "be.tif")
    out = load_image(tmp_path / "be.tif")
    assert out[0, :, 0].tolist() == [0, 10, 255]


def test_thirty_two_bit_int_and_float(tmp_path):
    ints = np.array([[0, 1_000_000, 2_000_000]], np.int32)
    Image.fromarray(ints, "I").save(tmp_path / "i32.tif")
    out = load_image(tmp_path / "i32.tif")
    assert out[0, :, 0].tolist() == [0, 128, 255]  # full range stretched, not clipped
    floats = np.array([[0.0, 0.5, 1.0]], np.float32)
    Image.fromarray(floats, "F").save(tmp_path / "f32.tif")
    out = load_image(tmp_path / "f32.tif")
    _check_rgb(out, (1, 3))
    assert out[0, :, 0].tolist() == [0, 128, 255]


# ---------------------------------------------------------------- errors


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_pattern(64, 64)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "truncated_photo.jpg"
    path.write_bytes(_jpeg_bytes()[:700])
    with pytest.raises(ImageLoadError, match="truncated_photo.jpg") as info:
        load_image(path)
    assert "corrupt or truncated" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_truncated_png(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match="cut.png"):
        load_image(path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert str(info.value) == f"cannot read image {str(path)!r}: file is empty (0 bytes)"


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is definitely not a JPEG\n")
    with pytest.raises(ImageLoadError, match=r"notes\.jpg.*not a recognised image"):
        load_image(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "ghost.png"
    with pytest.raises(ImageLoadError, match=r"ghost\.png.*not found"):
        load_image(path)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_image(tmp_path)


def test_decompression_bomb_header_check(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("L", (2000, 2000)).save(path)
    with pytest.raises(ImageLoadError, match=r"bomb\.png.*too large") as info:
        load_image(path, max_pixels=1000)
    assert "2000x2000" in str(info.value)
    assert load_image(path, max_pixels=None).shape == (2000, 2000, 3)
    assert load_image(path, max_pixels=4_000_000).shape == (2000, 2000, 3)


def test_pil_bomb_limit_does_not_leak(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (200, 200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL would raise for > 2000 pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        assert load_image(path).shape == (200, 200, 3)  # our default limit is higher
        assert load_image(path, max_pixels=None).shape == (200, 200, 3)
        with pytest.raises(ImageLoadError, match=r"big\.png.*too large"):
            load_image(path, max_pixels=1500)  # PIL's own error, re-raised as ours
    assert Image.MAX_IMAGE_PIXELS == 1000  # limit restored, not mutated permanently


# ---------------------------------------------------------------- helpers


def test_image_suffixes():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".tga",
            ".ico"} <= IMAGE_SUFFIXES
    assert not {".txt", ".json", ".pdf", ".h5", ".mpg", ".svg"} & IMAGE_SUFFIXES


@pytest.mark.parametrize("suffix", [".gif", ".ppm", ".pgm", ".tga", ".jpe", ".dib"])
def test_more_formats_load(tmp_path, suffix):
    path = tmp_path / f"img{suffix}"
    Image.fromarray(_pattern()).save(path)
    assert [p.name for p in iter_image_files(tmp_path)] == [path.name]
    _check_rgb(load_image(path), (32, 48))


def test_scan_folder_reports_other_files_and_excluded_folders(tmp_path):
    for rel in ["a.gif", "b.png", "notes.txt", "data.h5", "out/vis/a-1.jpg", "old/x.jpg",
                ".hidden.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    scan = scan_folder(tmp_path, lambda d: d.name in ("out", "old"))
    assert [p.name for p in scan.images] == ["a.gif", "b.png"]
    assert [p.name for p in scan.others] == ["data.h5", "notes.txt"]
    assert sorted(p.name for p in scan.excluded) == ["old", "out"]


def test_iter_image_files(tmp_path):
    rels = ["b.png", "a.JPG", "sub/c.webp", "sub/deep/d.tiff", "z.Jpeg",
            "notes.txt", "sub/readme.md", ".hidden.png", ".git/e.png", "sub/.cache/f.jpg", "noext"]
    for rel in rels:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "dir.png").mkdir()  # a directory with an image suffix is not a file
    found = [p.relative_to(tmp_path).as_posix() for p in iter_image_files(tmp_path)]
    assert found == ["a.JPG", "b.png", "sub/c.webp", "sub/deep/d.tiff", "z.Jpeg"]
    assert all(isinstance(p, Path) for p in iter_image_files(str(tmp_path)))


def test_iter_image_files_missing_folder(tmp_path):
    with pytest.raises(NotADirectoryError):
        list(iter_image_files(tmp_path / "missing"))


_ALLOWED = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@pytest.mark.parametrize("name", [
    "../../etc/passwd", "..\\..\\windows\\system32\\cmd.exe", "/abs/path.jpg", "..", ".", "...", "",
    ".bashrc", "a/../b.jpg", "foo\x00bar\n.jpg", "x" * 500 + ".jpg", "....//....//secret",
    "CON", "  spaced name .png", "dots...in..name.png", "a" * 199 + "..jpg",
])
def test_safe_filename_is_safe(name):
    out = safe_filename(name)
    assert out
    assert "/" not in out and "\\" not in out and ".." not in out
    assert not out.startswith(".")
    assert len(out) <= 200
    assert set(out) <= _ALLOWED
    assert out not in (".", "..")


def test_safe_filename_examples():
    assert safe_filename("../../etc/passwd") == "etc_passwd"
    assert safe_filename("normal-name_1.jpg") == "normal-name_1.jpg"
    assert safe_filename("my photo (1).JPG") == "my_photo__1_.JPG"
    assert safe_filename(".bashrc") == "bashrc"
    long = safe_filename("x" * 500 + ".jpg")
    assert len(long) == 200 and long.endswith(".jpg")
    assert safe_filename("CON").upper() != "CON"


def test_in_memory_rgb_is_kept_when_writable_and_copied_when_read_only():
    writable = np.full((2, 3, 3), 7, np.uint8)
    assert as_rgb_image(writable) is writable
    read_only = np.full((2, 3, 3), 7, np.uint8)
    read_only.flags.writeable = False
    copied = as_rgb_image(read_only)
    assert copied.flags.writeable and copied is not read_only
    np.testing.assert_array_equal(copied, read_only)
