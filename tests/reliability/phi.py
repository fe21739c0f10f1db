"""DICOM test files full of patient identifiers, and the search for any trace of them.

Every identifying value is distinctive (no chance of appearing by accident), so finding one
anywhere - in clear, in other case, hex-encoded, base64-encoded or as a bare SHA-256 (an unkeyed
hash is reversible by trying candidate ids) - means it leaked.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import numpy as np
import redis
from PIL import Image

from services.config import Settings
from tests.support import CR_IMAGE_STORAGE, dicom_bytes, dicom_dataset

# One patient per letter; every value is unique to this file.
PATIENTS = {
    "A": {
        "PatientName": "Quixotesh^Zebulon^Amadeus",
        "PatientID": "PID-ZQ-48151623",
        "PatientBirthDate": "19230517",
        "PatientAddress": "42 Vexillology Lane, Quimperton",
        "PatientTelephoneNumbers": "+44-5550-271828",
        "PatientMotherBirthName": "Mothquill^Henrietta",
        "OtherPatientIDs": "OPID-ZQ-55210",
        "MedicalRecordLocator": "MRL-ZQ-3141",
    },
    "B": {
        "PatientName": "Wobblethorpe^Xanthippe",
        "PatientID": "PID-XW-90817",
        "PatientBirthDate": "19310228",
        "PatientAddress": "9 Gryphon Crescent, Upper Snodsbury",
        "PatientTelephoneNumbers": "+44-5550-161803",
        "PatientMotherBirthName": "Mothwrinkle^Ysolde",
        "OtherPatientIDs": "OPID-XW-77342",
        "MedicalRecordLocator": "MRL-XW-2718",
    },
    "C": {
        "PatientName": "Plinkerton^Ulrika",
        "PatientID": "PID-UP-33301",
        "PatientBirthDate": "19470704",
        "PatientAddress": "1 Quagga Close, Nether Wallop",
        "PatientTelephoneNumbers": "+44-5550-141421",
        "PatientMotherBirthName": "Mothpeevish^Winifred",
        "OtherPatientIDs": "OPID-UP-11235",
        "MedicalRecordLocator": "MRL-UP-1729",
    },
    "D": {
        "PatientName": "Vorpalsnicket^Ignatius",
        "PatientID": "PID-IV-60221",
        "PatientBirthDate": "19520101",
        "PatientAddress": "77 Jabberwock Mews, Little Snoring",
        "PatientTelephoneNumbers": "+44-5550-173205",
        "PatientMotherBirthName": "Mothburble^Philippa",
        "OtherPatientIDs": "OPID-IV-81321",
        "MedicalRecordLocator": "MRL-IV-6022",
    },
}
# Per study (one file each): who, where, which study.
STUDY_TAGS = (
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "DeviceSerialNumber",
    "PatientComments",
)
UID_ROOT = "1.2.826.0.1.3680043.10.424242"


@dataclass(frozen=True)
class PhiDicom:
    path: Path
    patient: str  # the letter in PATIENTS
    tags: dict[str, str]  # every identifying value written into the file

    @property
    def patient_id(self) -> str:
        return self.tags["PatientID"]


def study_tags(patient: str, number: int) -> dict[str, str]:
    tag = f"{patient}{number}"
    return {
        "AccessionNumber": f"ACCZQ{9917 + number}{patient}",
        "InstitutionName": f"Saint Quillon Infirmary {tag}",
        "InstitutionAddress": f"7 Xylophone Row {tag}, Quimperton",
        "ReferringPhysicianName": f"Drummondsq{tag}^Hollyhock",
        "PerformingPhysicianName": f"Perfwhistle{tag}^Ottoline",
        "OperatorsName": f"Operqx{tag}^Bartholomew",
        "StudyID": f"SIDZQ{tag}",
        "StudyDate": f"2019082{number}",
        # Fractional seconds keep the needle from occurring by chance in numeric output (a bare
        # six-digit time matched digits in the clustering job's results kept in Redis).
        "StudyTime": f"13371{number}.4242",
        "StudyInstanceUID": f"{UID_ROOT}.1.{ord(patient)}{number}",
        "SeriesInstanceUID": f"{UID_ROOT}.2.{ord(patient)}{number}",
        "SOPInstanceUID": f"{UID_ROOT}.3.{ord(patient)}{number}",
        "DeviceSerialNumber": f"DSNZQ{tag}77",
        "PatientComments": f"Allergic to quokkas {tag}",
    }


def write_dicom(path: Path, pixels_png: Path, tags: dict[str, str]) -> None:
    """A 16-bit MONOCHROME2 CR image from a PNG's pixels, carrying ``tags``."""
    grey = np.asarray(Image.open(pixels_png).convert("L"), dtype=np.uint16) * 16
    dataset = dicom_dataset(
        grey, modality="CR", sop_class=CR_IMAGE_STORAGE, WindowCenter=2048, WindowWidth=4096,
        **tags,
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dicom_bytes(dataset))


def write_phi_dicoms(folder: Path, sources: list[Path], *, stored: bool) -> list[PhiDicom]:
    """Stored set: patient A twice, B once, C once. Upload set: D twice, A once, C once."""
    patients = ["A", "A", "B", "C"] if stored else ["D", "D", "A", "C"]
    files = []
    for number, (patient, source) in enumerate(zip(patients, sources, strict=True)):
        tags = {**PATIENTS[patient], **study_tags(patient, number + (0 if stored else 5))}
        path = folder / f"study-{'s' if stored else 'u'}{number}.dcm"
        write_dicom(path, source, tags)
        files.append(PhiDicom(path, patient, tags))
    return files


# --- finding any trace ----------------------------------------------------------------------
def needles(values: Iterable[str]) -> dict[str, str]:
    """Lower-cased search strings -> the value they betray."""
    found: dict[str, str] = {}
    for value in values:
        parts = {value}
        if "^" in value:  # person names: each component on its own, and as "Given Family"
            components = [part for part in value.split("^") if part]
            parts.update(part for part in components if len(part) >= 5)
            parts.add(" ".join(reversed(components)))
        if len(value) == 8 and value.isdigit():  # DICOM dates: also in ISO form
            parts.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
        for part in parts:
            raw = part.encode()
            for variant in (
                part,
                raw.hex(),
                base64.b64encode(raw).decode().rstrip("="),
                hashlib.sha256(raw).hexdigest(),
            ):
                found[variant.lower()] = value
    return found


def all_phi_values(dicoms: Iterable[PhiDicom]) -> list[str]:
    return sorted({value for dicom in dicoms for value in dicom.tags.values()})


def texts_of(value: Any) -> Iterator[str]:
    """Every piece of text in a stored value (numbers as digits, temporal values as ISO)."""
    if value is None or isinstance(value, float):
        return  # float embeddings and weights carry no text
    if isinstance(value, str):
        yield value
    elif isinstance(value, bool | int):
        yield str(value)
    elif isinstance(value, bytes | bytearray):
        yield bytes(value).decode("latin-1")
    elif isinstance(value, dict):
        for name, item in value.items():
            yield str(name)
            yield from texts_of(item)
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from texts_of(item)
    elif isinstance(value, date | datetime | time) or hasattr(value, "iso_format"):
        iso = getattr(value, "iso_format", None)
        yield iso() if callable(iso) else value.isoformat()
    else:
        yield str(value)


def leaks(texts: Iterable[str], search: dict[str, str]) -> set[str]:
    """The PHI values whose traces appear in ``texts``."""
    # One haystack, searched once per needle; NUL never occurs in a needle, so no needle can
    # match across two texts.
    haystack = "\x00".join(texts).lower()
    return {value for needle, value in search.items() if needle in haystack}


def redis_texts(settings: Settings) -> Iterator[tuple[str, str]]:
    """(key, text) for every key of the broker's Redis and each value it holds."""
    client = redis.Redis.from_url(settings.broker_url)
    for raw_key in client.scan_iter(count=1000):
        key = raw_key.decode("latin-1")
        kind = client.type(raw_key).decode()
        if kind == "string":
            values = [client.get(raw_key)]
        elif kind == "hash":
            values = [item for pair in client.hgetall(raw_key).items() for item in pair]
        elif kind == "list":
            values = client.lrange(raw_key, 0, -1)
        elif kind == "set":
            values = list(client.smembers(raw_key))
        elif kind == "zset":
            values = [member for member, _ in client.zrange(raw_key, 0, -1, withscores=True)]
        else:
            values = []
        yield key, key
        for value in values:
            if value is not None:
                yield key, value.decode("latin-1")
