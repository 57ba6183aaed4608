"""Loading image datasets: the digits demo, ZIPs and folders of class folders, image tables, and
every kind of bad input (each made here, in a temporary folder) ending in a warning or a DataError."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ea_core.data import images as image_data
from ea_core.data import DEMO_DATASETS, describe, inspect_source, load_dataset
from ea_core.errors import DataError
from ea_core.imaging import open_image
from ea_core.splits import TaskData

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# Helpers: tiny images whose colour says their class, so tests can check that labels line up.
# ---------------------------------------------------------------------------------------------

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "fox": (30, 30, 200)}


def png(colour=(200, 30, 30), size=(12, 10), mode="RGB", fmt="PNG") -> bytes:
    img = Image.new("RGB", size, colour)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def class_tree(n_per_class: int = 6, classes=("cat", "dog", "fox"), prefix: str = "") -> dict[str, bytes]:
    """{path: bytes} of an ImageFolder layout."""
    return {f"{prefix}{c}/{c}_{i:03d}.png": png(COLOURS.get(c, (90, 90, 90)), size=(10 + i, 10))
            for c in classes for i in range(n_per_class)}


def write_zip(path: Path, files: dict[str, bytes], dirs=()) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for d in dirs:
            zf.writestr(zipfile.ZipInfo(d.rstrip("/") + "/"), b"")
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def assert_colours_match(task: TaskData) -> None:
    """Every image has its class's colour (so image i and label i belong together)."""
    for part in ("train", "val", "test"):
        split = task.split(part)
        for name, data, y in zip(split.texts, split.images, split.labels):
            label = task.labels[y]
            px = open_image(data, name).getpixel((0, 0))
            assert px == COLOURS[label], (part, name, label, px)


def sizes(task: TaskData) -> tuple[int, int, int]:
    return len(task.train), len(task.val), len(task.test)


# ---------------------------------------------------------------------------------------------
# demo:digits
# ---------------------------------------------------------------------------------------------


def test_digits_demo_loads_fast_with_60_20_20_stratified_split():
    start = time.perf_counter()
    task = load_dataset("demo:digits")
    took = time.perf_counter() - start
    assert took < 2.0, f"demo:digits took {took:.2f} s"
    assert task.is_image and task.modality == "image" and task.name == "digits"
    assert task.labels == [str(d) for d in range(10)]
    assert sum(sizes(task)) == 1797
    assert sizes(task) == (1079, 359, 359)
    for part in ("train", "val", "test"):
        counts = np.bincount(task.split(part).labels, minlength=10)
        assert counts.min() >= 0.9 * counts.max() - 2  # stratified: every class about equally present
    assert task.train.texts[0].startswith("digits/") and task.train.texts[0].endswith(".png")
    img = open_image(task.train.images[0])
    assert img.size == (8, 8)
    assert "demo:digits" in DEMO_DATASETS


def test_digits_pixels_and_labels_match_scikit_learn():
    from sklearn.datasets import load_digits

    ref = load_digits()
    task = load_dataset("demo:digits", max_train=50)
    for name, data, y in zip(task.train.texts, task.train.images, task.train.labels):
        i = int(name.split("/")[1].split(".")[0])
        pixels = np.asarray(Image.open(io.BytesIO(data)))
        assert pixels.shape == (8, 8) and pixels.dtype == np.uint8
        np.testing.assert_array_equal(pixels, np.rint(ref.images[i] * 255 / 16).astype(np.uint8))
        assert task.labels[y] == str(ref.target[i])


def test_digits_seeded_and_capped_like_text():
    a, b = load_dataset("demo:digits", seed=3), load_dataset("demo:digits", seed=3)
    assert a.train.texts == b.train.texts and a.test.texts == b.test.texts
    c = load_dataset("demo:digits", seed=4)
    assert set(c.test.texts) != set(a.test.texts)
    capped = load_dataset("demo:digits", max_train=200, max_val=50, max_test=30, seed=3)
    assert sizes(capped) == (200, 50, 30)
    assert set(capped.test.texts) <= set(a.test.texts)  # a cap samples its split; it never moves images
    assert len(np.unique(capped.train.labels)) == 10


def test_digits_describe_and_inspect():
    task = load_dataset("demo:digits")
    d = describe(task)
    assert d["modality"] == "image" and d["n_images"] == 1797
    assert d["image_sizes"] == {"8x8": 1797} and d["image_formats"] == {"PNG": 1797}
    info = inspect_source("demo:digits")
    assert info.modality == "image" and info.n_rows == 1797
    assert sum(info.class_counts.values()) == 1797 and list(info.class_counts) == task.labels
    assert len(info.samples["7"]) == 4
    preview = image_data.image_preview("demo:digits", per_class=3)
    assert list(preview) == task.labels and all(len(v) == 3 for v in preview.values())
    name, thumb = preview["3"][0]
    assert name.startswith("digits/") and Image.open(io.BytesIO(thumb)).format == "PNG"


# ---------------------------------------------------------------------------------------------
# ZIPs and folders of class folders
# ---------------------------------------------------------------------------------------------


def test_zip_of_class_folders(tmp_path):
    task = load_dataset(str(write_zip(tmp_path / "pets.zip", class_tree(10))), seed=1)
    assert task.labels == ["cat", "dog", "fox"] and task.name == "pets"
    assert sum(sizes(task)) == 30 and all(n > 0 for n in sizes(task))
    assert task.warnings == []
    assert_colours_match(task)
    assert task.train.texts[0].count("/") == 1  # names like cat/cat_003.png
    # Same splits as the same images loaded from a folder (names are the same).
    folder = load_dataset(str(write_tree(tmp_path / "pets", class_tree(10))), seed=1)
    assert folder.train.texts == task.train.texts and folder.test.images == task.test.images


def test_zip_under_one_top_folder_and_macos_clutter(tmp_path):
    files = class_tree(5, prefix="my_pets/")
    files["__MACOSX/my_pets/cat/._cat_000.png"] = b"\x00\x05\x16\x07junk"
    files["my_pets/.DS_Store"] = b"junk"
    files["my_pets/cat/Thumbs.db"] = b"junk"
    task = load_dataset(str(write_zip(tmp_path / "x.zip", files)))
    assert task.labels == ["cat", "dog", "fox"] and sum(sizes(task)) == 15
    assert task.warnings == []  # clutter is skipped silently
    assert not any("MACOSX" in n for n in task.train.texts)


def test_zip_with_split_folders_keeps_them(tmp_path):
    files = {}
    files.update(class_tree(8, prefix="data/train/"))
    files.update(class_tree(2, prefix="data/validation/"))
    files.update(class_tree(3, prefix="data/test/"))
    task = load_dataset(str(write_zip(tmp_path / "s.zip", files)))
    assert sizes(task) == (24, 6, 9)
    assert all(n.startswith("train/") for n in task.train.texts)
    assert all(n.startswith("validation/") for n in task.val.texts)
    assert all(n.startswith("test/") for n in task.test.texts)
    assert_colours_match(task)


def test_folder_with_train_and_test_only_carves_validation_from_train(tmp_path):
    files = {**class_tree(20, prefix="train/"), **class_tree(4, prefix="test/")}
    task = load_dataset(str(write_tree(tmp_path / "d", files)), val_frac=0.25)
    assert len(task.test) == 12 and len(task.val) == 15 and len(task.train) == 45
    assert all(n.startswith("train/") for n in task.val.texts)


def test_folder_caps_and_seed_like_text(tmp_path):
    src = str(write_tree(tmp_path / "d", class_tree(30)))
    a = load_dataset(src, max_train=12, max_val=6, max_test=3, seed=5)
    assert sizes(a) == (12, 6, 3)
    assert len(np.unique(a.train.labels)) == 3
    b = load_dataset(src, max_train=12, max_val=6, max_test=3, seed=5)
    assert a.train.texts == b.train.texts
    warned = load_dataset(src, max_test=2)
    assert any("test size cap" in w for w in warned.warnings)


def test_folder_names_normalise_like_text_labels(tmp_path):
    files = {"01/a.png": png(), "1/b.png": png(), "1/c.png": png(), "2.0/d.png": png(), "2/e.png": png(),
             "2/f.png": png(), " 3 /g.png": png(), "3/h.png": png(), "3/i.png": png()}
    task = load_dataset(str(write_tree(tmp_path / "d", files)))
    assert task.labels == ["1", "2", "3"]
    assert any("merged into one class" in w and "'01'" in w for w in task.warnings)


def test_fractional_folder_name_is_refused(tmp_path):
    files = {**class_tree(3, ("cat", "dog")), "2.5/x.png": png(), "2.5/y.png": png(), "2.5/z.png": png()}
    with pytest.raises(DataError, match=r"class folder '2.5'.*Rename"):
        load_dataset(str(write_tree(tmp_path / "d", files)))


def test_case_variants_warned(tmp_path):
    files = {**class_tree(3, ("cat", "dog")), **{f"Cat/{i}.png": png() for i in range(3)}}
    task = load_dataset(str(write_zip(tmp_path / "c.zip", files)))
    assert "Cat" in task.labels and "cat" in task.labels
    assert any("upper/lower case" in w for w in task.warnings)


# ---------------------------------------------------------------------------------------------
# Tables with an image column, and Hugging Face image datasets
# ---------------------------------------------------------------------------------------------


def test_csv_with_relative_image_paths(tmp_path):
    write_tree(tmp_path / "imgs", class_tree(5))
    lines = ["file,label"] + [f"imgs/{c}/{c}_{i:03d}.png,{c}" for c in ("cat", "dog", "fox") for i in range(5)]
    (tmp_path / "index.csv").write_text("\n".join(lines) + "\n")
    task = load_dataset(str(tmp_path / "index.csv"))
    assert task.is_image and task.labels == ["cat", "dog", "fox"] and sum(sizes(task)) == 15
    assert task.text_col == "file" and task.label_col == "label"
    assert_colours_match(task)
    info = inspect_source(str(tmp_path / "index.csv"))
    assert info.modality == "image" and info.class_counts == {"cat": 5, "dog": 5, "fox": 5}


def test_csv_paths_outside_its_folder_are_refused(tmp_path):
    (tmp_path / "secret.png").write_bytes(png())
    sub = tmp_path / "data"
    write_tree(sub, class_tree(4))
    lines = ["image_path,label"] + [f"{c}/{c}_{i:03d}.png,{c}" for c in ("cat", "dog") for i in range(4)]
    lines.append("../secret.png,cat")
    (sub / "index.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"outside its own folder.*'\.\./secret\.png'"):
        load_dataset(str(sub / "index.csv"))
    lines[-1] = f"{tmp_path / 'secret.png'},cat"
    (sub / "index.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="outside its own folder"):
        load_dataset(str(sub / "index.csv"))


def test_csv_missing_and_broken_image_files_are_skipped(tmp_path):
    write_tree(tmp_path, class_tree(4, ("cat", "dog")))
    (tmp_path / "cat" / "broken.png").write_bytes(b"not an image")
    lines = ["path,label"] + [f"{c}/{c}_{i:03d}.png,{c}" for c in ("cat", "dog") for i in range(4)]
    lines += ["cat/missing.png,cat", "cat/broken.png,cat", "dog/dog_000.png,"]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    task = load_dataset(str(tmp_path / "t.csv"))
    assert sum(sizes(task)) == 8
    joined = " ".join(task.warnings)
    assert "cat/missing.png (file not found)" in joined and "cat/broken.png" in joined
    assert "missing label" in joined


def test_parquet_with_image_bytes_and_split_column(tmp_path):
    rows = [(png(COLOURS[c]), c, s) for c in ("cat", "dog") for s, n in (("train", 6), ("test", 2)) for _ in range(n)]
    table = pa.table({"image": pa.array([r[0] for r in rows], pa.binary()), "label": [r[1] for r in rows],
                      "split": [r[2] for r in rows]})
    pq.write_table(table, tmp_path / "x.parquet")
    task = load_dataset(str(tmp_path / "x.parquet"))
    assert len(task.test) == 4 and len(task.train) + len(task.val) == 12
    assert_colours_match(task)


def test_parquet_with_hugging_face_image_structs(tmp_path):
    structs = [{"bytes": png(COLOURS[c]), "path": f"{c}{i}.png"} for c in ("cat", "dog", "fox") for i in range(5)]
    labels = [i // 5 for i in range(15)]
    table = pa.table({"img": pa.array(structs), "labels": labels})
    pq.write_table(table, tmp_path / "hf.parquet")
    task = load_dataset(str(tmp_path / "hf.parquet"))
    assert task.labels == ["0", "1", "2"] and task.train.texts[0].endswith(".png")


def test_hugging_face_image_dataset(monkeypatch):
    datasets = pytest.importorskip("datasets")
    names = ["cat", "dog", "fox"]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})

    def build(n):
        return datasets.Dataset.from_dict(
            {"image": [{"bytes": png(COLOURS[names[i % 3]]), "path": None} for i in range(n)],
             "label": [i % 3 for i in range(n)]}, features=feats)

    dd = datasets.DatasetDict({"train": build(30), "test": build(9)})
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None: calls.append((name, config)) or dd)
    task = load_dataset("hf:someone/pets")
    assert calls == [("someone/pets", None)]
    assert task.labels == names and len(task.test) == 9 and task.name == "pets"
    assert_colours_match(task)


def test_hugging_face_offline_is_a_clear_error():
    with pytest.raises(DataError, match="Could not load Hugging Face dataset"):
        load_dataset("hf:someone-who-does-not-exist/no-such-images-xyz")


# ---------------------------------------------------------------------------------------------
# Bad input: each case is a file made here
# ---------------------------------------------------------------------------------------------


def test_corrupt_and_non_image_files_are_skipped_and_named(tmp_path):
    files = class_tree(6)
    files["cat/truncated.png"] = png(size=(40, 40))[:60]
    files["dog/text_named_png.png"] = b"hello, I am text"
    files["fox/empty.jpg"] = b""
    files["README.txt"] = b"about this data"
    files["dog/labels.csv"] = b"a,b\n"
    task = load_dataset(str(write_zip(tmp_path / "bad.zip", files)))
    assert sum(sizes(task)) == 18
    skipped = next(w for w in task.warnings if "not readable images" in w)
    assert "Skipped 3 files" in skipped
    for name in ("cat/truncated.png", "dog/text_named_png.png", "fox/empty.jpg"):
        assert name in skipped
    ignored = next(w for w in task.warnings if "not images" in w)
    assert "README.txt" in ignored and "dog/labels.csv" in ignored
    assert_colours_match(task)


def test_many_corrupt_files_show_the_first_few(tmp_path):
    files = class_tree(4, ("cat", "dog"))
    files.update({f"cat/bad{i:02d}.png": b"junk" for i in range(12)})
    task = load_dataset(str(write_tree(tmp_path / "d", files)))
    skipped = next(w for w in task.warnings if "not readable images" in w)
    assert "Skipped 12 files" in skipped and "(and 7 more)" in skipped


def test_mixed_sizes_formats_and_modes_are_converted(tmp_path):
    gray16 = Image.fromarray((np.arange(100, dtype=np.uint16).reshape(10, 10) * 600))
    buf = io.BytesIO()
    gray16.save(buf, format="PNG")
    rgba = io.BytesIO()
    Image.new("RGBA", (7, 9), (1, 2, 3, 128)).save(rgba, format="PNG")
    files = {
        "cat/rgb.png": png(size=(30, 20)),
        "cat/gray.png": png(mode="L", size=(5, 5)),
        "cat/pal.gif": png(fmt="GIF", size=(16, 16)),
        "dog/cmyk.jpg": png(mode="CMYK", fmt="JPEG", size=(20, 20)),
        "dog/bitmap.bmp": png(fmt="BMP", size=(9, 9)),
        "dog/sixteen.png": buf.getvalue(),
        "fox/rgba.png": rgba.getvalue(),
        "fox/photo.jpg": png(fmt="JPEG", size=(64, 48)),
        "fox/tiff.tif": png(fmt="TIFF", size=(11, 11)),
    }
    for c in ("cat", "dog", "fox"):
        files.update({f"{c}/extra{i}.png": png() for i in range(2)})
    task = load_dataset(str(write_zip(tmp_path / "m.zip", files)))
    assert sum(sizes(task)) == 15 and not any("not readable" in w for w in task.warnings)
    stored = {n: b for part in ("train", "val", "test") for n, b in zip(task.split(part).texts, task.split(part).images)}
    assert stored["cat/rgb.png"] == files["cat/rgb.png"]  # PNG/JPEG in common modes: bytes unchanged
    assert stored["fox/photo.jpg"] == files["fox/photo.jpg"]
    for name in ("cat/pal.gif", "dog/bitmap.bmp", "fox/tiff.tif", "dog/sixteen.png"):
        assert Image.open(io.BytesIO(stored[name])).format == "PNG", name
    assert Image.open(io.BytesIO(stored["dog/cmyk.jpg"])).mode == "RGB"
    sixteen = np.asarray(Image.open(io.BytesIO(stored["dog/sixteen.png"])))
    assert sixteen.dtype == np.uint8 and sixteen.min() == 0 and sixteen.max() == 255  # scaled, not clipped
    for data in stored.values():
        assert open_image(data).mode == "RGB"
    assert describe(task)["n_image_sizes"] > 3


def test_huge_images_are_downscaled_on_load(tmp_path):
    files = class_tree(3, ("cat", "dog"))
    files["cat/wide.png"] = png(size=(5000, 40))
    files["dog/big.jpg"] = png(fmt="JPEG", size=(3000, 2000))
    task = load_dataset(str(write_zip(tmp_path / "h.zip", files)))
    stored = {n: b for part in ("train", "val", "test") for n, b in zip(task.split(part).texts, task.split(part).images)}
    wide = Image.open(io.BytesIO(stored["cat/wide.png"]))
    assert wide.size == (image_data.MAX_IMAGE_SIDE, 8) and wide.format == "PNG"
    big = Image.open(io.BytesIO(stored["dog/big.jpg"]))
    assert max(big.size) == image_data.MAX_IMAGE_SIDE and big.format == "JPEG"


def test_images_above_the_pixel_limit_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(image_data, "MAX_PIXELS", 1000)
    files = {**class_tree(3, ("cat", "dog")), "cat/huge.png": png(size=(100, 100))}
    task = load_dataset(str(write_tree(tmp_path / "d", files)))
    assert any("cat/huge.png (100x100 pixels, above the limit" in w for w in task.warnings)


def test_empty_class_folder_is_left_out_with_a_warning(tmp_path):
    root = write_tree(tmp_path / "d", class_tree(4, ("cat", "dog")))
    (root / "fox").mkdir()
    task = load_dataset(str(root))
    assert task.labels == ["cat", "dog"]
    assert any("1 class folder" in w and "fox" in w and "left out" in w for w in task.warnings)
    # The same in a ZIP with an explicit directory entry.
    task = load_dataset(str(write_zip(tmp_path / "e.zip", class_tree(4, ("cat", "dog")), dirs=["fox/"])))
    assert task.labels == ["cat", "dog"] and any("fox" in w for w in task.warnings)


def test_class_with_only_unreadable_images_is_left_out(tmp_path):
    files = {**class_tree(4, ("cat", "dog")), **{f"fox/{i}.png": b"junk" for i in range(4)}}
    task = load_dataset(str(write_tree(tmp_path / "d", files)))
    assert task.labels == ["cat", "dog"]
    assert any("no readable image" in w and "fox" in w for w in task.warnings)
    assert_colours_match(task)


def test_one_class_only_is_an_error(tmp_path):
    with pytest.raises(DataError, match="Only one class .'cat'."):
        load_dataset(str(write_tree(tmp_path / "d", class_tree(5, ("cat",)))))
    with pytest.raises(DataError, match="Only one class"):
        load_dataset(str(write_zip(tmp_path / "one.zip", class_tree(5, ("cat",), prefix="top/"))))


def test_images_not_in_class_folders(tmp_path):
    with pytest.raises(DataError, match="not inside class folders|Only one class|No images"):
        load_dataset(str(write_zip(tmp_path / "flat.zip", {f"{i}.png": png() for i in range(5)})))
    files = {**class_tree(4, ("cat", "dog")), "loose.png": png()}
    task = load_dataset(str(write_tree(tmp_path / "d", files)))
    assert any("not inside a class folder" in w and "loose.png" in w for w in task.warnings)


def test_too_few_images_to_split(tmp_path):
    files = {**class_tree(5, ("cat", "dog")), "fox/only.png": png()}
    with pytest.raises(DataError, match=r"Too few images.*'fox' has 1 image"):
        load_dataset(str(write_tree(tmp_path / "d", files)))


def test_zip_with_no_images_at_all(tmp_path):
    with pytest.raises(DataError, match=r"No image files found in the ZIP.*notes\.txt"):
        load_dataset(str(write_zip(tmp_path / "n.zip", {"notes.txt": b"hi", "data/x.csv": b"a,b"})))
    with pytest.raises(DataError, match="No image files found.*empty"):
        load_dataset(str(write_zip(tmp_path / "empty.zip", {})))


def test_not_a_zip(tmp_path):
    (tmp_path / "fake.zip").write_bytes(b"this is not a zip at all" * 10)
    with pytest.raises(DataError, match="not a valid ZIP"):
        load_dataset(str(tmp_path / "fake.zip"))
    full = write_zip(tmp_path / "cut.zip", class_tree(5)).read_bytes()
    (tmp_path / "cut.zip").write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="not a valid ZIP"):
        load_dataset(str(tmp_path / "cut.zip"))
    with pytest.raises(DataError, match="File not found"):
        load_dataset(str(tmp_path / "missing.zip"))


def test_damaged_member_inside_a_zip_is_skipped(tmp_path):
    path = write_zip(tmp_path / "crc.zip", {**class_tree(4, ("cat", "dog")), "cat/zz_last.png": png(size=(50, 50))})
    raw = bytearray(path.read_bytes())
    info = zipfile.ZipFile(path).getinfo("cat/zz_last.png")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for k in range(start + 5, start + 25):  # flip bytes inside the compressed data
        raw[k] ^= 0xFF
    path.write_bytes(bytes(raw))
    task = load_dataset(str(path))
    assert any("cat/zz_last.png" in w for w in task.warnings) and sum(sizes(task)) == 8


# Zip slip: refused, nothing written anywhere.

def _evil_zip(path: Path, bad_name: str, symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in class_tree(4, ("cat", "dog")).items():
            zf.writestr(name, data)
        info = zipfile.ZipInfo(bad_name)
        if symlink:
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
        else:
            zf.writestr(info, png())
    return path


@pytest.mark.parametrize("bad_name,symlink,why", [
    ("../escaped.png", False, "climbs out"),
    ("cat/../../escaped.png", False, "climbs out"),
    ("/tmp/ea_zip_slip_escaped.png", False, "absolute path"),
    ("C:\\Windows\\escaped.png", False, "absolute path"),
    ("cat\\..\\..\\escaped.png", False, "climbs out"),
    ("cat/link.png", True, "symbolic link"),
])
def test_zip_slip_is_refused_and_nothing_is_written(tmp_path, bad_name, symlink, why):
    target = tmp_path / "upload"
    target.mkdir()
    evil = _evil_zip(target / "evil.zip", bad_name, symlink)
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(DataError, match=f"refused.*{why}.*zip slip"):
        load_dataset(str(evil))
    with pytest.raises(DataError, match="zip slip"):
        inspect_source(str(evil))
    with pytest.raises(DataError, match="zip slip"):
        image_data.image_preview(str(evil))
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not Path("/tmp/ea_zip_slip_escaped.png").exists()


def test_cli_zip_slip_exits_2_without_a_traceback(tmp_path):
    evil = _evil_zip(tmp_path / "evil.zip", "../x.png")
    before = sorted(tmp_path.rglob("*"))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ea_core", "train", "--data", str(evil), "--ssm", "tfidf",
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "zip slip" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "x.png").exists() and not (tmp_path.parent / "x.png").exists()
    assert [p for p in sorted(tmp_path.rglob("*")) if out not in p.parents and p != out] == before


# ZIP bombs: refused from the archive's directory, before anything is decompressed.

def test_zip_bomb_ratio_is_refused(tmp_path):
    files = {**class_tree(3, ("cat", "dog")), "cat/bomb.png": b"\x00" * (20 << 20)}
    with pytest.raises(DataError, match=r"bomb\.png.*compression ratio limit of 100 \(MAX_ZIP_RATIO"):
        load_dataset(str(write_zip(tmp_path / "bomb.zip", files)))


def test_zip_bomb_total_size_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(image_data, "MAX_ZIP_TOTAL_BYTES", 2000)
    with pytest.raises(DataError, match=r"uncompressed data \(MAX_ZIP_TOTAL_BYTES"):
        load_dataset(str(write_zip(tmp_path / "big.zip", class_tree(20))))


def test_zip_bomb_member_count_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(image_data, "MAX_ZIP_MEMBERS", 10)
    with pytest.raises(DataError, match=r"60 members, above the limit of 10 \(MAX_ZIP_MEMBERS"):
        load_dataset(str(write_zip(tmp_path / "many.zip", class_tree(20))))


def test_zip_member_that_lies_about_its_size_is_not_read_past_it(tmp_path):
    """A member whose header says 100 bytes but whose data inflates to much more is cut or refused."""
    path = write_zip(tmp_path / "liar.zip", {**class_tree(4, ("cat", "dog")), "cat/liar.png": b"\x00" * 100_000})
    raw = bytearray(path.read_bytes())
    name = b"cat/liar.png"
    # Patch the declared uncompressed size (local header and central directory) to 100 bytes.
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        pos = 0
        while (pos := raw.find(sig, pos)) >= 0:
            name_off = 30 if sig == b"PK\x03\x04" else 46
            if raw[pos + name_off:pos + name_off + len(name)] == name:
                raw[pos + off:pos + off + 4] = (100).to_bytes(4, "little")
            pos += 4
    path.write_bytes(bytes(raw))
    task = load_dataset(str(path))
    assert any("cat/liar.png" in w for w in task.warnings) and sum(sizes(task)) == 8


def test_random_bytes_named_zip_never_traceback(tmp_path):
    rng = np.random.default_rng(0)
    good = write_zip(tmp_path / "g.zip", class_tree(3)).read_bytes()
    for i in range(30):
        data = bytearray(good)
        for k in rng.integers(0, len(data), size=20):
            data[k] = int(rng.integers(0, 256))
        p = tmp_path / f"r{i}.zip"
        p.write_bytes(bytes(data))
        try:
            load_dataset(str(p))
        except DataError:
            pass


def test_folder_symlinks_and_special_files(tmp_path):
    root = write_tree(tmp_path / "d", class_tree(4, ("cat", "dog")))
    (tmp_path / "outside.png").write_bytes(png())
    os.symlink(tmp_path / "outside.png", root / "cat" / "link_out.png")
    os.symlink(root / "cat" / "cat_000.png", root / "dog" / "link_in.png")
    os.mkfifo(root / "cat" / "pipe.png")
    task = load_dataset(str(root))
    joined = " ".join(task.warnings)
    assert "cat/link_out.png (a link outside the folder)" in joined
    assert "cat/pipe.png (not a regular file)" in joined
    names = [n for part in ("train", "val", "test") for n in task.split(part).texts]
    assert "dog/link_in.png" in names and "cat/link_out.png" not in names


def test_image_source_rejects_text_split_options(tmp_path):
    with pytest.raises(DataError, match="train/, val/ and test/ folders"):
        load_dataset("demo:digits", split_col="split")


def test_text_tables_are_not_mistaken_for_images(tmp_path):
    (tmp_path / "t.csv").write_text("text,file,label\nhello,doc1.txt,a\nbye,doc2.txt,b\n" * 5)
    assert not load_dataset(str(tmp_path / "t.csv")).is_image


def test_preview_of_a_zip(tmp_path):
    files = {**class_tree(6), "cat/bad.png": b"junk"}
    src = str(write_zip(tmp_path / "p.zip", files))
    info = inspect_source(src)
    assert info.modality == "image" and info.class_counts == {"cat": 7, "dog": 6, "fox": 6}
    assert info.samples["dog"] == [f"dog/dog_{i:03d}.png" for i in range(4)]
    preview = image_data.image_preview(src, per_class=2, max_side=8)
    assert {k: len(v) for k, v in preview.items()} == {"cat": 2, "dog": 2, "fox": 2}
    assert all(max(Image.open(io.BytesIO(b)).size) <= 8 for v in preview.values() for _, b in v)


def test_thousands_of_small_files(tmp_path):
    """2,000 PNGs in a folder: loaded in seconds, with bytes kept as they are."""
    one = png(size=(16, 16))
    root = tmp_path / "many"
    for c in ("a", "b", "c", "d"):
        (root / c).mkdir(parents=True)
        for i in range(500):
            (root / c / f"{i:04d}.png").write_bytes(one)
    start = time.perf_counter()
    task = load_dataset(str(root))
    took = time.perf_counter() - start
    assert sum(sizes(task)) == 2000 and took < 20, took
    assert any("byte-for-byte copies" in w for w in task.warnings)
