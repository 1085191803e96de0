"""Image decoding in every Pillow mode: the files are made with Pillow/numpy and the decoded
pixels are compared with values computed here from the stored numbers (16-bit scaled by
65535, alpha composited over white, CMYK as (1 - C)(1 - K), EXIF orientation applied)."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spectrascope.errors import DataError
from spectrascope.io.images import load_image
from spectrascope.io.pixels import _to_rgb, decode_rgb, decode_rgb_uint8

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-6          # float32 rounding of values computed in float64


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(grey, dtype=np.float64)[..., None], 3, axis=2)


def _close(got: np.ndarray, want: np.ndarray):
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


U16 = np.array([[0, 1000, 65535], [32768, 7, 255]], dtype=np.uint16)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grey_is_scaled_not_clipped(tmp_path, suffix):
    path = tmp_path / f"g16{suffix}"
    Image.fromarray(U16).save(path)
    assert Image.open(path).mode == "I;16"
    got = decode_rgb(path)
    _close(got, _rgb(U16 / 65535.0))
    assert 0.0 < got[0, 1, 0] < 0.02 and got[0, 2, 0] == 1.0    # 1000/65535, not 1000/255 clipped to 1


def test_16_bit_big_endian(tmp_path):
    path = tmp_path / "g16b.tif"
    Image.frombytes("I;16B", (3, 2), U16.astype(">u2").tobytes()).save(path)
    assert Image.open(path).mode == "I;16B"
    _close(decode_rgb(path), _rgb(U16 / 65535.0))


def test_32_bit_integer_in_16_bit_range(tmp_path):
    a = np.array([[0, 40000], [65535, 12]], dtype=np.int32)
    path = tmp_path / "i.tif"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode == "I"
    _close(decode_rgb(path), _rgb(a / 65535.0))


def test_32_bit_integer_beyond_16_bit_is_refused(tmp_path):
    path = tmp_path / "i70k.tif"
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(path)
    with pytest.raises(DataError, match="i70k.tif"):
        decode_rgb(path)


def test_float_modes(tmp_path):
    unit = np.array([[0.25, 1.0], [0.0, 0.5]], dtype=np.float32)
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    _close(decode_rgb(tmp_path / "unit.tif"), _rgb(unit))
    byte = np.array([[0.0, 51.0], [255.0, 127.5]], dtype=np.float32)
    Image.fromarray(byte).save(tmp_path / "byte.tif")
    _close(decode_rgb(tmp_path / "byte.tif"), _rgb(byte / 255.0))
    for name, bad in [("neg.tif", [[-1.0, 0.5]]), ("nan.tif", [[np.nan, 0.5]]), ("big.tif", [[300.0, 0.5]])]:
        Image.fromarray(np.array(bad, dtype=np.float32)).save(tmp_path / name)
        with pytest.raises(DataError, match=name):
            decode_rgb(tmp_path / name)


def test_palette_and_palette_transparency(tmp_path):
    pal = [255, 0, 0, 0, 0, 255, 10, 200, 30]
    idx = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(pal + [0] * (768 - len(pal)))
    im.save(tmp_path / "p.png")
    colours = np.array(pal, dtype=np.float64).reshape(3, 3) / 255.0
    _close(decode_rgb(tmp_path / "p.png"), colours[idx])
    im.info["transparency"] = 1                     # index 1 (blue) fully transparent -> white
    im.save(tmp_path / "pt.png", transparency=1)
    want = colours[idx].copy()
    want[idx == 1] = 1.0
    _close(decode_rgb(tmp_path / "pt.png"), want)


def test_palette_alpha_mode_composited():
    im = Image.new("PA", (2, 1))
    im.putpalette([0, 0, 0, 100, 150, 200] + [0] * 762)
    im.putpixel((0, 0), (1, 255))
    im.putpixel((1, 0), (1, 51))
    got = np.clip(_to_rgb(im, "pa"), 0, 1)
    c = np.array([100, 150, 200]) / 255.0
    a = 51 / 255.0
    np.testing.assert_allclose(got[0, 0], c, atol=TOL)
    np.testing.assert_allclose(got[0, 1], a * c + (1 - a), atol=TOL)


def test_grey_alpha_and_rgba_over_white(tmp_path):
    la = np.array([[[10, 0], [200, 128]], [[0, 255], [255, 51]]], dtype=np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    g, a = la[..., 0] / 255.0, la[..., 1] / 255.0
    _close(decode_rgb(tmp_path / "la.png"), _rgb(g * a + (1 - a)))
    rgba = np.array([[[255, 0, 0, 255], [0, 255, 0, 0]], [[0, 0, 255, 128], [40, 80, 120, 200]]], dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    c, a = rgba[..., :3] / 255.0, rgba[..., 3:] / 255.0
    _close(decode_rgb(tmp_path / "rgba.png"), c * a + (1 - a))


def test_cmyk(tmp_path):
    cmyk = np.array([[[10, 20, 30, 40], [255, 0, 0, 0]], [[0, 0, 0, 255], [0, 0, 0, 0]]], dtype=np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.tif")
    c = cmyk / 255.0
    _close(decode_rgb(tmp_path / "c.tif"), (1 - c[..., :3]) * (1 - c[..., 3:]))


def test_bilevel_grey_and_rgb(tmp_path):
    bits = np.array([[True, False, True]])
    Image.fromarray(bits).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    _close(decode_rgb(tmp_path / "b.png"), _rgb(bits.astype(float)))
    grey = np.array([[0, 17, 255]], dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "l.png")
    _close(decode_rgb(tmp_path / "l.png"), _rgb(grey / 255.0))
    rgb = np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 14
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    t = load_image(tmp_path / "rgb.png")
    assert t.dtype == torch.float32 and t.shape == (3, 2, 3)
    # bit-identical to the uint8 / 255 float32 division the toolkit always used
    assert torch.equal(t, torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0))


@pytest.mark.parametrize("orientation, k", [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_exif_orientation_applied(tmp_path, orientation, k):
    rgb = (np.arange(2 * 3 * 3).reshape(2, 3, 3) * 9).astype(np.uint8)
    exif = Image.Exif()
    exif[274] = orientation
    path = tmp_path / f"o{orientation}.png"
    Image.fromarray(rgb).save(path, exif=exif.tobytes())
    # orientation 6: the stored picture is shown turned 90 degrees clockwise; 8: counter-clockwise
    _close(decode_rgb(path), np.rot90(rgb, k=k) / 255.0)


def test_uint8_view_of_16_bit_keeps_the_range(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(U16).save(path)
    got = decode_rgb_uint8(path)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got[..., 0], np.rint(U16 / 65535.0 * 255.0).astype(np.uint8))


def test_undecodable_files_name_the_file(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="junk.png"):
        decode_rgb(junk)
    good = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.png"):
        decode_rgb(good)
    with pytest.raises(DataError, match="missing.png"):
        decode_rgb(tmp_path / "missing.png")


def test_folder_dataset_decodes_16_bit(tmp_path):
    from spectrascope.io.folders import FolderImages
    (tmp_path / "a").mkdir()
    Image.fromarray(U16).save(tmp_path / "a" / "x.png")
    arr, label, _ = FolderImages(tmp_path, ["a"]).load(0)
    assert label == 0 and arr.dtype == np.uint8
    np.testing.assert_array_equal(arr[..., 1], np.rint(U16 / 65535.0 * 255.0).astype(np.uint8))


# ---------------------------------------------------------------------------- import direction


def _imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
        elif isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
    return mods


def test_io_imports_go_one_way():
    io = ROOT / "spectrascope" / "io"
    data = ("specs", "synthetic", "cifar", "folders", "bundles", "transforms", "randaugment", "mixing", "cache")
    assert not {m for m in _imports(io / "pixels.py") if m.startswith("spectrascope.io")}
    below = set().union(*(_imports(io / f"{m}.py") for m in data))
    assert "spectrascope.io.images" not in below
    assert "spectrascope.io.sources" not in _imports(io / "images.py") | below
