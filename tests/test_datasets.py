"""Data specs, the synthetic texture set, CIFAR archives (restricted unpickling), image
folders, augmentation and mixup/cutmix. Oracles: exact pixel round trips, closed forms,
spectral content of the rendered textures and determinism."""
import math
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from spectrascope.io.images import MEAN, STD, DataError, resolve_image_paths
from spectrascope.io.bundles import load_data
from spectrascope.io.cache import materialize_images
from spectrascope.io.cifar import load_cifar, safe_unpickle
from spectrascope.io.mixing import MixupCutmix, one_hot_smooth
from spectrascope.io.randaugment import RandAugmentPolicy, apply_ra_op, rand_augment
from spectrascope.io.specs import parse_data_spec
from spectrascope.io.synthetic import SyntheticConfig, SyntheticTextures, texture_mask
from spectrascope.io.transforms import (AugmentConfig, EvalTransform, TrainTransform, TransformedDataset, random_erase,
                                        random_resized_crop_box)


# ---------------------------------------------------------------------------- specs

def test_parse_data_spec():
    s = parse_data_spec("synthetic:num_classes=4,train_size=64,noise=0.25")
    assert s.kind == "synthetic" and s.options == {"num_classes": 4, "train_size": 64, "noise": 0.25}
    assert parse_data_spec("synthetic").options == {}
    c = parse_data_spec("cifar10:/data/c:x")
    assert c.kind == "cifar10" and str(c.path) == "/data/c:x"
    assert parse_data_spec("samples").kind == "samples"
    for bad in ("", "mnist:/x", "cifar10", "synthetic:num_classes", "imagefolder:"):
        with pytest.raises(DataError):
            parse_data_spec(bad)
    with pytest.raises(DataError, match="unknown option"):
        load_data("synthetic:colour=1")
    with pytest.raises(DataError, match="bands x orientations"):
        load_data("synthetic:num_classes=6,orientations=4")
    with pytest.raises(DataError, match="analyses"):
        load_data("samples")


# ---------------------------------------------------------------------------- synthetic

def _decode(cfg: SyntheticConfig, img: np.ndarray, box) -> int:
    """Oracle classifier: band by the power-weighted radial frequency of the patch, orientation
    by the share of power near each orientation centre."""
    x0, y0, x1, y1 = box
    g = img[y0:y1, x0:x1, 0] - img[y0:y1, x0:x1, 0].mean()
    p = np.abs(np.fft.fft2(g)) ** 2
    fy, fx = np.fft.fftfreq(g.shape[0])[:, None], np.fft.fftfreq(g.shape[1])[None, :]
    r = np.sqrt(fx ** 2 + fy ** 2)
    centroid = (p * r).sum() / p.sum()
    band = int(np.argmin([abs(math.log(centroid / math.sqrt(lo * hi))) for lo, hi in cfg.band_edges()]))
    ang = np.mod(np.arctan2(fy, fx), np.pi)
    shares = []
    for th in cfg.orientation_centres():
        d = np.abs(ang - th)
        shares.append((p * (np.minimum(d, np.pi - d) < math.pi / (2 * cfg.orientations))).sum())
    return band * cfg.orientations + int(np.argmax(shares))


def test_synthetic_textures_carry_their_class_in_band_and_orientation():
    cfg = SyntheticConfig(num_classes=8, val_size=48, noise=0.0, size=64)
    assert (cfg.bands, cfg.orientations) == (4, 2)
    ds = SyntheticTextures(cfg, "val")
    for i in range(len(ds)):
        img, label, box = ds.render(i)
        assert label == i % 8
        assert _decode(cfg, img, box) == label, i


def test_synthetic_box_is_exactly_the_texture_patch():
    cfg = SyntheticConfig(num_classes=4, train_size=16, noise=0.0, size=40, patch=0.4)
    ds = SyntheticTextures(cfg, "train")
    for i in range(len(ds)):
        img, _, box = ds.render(i)
        x0, y0, x1, y1 = box
        assert (x1 - x0, y1 - y0) == cfg.patch_hw == (16, 16)
        assert 0 <= x0 and x1 <= 40 and 0 <= y0 and y1 <= 40
        outside = np.ones((40, 40), bool)
        outside[y0:y1, x0:x1] = False
        for c in range(3):      # background without noise: a constant per channel
            assert np.ptp(img[..., c][outside]) == 0
            assert np.ptp(img[y0:y1, x0:x1, c]) > 0.1
        u8, label, (tbox,) = ds.load(i)
        assert u8.dtype == np.uint8 and tbox.tolist() == list(box)


def test_synthetic_is_deterministic_and_splits_differ():
    a = load_data("synthetic:num_classes=4,train_size=8,val_size=8,size=32")
    b = load_data("synthetic:num_classes=4,train_size=8,val_size=8,size=32")
    c = load_data("synthetic:num_classes=4,train_size=8,val_size=8,size=32,seed=1")
    for i in range(8):
        assert np.array_equal(a.train.load(i)[0], b.train.load(i)[0])
        assert not np.array_equal(a.train.load(i)[0], a.val.load(i)[0])
        assert not np.array_equal(a.train.load(i)[0], c.train.load(i)[0])
    assert [a.train.load(i)[1] for i in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert a.num_classes == 4 and not a.geometric_ok
    # --img-size renders at that size unless the spec fixes it
    assert load_data("synthetic:train_size=2,val_size=2", img_size=48).train.load(0)[0].shape == (48, 48, 3)
    assert load_data("synthetic:train_size=2,val_size=2,size=32", img_size=48).train.load(0)[0].shape == (32, 32, 3)


def test_texture_mask_selects_band_and_orientation():
    m = texture_mask((32, 32), 0.1, 0.2, 0.0, math.pi / 8)
    fy, fx = np.fft.fftfreq(32)[:, None], np.fft.rfftfreq(32)[None, :]
    r = np.sqrt(fx ** 2 + fy ** 2)
    assert m.any() and np.all((r[m] >= 0.1) & (r[m] < 0.2))
    assert np.all(np.abs(fy[np.nonzero(m)[0], 0]) <= np.tan(math.pi / 8) * fx[0, np.nonzero(m)[1]] + 1e-12)


# ---------------------------------------------------------------------------- CIFAR

def _cifar_batch(rng, n, label_key="labels", classes=10):
    imgs = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    data = imgs.transpose(0, 3, 1, 2).reshape(n, 3072)          # the archive's R|G|B planes, row-major
    labels = [int(v) for v in rng.integers(0, classes, n)]
    return imgs, labels, {b"batch_label": b"batch", label_key.encode(): labels, b"data": data,
                          b"filenames": [f"{i}.png".encode() for i in range(n)]}


def _py2_style(obj) -> bytes:
    """Protocol 2 as the original archives (numpy referenced as numpy.core.multiarray)."""
    raw = pickle.dumps(obj, protocol=2)
    return raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def make_cifar10(root, n=3):
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_imgs, train_labels = [], []
    for i in range(1, 6):
        imgs, labels, d = _cifar_batch(rng, n)
        (folder / f"data_batch_{i}").write_bytes(_py2_style(d))
        train_imgs.append(imgs)
        train_labels += labels
    imgs, labels, d = _cifar_batch(rng, n)
    (folder / "test_batch").write_bytes(pickle.dumps(d, protocol=2))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(_py2_style({b"label_names": names, b"num_vis": 3072}))
    return np.concatenate(train_imgs), train_labels, imgs, labels


def test_cifar10_folder_and_tar_read_exactly(tmp_path):
    tr_imgs, tr_labels, va_imgs, va_labels = make_cifar10(tmp_path / "c")
    for path in (tmp_path / "c", tmp_path / "c" / "cifar-10-batches-py"):
        b = load_data(f"cifar10:{path}")
        assert len(b.train) == 15 and len(b.val) == 3 and b.classes[3] == "cat"
        assert np.array_equal(b.train.images, tr_imgs) and list(b.train.labels) == tr_labels
        assert np.array_equal(b.val.images, va_imgs) and list(b.val.labels) == va_labels
    tar = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(tmp_path / "c" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    bt = load_cifar("cifar10", tar, "train")
    assert np.array_equal(bt.images, tr_imgs)
    with pytest.raises(DataError, match="lacks"):
        load_data(f"cifar100:{tmp_path / 'c'}")


def test_cifar100_reads_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    tr, trl, d = _cifar_batch(rng, 4, "fine_labels", 100)
    (folder / "train").write_bytes(_py2_style(d))
    va, val, d = _cifar_batch(rng, 2, "fine_labels", 100)
    (folder / "test").write_bytes(_py2_style(d))
    b = load_data(f"cifar100:{tmp_path}")
    assert b.num_classes == 100 and np.array_equal(b.train.images, tr) and list(b.val.labels) == val


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.path}",))


def test_cifar_unpickler_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Evil(marker)}, protocol=2)
    with pytest.raises(DataError, match="refusing to load"):
        safe_unpickle(payload)
    assert not marker.exists()
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(payload)
    with pytest.raises(DataError, match="refusing"):
        load_data(f"cifar10:{tmp_path}")
    assert not marker.exists()


# ---------------------------------------------------------------------------- image folders

def test_imagefolder_layout(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    ref = {}
    for split in ("train", "val"):
        for c in ("ant", "bee"):
            (tmp_path / split / c).mkdir(parents=True)
            arr = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / split / c / "x.png")
            ref[split, c] = arr
    b = load_data(f"imagefolder:{tmp_path}")
    assert b.classes == ["ant", "bee"] and len(b.train) == 2 and b.geometric_ok and b.center_crop
    img, label, _ = b.val.load(1)
    assert label == 1 and np.array_equal(img, ref["val", "bee"])
    (tmp_path / "val" / "wasp").mkdir()
    with pytest.raises(DataError, match="missing from train"):
        load_data(f"imagefolder:{tmp_path}")
    with pytest.raises(DataError, match="train/ and val/"):
        load_data(f"imagefolder:{tmp_path / 'train'}")


# ---------------------------------------------------------------------------- transforms

def test_eval_transform_of_arrays_is_exact_normalisation():
    b = load_data("synthetic:num_classes=4,train_size=4,val_size=4,size=32")
    ds = TransformedDataset(b.val, EvalTransform(32, center_crop=False))
    x, label, box = ds[2]
    img = b.val.load(2)[0]
    back = x * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    assert torch.allclose(back * 255, torch.from_numpy(img).permute(2, 0, 1).float(), atol=1e-3)
    assert label == 2 and box.shape == (4,)


def test_train_transform_is_a_function_of_the_seed():
    img = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    t = TrainTransform(32, aug=AugmentConfig(aa="rand-m9-mstd0.5-inc1", reprob=0.5), geometric=True)
    a, b, c = t(img, 7), t(img, 7), t(img, 8)
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    # non-geometric data: no crop, no flip -> without aa/erasing the output is the normalised image
    t2 = TrainTransform(50, aug=AugmentConfig(hflip=1.0), geometric=False)
    back = t2(img[:, :50], 3) * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    assert torch.allclose(back * 255, torch.from_numpy(img[:, :50]).permute(2, 0, 1).float(), atol=1e-3)


def test_random_resized_crop_box_respects_scale_and_bounds():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(60, 80, (0.25, 0.5), (3 / 4, 4 / 3), g)
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        area = h * w / (60 * 80)
        assert 0.2 <= area <= 0.55 or (h, w) == (60, 80)


def test_rand_augment_ops():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 16, 20)
    assert torch.equal(apply_ra_op(x, "Invert", 9, g), 1 - x)
    assert torch.allclose(apply_ra_op(x, "Brightness", 0, g), torch.full_like(x, 0.1) * x, atol=1e-6)
    assert torch.allclose(apply_ra_op(x, "TranslateXRel", 0, g), x, atol=1e-5)
    y = apply_ra_op(x, "Solarize", 10, g, increasing=True)      # threshold 0: everything inverted
    assert torch.allclose(y, 1 - x)
    p = RandAugmentPolicy.parse("rand-m9-mstd0.5-inc1")
    assert (p.magnitude, p.mstd, p.increasing, p.num_ops) == (9, 0.5, True, 2)
    with pytest.raises(DataError):
        RandAugmentPolicy.parse("original")
    # photometric-only RandAugment keeps a pure vertical-stripe image vertical
    stripes = torch.zeros(3, 16, 16)
    stripes[:, :, ::4] = 1.0
    for s in range(20):
        y = rand_augment(stripes, RandAugmentPolicy(num_ops=3, magnitude=10, prob=1.0),
                         torch.Generator().manual_seed(s), geometric=False)
        assert torch.allclose(y, y[:, :1, :].expand_as(y))


def test_random_erasing():
    x = torch.randn(3, 32, 32)
    assert torch.equal(random_erase(x, 0.0, torch.Generator().manual_seed(0)), x)
    y = random_erase(x, 1.0, torch.Generator().manual_seed(0))
    changed = (y != x).any(0)
    rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
    n_rect = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert 0.02 * 1024 * 0.8 <= changed.sum() <= n_rect and n_rect <= 1024 / 3 * 1.2


def test_one_hot_smooth_and_mixup_cutmix():
    y = torch.tensor([0, 2, 1, 3])
    t = one_hot_smooth(y, 4, 0.1)
    assert torch.allclose(t.sum(1), torch.ones(4)) and torch.allclose(t[1, 2], torch.tensor(0.925))
    x = torch.randn(4, 3, 8, 8)
    mix = MixupCutmix(mixup_alpha=0.8, cutmix_alpha=0.0, smoothing=0.0, num_classes=4)
    xm, tm = mix(x, y, np.random.default_rng(0))
    lam = tm[0, 0].item()                                    # y[0] = 0, flipped partner y[3] = 3
    assert 0 < lam < 1 and torch.allclose(xm, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
    assert torch.allclose(tm[0, 3], torch.tensor(1 - lam)) and torch.allclose(tm.sum(1), torch.ones(4))
    cut = MixupCutmix(mixup_alpha=0.0, cutmix_alpha=1.0, smoothing=0.0, num_classes=4)
    for s in range(5):
        xc, tc = cut(x, y, np.random.default_rng(s))
        pasted = (xc != x).any(1)[0]                         # (8, 8) pixels taken from the partner
        assert torch.allclose(tc[0, 3], pasted.float().mean(), atol=1e-6)
        assert torch.equal(xc[0][:, pasted], x[3][:, pasted])
    off = MixupCutmix(0.8, 1.0, prob=0.0, smoothing=0.1, num_classes=4)
    xo, to = off(x, y, np.random.default_rng(0))
    assert torch.equal(xo, x) and torch.allclose(to, one_hot_smooth(y, 4, 0.1))


# ---------------------------------------------------------------------------- analyses

def test_materialized_images_equal_the_dataset(tmp_path, monkeypatch):
    import json

    from PIL import Image
    monkeypatch.setenv("SPECTRASCOPE_CACHE", str(tmp_path))
    spec = "synthetic:num_classes=4,val_size=12,size=32"
    paths = materialize_images(spec, "val", limit=5)
    assert len(paths) == 5 and paths == materialize_images(spec, "val", limit=5)
    b = load_data(spec)
    meta = json.loads((paths[0].parent / "labels.json").read_text())
    for i, p in enumerate(paths):
        img, label, (box,) = b.val.load(i)
        assert np.array_equal(np.asarray(Image.open(p)), img)
        assert meta["labels"][i] == label and meta["boxes"][i] == box.tolist()
    assert resolve_image_paths(data=spec, num_images=3) == paths[:3]


def test_a_cifar_folder_rewritten_in_place_is_never_served_from_a_stale_cache(tmp_path, monkeypatch):
    """The cache is keyed by every file the spec reads (name, size, mtime), not by the folder: a
    test batch rewritten in place (same folder, same size) gives the new images."""
    from PIL import Image
    monkeypatch.setenv("SPECTRASCOPE_CACHE", str(tmp_path / "cache"))
    make_cifar10(tmp_path / "c")
    folder = tmp_path / "c" / "cifar-10-batches-py"
    spec = f"cifar10:{tmp_path / 'c'}"
    first = materialize_images(spec, "val", limit=3)
    folder_stat = os.stat(folder)
    old_imgs = [np.asarray(Image.open(p)) for p in first]
    new_imgs, _, d = _cifar_batch(np.random.default_rng(7), 3)
    (folder / "test_batch").write_bytes(pickle.dumps(d, protocol=2))
    os.utime(folder, ns=(folder_stat.st_atime_ns, folder_stat.st_mtime_ns))     # the folder looks untouched
    second = materialize_images(spec, "val", limit=3)
    assert second[0].parent != first[0].parent
    for p, img, old in zip(second, new_imgs, old_imgs):
        got = np.asarray(Image.open(p))
        assert np.array_equal(got, img) and not np.array_equal(got, old)


def test_a_full_image_cache_leaves_nothing_half_written(tmp_path, monkeypatch):
    """A write the machine refuses while the cache is filled: one WriteError naming the cache folder,
    and neither images nor the folder of this call are left."""
    import errno

    from spectrascope.io import cache
    from spectrascope.io.failures import WriteError
    monkeypatch.setenv("SPECTRASCOPE_CACHE", str(tmp_path / "cache"))
    calls = []
    real = cache._write_png

    def fails_third(img, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(img, path)
    monkeypatch.setattr(cache, "_write_png", fails_third)
    with pytest.raises(WriteError, match="no space left on the device; nothing half-written was kept") as err:
        materialize_images("synthetic:num_classes=4,val_size=8,size=32", "val", limit=5)
    assert err.value.option == "--data" and str(tmp_path / "cache") in str(err.value)
    assert not (tmp_path / "cache").exists()
