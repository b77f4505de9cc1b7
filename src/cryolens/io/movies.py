"""Movie, gain-reference and defect readers: MRC stacks, TIFF (LZW and other codecs) and EER.

Frames come back as ``(n_frames, rows, columns)`` arrays in the orientation RELION
reads them, so shifts, coordinates and gain references mean the same thing as in
RELION:

- MRC / MRCS (``mrcfile``, memory-mapped): frames as stored.
- TIFF (``tifffile``; LZW, deflate, ... through ``imagecodecs``): RELION, MotionCor2 and
  IMOD flip TIFF images along the slow (y) axis when reading them, so the rows are
  reversed here too (``tifffile.imread(path)[:, ::-1]``); the same frames then come out
  of a TIFF and of the MRC holding the same movie (see :mod:`cryolens.io.movie_writer`).
- EER (Thermo Fisher electron-event BigTIFF, decoded by ``tifffile`` + ``imagecodecs``):
  each page is one detector readout; ``eer_grouping`` consecutive readouts are summed
  into one frame (the remainder is dropped, as RELION does), ``eer_upsampling`` 2 renders
  on the 8K super-resolution grid. EER frames are *not* flipped: RELION's renderer uses
  them as decoded (checked with ``relion_convert_to_tiff``, whose TIFF RELION reads back
  flipped to the same image).

Frame ranges are 1-based and inclusive, RELION style (``first_frame=1``,
``last_frame=-1`` or ``None`` = the last frame). Gain references are float32 ``(rows,
columns)`` images read with the same orientation rule (an MRC as stored, a TIFF
flipped); defect files are MotionCor2 text files (``x y w h`` per line, 0-based
pixels) or defect maps (an image, non-zero = bad), as ``relion_run_motioncorr
--defect_file`` accepts.
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from cryolens.errors import InputError

__all__ = ["MovieInfo", "movie_format", "movie_info", "read_movie", "read_gain", "read_defects",
           "frame_range", "MOVIE_SUFFIXES"]

PathLike = str | os.PathLike
MOVIE_SUFFIXES = {".mrc": "mrc", ".mrcs": "mrc", ".st": "mrc", ".tif": "tiff", ".tiff": "tiff", ".eer": "eer",
                  ".ecc": "eer"}


@dataclass(frozen=True)
class MovieInfo:
    """What a movie's header says.

    Attributes:
        path: the file.
        fmt: ``"mrc"``, ``"tiff"`` or ``"eer"``.
        n_frames: frames in the file (for EER: after grouping).
        height, width: frame size in pixels as read (EER: after upsampling).
        pixel_size: Å per pixel from the header, 0 when unknown.
        dtype: numpy dtype of the frames as read (EER: uint16 counts per group).
    """

    path: Path
    fmt: str
    n_frames: int
    height: int
    width: int
    pixel_size: float
    dtype: np.dtype


def movie_format(path: PathLike) -> str:
    """``mrc``, ``tiff`` or ``eer`` from the file name (a TIFF holding EER pages is ``eer``)."""
    p = Path(path)
    fmt = MOVIE_SUFFIXES.get(p.suffix.lower())
    if fmt is None:
        raise InputError(f"{p}: unknown movie format {p.suffix or '(no suffix)'}; "
                         "give MRC (.mrc/.mrcs), TIFF (.tif/.tiff) or EER (.eer) movies.")
    if fmt == "tiff" and p.is_file():
        import tifffile
        try:
            with tifffile.TiffFile(p) as t:
                if t.pages.first.compression in (65000, 65001, 65002):
                    return "eer"
        except Exception:  # noqa: BLE001 - movie_info reports unreadable files
            pass
    return fmt


def _exists(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"{path}: file not found; check the path in the STAR file or run from the project folder.")


def _bad(path: Path, what: str) -> InputError:
    return InputError(f"{path}: {what}; re-copy the movie or check that it is a complete {path.suffix} file.")


def _mrc_info(p: Path) -> MovieInfo:
    from cryolens.io.mrc import read_mrc_header
    read_mrc_header(p)  # a truncated file is named from its header and size alone
    try:
        with mrcfile.mmap(p, mode="r", permissive=False) as m:
            shape, vs, dtype = m.data.shape, float(m.voxel_size.x), m.data.dtype
    except (ValueError, OSError, EOFError) as e:
        raise _bad(p, f"not a readable MRC movie ({str(e).rstrip('.')})") from None
    if len(shape) == 2:
        shape = (1, *shape)
    return MovieInfo(p, "mrc", shape[0], shape[1], shape[2], float(np.float32(vs)), np.dtype(dtype))


def _tiff_pixel_size(page) -> float:
    """Å per pixel from the TIFF resolution tags (the writer stores pixels per cm), else 0."""
    try:
        res = page.tags.get("XResolution")
        unit = page.tags.get("ResolutionUnit")
        if res is None or unit is None or int(unit.value) != 3:  # 3 = centimetre
            return 0.0
        num, den = res.value
        return float(np.float32(1e8 * den / num)) if num else 0.0
    except Exception:  # noqa: BLE001 - a missing or odd tag just means unknown
        return 0.0


@contextmanager
def _tifffile_quiet() -> Iterator[None]:
    """Silence tifffile's log lines about damaged files (the caller names the problem in one sentence)."""
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(level)


def _tiff_complete(t, p: Path) -> None:
    """Check, from the page directories alone, that a TIFF holds every page it links and all of their data.

    A file cut short either ends inside a page's data (its strips reach past the end) or drops pages whose
    directory lies beyond the end (tifffile then stops early; the last page read still links to the next).
    """
    size = p.stat().st_size
    pages = list(t.pages)
    end = max((o + c for pg in pages for o, c in zip(pg.dataoffsets, pg.databytecounts)), default=0)
    if end > size:
        raise _bad(p, f"the file is truncated: its pages need {end} bytes but it holds {size}")
    fmt, fh, last = t.tiff, t.filehandle, pages[-1]
    fh.seek(last.offset)
    (n_tags,) = struct.unpack(fmt.tagnoformat, fh.read(fmt.tagnosize))
    fh.seek(last.offset + fmt.tagnosize + n_tags * fmt.tagsize)
    raw = fh.read(fmt.offsetsize)
    following = struct.unpack(fmt.offsetformat, raw)[0] if len(raw) == fmt.offsetsize else 1
    if following:
        raise _bad(p, f"the file is truncated after page {len(pages)}: the next page lies beyond its end")


def _tiff_info(p: Path, fmt: str, eer_grouping: int, eer_upsampling: int) -> MovieInfo:
    import tifffile
    try:
        with _tifffile_quiet(), tifffile.TiffFile(p, superres=eer_upsampling - 1 if fmt == "eer" else None) as t:
            _tiff_complete(t, p)
            pages = [pg for pg in t.pages if fmt != "eer" or pg.compression in (65000, 65001, 65002)]
            first = pages[0]
            h, w = first.shape[-2:]
            dtype = np.dtype(first.dtype)
            apix = _tiff_pixel_size(first)
            n = len(pages)
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, struct.error) as e:
        raise _bad(p, f"not a readable TIFF movie ({str(e).rstrip('.') or type(e).__name__})") from None
    if fmt == "eer":
        n = n // eer_grouping
        if n < 1:
            raise InputError(f"{p}: has fewer EER readouts than --eer-grouping {eer_grouping}; lower the grouping.")
        dtype = np.dtype(np.uint16)
    return MovieInfo(p, fmt, n, h, w, apix, dtype)


def movie_info(path: PathLike, *, eer_grouping: int = 40, eer_upsampling: int = 1) -> MovieInfo:
    """Read a movie's header: format, frames, size, pixel size and dtype.

    Raises:
        InputError: missing, unknown, truncated or corrupt file.
    """
    p = Path(path)
    _exists(p)
    fmt = movie_format(p)
    if fmt == "mrc":
        return _mrc_info(p)
    if eer_grouping < 1 or eer_upsampling not in (1, 2):
        raise InputError(f"{p}: EER grouping must be at least 1 and upsampling 1 or 2.")
    return _tiff_info(p, fmt, eer_grouping, eer_upsampling)


def frame_range(n_frames: int, first_frame: int = 1, last_frame: int | None = None, *, path: PathLike = "") -> range:
    """0-based frame indices of the 1-based inclusive range ``first_frame..last_frame``.

    ``last_frame`` None, 0 or negative means the last frame (RELION's ``--last_frame_sum -1``);
    a ``last_frame`` beyond the movie is clipped to it, as RELION does.
    """
    last = n_frames if last_frame is None or last_frame <= 0 else min(int(last_frame), n_frames)
    if first_frame < 1 or first_frame > last:
        raise InputError(f"{path}: frame range {first_frame}..{last_frame if last_frame else 'last'} selects no frame "
                         f"of its {n_frames}; choose --first-frame/--last-frame within 1..{n_frames}.")
    return range(first_frame - 1, last)


def _read_eer(p: Path, frames: range, grouping: int, upsampling: int) -> np.ndarray:
    """Sum ``grouping`` EER readouts per frame (uint16), as decoded (no flip)."""
    import tifffile
    with tifffile.TiffFile(p, superres=upsampling - 1) as t:
        eer = [i for i, pg in enumerate(t.pages) if pg.compression in (65000, 65001, 65002)]
        out = None
        for k, f in enumerate(frames):
            stack = t.asarray(key=eer[f * grouping:(f + 1) * grouping])
            s = stack.reshape(-1, *stack.shape[-2:]).sum(0, dtype=np.uint16)
            if out is None:
                out = np.empty((len(frames), *s.shape), np.uint16)
            out[k] = s
    return out


def read_movie(path: PathLike, *, first_frame: int = 1, last_frame: int | None = None, eer_grouping: int = 40,
               eer_upsampling: int = 1) -> np.ndarray:
    """Read frames ``first_frame..last_frame`` (1-based, inclusive) of a movie.

    Returns:
        ``(n, rows, columns)`` in the stored integer or float dtype (EER: uint16 counts
        per group), oriented as RELION reads the file (TIFF flipped in y); MRC
        frames are a view of the memory map when possible.

    Raises:
        InputError: missing, unknown, truncated or corrupt file; a frame range outside the movie.
    """
    info = movie_info(path, eer_grouping=eer_grouping, eer_upsampling=eer_upsampling)
    p = info.path
    frames = frame_range(info.n_frames, first_frame, last_frame, path=p)
    if info.fmt == "mrc":
        with mrcfile.mmap(p, mode="r", permissive=False) as m:
            data = m.data if m.data.ndim == 3 else m.data[None]
            return data[frames.start:frames.stop]
    if info.fmt == "eer":
        try:
            return _read_eer(p, frames, eer_grouping, eer_upsampling)
        except Exception as e:  # noqa: BLE001 - decoder errors name no file
            raise _bad(p, f"its EER frames could not be decoded ({str(e).rstrip('.') or type(e).__name__})") from None
    import tifffile
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = tifffile.imread(p, key=list(frames))
    except Exception as e:  # noqa: BLE001 - tifffile/imagecodecs raise many types on damaged files
        raise _bad(p, f"its TIFF frames could not be decoded ({str(e).rstrip('.') or type(e).__name__})") from None
    if data.ndim == 2:
        data = data[None]
    if data.shape[0] != len(frames):
        raise _bad(p, f"{data.shape[0]} frames decoded where {len(frames)} were expected")
    return data[:, ::-1]


def _read_image(path: PathLike, what: str) -> np.ndarray:
    """A single 2-D image from an MRC (as stored) or TIFF (flipped in y), float32."""
    p = Path(path)
    _exists(p)
    fmt = movie_format(p)
    if fmt == "eer":
        raise InputError(f"{p}: an EER file cannot be a {what}; give an MRC or TIFF image.")
    img = read_movie(p)
    if img.shape[0] != 1:
        raise InputError(f"{p}: a {what} must be one image, but the file holds {img.shape[0]}; give a single image.")
    img = np.array(img[0], dtype=np.float32)  # a writable copy, not the memory map
    if not np.isfinite(img).all():
        raise InputError(f"{p}: the {what} contains NaN or infinite values; replace them (e.g. by 0 = bad pixel).")
    return img


def read_gain(path: PathLike) -> np.ndarray:
    """A gain reference ``(rows, columns)`` float32, before any ``--gain-rot``/``--gain-flip``.

    Convention (RELION, MotionCor2): ``corrected = raw × gain``; 0 marks a bad pixel.
    """
    return _read_image(path, "gain reference")


def read_defects(path: PathLike, shape: tuple[int, int]) -> np.ndarray:
    """A defect mask ``(rows, columns)`` bool (True = bad) from a MotionCor2 defect file or a defect map.

    A text file holds one rectangle per line, ``x y w h`` in 0-based pixels of the movie
    as read (x = column, y = row); rectangles are clipped to the frame. Any other file is
    read as an image of ``shape`` whose non-zero pixels are bad.
    """
    p = Path(path)
    _exists(p)
    if p.suffix.lower() in MOVIE_SUFFIXES:
        m = _read_image(p, "defect map")
        if m.shape != tuple(shape):
            raise InputError(f"{p}: the defect map is {m.shape[1]}x{m.shape[0]} but the movies are "
                             f"{shape[1]}x{shape[0]}; give a map of the movies' size.")
        return m != 0
    mask = np.zeros(shape, bool)
    try:
        text = p.read_text()
    except UnicodeDecodeError:
        raise InputError(f"{p}: not a text defect file (x y w h per line) nor an MRC/TIFF defect map; "
                         "give one of those.") from None
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        try:
            x, y, w, h = (int(round(float(v))) for v in parts)
        except ValueError:
            raise InputError(f"{p}: line {n} is not 'x y w h' (four numbers); fix the defect file.") from None
        if w < 1 or h < 1:
            raise InputError(f"{p}: line {n} has a width or height below 1; fix the defect file.")
        mask[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)] = True
    return mask
