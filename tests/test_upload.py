"""Uploads unpacked safely: zip-slip, symlinks, bombs and limits refused, nothing left behind."""

import stat
import struct
import tomllib
import zipfile
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from factories import ADMIN, write_digits_imagefolder
from PIL import Image

from engine import store
from engine.data.strays import find_ignored
from engine.data.upload import (
    MB,
    UploadError,
    UploadLimits,
    add_images,
    add_zip,
    check_class_name,
    check_name,
    unpack_zip,
    upload_images,
    upload_zip,
)

ROOT = Path(__file__).resolve().parent.parent


def make_zip(entries: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> BytesIO:
    out = BytesIO()
    with zipfile.ZipFile(out, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    out.seek(0)
    return out


def png(seed: int = 0, size=(24, 24)) -> bytes:
    rng = np.random.default_rng(seed)
    out = BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def folder_zip(folder: Path, top: str = "") -> BytesIO:
    return make_zip(
        {
            str(Path(top) / p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
    )


def left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- unpacking ----------------------------------------------------------------------------------


def test_a_good_zip_is_unpacked_with_progress(tmp_path):
    seen = []
    unpack_zip(
        make_zip({"a/1.png": png(1), "b/2.png": png(2), "b/": b""}),
        tmp_path,
        progress=lambda f, text: seen.append((f, text)),
    )
    assert (tmp_path / "a" / "1.png").read_bytes() == png(1)
    assert (tmp_path / "b" / "2.png").is_file()
    assert seen[-1][0] == 1.0 and all(0 < f <= 1 for f, _ in seen)


@pytest.mark.parametrize(
    "name, says",
    [
        ("../evil.png", "'..' in the path"),
        ("a/../../evil.png", "'..' in the path"),
        ("..\\evil.png", "'..' in the path"),
        ("/etc/evil.png", "absolute path"),
        ("C:/evil.png", "absolute path"),
    ],
)
def test_zip_slip_is_refused_before_anything_is_written(tmp_path, name, says):
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(UploadError, match=says) as err:
        unpack_zip(make_zip({"a/ok.png": png(), name: b"x"}), target)
    assert str(err.value).startswith(name)
    assert left_in(target) == [] and not (tmp_path / "evil.png").exists()


def test_a_symlink_entry_is_refused(tmp_path):
    out = BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        link = zipfile.ZipInfo("a/passwd.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(UploadError, match="a/passwd.png: symbolic links are not accepted"):
        unpack_zip(out, tmp_path)
    assert left_in(tmp_path) == []


def test_a_name_twice_is_refused(tmp_path):
    out = BytesIO()
    with zipfile.ZipFile(out, "w") as archive, pytest.warns(UserWarning, match="Duplicate"):
        archive.writestr("a/1.png", png(1))
        archive.writestr("a/1.png", png(2))
    with pytest.raises(UploadError, match="a/1.png: appears twice"):
        unpack_zip(out, tmp_path)


def test_a_decompression_bomb_is_refused_by_its_ratio(tmp_path):
    bomb = make_zip({"a/1.png": png(), "a/zeros.png": bytes(50 * MB)})
    with pytest.raises(UploadError, match=r"a/zeros.png: .* refused as a decompression bomb") as e:
        unpack_zip(bomb, tmp_path)
    assert "above the limit of 100" in str(e.value)
    assert left_in(tmp_path) == []


def test_a_zip_lying_about_its_sizes_is_refused_while_extracting(home):
    data = bytes(range(256)) * 64  # 16 KiB
    raw = make_zip({"a/big.bin": data}, zipfile.ZIP_STORED).getvalue()
    # Declare 100 bytes in both headers: the entry passes the plan, the bytes do not.
    real = struct.pack("<I", len(data))
    raw = raw.replace(real + real, struct.pack("<I", 100) * 2)
    with pytest.raises(UploadError, match="a/big.bin: (cannot be extracted|inflates past)"):
        add_zip(home, "liar", BytesIO(raw))
    assert left_in(home / "datasets") == []


def test_size_and_count_limits_name_the_entry_and_the_limit(tmp_path):
    entries = {f"a/{k}.png": png(k) for k in range(5)}
    with pytest.raises(UploadError, match=r"a/3.png: more than 3 files .*MAX_FILES"):
        unpack_zip(make_zip(entries), tmp_path, UploadLimits(max_files=3))
    small = UploadLimits(max_unpacked_bytes=2 * len(png(0)) + 10)
    with pytest.raises(UploadError, match=r"a/2.png: the files unpack to more than .*UNPACKED"):
        unpack_zip(make_zip(entries), tmp_path, small)
    assert left_in(tmp_path) == []


def test_an_image_claiming_too_many_pixels_is_refused(tmp_path):
    with pytest.raises(UploadError, match=r"a/1.png: 24x24 px, above the limit of 100 pixels"):
        unpack_zip(make_zip({"a/1.png": png(1)}), tmp_path, UploadLimits(max_image_pixels=100))

    # A header claiming 100000 x 100000 pixels, decoded by nobody.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    huge = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
    huge += chunk(b"IEND", b"")
    with pytest.raises(UploadError, match="b/huge.png: .*refused as a decompression bomb"):
        unpack_zip(make_zip({"b/huge.png": huge}), tmp_path / "other")


def test_an_entry_of_exactly_the_bomb_threshold_is_checked(tmp_path):
    with pytest.raises(UploadError, match=r"a/zeros.bin: .* refused as a decompression bomb"):
        unpack_zip(make_zip({"a/zeros.bin": bytes(MB)}), tmp_path)
    assert left_in(tmp_path) == []


def test_many_small_entries_that_inflate_a_lot_are_refused_as_a_whole(tmp_path):
    # Each entry stays under the per-entry threshold; together they inflate 1000 times.
    bomb = make_zip({f"a/{k}.bin": bytes(MB - 1) for k in range(20)})
    with pytest.raises(UploadError, match=r"the zip: .* refused as a decompression bomb") as e:
        unpack_zip(bomb, tmp_path, UploadLimits(max_files=60))
    assert "above the limit of 100" in str(e.value)
    assert left_in(tmp_path) == []
    # Below a few MB in all, well-compressing files (XML, blank masks) are not bombs.
    unpack_zip(make_zip({f"a/{k}.xml": bytes(MB - 1) for k in range(2)}), tmp_path)
    assert left_in(tmp_path / "a") == ["0.xml", "1.xml"]


def test_folders_count_against_a_limit_and_depth_is_limited(tmp_path):
    entries = {f"d{k}/": b"" for k in range(5)}
    with pytest.raises(UploadError, match=r"d3/: more than 3 folders .*MAX_FOLDERS"):
        unpack_zip(make_zip(entries), tmp_path, UploadLimits(max_folders=3))
    # Folders implied by file names count too.
    implied = {f"a/b{k}/c/1.png": png(k) for k in range(2)}
    with pytest.raises(UploadError, match=r"a/b1/c/1.png: more than 3 folders"):
        unpack_zip(make_zip(implied), tmp_path, UploadLimits(max_folders=3))
    deep = "/".join(["d"] * 20) + "/1.png"
    with pytest.raises(UploadError, match=rf"{deep}: 21 levels deep, more than 16 .*MAX_DEPTH"):
        unpack_zip(make_zip({deep: png()}), tmp_path)
    assert left_in(tmp_path) == []


def test_a_name_the_filesystem_refuses_is_an_upload_error(home):
    long_name = "a/" + "x" * 300 + ".png"
    with pytest.raises(UploadError, match=rf"{long_name}: cannot be written \(.*too long"):
        add_zip(home, "long", make_zip({"a/1.png": png(), long_name: png()}))
    # A file where a folder is needed: the folder cannot be made.
    with pytest.raises(UploadError, match=r"a/b/1.png: cannot be written"):
        add_zip(home, "clash", make_zip({"a/b": b"x", "a/b/1.png": png()}))
    assert left_in(home / "datasets") == []


def test_a_zip_inside_the_zip_is_kept_as_a_file_never_unpacked(tmp_path):
    inner = make_zip({"x/1.png": png(1), "../../evil.png": png(2)}).getvalue()
    unpack_zip(make_zip({"a/1.png": png(), "a/inner.zip": inner}), tmp_path)
    assert left_in(tmp_path / "a") == ["1.png", "inner.zip"]
    assert (tmp_path / "a" / "inner.zip").read_bytes() == inner
    assert not (tmp_path / "a" / "x").exists() and not (tmp_path.parent / "evil.png").exists()


def test_not_a_zip_and_encrypted_entries(tmp_path):
    with pytest.raises(UploadError, match="not a zip file"):
        unpack_zip(BytesIO(b"PK but not really"), tmp_path)
    raw = bytearray(make_zip({"a/1.png": png()}, zipfile.ZIP_STORED).getvalue())
    # Set the "encrypted" flag bit in the local and central headers.
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = raw.index(signature) + offset
        raw[at] |= 1
    with pytest.raises(UploadError, match="a/1.png: encrypted entry"):
        unpack_zip(BytesIO(bytes(raw)), tmp_path)


# -- into the data directory --------------------------------------------------------------------


def test_add_zip_unwraps_one_top_folder_and_skips_macos_junk(home, tmp_path):
    folder = write_digits_imagefolder(tmp_path / "d", per_class=2, classes=range(2))
    data = folder_zip(folder, top="digits").getvalue()
    with zipfile.ZipFile(BytesIO(data), "a") as archive:
        archive.writestr("__MACOSX/digits/0/._0_000.png", b"resource fork")
    target = add_zip(home, "mine", BytesIO(data))
    assert target == home / "datasets" / "mine"
    assert left_in(target) == ["0", "1"]
    assert left_in(home / "datasets") == ["mine"]


def test_a_failed_upload_leaves_nothing_behind(home):
    with pytest.raises(UploadError, match="'..'"):
        add_zip(home, "bad", make_zip({"a/1.png": png(), "../x.png": png()}))
    with pytest.raises(UploadError, match="not a zip file"):
        add_zip(home, "bad", BytesIO(b"nope"))
    assert left_in(home / "datasets") == []


def test_add_zip_refuses_a_taken_folder_and_an_oversized_upload(home):
    add_zip(home, "one", make_zip({"a/1.png": png(1), "b/2.png": png(2)}))
    with pytest.raises(UploadError, match="name: a dataset folder 'one' already exists"):
        add_zip(home, "one", make_zip({"a/1.png": png(1)}))
    zipped = make_zip({"a/1.png": png(1)})
    zipped.size = 3 * MB  # what Streamlit's UploadedFile says
    with pytest.raises(UploadError, match="3 MB, above the upload limit of 2 MB"):
        add_zip(home, "two", zipped, UploadLimits(max_upload_bytes=2 * MB))


def test_add_images_writes_one_class_and_refuses_bad_files(home):
    target = add_images(home, "pets", "cat", [("a.png", png(1)), ("dir/b.png", png(2))])
    assert left_in(target / "cat") == ["a.png", "b.png"]
    with pytest.raises(UploadError, match="notes.txt: not an image file name"):
        add_images(home, "pets", "dog", [("d.png", png(3)), ("notes.txt", b"x")])
    with pytest.raises(UploadError, match="a.png: class 'cat' already has a file so named"):
        add_images(home, "pets", "cat", [("a.png", png(4))])
    assert left_in(target) == ["cat"] and left_in(home / "datasets") == ["pets"]
    # A dataset laid out in splits is not added to one class at a time.
    add_zip(home, "split", make_zip({"train/a/1.png": png(1), "train/b/2.png": png(2)}))
    with pytest.raises(UploadError, match="not an image folder of class folders only"):
        add_images(home, "split", "c", [("c.png", png(5))])


def test_names_are_safe_folder_names():
    assert check_name(" my-data_1.v2 ") == "my-data_1.v2"
    for bad in ("", "../x", ".hidden", "a/b", "x" * 65):
        with pytest.raises(UploadError, match="not a valid dataset name"):
            check_name(bad)
    assert check_class_name("golden retriever") == "golden retriever"
    with pytest.raises(UploadError, match="not a valid class name"):
        check_class_name("../cat")
    with pytest.raises(UploadError, match="'Val' names a split folder"):
        check_class_name("Val")


# -- registering --------------------------------------------------------------------------------


def test_upload_zip_registers_a_good_dataset_and_removes_a_blocked_one(db, home, tmp_path):
    good = write_digits_imagefolder(tmp_path / "good", per_class=3, classes=range(2))
    info = upload_zip(db, "good", folder_zip(good), by=ADMIN)
    assert info["registered"] and store.get_dataset(db, "good")["path"] == info["path"]
    blocked = make_zip({"a/1.png": png(1), "a/2.png": png(2), "b/": b""})
    info = upload_zip(db, "blocked", blocked, by=ADMIN)
    assert not info["registered"] and "class 'b' has no training images" in info["error"]
    assert store.get_dataset(db, "blocked") is None
    assert not (home / "datasets" / "blocked").exists()


def test_upload_refuses_a_name_registered_elsewhere_before_writing(db, home, tmp_path):
    other = write_digits_imagefolder(home / "elsewhere", per_class=3, classes=range(2))
    store.register_dataset(db, "taken", str(other), "imagefolder", "classification", by=ADMIN)
    with pytest.raises(UploadError, match="name: 'taken' is already registered for"):
        upload_images(db, "taken", "cat", [("a.png", png())], by=ADMIN)
    assert not (home / "datasets" / "taken").exists()


def test_a_viewer_cannot_upload(db, home):
    viewer = {"username": "vera", "role": "viewer"}
    with pytest.raises(store.PermissionDenied):
        upload_zip(db, "x", make_zip({"a/1.png": png()}), by=viewer)
    assert left_in(home / "datasets") == []


def test_a_pending_upload_stays_its_uploaders(db, home):
    alice, bob = {"username": "alice", "role": "member"}, {"username": "bob", "role": "member"}
    info = upload_images(db, "pets", "cat", [("a.png", png(1)), ("b.png", png(2))], by=alice)
    assert not info["registered"] and "only one class" in info["error"]
    # The marker that says whose it is is VisionBoard's, not the dataset's: never listed.
    ignored, _ = find_ignored(home / "datasets" / "pets", [], "imagefolder")
    assert [e["file"] for e in ignored] == ["cat/"]
    with pytest.raises(store.PermissionDenied, match="bob .* 'pets' .*owned by alice"):
        upload_images(db, "pets", "dog", [("c.png", png(3))], by=bob)
    with pytest.raises(store.PermissionDenied, match="owned by alice"):
        upload_zip(db, "pets", make_zip({"a/1.png": png()}), by=bob)
    assert left_in(home / "datasets" / "pets") == [".visionboard-upload.json", "cat"]
    info = upload_images(db, "pets", "dog", [("c.png", png(3)), ("d.png", png(4))], by=alice)
    assert info["registered"] and store.get_dataset(db, "pets")["added_by"] == "alice"
    assert left_in(home / "datasets" / "pets") == ["cat", "dog"]  # the store says whose now


def test_an_admin_may_add_to_a_pending_upload_and_an_unmarked_folder_is_admins_only(db, home):
    alice = {"username": "alice", "role": "member"}
    upload_images(db, "pets", "cat", [("a.png", png(1)), ("b.png", png(2))], by=alice)
    info = upload_images(db, "pets", "dog", [("c.png", png(3)), ("d.png", png(4))], by=ADMIN)
    assert info["registered"]
    # A folder nobody's upload started (put there by hand) is nobody's: admins only.
    add_images(home, "loose", "cat", [("a.png", png(1))])
    with pytest.raises(store.PermissionDenied, match="owned by nobody"):
        upload_images(db, "loose", "dog", [("c.png", png(3))], by=alice)
    assert left_in(home / "datasets" / "loose") == ["cat"]


# -- settings -----------------------------------------------------------------------------------


def test_limits_come_from_the_environment():
    limits = UploadLimits.from_env({"VISIONBOARD_UPLOAD_MAX_FILES": "12", "OTHER": "1"})
    assert limits.max_files == 12 and limits.max_ratio == UploadLimits().max_ratio
    ratio = UploadLimits.from_env({"VISIONBOARD_UPLOAD_MAX_RATIO": "2.5"})
    assert ratio.max_ratio == 2.5
    with pytest.raises(UploadError, match="VISIONBOARD_UPLOAD_MAX_FILES='many' is not a number"):
        UploadLimits.from_env({"VISIONBOARD_UPLOAD_MAX_FILES": "many"})


def test_streamlit_upload_size_matches_the_upload_limit():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] * MB == UploadLimits().max_upload_bytes
    assert UploadLimits().max_unpacked_bytes >= UploadLimits().max_upload_bytes
