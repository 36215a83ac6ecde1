"""Decode camera frames once, matching each dataset row to the frame nearest its timestamp.

`decode_nearest` takes one video file and the query times of the rows stored in it (the row's
timestamp plus the episode's offset inside the file), decodes the file front to back once
(PyAV; torchcodec when asked for) and writes, for every query, the frame whose presentation time
is nearest (ties go to the earlier frame) into out[row] as uint8 [H, W, C]. A query farther than
tolerance_s from every frame raises an error naming the key, the episode and the timestamp.
Frames are converted to RGB only when some row needs them, and decoding stops once the last
query is served.

`decode_image` decodes one PNG / JPEG image (LeRobot "image" features stored in parquet) the
way LeRobot does: with Pillow, as `datasets.Image` does (Image.open, load, exif_transpose when
the picture has an EXIF orientation), converted to RGB / L only when its mode is not already the
one the feature's channels need. Without Pillow (an optional import here; LeRobot's users always
have it) PyAV / FFmpeg decodes it instead: PNGs come out the same, but JPEGs differ, by a level
or two and, where the JPEG subsamples its colour (4:2:0 / 4:2:2, the default of most encoders),
by tens of levels at sharp colour edges (FFmpeg upsamples the chroma differently from libjpeg),
and an EXIF orientation is not applied. Either way the picture's size is read from the PNG IHDR
/ JPEG SOF header first, and a size other than the declared one is refused before anything is
decoded (a small file can declare a picture of gigabytes).
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._errors import DatasetFormatError

BACKENDS = ("pyav", "torchcodec")


@dataclass
class Queries:
    """The rows of one video file: times to match and where the frames go."""

    times: np.ndarray        # float64 [Q] seconds in the file's time line
    rows: np.ndarray         # int64 [Q] global rows of the output
    episodes: np.ndarray     # int64 [Q] episode index (for errors)
    offsets: np.ndarray      # float64 [Q] the episode's from_timestamp (for errors)


def _pixel_format(channels: int, key: str) -> str:
    if channels == 3:
        return "rgb24"
    if channels == 1:
        return "gray"
    raise DatasetFormatError(f"{key}: video features with {channels} channels are not supported "
                             f"(expected 1 or 3)")


def _too_far(key: str, path: Path, q: Queries, i: int, nearest: float | None, tol: float):
    row_ts = q.times[i] - q.offsets[i]
    where = "no decodable frame" if nearest is None else f"nearest frame at {nearest:.6f} s"
    return DatasetFormatError(
        f"{key}: episode {int(q.episodes[i])}: no frame within tolerance_s={tol:g} of timestamp "
        f"{row_ts:.6f} s (+ from_timestamp {q.offsets[i]:.6f} s = {q.times[i]:.6f} s in "
        f"{str(path)!r}); {where}")


def decode_nearest(path: Path, q: Queries, out: np.ndarray, *, key: str, tolerance_s: float,
                   backend: str = "pyav", bar=None) -> None:
    if len(q.times) == 0:
        return
    if not np.isfinite(q.times).all():
        raise DatasetFormatError(f"{key}: non-finite timestamps for rows stored in {str(path)!r}")
    order = np.argsort(q.times, kind="stable")
    q = Queries(q.times[order], q.rows[order], q.episodes[order], q.offsets[order])
    if backend == "torchcodec":
        _decode_torchcodec(path, q, out, key, tolerance_s, bar)
    else:
        _decode_pyav(path, q, out, key, tolerance_s, bar)


def _decode_pyav(path: Path, q: Queries, out: np.ndarray, key: str, tol: float, bar) -> None:
    import av

    H, W, C = out.shape[1:]
    fmt = _pixel_format(C, key)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise DatasetFormatError(f"{key}: cannot open video {str(path)!r}: {exc}") from None
    with container:
        if not container.streams.video:
            raise DatasetFormatError(f"{key}: {str(path)!r} has no video stream")
        stream = container.streams.video[0]
        if H * W >= 256 * 256:  # frame threads pay off on large frames only
            stream.thread_type = "AUTO"
        n, j = len(q.times), 0
        prev = prev_t = prev_img = None

        def image(frame, cache):
            if cache is None:
                if frame.height != H or frame.width != W:
                    raise DatasetFormatError(
                        f"{key}: {str(path)!r} holds {frame.width}x{frame.height} frames, "
                        f"meta/info.json declares {W}x{H} (width x height)")
                cache = frame.to_ndarray(format=fmt).reshape(H, W, C)
            return cache

        def serve(i, frame, t, cache):
            if abs(q.times[i] - t) > tol:
                raise _too_far(key, path, q, i, t, tol)
            cache = image(frame, cache)
            out[q.rows[i]] = cache
            return cache

        try:
            for frame in container.decode(stream):
                t = frame.time
                if t is None:
                    raise DatasetFormatError(f"{key}: a frame of {str(path)!r} has no timestamp")
                if prev_t is not None and t < prev_t:
                    raise DatasetFormatError(f"{key}: frame times in {str(path)!r} go backwards "
                                             f"({prev_t:.6f} s then {t:.6f} s)")
                cur_img = None
                served = j
                while j < n and q.times[j] <= t:
                    # nearest of the previous and the current frame; a tie goes to the earlier
                    if prev is not None and q.times[j] - prev_t <= t - q.times[j]:
                        prev_img = serve(j, prev, prev_t, prev_img)
                    else:
                        cur_img = serve(j, frame, t, cur_img)
                    j += 1
                if bar is not None and j > served:
                    bar.update(j - served)
                prev, prev_t, prev_img = frame, t, cur_img
                if j == n:
                    break
        except av.error.FFmpegError as exc:
            raise DatasetFormatError(f"{key}: cannot decode {str(path)!r}: {exc}") from None
        served = j
        while j < n:  # queries after the last frame: the last frame, if close enough
            if prev is None:
                raise _too_far(key, path, q, j, None, tol)
            prev_img = serve(j, prev, prev_t, prev_img)
            j += 1
        if bar is not None and j > served:
            bar.update(j - served)


def _decode_torchcodec(path: Path, q: Queries, out: np.ndarray, key: str, tol: float,
                       bar) -> None:
    # the frame index nearest each time from the stream's average rate, then the decoded
    # frames' own timestamps checked against the query (what LeRobot's torchcodec path does)
    from torchcodec.decoders import VideoDecoder

    H, W, C = out.shape[1:]
    try:
        dec = VideoDecoder(str(path), dimension_order="NHWC", device="cpu")
    except Exception as exc:  # torchcodec raises RuntimeError / ValueError variants
        raise DatasetFormatError(f"{key}: cannot open video {str(path)!r}: {exc}") from None
    rate = float(dec.metadata.average_fps)
    count = len(dec)
    if count == 0 or not rate > 0:
        raise _too_far(key, path, q, 0, None, tol)
    want = np.clip(np.rint(q.times * rate).astype(np.int64), 0, count - 1)
    uniq, inverse = np.unique(want, return_inverse=True)
    step = 64
    for a in range(0, len(uniq), step):
        idx = uniq[a:a + step]
        batch = dec.get_frames_at(indices=[int(i) for i in idx])
        data = batch.data.numpy()
        if data.shape[1:] != (H, W, C):
            raise DatasetFormatError(f"{key}: {str(path)!r} decodes to frames of shape "
                                     f"{tuple(data.shape[1:])}, meta/info.json declares "
                                     f"{(H, W, C)}")
        pts = batch.pts_seconds.numpy().astype(np.float64)
        sel = np.flatnonzero((inverse >= a) & (inverse < a + step))
        local = inverse[sel] - a
        bad = np.abs(q.times[sel] - pts[local]) > tol
        if bad.any():
            i = int(sel[np.flatnonzero(bad)[0]])
            raise _too_far(key, path, q, i, float(pts[inverse[i] - a]), tol)
        out[q.rows[sel]] = data[local]
        if bar is not None:
            bar.update(len(sel))


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers: C0..CF but DHT (C4), JPG (C8) and DAC (CC)
JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
EXIF_ORIENTATION = 0x0112


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR or a JPEG's start-of-frame header; None where the
    header does not say (the decoder then finds out, and the size is checked after it)."""
    if data[:8] == PNG_MAGIC:
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return (w, h) if w and h else None
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:  # marker segments up to the frame header (no entropy-coded data yet)
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # SOI, EOI or scan data before any frame header
            return None
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in JPEG_SOF:
            if length < 7 or i + 9 > n:
                return None
            h = int.from_bytes(data[i + 5:i + 7], "big")
            w = int.from_bytes(data[i + 7:i + 9], "big")
            return (w, h) if w and h else None  # height 0: a DNL marker gives it later
        if length < 2:
            return None
        i += 2 + length
    return None


@functools.cache
def _pil():
    """Pillow's Image and ImageOps modules, or None where Pillow is not installed."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        return None
    return Image, ImageOps


def _wrong_size(where: str, w: int, h: int, W: int, H: int) -> DatasetFormatError:
    return DatasetFormatError(f"{where}: image is {w}x{h}, meta/info.json declares {W}x{H} "
                              f"(width x height)")


def decode_image(data: bytes, shape: tuple[int, int, int], where: str) -> np.ndarray:
    """One PNG or JPEG image -> uint8 [H, W, C] (C: 3, RGB, or 1, grey)."""
    H, W, C = shape
    fmt = _pixel_format(C, where)
    if data[:8] == PNG_MAGIC:
        codec = "png"
    elif data[:3] == b"\xff\xd8\xff":
        codec = "mjpeg"
    else:
        raise DatasetFormatError(f"{where}: image bytes are neither PNG nor JPEG")
    size = image_size(data)
    # (H, W) too: an EXIF orientation can turn the picture a quarter
    if size is not None and size not in ((W, H), (H, W)):
        raise _wrong_size(where, *size, W, H)
    pil = _pil()
    if pil is not None:
        return _decode_pil(pil, data, shape, where)
    import av

    try:
        ctx = av.CodecContext.create(codec, "r")
        frames = ctx.decode(av.Packet(data)) + ctx.decode(None)
    except av.error.FFmpegError as exc:
        raise DatasetFormatError(f"{where}: cannot decode image: {exc}") from None
    if not frames:
        raise DatasetFormatError(f"{where}: image decodes to no picture (truncated?)")
    frame = frames[0]
    if (frame.height, frame.width) != (H, W):
        raise _wrong_size(where, frame.width, frame.height, W, H)
    return frame.to_ndarray(format=fmt).reshape(H, W, C)


def _decode_pil(pil, data: bytes, shape: tuple[int, int, int], where: str) -> np.ndarray:
    """datasets.Image.decode_example's steps, then the feature's mode (LeRobot's ToTensor
    takes the picture's own mode: RGB for colour, L for grey)."""
    Image, ImageOps = pil
    H, W, C = shape
    try:
        img = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
        img.load()
        if img.getexif().get(EXIF_ORIENTATION) is not None:
            img = ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise DatasetFormatError(f"{where}: cannot decode image: {exc}") from None
    if img.size != (W, H):
        raise _wrong_size(where, *img.size, W, H)
    mode = "RGB" if C == 3 else "L"
    if img.mode != mode:
        img = img.convert(mode)
    return np.asarray(img).reshape(H, W, C)
