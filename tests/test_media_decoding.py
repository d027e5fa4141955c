"""Media decoding against numbers known in advance: audio resampling (soxr) against the analytic signal."""

import numpy as np
import pytest

from modeling_mera.processing_mera import resample


def three_tones(seconds: np.ndarray) -> np.ndarray:
    """440 Hz, 1230 Hz and 3000 Hz: all below the Nyquist frequency of every rate resampled to here."""
    return (
        0.5 * np.sin(2 * np.pi * 440 * seconds)
        + 0.3 * np.sin(2 * np.pi * 1230 * seconds + 0.3)
        + 0.2 * np.cos(2 * np.pi * 3000 * seconds)
    )


@pytest.mark.parametrize(
    "source_rate, target_rate, duration", [(44100, 16000, 1.0), (22050, 16000, 0.7313), (8000, 16000, 0.5)]
)
def test_resampling_gives_the_signal_at_the_new_sample_times(source_rate, target_rate, duration):
    samples = int(duration * source_rate)
    waveform = three_tones(np.arange(samples) / source_rate).astype(np.float32)
    resampled = resample(waveform, source_rate, target_rate)
    assert resampled.dtype == np.float32
    # Same duration (a clip of 0.7313 s stays 0.7313 s: 11,701 samples at 16 kHz) and no drift along it: each output
    # sample equals the analytic signal at its own time k / target_rate.
    assert len(resampled) == round(samples * target_rate / source_rate)
    truth = three_tones(np.arange(len(resampled)) / target_rate)
    inner = slice(len(resampled) // 20, -len(resampled) // 20)  # the filter's start-up and run-out at the ends
    assert np.abs(resampled[inner] - truth[inner]).max() < 1e-5


@pytest.mark.parametrize("source_rate", [44100, 22050])
def test_downsampling_removes_tones_above_the_new_nyquist_frequency(source_rate):
    """A tone between the new and the old Nyquist frequency would alias to a false tone; it must vanish instead."""
    frequency = (source_rate / 2 + 8000) / 2
    waveform = np.sin(2 * np.pi * frequency * np.arange(source_rate) / source_rate).astype(np.float32)
    resampled = resample(waveform, source_rate, 16000)
    inner = resampled[800:-800]
    assert np.sqrt(np.mean(inner**2)) < 1e-4  # the input's RMS is 0.707


def test_same_rate_is_returned_untouched():
    waveform = np.arange(5, dtype=np.float32)
    assert resample(waveform, 16000, 16000) is waveform


# --- video: only the kept frames are decoded ---------------------------------------------------------------------


def write_numbered_video(path, frames: int = 120, key_frame_every: int = 12, size: int = 32):
    """An MPEG-4 clip whose frame i is a flat colour that encodes i, with a key frame every `key_frame_every`."""
    av = pytest.importorskip("av", reason="decoding video files needs PyAV (the video/test extras)")
    with av.open(str(path), "w") as container:
        # No extra key frames at "scene changes" (every frame changes colour): one key frame per group.
        stream = container.add_stream("mpeg4", rate=25, options={"sc_threshold": "1000000000"})
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = key_frame_every
        for index in range(frames):
            image = np.zeros((size, size, 3), np.uint8)
            image[..., 0], image[..., 1] = 2 * index, 255 - 2 * index
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


class CountingContainer:
    """Wraps a PyAV container to count the frames its decoder produces (PyAV's classes cannot be patched)."""

    decoded = 0

    def __init__(self, container):
        self._container = container

    def __getattr__(self, name):
        return getattr(self._container, name)

    def __enter__(self):
        self._container.__enter__()
        return self

    def __exit__(self, *exc):
        return self._container.__exit__(*exc)

    def decode(self, *args, **kwargs):
        for frame in self._container.decode(*args, **kwargs):
            CountingContainer.decoded += 1
            yield frame


def test_reading_a_few_frames_decodes_only_near_them(tmp_path, monkeypatch):
    import av

    from trainers.data import read_video

    path = tmp_path / "clip.mp4"
    write_numbered_video(path)
    every_frame = read_video(str(path))
    assert every_frame.shape == (120, 32, 32, 3)

    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *args, **kwargs: CountingContainer(real_open(*args, **kwargs)))
    CountingContainer.decoded = 0
    four = read_video(str(path), num_frames=4)
    # The same frames as decoding everything and keeping 4 evenly spread ones (0, 40, 79, 119), as the processor does.
    expected = every_frame[np.linspace(0, 119, 4).round().astype(int)]
    np.testing.assert_array_equal(four, expected)
    assert np.abs(four[:, 0, 0, 0].astype(int) - 2 * np.array([0, 40, 79, 119])).max() <= 4  # the colours say so
    # Each kept frame costs the frames from the key frame before it (1 + 5 + 8 + 12 = 26 here), not all 120.
    assert 4 <= CountingContainer.decoded <= 4 * 12, CountingContainer.decoded
