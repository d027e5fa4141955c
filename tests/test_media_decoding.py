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
