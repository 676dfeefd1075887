"""DDTP-ST speech: espeak-ng reads the English side, then resample, gain, noise, quantise, fbank.

Every random choice (voice, rate, pitch, gain, SNR, noise seed) is fixed up front from (seed, utterance id)
by ``plan_utterances``, so the synthesis is deterministic given the seed and the espeak-ng version.
Voices: ``SEEN_VOICES`` for dev/test, ``TRAIN_VOICES[train_voices]`` for train and the English-only
``train_asr_extra`` (whose target is the transcript): ``"seen"`` is ``SEEN_VOICES`` again, ``"many"`` the six
seen accents × 15 variants (the seen voices among them). ``UNSEEN_VOICES`` only speak ``dev_unseen``/
``test_unseen`` (the dev/test sentences by held-out voices); their accents and variants are in no pool.
With ``unseen_engine="flite"`` the dev/test sentences are also spoken by another synthesiser, flite (Debian
main; its four English voices, none in any pool): ``dev_unseen_engine``/``test_unseen_engine``. A voice
``"flite:<name>"`` is flite's; flite takes the planned rate as ``duration_stretch`` = 175 / rate and no pitch.
"""
import io
import logging
import math
import random
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..atomic import atomic_write
from ..errors import BuildError
from ..feature_store import FeatureStore
from ..features import SAMPLE_RATE, compute_fbank
from .text import ASR_EXTRA, BASE_SPLITS, Pair

logger = logging.getLogger("build_ddtp_st")

SEEN_VOICES = (
    "en-us+m3", "en-us+f2", "en-gb-x-rp+m5", "en-us+f4", "en-029+m1", "en-gb-scotland+f3", "en-gb+m2", "en-us-nyc+f1",
)
UNSEEN_VOICES = ("en-gb-x-gbclan+m4", "en-gb-x-gbcwmd+f5")
#: the seen voices' accents × espeak-ng's numbered variants (less the held-out m4/f5) and its Klatt synthesiser
SEEN_ACCENTS = tuple(dict.fromkeys(v.partition("+")[0] for v in SEEN_VOICES))
MANY_VARIANTS = ("m1", "m2", "m3", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "klatt", "klatt2", "klatt3", "klatt4")
TRAIN_VOICES = {
    "seen": SEEN_VOICES,
    "many": tuple(f"{a}+{v}" for a in SEEN_ACCENTS for v in MANY_VARIANTS),
}
TRAIN_SPLITS = ("train", ASR_EXTRA)  #: the splits that ``train_voices`` speaks
UNSEEN_SPLITS = {"dev_unseen": "dev", "test_unseen": "test"}
#: ``unseen_engine``: the voices of another synthesiser, which speak the dev/test sentences in these splits
UNSEEN_ENGINE_VOICES = {"flite": ("flite:awb", "flite:rms", "flite:slt", "flite:kal16")}
UNSEEN_ENGINE_SPLITS = {"dev_unseen_engine": "dev", "test_unseen_engine": "test"}
ESPEAK_DEFAULT_RATE = 175  #: espeak-ng's default words per minute: flite's duration_stretch = this / rate
#: espeak-ng's speaking rate (-s) and pitch (-p), peak gain and white-noise SNR (dB): uniform ranges per utterance
RATE, PITCH, GAIN, SNR_DB = (140, 200), (35, 65), (0.3, 0.9), (15.0, 40.0)


@dataclass(frozen=True)
class UttSpec:
    """One utterance to synthesise: its id, split, texts and every random choice of its synthesis."""

    id: str
    split: str
    voice: str
    rate: int
    pitch: int
    gain: float
    snr_db: float
    noise_seed: int
    src_text: str
    tgt_text: str
    package: str


def plan_utterances(text: Dict[str, List[Pair]], seed: int, train_voices: str = "seen",
                    unseen_engine: Optional[str] = None) -> Dict[str, List[UttSpec]]:
    """Every random choice of the synthesis, fixed up front from (seed, utterance id); ``train_voices``
    (a ``TRAIN_VOICES`` key) changes only the train splits' voices, dev/test stay as they are;
    ``unseen_engine`` (an ``UNSEEN_ENGINE_VOICES`` key) adds the ``UNSEEN_ENGINE_SPLITS``, the others unchanged."""
    plan = {}
    sources = {**UNSEEN_SPLITS, **(UNSEEN_ENGINE_SPLITS if unseen_engine else {})}
    for split in list(BASE_SPLITS) + list(sources) + [s for s in (ASR_EXTRA,) if s in text]:
        pairs = text[sources.get(split, split)]
        if split in UNSEEN_ENGINE_SPLITS:
            voices = UNSEEN_ENGINE_VOICES[unseen_engine]
        elif split in UNSEEN_SPLITS:
            voices = UNSEEN_VOICES
        else:
            voices = TRAIN_VOICES[train_voices] if split in TRAIN_SPLITS else SEEN_VOICES
        specs = []
        for i, p in enumerate(pairs):
            utt_id = f"{split}_{i:05d}"
            rng = random.Random(f"ddtp-st:{seed}:{utt_id}")
            specs.append(
                UttSpec(
                    id=utt_id,
                    split=split,
                    voice=voices[rng.randrange(len(voices))],
                    rate=rng.randint(*RATE),
                    pitch=rng.randint(*PITCH),
                    gain=round(rng.uniform(*GAIN), 4),
                    snr_db=round(rng.uniform(*SNR_DB), 2),
                    noise_seed=rng.getrandbits(63),
                    src_text=p.en,
                    tgt_text=p.en if split == ASR_EXTRA else p.de,
                    package=p.package,
                )
            )
        plan[split] = specs
    return plan


def espeak_version() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise BuildError("espeak-ng not found: run `apt-get install -y espeak-ng` (or pass --install-deps)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"text-to-speech:\s*(\S+)", out)
    return m.group(1) if m else out.strip()


def engine_of(voice: str) -> str:
    """The synthesiser of a voice: ``"flite"`` for ``"flite:<name>"``, else ``"espeak-ng"``."""
    return voice.partition(":")[0] if ":" in voice else "espeak-ng"


def flite_version() -> str:
    exe = shutil.which("flite")
    if exe is None:
        raise BuildError("flite not found: run `apt-get install -y flite` (it speaks the unseen-engine splits; "
                         "or pass --install-deps)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"flite-(\S+)", out)
    return m.group(1) if m else out.strip()


def check_voices(voices: Sequence[str]):
    """espeak-ng silently falls back for unknown variants, so check languages and variants up front (and
    flite's voices against ``flite -lv``)."""
    flite = [v.partition(":")[2] for v in voices if engine_of(v) == "flite"]
    if flite:
        flite_version()
        listed = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout.split(":", 1)[-1].split()
        for name in flite:
            if name not in listed:
                raise BuildError(f"flite voice {name!r} not available (flite -lv lists {' '.join(listed)})")
    voices = [v for v in voices if engine_of(v) == "espeak-ng"]
    langs = set(subprocess.run(["espeak-ng", "--voices"], capture_output=True, text=True).stdout.split())
    listing = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True).stdout
    variants = set(re.findall(r"!v/(\S+)", listing))
    for v in voices:
        lang, _, variant = v.partition("+")
        if lang not in langs or (variant and variant not in variants):
            raise BuildError(f"espeak-ng voice {v!r} not available (language {lang!r} or variant {variant!r} missing)")


def synthesize(spec: UttSpec) -> np.ndarray:
    """16 kHz int16 waveform of one utterance (espeak-ng or flite → resample → gain → noise → quantise)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    if engine_of(spec.voice) == "flite":
        wav, sr = _flite(spec)
    else:
        cmd = ["espeak-ng", "-v", spec.voice, "-s", str(spec.rate), "-p", str(spec.pitch), "--stdout"]
        r = subprocess.run(cmd, input=spec.src_text.encode("utf-8"), capture_output=True)
        if r.returncode != 0 or len(r.stdout) < 100:
            raise BuildError(f"espeak-ng failed for {spec.id} ({spec.voice}): {r.stderr.decode(errors='replace').strip()}")
        wav, sr = sf.read(io.BytesIO(r.stdout), dtype="float64")
    if wav.ndim > 1:
        wav = wav.mean(axis=1)
    if sr != SAMPLE_RATE:
        g = math.gcd(SAMPLE_RATE, sr)  # 22050 -> 16000: up 320, down 441
        wav = resample_poly(wav, SAMPLE_RATE // g, sr // g)
    wav = wav * spec.gain / max(1e-4, float(np.abs(wav).max()))
    power = float(np.mean(wav**2)) + 1e-10
    noise = np.random.default_rng(spec.noise_seed).normal(0.0, math.sqrt(power / 10 ** (spec.snr_db / 10)), wav.shape)
    return np.clip(np.round((wav + noise) * 32768.0), -32768, 32767).astype(np.int16)


def _flite(spec: UttSpec):
    """flite's waveform (float64) and sample rate for one utterance (text and wav through a scratch folder)."""
    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="imitkd-flite-") as d:
        text, wav = Path(d) / "text.txt", Path(d) / "speech.wav"
        text.write_text(spec.src_text, encoding="utf-8")
        cmd = ["flite", "-voice", spec.voice.partition(":")[2], "--setf",
               f"duration_stretch={ESPEAK_DEFAULT_RATE / spec.rate:.4f}", "-f", str(text), "-o", str(wav)]
        r = subprocess.run(cmd, capture_output=True)
        if r.returncode != 0 or not wav.is_file() or wav.stat().st_size < 100:
            raise BuildError(f"flite failed for {spec.id} ({spec.voice}): {r.stderr.decode(errors='replace').strip()}")
        return sf.read(wav, dtype="float64")


def render(spec: UttSpec) -> np.ndarray:
    """fbank (n_frames, 80) float32 of one utterance, exactly as stored in the corpus."""
    pcm = synthesize(spec)
    return compute_fbank(pcm.astype(np.float32) / 32768.0, SAMPLE_RATE)


def utt_job(args):
    """Pool job: synthesise one utterance, store its features (and, with save_audio, its flac)."""
    spec, out_dir, dtype, save_audio = args
    pcm = synthesize(spec)
    if save_audio:
        import soundfile as sf

        flac = Path(out_dir) / "flac" / f"{spec.id}.flac"
        flac.parent.mkdir(exist_ok=True)
        with atomic_write(flac, binary=True, fsync=False, sweep=False) as f:
            sf.write(f, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    feats = compute_fbank(pcm.astype(np.float32) / 32768.0, SAMPLE_RATE)
    return spec.id, FeatureStore(out_dir).save(spec.id, feats, dtype), len(pcm) / SAMPLE_RATE


def apt_install(package: str):
    """``apt-get install -y <package>``: espeak-ng, or flite for the unseen-engine splits (``--install-deps``)."""
    logger.info("installing %s with apt-get", package)
    r = subprocess.run(["apt-get", "install", "-y", package], capture_output=True, text=True)
    if r.returncode != 0:
        tail = " | ".join(r.stderr.strip().splitlines()[-2:])
        raise BuildError(f"apt-get install -y {package} failed (root? try apt-get update first): {tail}")
