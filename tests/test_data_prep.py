"""examples/speech_to_text/prep_s2t_data.py (its library: imitkd_data.prep) on tiny fake MuST-C / CoVoST / TSV trees."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from imitkd_data import features
from imitkd_data.errors import DataPrepError
from imitkd_data.feature_store import zip_manifest
from imitkd_data.features import kaldi_fbank, read_audio
from imitkd_data.manifest import read_manifest
from imitkd_data.prep import prepare

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "speech_to_text" / "prep_s2t_data.py"
_spec = importlib.util.spec_from_file_location("prep_s2t_data", SCRIPT)  # the CLI (examples/ is no package)
cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli)

SR = 16000
SRC = ["hello world", "this is a test", "speech translation works", "one more sentence", "short", "the end"]
TGT = ["hallo welt", "das ist ein test", "sprachübersetzung funktioniert", "noch ein satz", "kurz", "das ende"]


def _signal(seed: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    wav = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t) + 0.02 * rng.standard_normal(t.size)
    return wav.astype(np.float32)


def _write(path: Path, wav: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav, SR, subtype="PCM_16")


def _expected_fbank(path, start=None, frames=None):
    if start is None:
        wav, sr = read_audio(str(path))
    else:
        wav, sr = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
        wav = wav.mean(axis=1)
    return kaldi_fbank(wav * 32768.0, sr, 80)


def make_tsv_tree(root: Path):
    """train (4, wav+flac) / dev (2) generic manifests."""
    expected = {}
    for split, idx in (("train", range(4)), ("dev", range(4, 6))):
        lines = ["id\taudio\tsrc_text\ttgt_text\tspeaker"]
        for i in idx:
            ext = ".flac" if i % 2 else ".wav"
            rel = f"audio/utt{i}{ext}"
            _write(root / rel, _signal(i, 0.3 + 0.1 * i))
            lines.append(f"utt{i}\t{rel}\t{SRC[i]}\t{TGT[i]}\tspk{i % 2}")
            expected[f"utt{i}"] = (split, _expected_fbank(root / rel))
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return expected


def make_mustc_tree(root: Path, lang="de"):
    """two talks in train (segments cut by offset/duration), one in dev."""
    expected = {}
    plan = {"train": {"talkA": [(0.0, 0.4), (0.5, 0.35)], "talkB": [(0.1, 0.5)]}, "dev": {"talkC": [(0.2, 0.3), (0.0, 0.15)]}}
    k = 0
    for split, talks in plan.items():
        base = root / f"en-{lang}" / "data" / split
        segs, en, de = [], [], []
        for t, (talk, cuts) in enumerate(talks.items()):
            _write(base / "wav" / f"{talk}.wav", _signal(10 + t, 1.0))
            for off, dur in cuts:
                segs.append(f"- {{duration: {dur}, offset: {off}, rw: 1, speaker_id: spk_{talk}, wav: {talk}.wav}}")
                en.append(SRC[k % len(SRC)])
                de.append(TGT[k % len(TGT)])
                k += 1
            for j, (off, dur) in enumerate(sorted(cuts)):  # ids count segments in offset order
                expected[f"{talk}_{j}"] = (split, _expected_fbank(base / "wav" / f"{talk}.wav", int(off * SR), int(dur * SR)))
        (base / "txt").mkdir(parents=True, exist_ok=True)
        (base / "txt" / f"{split}.yaml").write_text("\n".join(segs) + "\n")
        (base / "txt" / f"{split}.en").write_text("\n".join(en) + "\n")
        (base / "txt" / f"{split}.{lang}").write_text("\n".join(de) + "\n")
    return expected


def make_covost_tree(root: Path):
    """CoVoST split files with wav/flac/mp3 clips (plus one mp3 name whose converted .flac exists)."""
    expected = {}
    kinds = {0: ".wav", 1: ".mp3", 2: "converted", 3: ".flac", 4: ".wav"}
    for split, idx in (("train", range(3)), ("dev", range(3, 5))):
        lines = ["path\tsentence\ttranslation\tclient_id"]
        for i in idx:
            kind = kinds[i]
            name = f"common_voice_en_{i}{'.mp3' if kind == 'converted' else kind}"
            real = (root / "clips" / name).with_suffix(".flac") if kind == "converted" else root / "clips" / name
            real.parent.mkdir(parents=True, exist_ok=True)
            if kind == ".mp3":
                sf.write(real, _signal(20 + i, 0.5), SR)  # libsndfile >= 1.1 writes/reads MPEG audio
            else:
                _write(real, _signal(20 + i, 0.5))
            lines.append(f"{name}\t{SRC[i]}\t{TGT[i]}\tclient{i % 2}")
            expected[Path(name).stem] = (split, _expected_fbank(real))
        (root / f"covost_v2.en_de.{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return expected


MAKERS = {"tsv": make_tsv_tree, "mustc": make_mustc_tree, "covost": make_covost_tree}


@pytest.mark.parametrize("layout", ["tsv", "mustc", "covost"])
def test_prepare_layout(tmp_path, layout):
    from fairseq.data.audio.audio_utils import get_features_or_waveform
    from fairseq.data.audio.data_cfg import S2TDataConfig

    root, out = tmp_path / "in", tmp_path / "out"
    expected = MAKERS[layout](root)
    summary = prepare(
        layout, root, out, splits=["train", "dev"], vocab_type="char", vocab_size=40, specaugment="lb", progress=False,
        workers=2 if layout == "mustc" else 1,  # the process pool path
    )
    assert summary["computed"] == len(expected)
    assert (out / "fbank80.zip").is_file() and not (out / "fbank80").exists()  # npy removed after packing
    import zipfile

    with zipfile.ZipFile(out / "fbank80.zip") as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())

    seen = set()
    for split in ("train", "dev"):
        header = (out / f"{split}.tsv").read_text(encoding="utf-8").split("\n", 1)[0]
        assert header.split("\t") == ["id", "audio", "n_frames", "tgt_text", "speaker", "src_text"]
        rows = read_manifest(out / f"{split}.tsv")
        assert {r["id"] for r in rows} == {k for k, (s, _) in expected.items() if s == split}
        for r in rows:
            seen.add(r["id"])
            assert r["audio"].startswith("fbank80.zip:")
            feats = get_features_or_waveform(str(out / r["audio"]))
            ref = expected[r["id"]][1]
            assert feats.shape == ref.shape == (int(r["n_frames"]), 80)
            np.testing.assert_allclose(feats, ref, rtol=0, atol=1e-5)
            assert r["tgt_text"] and r["src_text"]
            assert r["tgt_text"] in TGT and r["src_text"] in SRC
    assert seen == set(expected)

    cfg = S2TDataConfig(out / "config.yaml")
    assert cfg.input_feat_per_channel == 80 and cfg.input_channels == 1
    assert cfg.vocab_filename == "spm_char40.txt"
    assert cfg.bpe_tokenizer["bpe"] == "sentencepiece"
    assert Path(cfg.bpe_tokenizer["sentencepiece_model"]).is_absolute()
    assert Path(cfg.bpe_tokenizer["sentencepiece_model"]).is_file()
    assert cfg.get_transforms("", "train", True) == ["utterance_cmvn", "specaugment"]
    assert cfg.get_transforms("", "dev", False) == ["utterance_cmvn"]
    assert cfg.config["specaugment"]["freq_mask_F"] == 27
    assert Path(cfg.audio_root) == out.resolve()
    assert cfg.config["sample_rate"] == 16000  # the rate every file was resampled to

    # dictionary: fairseq gen_vocab convention
    import sentencepiece as spm
    from fairseq.data import Dictionary

    sp = spm.SentencePieceProcessor(model_file=cfg.bpe_tokenizer["sentencepiece_model"])
    assert [sp.id_to_piece(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    lines = (out / "spm_char40.txt").read_text(encoding="utf-8").splitlines()
    assert lines == [f"{sp.id_to_piece(i)} 1" for i in range(4, sp.get_piece_size())]
    d = Dictionary.load(str(out / "spm_char40.txt"))
    assert len(d) == sp.get_piece_size()  # 4 specials + pieces


def test_fairseq_dataset_reads_manifest(tmp_path, monkeypatch):
    """The upstream S2T dataset loader, run from an unrelated cwd, finds the features via audio_root."""
    from argparse import Namespace

    from fairseq.data.audio.data_cfg import S2TDataConfig
    from fairseq.data.audio.speech_to_text_dataset import SpeechToTextDatasetCreator
    from fairseq.data import Dictionary, encoders

    root, out = tmp_path / "in", tmp_path / "out"
    make_tsv_tree(root)
    prepare("tsv", root, out, splits=["train", "dev"], vocab_type="char", vocab_size=40, cmvn="utterance", progress=False)
    monkeypatch.chdir(tmp_path)
    cfg = S2TDataConfig(out / "config.yaml")
    tgt_dict = Dictionary.load(str(out / cfg.vocab_filename))
    bpe = encoders.build_bpe(Namespace(**cfg.bpe_tokenizer))
    ds = SpeechToTextDatasetCreator.from_tsv(str(out), cfg, "train", tgt_dict, None, bpe, is_train_split=True, epoch=1, seed=1)
    item = ds[0]
    assert item.source.shape[1] == 80 and item.target[-1] == tgt_dict.eos()
    assert tgt_dict.unk() not in item.target.tolist()


def test_resume_skips_extraction(tmp_path, monkeypatch):
    root, out = tmp_path / "in", tmp_path / "out"
    make_tsv_tree(root)
    calls = []
    real = features.kaldi_fbank
    monkeypatch.setattr(features, "kaldi_fbank", lambda *a, **k: calls.append(1) or real(*a, **k))
    kw = dict(splits=["train", "dev"], vocab_type="char", vocab_size=40, progress=False)
    assert prepare("tsv", root, out, **kw)["computed"] == 6 and len(calls) == 6
    zip_bytes = (out / "fbank80.zip").read_bytes()
    manifest = (out / "train.tsv").read_text()
    # second run: nothing recomputed, identical zip and manifests
    assert prepare("tsv", root, out, **kw)["computed"] == 0 and len(calls) == 6
    assert (out / "fbank80.zip").read_bytes() == zip_bytes and (out / "train.tsv").read_text() == manifest
    # interrupted run: only the missing utterance is computed and merged into the zip
    (root / "test.tsv").write_text(
        "id\taudio\tsrc_text\ttgt_text\nutt9\taudio/utt0.wav\tagain\twieder\n", encoding="utf-8"
    )
    kw["splits"] = ["train", "dev", "test"]
    assert prepare("tsv", root, out, **kw)["computed"] == 1 and len(calls) == 7
    rows = read_manifest(out / "test.tsv")
    assert rows[0]["id"] == "utt9" and rows[0]["speaker"] == ""
    assert len(zip_manifest(out / "fbank80.zip")) == 7


def test_reuse_expert_vocab(tmp_path):
    root, out, out2 = tmp_path / "in", tmp_path / "out", tmp_path / "student"
    make_tsv_tree(root)
    s = prepare("tsv", root, out, splits=["train"], vocab_type="unigram", vocab_size=30, progress=False)
    s2 = prepare(
        "tsv", root, out2, splits=["train"], vocab_from_dict=Path(s["vocab"]), bpe_from=Path(s["spm_model"]), progress=False
    )
    assert Path(s2["vocab"]).read_text() == Path(s["vocab"]).read_text()
    import yaml

    cfg = yaml.safe_load((out2 / "config.yaml").read_text())
    assert cfg["vocab_filename"] == Path(s["vocab"]).name
    assert cfg["bpe_tokenizer"]["sentencepiece_model"] == str((out2 / Path(s["spm_model"]).name).resolve())
    assert "transforms" not in cfg


def _cli(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_cli_errors(tmp_path):
    root = tmp_path / "in"
    make_tsv_tree(root)
    (root / "audio" / "utt1.flac").unlink()
    r = _cli("--layout", "tsv", "--data-root", root, "--out-dir", tmp_path / "o1", "--splits", "train", "--no-progress")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "train.tsv:3" in err and "audio file not found" in err and "utt1.flac" in err

    mroot = tmp_path / "mustc"
    make_mustc_tree(mroot)
    de = mroot / "en-de" / "data" / "train" / "txt" / "train.de"
    de.write_text("\n".join(de.read_text().splitlines()[:-1]) + "\n")
    r = _cli("--layout", "mustc", "--data-root", mroot, "--out-dir", tmp_path / "o2", "--splits", "train", "--no-progress")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert "line count mismatch" in err and "train.de has 2 lines" in err and "3 segments" in err


def test_errors_empty_text_and_unreadable_audio(tmp_path):
    root = tmp_path / "in"
    make_tsv_tree(root)
    tsv = root / "dev.tsv"
    lines = tsv.read_text().splitlines()
    lines[2] = "\t".join(lines[2].split("\t")[:3] + ["   ", "spk1"])
    tsv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataPrepError, match=r"dev\.tsv:3: empty translation"):
        prepare("tsv", root, tmp_path / "o", splits=["dev"], progress=False)
    (root / "audio" / "utt0.wav").write_bytes(b"this is not audio")
    for workers in (1, 2):
        with pytest.raises(DataPrepError, match=r"train\.tsv:2: cannot read audio .*utt0\.wav"):
            prepare("tsv", root, tmp_path / "o", splits=["train"], progress=False, workers=workers)


# --------------------------------------------------------------------------- one sample rate (issue 12)
def _espeak_copies(tmp_path):
    """One espeak-ng utterance as a 22.05 kHz file (espeak's own rate, with a little noise so that no frame
    is digital silence) and a 16 kHz copy made by FFT resampling (not the polyphase filter the
    pipeline uses, so the two are independent); returns (path_22k, path_16k)."""
    import shutil

    from scipy.signal import resample

    assert shutil.which("espeak-ng"), "espeak-ng is not installed: run `apt-get install -y espeak-ng`"
    raw = tmp_path / "espeak.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), "the quick brown fox jumps over the lazy dog"],
                   check=True)
    wav, sr = sf.read(raw, dtype="float64")
    assert sr == 22050
    wav = wav + np.random.default_rng(0).normal(0.0, 0.003, wav.shape)
    p22, p16 = tmp_path / "a22.wav", tmp_path / "a16.wav"
    sf.write(p22, wav, sr, subtype="PCM_16")
    sf.write(p16, resample(wav, int(round(len(wav) * 16000 / sr))), 16000, subtype="PCM_16")
    return p22, p16


def _close(a, b):
    assert a.shape == b.shape
    return float(np.abs(a - b).mean())


def test_22k_and_16k_copies_give_the_same_features_in_prep(tmp_path):
    from fairseq.data.audio.audio_utils import get_features_or_waveform

    p22, p16 = _espeak_copies(tmp_path)
    root = tmp_path / "in"
    root.mkdir()
    (root / "train.tsv").write_text(f"id\taudio\tsrc_text\ttgt_text\nu22\t{p22}\tthe fox\tder fuchs\n"
                                    f"u16\t{p16}\tthe fox\tder fuchs\n", encoding="utf-8")
    out = tmp_path / "out"
    assert cli.main(["--layout", "tsv", "--data-root", str(root), "--out-dir", str(out), "--splits", "train",
                      "--vocab-type", "char", "--vocab-size", "20", "--no-progress"]) == 0
    rows = {r["id"]: r for r in read_manifest(out / "train.tsv")}
    f22, f16 = (get_features_or_waveform(str(out / rows[u]["audio"])) for u in ("u22", "u16"))
    assert _close(f22, f16) < 0.1  # log-mel units; the log-mel values span ~25
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["sample_rate"] == 16000
    # at each file's own rate (what prep did before) the mel bins cover 0-11 kHz vs 0-8 kHz
    native = kaldi_fbank(read_audio(str(p22))[0] * 32768.0, 22050, 80)
    assert abs(len(native) - len(f16)) <= 1
    n = min(len(native), len(f16))
    assert float(np.abs(native[:n] - f16[:n]).mean()) > 1.0

    # --sample-rate 8000: every file resampled to 8 kHz, recorded in the config; resuming at 16 kHz is refused
    out8 = tmp_path / "out8"
    assert cli.main(["--layout", "tsv", "--data-root", str(root), "--out-dir", str(out8), "--splits", "train",
                      "--vocab-type", "char", "--vocab-size", "20", "--no-progress", "--sample-rate", "8000"]) == 0
    rows8 = {r["id"]: r for r in read_manifest(out8 / "train.tsv")}
    g22, g16 = (get_features_or_waveform(str(out8 / rows8[u]["audio"])) for u in ("u22", "u16"))
    assert _close(g22, g16) < 0.1 and float(np.abs(g16 - f16).mean()) > 1.0
    assert yaml.safe_load((out8 / "config.yaml").read_text())["sample_rate"] == 8000
    with pytest.raises(DataPrepError, match=r"--sample-rate 16000: the features in .*out8 were computed at 8000 Hz"):
        prepare("tsv", root, out8, splits=["train"], vocab_type="char", vocab_size=20, progress=False)


def test_raw_audio_path_resamples_to_16k(tmp_path):
    """A raw-audio manifest (imitkd.compat: fairseq's get_fbank -> imitkd.features.fbank_from_file)."""
    import imitkd  # noqa: F401  (the compat patch)
    from fairseq.data.audio.audio_utils import get_features_or_waveform

    from imitkd.features import fbank_from_file

    p22, p16 = _espeak_copies(tmp_path)
    f22, f16 = get_features_or_waveform(str(p22)), get_features_or_waveform(str(p16))
    assert _close(f22, f16) < 0.1
    native = fbank_from_file(str(p22), sample_rate=None)  # the file's own rate, as before
    n = min(len(native), len(f16))
    assert float(np.abs(native[:n] - f16[:n]).mean()) > 1.0


# ------------------------------------------------------- bad inputs: one line, nothing lost or half-made
def _one_error(capsys, *argv):
    """Run the CLI in this process; returns its single ``error: ...`` line (status 2, no traceback)."""
    status = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert status == 2 and len(errors) == 1 and "Traceback" not in err, (status, err)
    return errors[0]


def _tsv_argv(root, out, *extra):
    return ["--layout", "tsv", "--data-root", root, "--out-dir", out, "--splits", "train", "dev", "--no-progress", *extra]


@pytest.mark.parametrize("layout", ["covost", "tsv"])
def test_out_dir_equal_to_data_root_overwrites_no_input(tmp_path, capsys, layout):
    root = tmp_path / "in"
    MAKERS[layout](root)
    if layout == "covost":  # the fairseq-style names <split>.tsv, which prep_s2t_data.py writes too
        for split in ("train", "dev"):
            (root / f"covost_v2.en_de.{split}.tsv").rename(root / f"{split}.tsv")
    before = {p: p.read_bytes() for p in root.glob("*.tsv")}
    line = _one_error(capsys, "--layout", layout, "--data-root", root, "--out-dir", root, "--splits", "train", "dev",
                      "--vocab-size", "30", "--no-progress")
    assert line.startswith(f"error: --out-dir {root}: writing ") and "would overwrite the input file" in line
    assert {p: p.read_bytes() for p in root.glob("*.tsv")} == before
    assert not (root / "fbank80.zip").exists() and not (root / "config.yaml").exists()


def test_covost_split_named_validated_would_overwrite_validated_tsv(tmp_path):
    root = tmp_path / "in"
    make_covost_tree(root)
    (root / "validated.tsv").write_text("path\tsentence\tclient_id\n")
    with pytest.raises(DataPrepError, match=r"writing validated\.tsv there would overwrite the input file .*/validated\.tsv"):
        prepare("covost", root, root, splits=["validated"], progress=False)


@pytest.mark.parametrize("flag, value, message", [
    ("--vocab-size", "0", r"^error: --vocab-size must be an integer > 4 \(the special symbols .*\), got 0$"),
    ("--vocab-size", "-5", r"^error: --vocab-size must be an integer > 4 .*, got -5$"),
    ("--vocab-size", "3", r"^error: --vocab-size must be an integer > 4 .*, got 3$"),
    ("--sample-rate", "0", r"^error: --sample-rate must be an integer of at least 1000 \(Hz\), got 0$"),
    ("--workers", "-3", r"^error: --workers must be an integer >= 1, got -3$"),
    ("--vocab-splits", "test", r"^error: --vocab-splits test not among the prepared splits train dev$"),
])
def test_argument_errors_come_before_the_output_dir_is_made(tmp_path, capsys, flag, value, message):
    root, out = tmp_path / "in", tmp_path / "out"
    make_tsv_tree(root)
    line = _one_error(capsys, *_tsv_argv(root, out, flag, value))
    assert re.search(message, line), line
    assert not out.exists()


def test_vocab_size_smaller_than_the_characters_fails_before_the_features(tmp_path, capsys):
    root, out = tmp_path / "in", tmp_path / "out"
    make_tsv_tree(root)
    line = _one_error(capsys, *_tsv_argv(root, out, "--vocab-size", "6"))
    assert re.fullmatch(r"error: --vocab-size 6 is too small for the training text: sentencepiece needs at least "
                        r"\d+ \(its characters and the 4 special symbols\)", line), line
    assert not (out / "fbank80.zip").exists() and not (out / "fbank80").exists()


def test_bpe_from_not_a_sentencepiece_model(tmp_path, capsys):
    root, out = tmp_path / "in", tmp_path / "out"
    make_tsv_tree(root)
    bogus = tmp_path / "expert.model"
    bogus.write_text("not a model\n")
    line = _one_error(capsys, *_tsv_argv(root, out, "--bpe-from", bogus))
    assert line.startswith(f"error: --bpe-from {bogus}: not a sentencepiece model (") and "ModelProto" in line
    assert not out.exists()  # not copied, no features


def test_audio_with_nan_samples(tmp_path):
    root = tmp_path / "in"
    make_tsv_tree(root)
    wav = _signal(1, 0.3)
    wav[100] = np.nan
    sf.write(root / "audio" / "utt1.flac", wav, SR, subtype="FLOAT", format="WAV")  # a float wav (the .flac name is kept)
    with pytest.raises(DataPrepError, match=r"train\.tsv:3: audio .*utt1\.flac has NaN or infinite samples$"):
        prepare("tsv", root, tmp_path / "o", splits=["train"], vocab_size=30, progress=False)


def test_tsv_row_with_more_or_fewer_fields_than_the_header(tmp_path):
    root = tmp_path / "in"
    make_tsv_tree(root)
    tsv = root / "train.tsv"
    good = tsv.read_text().splitlines()
    for edit, n in ((lambda cells: cells[:3] + ["hallo", "welt"] + cells[4:], 6),  # a tab inside tgt_text
                    (lambda cells: cells[:3], 3)):  # cells missing
        lines = list(good)
        lines[2] = "\t".join(edit(lines[2].split("\t")))
        tsv.write_text("\n".join(lines) + "\n")
        with pytest.raises(DataPrepError, match=rf"train\.tsv:3: {n} tab-separated fields, the header has 5; "
                                                r"a tab inside a text, or a cell missing\?$"):
            prepare("tsv", root, tmp_path / "o", splits=["train"], vocab_size=30, progress=False)


def test_covost_validated_tsv_without_a_needed_column(tmp_path):
    root = tmp_path / "in"
    make_covost_tree(root)
    for split in ("train", "dev"):  # sentence/client_id must then come from validated.tsv
        tsv = root / f"covost_v2.en_de.{split}.tsv"
        tsv.write_text("\n".join("\t".join(line.split("\t")[::2]) for line in tsv.read_text().splitlines()) + "\n")
    (root / "validated.tsv").write_text("file\tsentence\tclient_id\ncommon_voice_en_0.wav\thello world\tc0\n")
    with pytest.raises(DataPrepError, match=r"validated\.tsv: missing column\(s\) path \(has: file, sentence, client_id\)$"):
        prepare("covost", root, tmp_path / "o", splits=["train"], vocab_size=30, progress=False)


def _mustc_txt(root: Path) -> Path:
    return root / "en-de" / "data" / "train" / "txt"


def test_mustc_text_not_utf8_and_yaml_malformed(tmp_path):
    root = tmp_path / "in"
    make_mustc_tree(root)
    en = _mustc_txt(root) / "train.en"
    en.write_bytes(en.read_bytes().replace(b"this is a test", b"this is a t\xe9st"))
    with pytest.raises(DataPrepError, match=r"txt/train\.en:2: not UTF-8; re-encode"):
        prepare("mustc", root, tmp_path / "o", splits=["train"], vocab_size=30, progress=False)
    y = _mustc_txt(root) / "train.yaml"
    y.write_text(y.read_text().replace("rw: 1,", "rw: 1", 1))
    with pytest.raises(DataPrepError, match=r"txt/train\.yaml:1: not valid YAML \(.*\)$"):
        prepare("mustc", root, tmp_path / "o", splits=["train"], vocab_size=30, progress=False)


@pytest.mark.parametrize("old, new, message", [
    ("duration: 0.35, offset: 0.5", "duration: -0.35, offset: 0.5",
     r"segment 2: offset 0\.5 / duration -0\.35: the offset must be >= 0 and the duration > 0 \(seconds\)$"),
    ("duration: 0.35, offset: 0.5", "duration: 0.35, offset: -0.5", r"segment 2: offset -0\.5 / duration 0\.35: "),
    ("duration: 0.35, offset: 0.5", "duration: 0.6, offset: 0.5",
     r"segment 2: offset 0\.5s \+ duration 0\.6s ends past the end of .*/talkA\.wav \(1\.000s\)$"),
])
def test_mustc_segment_outside_its_wav(tmp_path, old, new, message):
    root = tmp_path / "in"
    make_mustc_tree(root)
    y = _mustc_txt(root) / "train.yaml"
    y.write_text(y.read_text().replace(old, new))
    with pytest.raises(DataPrepError, match=r"txt/train\.yaml: " + message):
        prepare("mustc", root, tmp_path / "o", splits=["train"], vocab_size=30, progress=False)


def test_mustc_segment_a_few_ms_past_the_end_is_cut(tmp_path):
    """Rounding in the yaml: up to layouts.SEGMENT_END_TOLERANCE (10 ms) past the end is cut at the end."""
    root = tmp_path / "in"
    make_mustc_tree(root)
    y = _mustc_txt(root) / "train.yaml"
    y.write_text(y.read_text().replace("duration: 0.35, offset: 0.5", "duration: 0.505, offset: 0.5"))
    prepare("mustc", root, tmp_path / "o", splits=["train"], vocab_size=30, progress=False)
    rows = {r["id"]: r for r in read_manifest(tmp_path / "o" / "train.tsv")}
    assert int(rows["talkA_1"]["n_frames"]) == 48  # 0.5 s of audio: (8000 - 400) // 160 + 1
