#!/usr/bin/env python3
"""Prepare speech-translation data in fairseq's speech_to_text format (80-dim fbank, zip, TSV, spm, config).

Input layouts (``--layout``)
----------------------------
``mustc``  MuST-C as distributed::

    <root>/en-<lang>/data/<split>/wav/<talk>.wav
    <root>/en-<lang>/data/<split>/txt/<split>.yaml     # list of {duration, offset, rw, speaker_id, wav}
    <root>/en-<lang>/data/<split>/txt/<split>.en       # one transcript per yaml segment
    <root>/en-<lang>/data/<split>/txt/<split>.<lang>   # one translation per yaml segment

  ``--data-root`` may also point at ``<root>/en-<lang>`` itself. Segments are cut from the talk
  wav by offset/duration (seconds). Ids are ``<talk>_<i>`` with i counting the segments of a talk
  in offset order (as fairseq's prep_mustc_data.py does). Default splits: train dev tst-COMMON.

``covost`` CoVoST 2 as users have it::

    <root>/clips/<path>                                 # Common Voice clips (.mp3 | .wav | .flac)
    <root>/covost_v2.<src>_<tgt>.<split>.tsv            # or the fairseq-style <root>/<split>.tsv
                                                        # or <root>/covost_v2.<src>_<tgt>.tsv with a `split` column
    columns: path, sentence, translation, client_id     # (sentence/client_id may come from <root>/validated.tsv)

  If ``clips/<path>`` is missing but a .wav/.flac with the same stem exists (converted clips), that
  file is used. mp3 is read through soundfile (libsndfile >= 1.1 reads MPEG audio); if the installed
  libsndfile cannot, the run stops naming the file. Ids are the clip file stems; speaker = client_id.

``tsv``    a generic manifest ``<root>/<split>.tsv`` (tab separated, header row) with columns
  ``id, audio, src_text, tgt_text[, speaker]``; ``audio`` is a wav/flac path, absolute or relative
  to ``<root>``.

Output (``--out-dir``)
----------------------
* ``fbank80.zip``: one ``<id>.npy`` (float32, shape (n_frames, 80)) per utterance, ZIP_STORED.
  Features come from ``imitkd_data.features.kaldi_fbank`` (kaldi-native-fbank; identical to the on-the-fly
  features of the imitkd raw-audio path), computed at one sample rate: every file is first resampled
  to ``--sample-rate`` (default 16000; ``scipy.signal.resample_poly``, as build_ddtp_st.py and the
  raw-audio path do), so a 22.05 kHz and a 16 kHz recording of one utterance give the same features.
* ``<split>.tsv``: columns ``id, audio, n_frames, tgt_text, speaker, src_text``; ``audio`` is
  ``fbank80.zip:<byte offset>:<byte length>`` (offset of the member's data, as fairseq's
  ``examples/speech_to_text/data_utils.py`` writes it). Tabs/newlines in texts become spaces.
* ``spm_<type><size>.model`` + fairseq dictionary ``spm_<type><size>.txt`` trained on the targets of
  the train split(s) (``--vocab-type``, ``--vocab-size``); or the reused ``--vocab-from-dict`` /
  ``--bpe-from`` files (copied into the output dir, so a student shares the expert's vocabulary).
* ``config.yaml`` for ``fairseq-train --config-yaml``: input_channels 1, input_feat_per_channel 80,
  vocab_filename, bpe_tokenizer (absolute sentencepiece_model path), audio_root (absolute output dir,
  so manifests work from any working directory), sample_rate (``--sample-rate``), optional ``--cmvn utterance`` and
  ``--specaugment lb|ld|sm|ss`` (fairseq's standard policies; implies utterance CMVN).

Resuming
--------
Features are first written as ``fbank80/<id>.npy`` and packed into the zip at the end; utterances
whose features already exist (as a .npy in ``fbank80/`` or a member of ``fbank80.zip``) are never
recomputed, so an interrupted run can simply be started again. Without ``--keep-npy`` the .npy files
are removed once they are safely in the zip. Use ``--overwrite`` to recompute everything. Resuming
with another ``--sample-rate`` than the one config.yaml records is refused (the features would mix rates).

Errors about the input (missing/unreadable audio or NaN samples, text line-count mismatch, empty transcript or
translation, missing columns, a row with more or fewer fields than the header, a MuST-C segment outside its
wav) are reported as one line naming the file/row, with exit status 2; so are bad arguments (checked before
the output directory is made) and an ``--out-dir`` whose outputs would overwrite input files (e.g. the
covost/tsv ``<split>.tsv`` when it is ``--data-root``).

The code is the package ``imitkd_data`` (``prep.prepare``; no fairseq import); this file is its CLI.

Example::

    python examples/speech_to_text/prep_s2t_data.py --layout mustc --data-root MUSTC --tgt-lang de \\
        --out-dir data/mustc_en_de --vocab-type unigram --vocab-size 8000 --specaugment lb --workers 2
"""
import argparse
import logging
import sys
from pathlib import Path

from imitkd_data.data_config import SPECAUGMENT_POLICIES
from imitkd_data.errors import DataPrepError
from imitkd_data.features import SAMPLE_RATE
from imitkd_data.layouts import READERS
from imitkd_data.prep import prepare

logger = logging.getLogger("prep_s2t_data")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--layout", required=True, choices=sorted(READERS), help="input layout (see below)")
    p.add_argument("--data-root", required=True, type=Path, help="root of the input data")
    p.add_argument("--out-dir", required=True, type=Path, help="output directory (fairseq data dir)")
    p.add_argument("--splits", nargs="+", help="splits to prepare (default: mustc: train dev tst-COMMON; others: train dev test)")
    p.add_argument("--src-lang", default="en", help="source (speech) language code (default: en)")
    p.add_argument("--tgt-lang", default="de", help="target language code (default: de)")
    p.add_argument("--vocab-type", default="unigram", choices=["unigram", "bpe", "char"], help="sentencepiece model type")
    p.add_argument("--vocab-size", default=8000, type=int, help="sentencepiece vocabulary size, > 4 (default 8000)")
    p.add_argument("--vocab-splits", nargs="+", help="splits whose targets train the vocabulary (default: those named train*)")
    p.add_argument("--vocab-from-dict", type=Path, help="reuse this fairseq dictionary (e.g. the expert's target dict)")
    p.add_argument("--bpe-from", type=Path, help="reuse this sentencepiece model (e.g. the expert's)")
    p.add_argument("--cmvn", choices=["utterance"], help="utterance-level CMVN on all splits")
    p.add_argument("--specaugment", choices=sorted(SPECAUGMENT_POLICIES), help="SpecAugment policy for train (implies --cmvn utterance)")
    p.add_argument("--workers", default=1, type=int, help="feature-extraction processes (default 1)")
    p.add_argument("--feature-dtype", default="float32", choices=["float32", "float16"], help="dtype of stored features")
    p.add_argument("--sample-rate", default=SAMPLE_RATE, type=int, metavar="HZ",
                   help=f"resample every file to this rate before computing features (default {SAMPLE_RATE}; "
                        "recorded as sample_rate in config.yaml)")
    p.add_argument("--keep-npy", action="store_true", help="keep fbank80/<id>.npy after packing the zip")
    p.add_argument("--overwrite", action="store_true", help="recompute all features")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = prepare(
            args.layout, args.data_root, args.out_dir, splits=args.splits, src_lang=args.src_lang,
            tgt_lang=args.tgt_lang, vocab_type=args.vocab_type, vocab_size=args.vocab_size,
            vocab_splits=args.vocab_splits, vocab_from_dict=args.vocab_from_dict, bpe_from=args.bpe_from,
            cmvn=args.cmvn, specaugment=args.specaugment, workers=args.workers, feature_dtype=args.feature_dtype,
            keep_npy=args.keep_npy, overwrite=args.overwrite, progress=not args.no_progress,
            sample_rate=args.sample_rate,
        )
    except DataPrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logger.info("done: %s", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
