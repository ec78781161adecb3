"""Mel-cepstral distortion (MCD) in dB with dynamic time warping.

A short documented implementation, because the packages for it did not fit: `pymcd` builds
pyworld and pysptk (compiled extensions) for an SPTK mel-cepstrum, and `mel-cepstral-distance`
(0.0.x) reports its distance on log10 energies (Bels, not the dB figure papers quote),
peak-normalizes each file and aligns with the approximate FastDTW.

Here the mel-cepstrum is the cosine transform of the toolkit's own natural-log mel magnitudes
(80 Slaney bands, the model's conditioning), in SPTK's convention
    log|X(ω̃_n)| = c_0 + Σ_{m≥1} c_m cos(m ω̃_n),   c_m = (2/N) Σ_n ln|X_n| cos(π m (n + ½) / N),
and the distance per frame pair is Kubichek's
    MCD = (10 / ln 10) · sqrt(2 · Σ_{m=1}^{24} (c_m − c'_m)²)   dB,
c_0 (overall level) excluded, averaged over the pairs of the optimal alignment. The alignment
is librosa's DTW (steps (1,1), (1,0), (0,1), Euclidean cost on the same cepstra), so a copy
shifted in time measures ≈ 0 dB. Figures are comparable with each other; against papers using
an SPTK all-pass mel-cepstrum of order 24-34 they differ by the frequency warping.
"""

from __future__ import annotations

import math

import numpy as np

ORDER = 24  # c_1 ... c_24
K = 10.0 / math.log(10.0) * math.sqrt(2.0)
MAX_CELLS = 25_000_000  # DTW cost matrix of at most ~200 MiB (two 58 s clips at hop 256)


def mel_cepstra(log_mel: np.ndarray, order: int = ORDER) -> np.ndarray:
    """Mel-cepstral coefficients c_1 ... c_order of natural-log mel magnitudes.

    Args:
        log_mel: [n_mels, F] natural-log mel magnitudes (the toolkit's log-mel).
        order: highest coefficient.

    Returns:
        float64 [order, F].
    """
    from scipy.fft import dct

    n = log_mel.shape[0]
    # scipy's unnormalized DCT-II is 2·Σ x_n cos(π m (2n+1) / 2N): divided by N it is c_m above.
    c = dct(np.asarray(log_mel, dtype=np.float64), type=2, axis=0, norm=None) / n
    return c[1: order + 1]


def mcd_dtw(ref_cepstra: np.ndarray, out_cepstra: np.ndarray) -> float:
    """Mean MCD in dB over the DTW-aligned frame pairs.

    Args:
        ref_cepstra: [order, F] of the reference.
        out_cepstra: [order, F'] of the output.

    Returns:
        dB (0 for identical or merely time-shifted signals).

    Raises:
        ValueError: too long to align (F·F' above `MAX_CELLS`) or empty.
    """
    import librosa

    n, m = ref_cepstra.shape[1], out_cepstra.shape[1]
    if n == 0 or m == 0:
        raise ValueError("MCD undefined (no frame)")
    if n * m > MAX_CELLS:
        raise ValueError(f"MCD skipped ({n} x {m} frames is too long to align)")
    _, path = librosa.sequence.dtw(X=ref_cepstra, Y=out_cepstra, metric="euclidean", backtrack=True)
    diff = ref_cepstra[:, path[:, 0]] - out_cepstra[:, path[:, 1]]
    return float(np.mean(K * np.sqrt((diff**2).sum(axis=0))))
