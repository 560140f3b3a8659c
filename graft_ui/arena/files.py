"""The store's files beside the database: content-addressed PNG images and the client salt.

Images are written atomically (graft_ui/atomic.py, by the store), so a reader never sees half
an image; the salt is linked into place exclusively, so racing processes keep one salt.
"""

from __future__ import annotations

import io
import logging
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_bytes(image: Any) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if data.startswith(PNG_SIGNATURE):
            return data
        return _encode_png(_open_pil(io.BytesIO(data), "image bytes"))
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file {str(path)!r} does not exist")
        data = path.read_bytes()
        if data.startswith(PNG_SIGNATURE):
            return data
        return _encode_png(_open_pil(io.BytesIO(data), str(path)))
    if hasattr(image, "save") and hasattr(image, "mode"):  # PIL image
        return _encode_png(image)
    if hasattr(image, "shape") and hasattr(image, "dtype"):  # numpy array, as gradio hands them
        from PIL import Image

        try:
            return _encode_png(Image.fromarray(image))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"image array of shape {tuple(image.shape)} and dtype {image.dtype} is not an image: {exc}") from None
    raise ValueError(f"image of type {type(image).__name__} is not bytes, a path, a PIL image or an array")


def _open_pil(fp, what: str):
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(fp)
        img.load()
        return img
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{what} is not a readable image: {exc}") from None


def _encode_png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def load_or_create_salt(path: Path) -> bytes:
    """Read the salt file, creating it (0600, 32 random bytes as hex) exactly once."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".salt-")  # mkstemp creates 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # atomic and exclusive: a racing process keeps the first salt
                log.info("created client-address salt %s", path)
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("salt file %s has mode %o; it should be 0600", path, mode)
    text = path.read_text().strip()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ValueError(f"salt file {str(path)!r} is not 64 hex characters")
    return bytes.fromhex(text)
