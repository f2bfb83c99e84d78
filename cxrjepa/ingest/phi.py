"""Patient-data safety at ingest: the salt, keyed hashes, and the few DICOM values that may be kept (coded, coarse).

Which columns of a user's table are identifying is decided in one place for every stage: :mod:`cxrjepa.core.phi`.

No identifying value (names, IDs, dates, UIDs, institution, free text) leaves this module except as a salted
HMAC. Sample, study and patient keys are ``HMAC-SHA256(salt, kind + ':' + value)`` truncated to 16 hex digits:
stable for one salt, unlinkable without it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cxrjepa.core.atomic import atomic_write_bytes
from cxrjepa.core.errors import UsageError
from cxrjepa.core.phi import AGE_CAP

SALT_ENV = "CXRJEPA_SALT"
KEY_HEX = 16


@dataclass(frozen=True)
class Salt:
    """The user's secret salt and where it came from (``file``, ``env`` or ``generated``)."""

    value: bytes
    source: str
    location: str = ""  # file path for 'file' / 'generated' (never the salt itself)

    @property
    def tag(self) -> str:
        """A one-way tag of the salt: enters the fingerprint, so a new salt means a new dataset."""
        return "salt:" + hashlib.sha256(b"cxrjepa-salt-tag\0" + self.value).hexdigest()[:16]

    def key(self, kind: str, value: str | bytes) -> str:
        data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        return hmac.new(self.value, kind.encode() + b":" + data, hashlib.sha256).hexdigest()[:KEY_HEX]


def generated_salt_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "cxrjepa" / "salt"


def _read_salt_file(path: Path) -> bytes:
    try:
        data = path.read_bytes().strip()
    except OSError:
        raise UsageError(f"Cannot read the salt file '{path}'.") from None
    if len(data) < 8:
        raise UsageError(f"The salt file '{path}' holds fewer than 8 bytes; use a long random secret.")
    return data


def load_salt(salt_file: str | Path | None = None, *, create: bool = True) -> Salt:
    """The salt from ``salt_file``, else ``$CXRJEPA_SALT``, else a generated one kept in the user's config
    folder (``$XDG_CONFIG_HOME/cxrjepa/salt``, created on first use with mode 0600), never in an artifact."""
    if salt_file:
        path = Path(salt_file).expanduser()
        return Salt(_read_salt_file(path), "file", str(path))
    env = os.environ.get(SALT_ENV, "").strip()
    if env:
        if len(env) < 8:
            raise UsageError(f"${SALT_ENV} holds fewer than 8 characters; use a long random secret.")
        return Salt(env.encode(), "env")
    path = generated_salt_path()
    if path.is_file():
        return Salt(_read_salt_file(path), "generated", str(path))
    if not create:
        return Salt(b"dry-run-without-salt", "generated", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (secrets.token_hex(32) + "\n").encode(), mode=0o600)
    return Salt(_read_salt_file(path), "generated", str(path))


# ---------------------------------------------------------------- values that may be kept

_CS = re.compile(r"^[A-Z0-9_ ]{1,16}$")


def coded(value: object) -> str:
    """A DICOM code string (CS: upper case, digits, space, underscore, at most 16) or '' when it is not one.

    Code strings carry no identity; anything else in a CS element is treated as free text and dropped.
    """
    if value is None:
        return ""
    if not isinstance(value, str):  # multi-valued: keep the first
        try:
            value = str(list(value)[0])
        except (TypeError, IndexError):
            value = str(value)
    text = value.strip().upper()
    return text if _CS.match(text) else ""


def short_text(value: object, limit: int = 64) -> str:
    """A short single-line text (Manufacturer): printable characters only, truncated."""
    if value is None:
        return ""
    text = "".join(ch for ch in str(value) if ch.isprintable()).strip()
    return text[:limit]


def sex_code(value: object) -> str:
    text = str(value or "").strip().upper()
    if text in ("M", "MALE"):
        return "M"
    if text in ("F", "FEMALE"):
        return "F"
    if text in ("O", "OTHER"):
        return "O"
    return ""


def age_years(patient_age: object = None, birth_date: object = None, study_date: object = None) -> float:
    """Age in whole years from PatientAge ('045Y', '006M', '010W', '003D'), else from birth and study
    dates; NaN when unknown. Capped at 90."""
    text = str(patient_age or "").strip().upper()
    m = re.fullmatch(r"(\d{1,3})\s*([YMWD]?)", text)
    age = float("nan")
    if m:
        n, unit = int(m.group(1)), m.group(2) or "Y"
        age = {"Y": n, "M": n // 12, "W": n // 52, "D": n // 365}[unit]
    else:
        b, s = _date(birth_date), _date(study_date)
        if b and s and s >= b:
            age = s.year - b.year - ((s.month, s.day) < (b.month, b.day))
    if age == age:  # not NaN
        return float(min(max(age, 0), AGE_CAP))
    return age


def _date(value: object) -> _dt.date | None:
    text = str(value or "").strip()
    try:
        return _dt.date(int(text[0:4]), int(text[4:6]), int(text[6:8]))
    except (ValueError, IndexError):
        return None
