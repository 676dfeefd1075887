#!/usr/bin/env python3
"""Build "DDTP-ST en→de": an offline English-speech → German-text corpus from package registries only.

What it does
------------
1. **Text.** English–German sentence pairs from Debian's translated package descriptions (DDTP):
   ``apt-get update -o Acquire::Languages=en,de`` into a *private* list directory (the system's apt
   state is untouched) from the first Debian ``main`` 'deb' source of the system's own apt
   configuration (``/etc/apt/sources.list``, ``sources.list.d/*.list`` and deb822 ``*.sources``: its
   URI, suite and Signed-By; printed, and recorded in MANIFEST.json), then ``apt-helper cat-file`` decompresses
   ``Translation-en`` / ``Translation-de``. Entries are joined on ``Description-md5``; the short
   descriptions are paired, long descriptions are split into paragraphs (`` .`` lines) and, where both
   sides have the same number of paragraphs and a paragraph the same number of sentences, sentences
   are paired 1:1 (list/verbatim paragraphs skipped). The ``Package:`` field is kept.
   Pairs are deduplicated on a masked skeleton (package name, digits, capitalised words and
   identifier-like tokens masked), so templates such as "This package contains the X library." appear
   once; untranslated pairs, URLs and odd length ratios are dropped, and the English side must have
   ``min_words..max_words`` words (3–40; 3–12 for ``ci``).
   **Split by package**: ``sha256(Package) % 100`` → 0–3 test, 4–7 dev, 8–99 train, so no package
   (and no template) occurs in two splits. Each split's pool is shuffled with ``--seed`` and cut to size.
2. **Speech.** ``espeak-ng`` (Debian main; ``apt-get install -y espeak-ng``) reads the English side:
   random voice, rate (``-s`` 140–200) and pitch (``-p`` 35–65); resampled 22050 → 16000 Hz
   (``scipy.signal.resample_poly(320, 441)``), peak gain 0.3–0.9, white noise at 15–40 dB SNR (so no
   frame sits at the log-mel floor of digital silence), quantised to 16 bit.
   Voices: ``SEEN_VOICES`` (8) for train/dev/test; with ``--train-voices many`` the train splits are
   spoken by 90 voices instead (the 6 seen accents × 15 espeak-ng variants, the 8 seen voices among them;
   dev/test unchanged). ``UNSEEN_VOICES`` (2, accents and variants not used in training) only for the
   extra splits ``dev_unseen`` / ``test_unseen``, which hold the *same sentences* as dev/test spoken by a held-out voice (compare dev vs dev_unseen for speaker robustness).
   With ``--unseen-engine flite`` the same sentences are also spoken by another synthesiser, ``flite``
   (Debian main; ``apt-get install -y flite``; its voices awb, rms, slt, kal16; the planned rate becomes its
   ``duration_stretch``): ``dev_unseen_engine`` / ``test_unseen_engine``, for robustness to speech unlike
   every training utterance (models trained on espeak-ng alone transcribe it at ≈ 100 % WER).
   All random choices derive from (seed, utterance id): the build is deterministic given ``--seed``
   (and the Translation files and espeak-ng version, which MANIFEST.json records).
3. **Features.** 80-dim Kaldi fbank through ``imitkd_data`` (same code as prep_s2t_data.py for MuST-C/CoVoST):
   per-utterance .npy files packed into an uncompressed ``fbank80.zip``. Extraction is resumable:
   re-running skips every utterance whose features exist (``fbank80/*.npy`` or inside the zip).

Sizes (``--size``; pairs train/dev/test; dev_unseen/test_unseen add the dev/test counts again):
``ci`` 200/20/20 (3–12 words; ~15 s incl. apt update), ``small`` 2000/200/200, ``medium`` 10000/1000/1000.

Output layout (``--out-dir``)::

    fbank80.zip                         features, <id>.npy members (ZIP_STORED)
    train.tsv dev.tsv test.tsv          fairseq S2T manifests: id audio n_frames tgt_text speaker src_text
    dev_unseen.tsv test_unseen.tsv      same sentences as dev/test, held-out voices (speaker = voice)
    dev_unseen_engine.tsv test_unseen_engine.tsv
                                        with --unseen-engine flite: same sentences, flite's voices
    train_asr_extra.tsv                 with --asr-extra N: English-only utterances (train voices) of train
                                        packages, tgt_text = src_text = the transcript (for an ASR stage);
                                        their text in text/train_asr_extra.en
    text/{train,dev,test}.{en,de}       raw parallel text (one sentence per line) for the text NMT expert
    text/{train,dev,test}.pairs.tsv     id package src_text tgt_text (ids match the manifests)
    MANIFEST.json                       sha256 of Translation-en/de and of every output, sizes, seed,
                                        voices, espeak-ng version, build time, parameters
    with --spm-vocab-size N:
    spm_joint.model spm_joint.vocab     joint en+de sentencepiece model trained on text/train.{en,de}
    dict.txt                            its fairseq dictionary (shared by expert src/tgt and the student)
    text/{train,dev,test}.spm.{en,de}   sentencepiece-encoded text
    config.yaml                         S2T data config (vocab_filename dict.txt, absolute spm path,
                                        audio_root, utterance CMVN + SpecAugment 'lb' on train)
    apt/                                private apt lists + decompressed Translation-en/de (cache) and
                                        apt_source.json (the apt source they came from)
    with --save-audio:  flac/<id>.flac  the 16 kHz audio the features were computed from

Train the expert with e.g. ``fairseq-preprocess --source-lang en --target-lang de --trainpref
text/train.spm --validpref text/dev.spm --testpref text/test.spm --srcdict dict.txt --tgtdict dict.txt``
and the student with ``fairseq-train <out> --config-yaml config.yaml --train-subset train
--valid-subset dev --task speech_to_text ...``.

Python API (package ``imitkd_data.ddtp``, one module per job; this file is its CLI):
``corpus.build(out_dir, size="ci", seed=1, ...) -> Path``; ``text.select_text(...)`` for the text only,
``apt.fetch_translations(...)`` for the Translation files, ``speech`` for the synthesis.
"""
import argparse
import logging
import sys
from pathlib import Path

from imitkd_data.ddtp.corpus import build
from imitkd_data.ddtp.speech import TRAIN_VOICES, UNSEEN_ENGINE_VOICES
from imitkd_data.ddtp.text import ASR_EXTRA, SIZES
from imitkd_data.errors import DataPrepError


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out-dir", required=True, type=Path, help="output directory")
    p.add_argument("--size", default="ci", choices=sorted(SIZES), help="corpus size (default ci)")
    p.add_argument("--seed", default=1, type=int, help="seed of text selection and synthesis (default 1)")
    p.add_argument("--workers", default=2, type=int, help="synthesis processes (default 2)")
    p.add_argument("--asr-extra", default=0, type=int, metavar="N",
                   help="also N English-only utterances of train packages (train_asr_extra.tsv, tgt_text = the English "
                        "transcript) for an ASR stage; no template of any pair's split (default 0)")
    p.add_argument("--train-voices", default="seen", choices=list(TRAIN_VOICES),
                   help="voices of train/train_asr_extra: 'seen' (the 8 of dev/test) or 'many' (6 accents × 15 "
                        "variants, the seen 8 among them); dev/test keep the seen voices (default seen)")
    p.add_argument("--unseen-engine", choices=list(UNSEEN_ENGINE_VOICES),
                   help="also dev_unseen_engine/test_unseen_engine: the dev/test sentences spoken by this synthesiser "
                        "(default: none)")
    p.add_argument("--spm-vocab-size", type=int, help="also train a joint en+de sentencepiece model of this size (> 4) + dict.txt + config.yaml")
    p.add_argument("--spm-type", default="unigram", choices=["unigram", "bpe"], help="joint sentencepiece model type")
    p.add_argument("--translations-dir", type=Path, help="use Translation-en/-de from this dir (no apt-get update)")
    p.add_argument("--cache-dir", type=Path, help="where apt lists and Translation files are cached (default <out>/apt)")
    p.add_argument("--refresh", action="store_true", help="re-run apt-get update even if Translation files are cached")
    p.add_argument("--install-deps", action="store_true",
                   help="apt-get install -y espeak-ng (and flite with --unseen-engine flite) if it is missing")
    p.add_argument("--save-audio", action="store_true", help="also keep the 16 kHz audio as flac/<id>.flac")
    p.add_argument("--feature-dtype", default="float32", choices=["float32", "float16"], help="dtype of stored features")
    p.add_argument("--keep-npy", action="store_true", help="keep fbank80/<id>.npy after packing the zip")
    p.add_argument("--overwrite", action="store_true", help="discard features of an earlier build in --out-dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.asr_extra < 0:
        parser.error(f"--asr-extra must be >= 0, got {args.asr_extra}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        build(
            args.out_dir, size=args.size, seed=args.seed, workers=args.workers, spm_vocab_size=args.spm_vocab_size,
            spm_type=args.spm_type, translations_dir=args.translations_dir, cache_dir=args.cache_dir,
            refresh=args.refresh, install_deps=args.install_deps, save_audio=args.save_audio,
            feature_dtype=args.feature_dtype, keep_npy=args.keep_npy, overwrite=args.overwrite,
            counts={ASR_EXTRA: args.asr_extra} if args.asr_extra else None, train_voices=args.train_voices,
            unseen_engine=args.unseen_engine, progress=not args.no_progress,
        )
    except DataPrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
