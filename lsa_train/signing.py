"""Signed run folders: which runs are the user's own.

Every run folder ``lsa-train`` writes is signed (the model is Jupyter's notebook trust): an HMAC-SHA256 of its
saved config files (:data:`SIGNED_PATTERNS`) with a per-user key, stored in ``<run>/.hydra/signature.json``.
A run whose signature verifies is the user's own, and its saved config is honoured as written
(``_target_`` values, interpolations, every setting). Any other run folder (copied from elsewhere, edited
after it was written, or signed with another key) is foreign: :mod:`lsa_train.foreign` reads its config as
data. ``lsa-trust <run>`` signs a folder the user has read and accepts.

The key lives in :func:`key_path` (``$LSA_TRAIN_KEY_FILE``, else ``$XDG_CONFIG_HOME/lsa_train/signing.key``,
else ``~/.config/lsa_train/signing.key``): 32 random bytes, hex, created with mode 0600 on first use. A key
file that others may write is refused. Nothing here reads a trust decision from the run folder: only the
key decides.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

#: Environment variable naming the key file (tests and shared machines set it).
KEY_ENV = "LSA_TRAIN_KEY_FILE"
#: A run folder's saved config, relative to the run folder.
RUN_CONFIG = Path(".hydra") / "config.yaml"
#: The signature record, relative to the run folder.
SIGNATURE_FILE = Path(".hydra") / "signature.json"
#: The files a signature covers, relative to the run folder (glob patterns).
SIGNED_PATTERNS: tuple[str, ...] = (
    ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml",
    ".hydra/resumes/*/config.yaml", ".hydra/resumes/*/overrides.yaml",
)
_VERSION = 1
_DOMAIN = b"lsa_train run signature v1\n"


class SigningError(ValueError):
    """The key cannot be read or created, or a folder cannot be signed."""


def key_path() -> Path:
    """Where the signing key lives (see the module docstring)."""
    given = os.environ.get(KEY_ENV)
    if given:
        return Path(given).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "lsa_train" / "signing.key"


def load_key(create: bool = True) -> bytes | None:
    """The signing key; created (0600) when absent and ``create``, else ``None`` when absent.

    Raises:
        SigningError: The key file is not a regular file, others may write it, or it is malformed.
    """
    path = key_path()
    if not path.exists() and not path.is_symlink():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it meanwhile
            return load_key(create=False)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
    if path.is_symlink() or not path.is_file():
        raise SigningError(f"signing key '{path}' is not a regular file; remove it (a new key is then created) or "
                           f"set {KEY_ENV} to your key file")
    if path.stat().st_mode & 0o022:
        raise SigningError(f"signing key '{path}' can be written by other users, so it cannot vouch for your runs; "
                           f"run: chmod 600 '{path}'")
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise SigningError(f"signing key '{path}' is malformed (expected hex of at least 16 bytes); remove it to "
                           "create a new one (your runs signed with it then read as foreign until lsa-trust)")
    return key


def signed_files(run_dir: Path) -> list[Path]:
    """The files of ``run_dir`` a signature covers, sorted (relative paths)."""
    found: set[Path] = set()
    for pattern in SIGNED_PATTERNS:
        found.update(p.relative_to(run_dir) for p in run_dir.glob(pattern))
    return sorted(found)


def _digest(run_dir: Path, files: list[Path], key: bytes) -> str:
    message = hmac.new(key, _DOMAIN, hashlib.sha256)
    for relative in files:
        path = run_dir / relative
        if path.is_symlink() or not path.is_file():
            raise SigningError(f"'{path}' is a symlink or not a file; a run folder's config files must be its own")
        message.update(relative.as_posix().encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest() + b"\n")
    return message.hexdigest()


def sign_run(run_dir: str | Path) -> Path:
    """Signs the config files of ``run_dir`` (see :data:`SIGNED_PATTERNS`); returns the signature file.

    Raises:
        SigningError: No saved config in ``run_dir``, a symlinked config file, or an unusable key.
    """
    run = Path(run_dir)
    files = signed_files(run)
    if RUN_CONFIG not in files:
        raise SigningError(f"'{run}' is not a run folder: it has no .hydra/config.yaml")
    key = load_key(create=True)
    assert key is not None
    record = {"version": _VERSION, "files": [f.as_posix() for f in files], "hmac": _digest(run, files, key)}
    from lsa_train.utils.io import atomic_write_text

    target = run / SIGNATURE_FILE
    if target.is_symlink():
        target.unlink()
    atomic_write_text(target, json.dumps(record, indent=1) + "\n")
    return target


@dataclass(frozen=True)
class Verdict:
    """Whether a run folder is the user's own.

    Attributes:
        signed: The signature verifies with this user's key over exactly the files present now.
        reason: Why not (empty when signed), for messages: ``no signature``, ``edited after signing``, ...
    """

    signed: bool
    reason: str = ""


def verify_run(run_dir: str | Path) -> Verdict:
    """Checks the signature of ``run_dir`` with this user's key (never creates a key)."""
    run = Path(run_dir)
    record_path = run / SIGNATURE_FILE
    if record_path.is_symlink() or not record_path.is_file():
        return Verdict(False, "it has no signature of yours")
    try:
        record = json.loads(record_path.read_text())
        expected = str(record["hmac"])
    except (ValueError, KeyError, TypeError, OSError):
        return Verdict(False, "its signature file is malformed")
    try:
        key = load_key(create=False)
    except SigningError as err:
        return Verdict(False, str(err))
    if key is None:
        return Verdict(False, "you have no signing key yet, so no run is signed by you")
    files = signed_files(run)
    try:
        actual = _digest(run, files, key)
    except (SigningError, OSError) as err:
        return Verdict(False, str(err))
    if not hmac.compare_digest(actual, expected):
        listed = record.get("files") if isinstance(record, dict) else None
        changed = "files were added or removed" if listed != [f.as_posix() for f in files] else "a file changed"
        return Verdict(False, f"it was edited after it was signed ({changed}), or signed with another key")
    return Verdict(True)
