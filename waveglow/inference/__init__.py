"""Inference with a trained checkpoint: synthesis, copy synthesis and likelihood scoring.

    synthesizer  Synthesizer: mel -> audio (from_mel, to_files), batched and chunked, exact
    decoding     Decoder: the exact batched decode, batch plans and the item loop under them all
    chunks       the chunk scheduler: pieces, the batching queue, padded-item repair, crossfade
    noise        the latent noise per (seed, key, block) and the receptive field
    stream       streaming synthesis (Synthesizer.stream)
    melcheck     the input-convention check, mel statistics, recorded audio settings
    denoiser     the bias-tone denoiser
    jobs         file jobs (to_files): checked inputs, atomic WAV writes, SynthesisReport
    resynthesis  copy synthesis (WAV -> mel -> WAV) with distances to the input
    metrics      mel L1, multi-resolution STFT distance, SNR
    score        exact per-frame log-likelihoods and suspect regions (Scorer)
    checks       the one check of the settings a Python caller passes
    convert      encode with the input's own mel, change the conditioning or latent, decode
    enhance      likelihood-guided repair of damaged stretches of recordings
"""

from __future__ import annotations

from waveglow.inference.chunks import Piece, plan_pieces
from waveglow.inference.convert import ConvertReport, convert_files
from waveglow.inference.denoiser import Denoiser
from waveglow.inference.enhance import Enhancer, EnhanceResult, enhance_files
from waveglow.inference.jobs import SynthesisReport
from waveglow.inference.melcheck import ConventionCheck, Reference
from waveglow.inference.noise import NOISE_BLOCK_FRAMES, latent, noise_seed, receptive_field_frames
from waveglow.inference.resynthesis import ResynthesisResult, resynthesize
from waveglow.inference.score import (
    FileScore,
    Region,
    Scorer,
    format_regions,
    frame_means,
    per_sample_log_likelihood,
    robust_z,
    suspect_regions,
    write_scores,
)
from waveglow.inference.synthesizer import Synthesizer

__all__ = [
    "NOISE_BLOCK_FRAMES", "ConventionCheck", "ConvertReport", "EnhanceResult", "Enhancer", "Reference",
    "convert_files", "enhance_files", "latent",
    "Denoiser", "FileScore", "Piece", "Region", "ResynthesisResult", "Scorer", "SynthesisReport",
    "Synthesizer", "format_regions", "frame_means", "noise_seed", "per_sample_log_likelihood",
    "plan_pieces", "receptive_field_frames", "resynthesize", "robust_z",
    "suspect_regions", "write_scores",
]
