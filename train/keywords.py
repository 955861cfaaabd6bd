"""A spoken-keyword data set for the gsc-cs network, synthesised with espeak-ng.

The twelve classes of the Google Speech Commands task the paper uses: ten
keywords, ``silence`` and ``unknown`` (other words). Each clip is one word
spoken by espeak-ng (a Debian package) with a random voice (seven English
accents, each plain or with one of eleven voice variants), speed and pitch,
placed at a random offset in one second, mixed with white or brown noise at
a random signal-to-noise ratio; ``silence`` is noise alone. Each clip
becomes a 32x32 log-mel spectrogram (32 mel bands from 60 Hz to 8 kHz, 32
frames over the second), the gsc-cs network's input.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import numpy as np

from ..compiler.errors import CosparseError

__all__ = ["KEYWORDS", "CLASSES", "UNKNOWN_WORDS", "VOICES", "log_mel", "speak", "make_dataset"]

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
#: Class names in label order.
CLASSES = KEYWORDS + ("silence", "unknown")
#: Words of the ``unknown`` class (the Speech Commands set's other words).
UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
                 "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "zero")
#: espeak-ng's own English voices (no mbrola data needed).
VOICES = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
          "en-029")
VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+f1", "+f2", "+f3", "+f4", "+klatt")

RATE = 22050  # espeak-ng's output rate
N_FFT = 1024
FRAMES = 32
BANDS = 32


def _mel_filters(rate: int, n_fft: int, bands: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular filters on the HTK mel scale, ``[bands, n_fft // 2 + 1]``."""
    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    edges = hz(np.linspace(mel(fmin), mel(fmax), bands + 2))
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    fb = np.zeros((bands, freqs.size))
    for b in range(bands):
        lo, mid, hi = edges[b:b + 3]
        fb[b] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)
    return fb


_FILTERS = _mel_filters(RATE, N_FFT, BANDS, 60.0, 8000.0)


def log_mel(clip: np.ndarray) -> np.ndarray:
    """The 32x32 log-mel spectrogram (bands x frames, float32) of a one-second clip."""
    clip = np.asarray(clip, dtype=np.float64)
    if clip.shape != (RATE,):
        raise ValueError(f"a clip is {RATE} samples (one second), got shape {clip.shape}")
    hop = (RATE - N_FFT) // (FRAMES - 1)
    frames = np.stack([clip[i * hop:i * hop + N_FFT] for i in range(FRAMES)])
    power = np.abs(np.fft.rfft(frames * np.hanning(N_FFT), axis=1)) ** 2
    return np.log(power @ _FILTERS.T + 1e-6).T.astype(np.float32)


def speak(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng's samples (float, -1..1, 22,050 Hz) of ``word``."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise CosparseError("the keyword data set needs espeak-ng: apt-get install espeak-ng")
    run = subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word],
                         capture_output=True, check=False)
    if run.returncode != 0 or len(run.stdout) <= 44:
        raise CosparseError(f"espeak-ng failed on {word!r} with voice {voice!r}: "
                            f"{run.stderr.decode(errors='replace').strip()[:200]}")
    return np.frombuffer(run.stdout[44:], dtype="<i2").astype(np.float64) / 32768.0


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    white = rng.normal(size=n)
    if rng.random() < 0.5:
        return white
    brown = np.cumsum(white)
    brown -= np.linspace(brown[0], brown[-1], n)  # no drift across the second
    return brown / (brown.std() + 1e-12)


def _clip(rng: np.random.Generator, word: str | None) -> np.ndarray:
    """One second: the word (None: silence) at a random offset, plus noise."""
    out = np.zeros(RATE)
    if word is not None:
        voice = rng.choice(VOICES) + rng.choice(VARIANTS)
        s = speak(word, voice, int(rng.integers(110, 231)), int(rng.integers(20, 81)))
        s = s[np.flatnonzero(np.abs(s) > 0.01).min():] if np.any(np.abs(s) > 0.01) else s
        s = s[:RATE]
        start = int(rng.integers(0, RATE - len(s) + 1))
        out[start:start + len(s)] = s
        level = np.sqrt(np.mean(s ** 2)) + 1e-9
        snr_db = rng.uniform(5, 30)
        out += _noise(rng, RATE) * level / 10 ** (snr_db / 20)
    else:
        out += _noise(rng, RATE) * 10 ** rng.uniform(-3.5, -1)
    return out


def make_dataset(per_class: int, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` clips of each class as ``x`` float32 ``[N, 1, 32, 32]`` (log-mel, not
    normalised) and ``y`` int64 ``[N]`` labels (:data:`CLASSES` order), shuffled.

    ``unknown`` clips draw their words from :data:`UNKNOWN_WORDS`; ``progress(done,
    total)`` is called after each clip.
    """
    if not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
    rng = np.random.default_rng(seed)
    total = per_class * len(CLASSES)
    x = np.empty((total, 1, BANDS, FRAMES), dtype=np.float32)
    y = np.empty(total, dtype=np.int64)
    i = 0
    for label, name in enumerate(CLASSES):
        for _ in range(per_class):
            word = (None if name == "silence" else
                    str(rng.choice(UNKNOWN_WORDS)) if name == "unknown" else name)
            x[i, 0] = log_mel(_clip(rng, word))
            y[i] = label
            i += 1
            if progress is not None:
                progress(i, total)
    order = rng.permutation(total)
    return x[order], y[order]
