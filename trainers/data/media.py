"""
Every media reader and converter, in one module.

`read_media` turns a sample's `media` (a path or an array) into what `MeraProcessor` takes, batch by batch while
training: images (PIL), WAV audio (standard library), video (PyAV), point clouds (text, `.npy`, PLY, Cap3D `.pt`).

Media conversions for files that are slow to read as they are published, done once at conversion:

- point clouds: PLY (ASCII or binary, numpy only) and Cap3D's torch `.pt` tensors -> `(points, 3 or 6)` float32 `.npy`
  (xyz, then rgb in [0, 1] when the file has colours);
- video: N uniformly spaced frames decoded with PyAV (`pip install av`) -> uint8 `(N, H, W, 3)` `.npy` (optional; by
  default the video files are kept, and training decodes only the frames the model samples from each);
- audio: any format PyAV decodes (or WAV with the standard library) -> mono 16-bit WAV, resampled to a given rate.

Each converter writes its outputs under a folder of `--out` shared between data sets (Cap3D and Cap3D-QA share the
clouds of the same objects), and skips files already there.
"""

import os
import wave
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError


class MediaError(UserError):
    """A media file is missing or cannot be read; the message names the file and the sample."""


def read_wav(path: str) -> tuple[np.ndarray, int]:
    """A PCM WAV file as a float32 mono waveform in [-1, 1] and its sampling rate (standard library only)."""
    with wave.open(path, "rb") as audio:
        rate, channels, width = audio.getframerate(), audio.getnchannels(), audio.getsampwidth()
        frames = audio.readframes(audio.getnframes())
    dtype = {1: np.uint8, 2: np.int16, 4: np.int32}.get(width)
    if dtype is None:
        raise MediaError(f"{path}: unsupported WAV sample width of {width} bytes")
    waveform = np.frombuffer(frames, dtype=dtype).astype(np.float32)
    waveform = (waveform - 128) / 128 if dtype is np.uint8 else waveform / np.iinfo(dtype).max
    return waveform.reshape(-1, channels).mean(axis=1), rate


def uniform_frame_indices(total: int, num_frames: int) -> np.ndarray:
    """`num_frames` indices spread evenly over `total` frames, first and last included (MeraProcessor's sampling)."""
    return np.linspace(0, total - 1, num_frames).round().astype(int)


def read_video(path: str, num_frames: int | None = None) -> np.ndarray:
    """Decode a video file into RGB frames `(frames, H, W, 3)` with PyAV (`pip install av`).

    With `num_frames`, only those frames are decoded, evenly spread as `MeraProcessor` samples them: for each one
    the decoder seeks to the key frame before it and decodes up to it, so a clip of 300 frames costs a few dozen
    frame decodes instead of 300. Without it (or when the file does not say how many frames it has), every frame.
    """
    try:
        import av
    except ImportError as error:
        raise MediaError(
            f"{path}: decoding video files needs PyAV (`pip install av`), or store frames as .npy"
        ) from error
    with av.open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if num_frames is None or stream.frames <= 0 or not rate:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
            if not frames:
                raise MediaError(f"{path}: the video has no frames")
            if num_frames is not None:
                frames = [frames[i] for i in uniform_frame_indices(len(frames), num_frames)]
            return np.stack(frames)
        start = stream.start_time or 0
        picked, last = [], None
        for index in uniform_frame_indices(stream.frames, num_frames):
            target = start + round(index / (rate * stream.time_base))  # frame `index`'s timestamp
            container.seek(target, stream=stream, backward=True, any_frame=False)
            frame = None
            for frame in container.decode(stream):
                if frame.pts is None or frame.pts >= target:
                    break
            # Headers can overstate the frame count: past the end, the last frame stands in.
            last = frame or last
            if last is None:
                raise MediaError(f"{path}: the video has no frames")
            picked.append(last.to_ndarray(format="rgb24"))
        return np.stack(picked)


def read_media(media: Any, modality_kind: str, num_frames: int | None = None) -> Any:
    """Turn a sample's `media` (path or array) into what `MeraProcessor` takes for this modality kind.

    `num_frames`: a video file is decoded at that many evenly spread frames only (the processor's sampling).
    """
    if not isinstance(media, str):
        return np.asarray(media)
    suffix = Path(media).suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(media)
        if suffix == ".npz":
            with np.load(media) as archive:
                return archive[archive.files[0]]
        if modality_kind == "image":
            from PIL import Image

            with Image.open(media) as image:
                return image.convert("RGB")
        if modality_kind == "audio" and suffix == ".wav":
            return read_wav(media)
        if modality_kind == "video":
            return read_video(media, num_frames)
        if modality_kind == "point_cloud" and suffix in (".txt", ".xyz", ".pts"):
            return np.loadtxt(media, dtype=np.float32, delimiter="," if suffix == ".txt" else None)
        if modality_kind == "point_cloud" and suffix in (".ply", ".pt"):
            return read_point_cloud_file(media)
    except MediaError:
        raise
    except Exception as error:
        raise MediaError(f"{media}: cannot read as {modality_kind} ({type(error).__name__}: {error})") from error
    raise MediaError(f"{media}: no reader for {suffix!r} files of modality kind {modality_kind!r}")


def read_sample_media(media: Any, modality_settings: dict) -> Any:
    """`read_media` for a modality of a `MeraConfig` (`config.modalities[name]`): a video file is decoded at the
    model's frame count only (the processor's own sampling)."""
    return read_media(media, modality_settings["kind"], modality_settings.get("num_frames"))


PLY_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}
COLOR_NAMES = (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue"))


def _parse_ply_header(handle, path: str) -> tuple[str, list[tuple[str, int, list[tuple[str, str]]]]]:
    if handle.readline().strip() != b"ply":
        raise MediaError(f"{path}: not a PLY file (it must start with the line 'ply')")
    encoding, elements = None, []
    while True:
        line = handle.readline()
        if not line:
            raise MediaError(f"{path}: PLY header has no 'end_header' line")
        words = line.decode("ascii", errors="replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            return encoding, elements
        if words[0] == "format":
            encoding = words[1]
        elif words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property":
            if not elements:
                raise MediaError(f"{path}: PLY property before any element")
            if words[1] == "list":
                elements[-1][2].append((words[-1], "list"))
            elif words[1] in PLY_TYPES:
                elements[-1][2].append((words[2], PLY_TYPES[words[1]]))
            else:
                raise MediaError(f"{path}: unknown PLY property type {words[1]!r}")


def read_ply(path: str | os.PathLike) -> np.ndarray:
    """
    The vertices of a PLY file as float32 `(points, 3)` xyz, or `(points, 6)` xyz + rgb scaled to [0, 1] when the
    vertices have colours. Reads `ascii`, `binary_little_endian` and `binary_big_endian` files; elements before
    `vertex` must have fixed-size properties (point-cloud files have none).
    """
    path = str(path)
    with open(path, "rb") as handle:
        encoding, elements = _parse_ply_header(handle, path)
        if encoding not in ("ascii", "binary_little_endian", "binary_big_endian"):
            raise MediaError(f"{path}: unknown PLY format {encoding!r}")
        order = "<" if encoding == "binary_little_endian" else ">"
        vertices = None
        for name, count, properties in elements:
            if any(kind == "list" for _, kind in properties):
                if name == "vertex" or vertices is None:
                    raise MediaError(f"{path}: PLY element {name!r} has list properties before the vertices")
                break
            dtype = np.dtype([(prop, order + kind) for prop, kind in properties])
            if encoding == "ascii":
                rows = [handle.readline().split() for _ in range(count)]
                table = np.array(
                    [tuple(row[: len(properties)]) for row in rows], dtype=[(p, "U32") for p, _ in properties]
                )
                data = np.empty(count, dtype=dtype)
                for prop, _ in properties:
                    data[prop] = table[prop].astype(dtype[prop])
            else:
                raw = handle.read(dtype.itemsize * count)
                if len(raw) < dtype.itemsize * count:
                    raise MediaError(f"{path}: PLY file is truncated in element {name!r}")
                data = np.frombuffer(raw, dtype=dtype, count=count)
            if name == "vertex":
                vertices = data
                break
    if vertices is None:
        raise MediaError(f"{path}: PLY file has no 'vertex' element")
    names = vertices.dtype.names
    if not all(axis in names for axis in "xyz"):
        raise MediaError(f"{path}: PLY vertices have no x, y, z properties (found {list(names)})")
    columns = [vertices[axis].astype(np.float32) for axis in "xyz"]
    colors = next((triple for triple in COLOR_NAMES if all(c in names for c in triple)), None)
    if colors:
        scale = 255.0 if vertices.dtype[colors[0]].kind in "ui" else 1.0
        columns += [vertices[c].astype(np.float32) / scale for c in colors]
    return np.stack(columns, axis=1)


def read_point_cloud_file(path: str) -> np.ndarray:
    """A point cloud from .ply, .pt (Cap3D: a `(channels, points)` tensor), .npy or .npz as `(points, channels)`."""
    suffix = Path(path).suffix.lower()
    if suffix == ".ply":
        return read_ply(path)
    if suffix == ".pt":
        import torch

        points = torch.load(path, map_location="cpu", weights_only=True)
        points = np.asarray(points.float().numpy() if hasattr(points, "numpy") else points, dtype=np.float32)
    elif suffix == ".npz":
        with np.load(path) as archive:
            points = archive[archive.files[0]].astype(np.float32)
    else:
        points = np.load(path).astype(np.float32)
    if points.ndim != 2:
        raise MediaError(f"{path}: a point cloud must be a 2-D array, got shape {points.shape}")
    # Channels-first tensors (Cap3D's .pt: 6 x 16384) become points-first.
    return points.T if points.shape[0] in (3, 6) and points.shape[1] > 6 else points


def convert_point_cloud(source: str, target: Path, max_points: int | None = None, seed: int = 0) -> Path:
    """Write `source` as float32 `.npy` at `target` (unless it is there), sub-sampled to `max_points` if given."""
    if target.is_file():
        return target
    points = read_point_cloud_file(source)
    if max_points and len(points) > max_points:
        points = points[np.sort(np.random.default_rng(seed).choice(len(points), max_points, replace=False))]
    _save_atomically(target, lambda handle: np.save(handle, points.astype(np.float32)))
    return target


def extract_frames(source: str, target: Path, num_frames: int) -> Path:
    """Decode `num_frames` uniformly spaced RGB frames of a video with PyAV and save them as uint8 `.npy`."""
    if target.is_file():
        return target
    clip = read_video(source, num_frames).astype(np.uint8)
    _save_atomically(target, lambda handle: np.save(handle, clip))
    return target


def decode_audio(source: str) -> tuple[np.ndarray, int]:
    """A mono float32 waveform and its rate: WAV with the standard library, anything else with PyAV."""
    if Path(source).suffix.lower() == ".wav":
        try:
            return read_wav(source)
        except (wave.Error, MediaError):
            pass  # a WAV the standard library cannot read (float, extensible): let PyAV try
    try:
        import av
    except ImportError as error:
        raise MediaError(f"{source}: decoding this audio file needs PyAV (`pip install av`)") from error
    with av.open(source) as container:
        stream = container.streams.audio[0]
        rate = stream.rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = [
            out.to_ndarray().reshape(-1) for frame in container.decode(stream) for out in resampler.resample(frame)
        ]
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    if not chunks:
        raise MediaError(f"{source}: the audio file has no samples")
    return np.concatenate(chunks).astype(np.float32), rate


def transcode_audio(source: str, target: Path, sampling_rate: int | None) -> Path:
    """Write `source` as mono 16-bit PCM WAV at `sampling_rate` (its own rate when None), unless `target` exists."""
    from modeling_mera.processing_mera import resample

    if target.is_file():
        return target
    waveform, rate = decode_audio(source)
    if sampling_rate and sampling_rate != rate:
        waveform, rate = resample(waveform, rate, sampling_rate), sampling_rate
    pcm = (np.clip(waveform, -1.0, 1.0) * 32767).round().astype("<i2")

    def write(handle):
        with wave.open(handle, "wb") as audio:
            audio.setnchannels(1)
            audio.setsampwidth(2)
            audio.setframerate(int(rate))
            audio.writeframes(pcm.tobytes())

    _save_atomically(target, write)
    return target


def _save_atomically(target: Path, write) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    with open(partial, "wb") as handle:
        write(handle)
    os.replace(partial, target)
