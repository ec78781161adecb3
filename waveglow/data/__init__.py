"""The data side of the toolkit: audio I/O, corpora and splits, the feature cache, the datasets.

    audio       read / resample / write / dither waveforms; the audio suffixes we accept
    corpus      find the clips of a corpus (LJSpeech, folder, VCTK, LibriTTS layouts)
    mix         a mix of corpora (`data=mix`): the union of their clips
    splits      the train/val/test (and held-out-speaker) filelists
    preprocess  the mel cache, manifest, statistics and bad-file report (`waveglow-preprocess`)
    clipwork    the per-clip work of preprocessing (worker processes)
    paired      paired mels (`data.mel_dir`, e.g. Tacotron 2 GTA outputs) as the conditioning
    datasets    SegmentDataset (training) and ClipDataset (validation), reading that cache
    inputs      the one `input=` resolver of waveglow-mel, -synthesize, -resynthesize, -score
    download    fetch a corpus archive and unpack it (`waveglow-download`)
    extract     unpack a tar or zip archive without trusting its member names
"""

from waveglow.data.audio import AUDIO_SUFFIXES, OTHER_AUDIO_SUFFIXES
from waveglow.data.corpus import (
    FOLDER_HINT,
    LJSPEECH_HINT,
    BadFile,
    Clip,
    Corpus,
    cache_dir,
    corpus_root,
    discover_corpus,
)
from waveglow.data.datasets import PAD_NOISE_STD, ClipDataset, ClipInfo, SegmentDataset, split_clips
from waveglow.data.inputs import InputFile, resolve_inputs
from waveglow.data.paired import MEL_FRAME_TOLERANCE, paired_mel_dir
from waveglow.data.preprocess import (
    CorpusSettings,
    PreprocessReport,
    cache_settings,
    feature_settings,
    features_match,
    load_stats,
    preprocess_corpus,
)
from waveglow.data.splits import SPLITS, ensure_splits, read_splits

__all__ = [
    "AUDIO_SUFFIXES", "OTHER_AUDIO_SUFFIXES", "FOLDER_HINT", "LJSPEECH_HINT", "MEL_FRAME_TOLERANCE", "SPLITS",
    "PAD_NOISE_STD",
    "BadFile", "Clip", "Corpus", "CorpusSettings", "ClipInfo", "ClipDataset", "SegmentDataset", "InputFile", "PreprocessReport",
    "cache_dir", "cache_settings", "corpus_root", "discover_corpus", "ensure_splits", "feature_settings",
    "features_match", "load_stats", "paired_mel_dir", "preprocess_corpus", "read_splits", "resolve_inputs",
    "split_clips",
]
