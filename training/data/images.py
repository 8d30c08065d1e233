"""Reading radiographs: PNG / JPEG of any bit depth and DICOM, always as 8-bit grayscale `PIL` images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["load_image", "read_dicom", "is_dicom"]


def _to_uint8(array: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    low = float(array.min()) if low is None else low
    high = float(array.max()) if high is None else high
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    return (np.clip((array - low) / (high - low), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 window, straight to 8 bits (pydicom's output range depends on BitsStored)."""
    if function == "LINEAR_EXACT":
        scaled = (values - center) / width + 0.5
    elif function == "SIGMOID":
        scaled = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    else:  # LINEAR, the default
        scaled = (values - (center - 0.5)) / max(width - 1.0, 1.0) + 0.5
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(path: str | os.PathLike) -> Image.Image:
    """
    Reads a DICOM radiograph as an 8-bit grayscale image.

    The modality LUT (rescale slope / intercept) and the VOI LUT or window (center / width) of the
    file are applied as a viewer would; without either, the full pixel range is used. MONOCHROME1
    images (where bright means *low* attenuation) are inverted so that bone is always bright.
    Multi-frame files give their first frame.

    Args:
        path (`str` or `os.PathLike`): Path of the DICOM file.

    Returns:
        `PIL.Image.Image` in mode `"L"`.
    """
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as err:
        raise ImportError("Reading DICOM needs pydicom>=3: pip install pydicom") from err
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DICOM file not found: {path}")
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises many types for broken files
        raise ValueError(f"Could not read DICOM pixel data from {path}: {err}") from err
    if pixels.ndim == 3 and int(getattr(ds, "SamplesPerPixel", 1)) == 1:
        pixels = pixels[0]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        # Colour DICOM (secondary captures): let PIL do the grey conversion.
        return Image.fromarray(_to_uint8(pixels)).convert("L")
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if "VOILUTSequence" in ds:
        # A VOI LUT maps to [0, 2**bits - 1], bits being the third LUT descriptor value.
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        out = _to_uint8(apply_voi_lut(pixels, ds, index=0), 0.0, float(2**bits - 1))
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center = float(np.atleast_1d(ds.WindowCenter)[0])
        width = max(float(np.atleast_1d(ds.WindowWidth)[0]), 1.0)
        out = _window(values, center, width, str(getattr(ds, "VOILUTFunction", "LINEAR")).upper())
    else:
        out = _to_uint8(values)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return Image.fromarray(out, mode="L")


def load_image(path: str | os.PathLike) -> Image.Image:
    """
    Loads a radiograph as an 8-bit grayscale `PIL.Image.Image` (mode `"L"`).

    * DICOM (by suffix `.dcm` / `.dicom` or the `DICM` magic) goes through [`read_dicom`].
    * 16-bit and 32-bit images (`I;16`, `I`, `F`) are scaled linearly from their actual min to
      max value to 0–255. Many radiographs use 12 of the 16 bits, so dividing by 257 would give an
      almost black image.
    * RGB, palette and alpha images are converted to grayscale.

    Args:
        path (`str` or `os.PathLike`): Image file.

    Returns:
        `PIL.Image.Image` in mode `"L"`.

    Raises:
        `FileNotFoundError` if the file does not exist, `ValueError` if it cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image not found: {path}")
    if is_dicom(path):
        return read_dicom(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return Image.fromarray(_to_uint8(np.asarray(im)), mode="L")
            if im.mode == "L":
                return im.copy()
            if im.mode in ("LA", "RGBA", "PA") or "transparency" in im.info:
                im = im.convert("RGBA").convert("RGB")
            return im.convert("L")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"Could not decode image {path} (corrupt or not an image): {err}") from err
