"""Which files an ingest takes, by content and by name; list files; patient keys."""

from __future__ import annotations

import hmac
from hashlib import sha256
from pathlib import Path

import numpy as np
import pytest

from services.ingest.discovery import DiscoveryError, discover, sniff_format
from services.ingest.pipeline import decode_embedding, encode_embedding, patient_key

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 30
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 30
DICOM = b"\x00" * 128 + b"DICM" + b"\x00" * 30


def test_folder_by_content_and_extension(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    files = {
        "a.png": PNG, "sub/b.JPG": JPEG, "sub/deeper/c": DICOM, "scan.bin": PNG,
        "broken.png": b"junk", "x.dcm": b"text",
    }  # fmt: skip
    skipped = {"labels.csv": b"Image Index\n", "README.md": b"# notes"}
    for name, data in {**files, **skipped, ".hidden/d.png": PNG, ".e.png": PNG}.items():
        (tmp_path / name).write_bytes(data)
    found = discover([tmp_path])
    assert found.files == sorted(tmp_path / name for name in files)
    assert sorted(found.skipped) == sorted(tmp_path / name for name in skipped)
    assert [sniff_format(tmp_path / n) for n in ("a.png", "sub/b.JPG", "sub/deeper/c")] == [
        "png", "jpeg", "dicom",
    ]  # fmt: skip
    assert sniff_format(tmp_path / "broken.png") is None


def test_list_file_and_single_files(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    for name in ("one.png", "two.png"):
        (tmp_path / "imgs" / name).write_bytes(PNG)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# comment\n\nimgs/one.png\n{tmp_path / 'imgs' / 'two.png'}\nmissing.png\n")
    found = discover([listing, tmp_path / "imgs" / "one.png"])
    # Relative to the list's folder; duplicates once; missing files kept (reported later).
    assert found.files == sorted(
        [tmp_path / "imgs" / "one.png", tmp_path / "imgs" / "two.png", tmp_path / "missing.png"]
    )
    with pytest.raises(DiscoveryError, match="no such file or folder"):
        discover([tmp_path / "nope"])
    with pytest.raises(DiscoveryError, match="no path"):
        discover([])


def test_patient_key_is_hmac_sha256_of_the_raw_id() -> None:
    secret = b"installation-secret"
    expected = hmac.new(secret, b"00012345", sha256).hexdigest()
    assert patient_key(secret, "00012345") == patient_key(secret, " 00012345 ") == expected
    assert patient_key(b"other-secret", "00012345") != expected
    assert "00012345" not in expected


def test_embedding_transport_is_exact_float32() -> None:
    vector = np.random.default_rng(0).standard_normal(1024).astype(np.float32)
    assert np.array_equal(decode_embedding(encode_embedding(vector)), vector)
    with pytest.raises(ValueError, match="1024"):
        decode_embedding(encode_embedding(vector[:10]))
