"""Audio front end in numpy: waveform -> log-mel spectrogram [frames, n_mels] (the audio
tower's input). Hann-windowed STFT without centre padding, power spectrum, HTK mel filters,
natural log with a floor."""

import numpy as np


def hz_to_mel(f):
  return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_to_hz(m):
  return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
  """Triangular filters [n_fft // 2 + 1, n_mels]."""
  fmax = fmax or sample_rate / 2
  freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
  edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
  lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
  up = (freqs[:, None] - lo) / np.maximum(mid - lo, 1e-9)
  down = (hi - freqs[:, None]) / np.maximum(hi - mid, 1e-9)
  return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


def log_mel_spectrogram(wave, sample_rate: int = 16000, n_fft: int = 400, hop: int = 160,
                        n_mels: int = 64, frames: int | None = None) -> np.ndarray:
  """wave float [N] (or [B, N]) -> float32 [frames, n_mels] (or [B, ...]); `frames` pads
  (with the floor value) or crops to a fixed length."""
  wave = np.asarray(wave, np.float32)
  if wave.ndim == 2:
    return np.stack([log_mel_spectrogram(w, sample_rate, n_fft, hop, n_mels, frames) for w in wave])
  if len(wave) < n_fft:
    wave = np.pad(wave, (0, n_fft - len(wave)))
  count = 1 + (len(wave) - n_fft) // hop
  idx = np.arange(n_fft)[None, :] + hop * np.arange(count)[:, None]
  spec = np.abs(np.fft.rfft(wave[idx] * np.hanning(n_fft).astype(np.float32), axis=1)) ** 2
  out = np.log(spec @ mel_filterbank(sample_rate, n_fft, n_mels) + 1e-6).astype(np.float32)
  if frames is not None:
    if len(out) >= frames:
      out = out[:frames]
    else:
      out = np.concatenate([out, np.full((frames - len(out), n_mels), np.log(1e-6), np.float32)])
  return out


def num_samples(frames: int, n_fft: int = 400, hop: int = 160) -> int:
  """Samples that give exactly `frames` frames."""
  return n_fft + hop * (frames - 1)
