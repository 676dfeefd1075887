"""The offline DDTP-ST en→de corpus (examples/speech_to_text/build_ddtp_st.py: imitkd_data.ddtp), size ci.

Needs espeak-ng (`apt-get install -y espeak-ng`) and Debian's package index (the system's apt
source) for `apt-get update`; both
missing pieces FAIL the tests with the fix in the message (CI installs espeak-ng; no silent skips).
"""
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ddtp_fixture import CI_ASR_EXTRA, ESPEAK_HINT, build_ci_corpus
from imitkd_data.ddtp import apt, provenance, speech
from imitkd_data.ddtp import text as ddtp_text
from imitkd_data.errors import BuildError
from imitkd_data.manifest import read_manifest

BUILDER = Path(__file__).resolve().parents[1] / "examples" / "speech_to_text" / "build_ddtp_st.py"

ALL_SPLITS = ["train", "dev", "test", "dev_unseen", "test_unseen"]
KALDI_FLOOR = float(np.log(np.finfo(np.float32).eps))  # -15.94: log-mel of digital silence


@pytest.fixture(scope="session")
def ddtp_ci(tmp_path_factory):
    try:
        t0 = time.time()
        out = build_ci_corpus(tmp_path_factory.mktemp("ddtp"))
        print(f"DDTP-ST ci corpus ready in {time.time() - t0:.1f} s: {out}")
        return out
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def manifests(ddtp_ci):
    return {s: read_manifest(ddtp_ci / f"{s}.tsv") for s in ALL_SPLITS}


@pytest.fixture(scope="session")
def translations(ddtp_ci):
    return {lang: ddtp_ci / "apt" / f"Translation-{lang}" for lang in ("en", "de")}


@pytest.fixture(scope="session")
def selection(translations):
    return ddtp_text.select_text(translations, "ci", 1)


def _pairs(ddtp_ci, split):
    return read_manifest(ddtp_ci / "text" / f"{split}.pairs.tsv")


def test_espeak_available():
    import shutil

    assert shutil.which("espeak-ng"), ESPEAK_HINT


def test_split_sizes_and_columns(ddtp_ci, manifests):
    expected = {"train": 200, "dev": 20, "test": 20, "dev_unseen": 20, "test_unseen": 20}
    assert {s: len(rows) for s, rows in manifests.items()} == expected
    for s in ALL_SPLITS:
        header = (ddtp_ci / f"{s}.tsv").read_text(encoding="utf-8").split("\n", 1)[0].split("\t")
        assert header == ["id", "audio", "n_frames", "tgt_text", "speaker", "src_text"]
    for s in ("train", "dev", "test"):
        en = (ddtp_ci / "text" / f"{s}.en").read_text(encoding="utf-8").splitlines()
        de = (ddtp_ci / "text" / f"{s}.de").read_text(encoding="utf-8").splitlines()
        assert len(en) == len(de) == expected[s]
        assert en == [r["src_text"] for r in manifests[s]] and de == [r["tgt_text"] for r in manifests[s]]
        assert all(3 <= len(x.split()) <= 12 for x in en)  # ci word range
        assert [r["id"] for r in _pairs(ddtp_ci, s)] == [r["id"] for r in manifests[s]]
    ids = [r["id"] for rows in manifests.values() for r in rows]
    assert len(ids) == len(set(ids))
    # the unseen-voice splits repeat the dev/test sentences
    for s, base in (("dev_unseen", "dev"), ("test_unseen", "test")):
        assert [(r["src_text"], r["tgt_text"]) for r in manifests[s]] == [(r["src_text"], r["tgt_text"]) for r in manifests[base]]


def test_split_by_package(ddtp_ci):
    packages = {s: {r["package"] for r in _pairs(ddtp_ci, s)} for s in ("train", "dev", "test")}
    assert not packages["train"] & packages["dev"]
    assert not packages["train"] & packages["test"]
    assert not packages["dev"] & packages["test"]
    for s, pkgs in packages.items():
        assert all(ddtp_text.split_of(p) == s for p in pkgs)
    # no masked template in two splits
    skeletons = {s: {ddtp_text.skeleton(r["src_text"], r["package"]) for r in _pairs(ddtp_ci, s)} for s in packages}
    assert not skeletons["train"] & (skeletons["dev"] | skeletons["test"])


def test_text_selection_deterministic(ddtp_ci, translations, selection):
    def digest(sel):
        return hashlib.sha256(json.dumps({s: [(p.package, p.en, p.de) for p in v] for s, v in sel.items()}).encode()).hexdigest()

    sel1, pools1 = selection
    sel2, pools2 = ddtp_text.select_text(translations, "ci", 1)
    assert digest(sel1) == digest(sel2) and pools1 == pools2
    for s in ("train", "dev", "test"):
        assert [(r["package"], r["src_text"], r["tgt_text"]) for r in _pairs(ddtp_ci, s)] == [(p.package, p.en, p.de) for p in sel1[s]]
    plan1, plan2 = speech.plan_utterances(sel1, 1), speech.plan_utterances(sel2, 1)
    assert plan1 == plan2
    sel3, _ = ddtp_text.select_text(translations, "ci", 2)
    assert digest(sel3) != digest(sel1)
    assert min(pools1.values()) > 100  # 4 % buckets leave room for the bigger sizes


def test_asr_extra_is_english_of_train_packages_with_no_pair_template(ddtp_ci, manifests, translations, selection):
    """train_asr_extra.tsv: English-only utterances (target = transcript) of train packages, spoken by the seen
    voices, whose masked skeleton is in no pair of any split; asking for them leaves the pairs as they were."""
    extra = read_manifest(ddtp_ci / "train_asr_extra.tsv")
    assert len(extra) == CI_ASR_EXTRA
    assert all(r["tgt_text"] == r["src_text"] and 3 <= len(r["src_text"].split()) <= 12 for r in extra)
    assert {r["speaker"] for r in extra} <= set(speech.SEEN_VOICES)
    assert not {r["id"] for r in extra} & {r["id"] for rows in manifests.values() for r in rows}
    assert (ddtp_ci / "text" / "train_asr_extra.en").read_text(encoding="utf-8").splitlines() == [r["src_text"] for r in extra]
    with_extra, pools = ddtp_text.select_text(translations, "ci", 1, {"train_asr_extra": CI_ASR_EXTRA})
    assert [p.en for p in with_extra["train_asr_extra"]] == [r["src_text"] for r in extra]
    assert all(ddtp_text.split_of(p.package) == "train" and p.de == "" for p in with_extra["train_asr_extra"])
    pair_skeletons = {ddtp_text.skeleton(p.en, p.package) for s in ("train", "dev", "test") for p in selection[0][s]}
    extra_skeletons = [ddtp_text.skeleton(p.en, p.package) for p in with_extra["train_asr_extra"]]
    assert len(set(extra_skeletons)) == len(extra_skeletons) and not set(extra_skeletons) & pair_skeletons
    assert pools["train_asr_extra"] > 1000  # the English side has many more sentences than the pairs
    assert {s: with_extra[s] for s in ("train", "dev", "test")} == selection[0]  # the pairs are unchanged
    assert "train_asr_extra" not in selection[0] and "train_asr_extra" not in selection[1]


def test_synthesis_deterministic(ddtp_ci, manifests, selection):
    """Re-rendering utterances from the plan reproduces the stored features bit for bit."""
    from fairseq.data.audio.audio_utils import get_features_or_waveform

    plan = speech.plan_utterances(selection[0], 1)
    for s, i in (("train", 0), ("train", 57), ("dev_unseen", 3)):
        spec, row = plan[s][i], manifests[s][i]
        assert spec.id == row["id"] and spec.voice == row["speaker"]
        stored = get_features_or_waveform(str(ddtp_ci / row["audio"]))
        np.testing.assert_array_equal(speech.render(spec), stored)


def test_voices(manifests):
    seen, unseen = set(speech.SEEN_VOICES), set(speech.UNSEEN_VOICES)
    assert not seen & unseen
    for s in ("train", "dev", "test"):
        assert {r["speaker"] for r in manifests[s]} <= seen
    for s in ("dev_unseen", "test_unseen"):
        assert {r["speaker"] for r in manifests[s]} <= unseen
    assert len({r["speaker"] for r in manifests["train"]}) >= 6  # 200 draws from 8 voices
    assert {r["speaker"] for s in ("dev_unseen", "test_unseen") for r in manifests[s]} == unseen


def test_train_voices_many_changes_only_the_train_splits(selection, translations):
    """``train_voices="many"``: train and train_asr_extra drawn from 90 voices (the seen accents × 15 variants,
    the seen voices among them, no held-out accent or variant); dev/test/unseen plans stay bit for bit; every
    voice exists in this espeak-ng (check_voices); an unknown pool is a one-line BuildError."""
    sel, _ = ddtp_text.select_text(translations, "ci", 1, {"train_asr_extra": CI_ASR_EXTRA})
    seen, many = speech.plan_utterances(sel, 1), speech.plan_utterances(sel, 1, "many")
    pool = speech.TRAIN_VOICES["many"]
    assert len(pool) == len(set(pool)) == 90 and set(speech.SEEN_VOICES) <= set(pool)
    held_out = {v.partition("+")[0] for v in speech.UNSEEN_VOICES} | {v.partition("+")[2] for v in speech.UNSEEN_VOICES}
    assert not {part for v in pool for part in v.split("+")} & held_out
    speech.check_voices(pool)
    for split in seen:
        if split in speech.TRAIN_SPLITS:
            voices = {u.voice for u in many[split]}
            assert voices <= set(pool) and len(voices) > len(speech.SEEN_VOICES)  # 200 draws from 90
            assert [(u.id, u.src_text) for u in many[split]] == [(u.id, u.src_text) for u in seen[split]]
        else:
            assert many[split] == seen[split], split
    params = lambda tv: provenance.build_params(size="ci", seed=1, counts=None, feature_dtype="float32", text_sha="x",
                                                spm_vocab_size=None, spm_type="unigram", train_voices=tv)
    assert "train_voices" not in params("seen") and params("many")["train_voices"] == "many"
    with pytest.raises(BuildError, match="unknown train_voices 'all'"):
        from imitkd_data.ddtp.corpus import build
        build(Path("/nonexistent/never-created"), size="ci", train_voices="all")


def test_unseen_engine_adds_flite_splits_and_changes_nothing_else(selection, translations, monkeypatch):
    """``unseen_engine="flite"``: dev_unseen_engine/test_unseen_engine hold the dev/test sentences spoken by flite's
    voices (none in any espeak-ng pool); every other split's plan stays bit for bit (earlier corpora keep their
    features and parameters). flite's speech is real and deterministic, and unlike espeak-ng's for the same
    sentence; a missing flite or an unknown engine is a one-line BuildError naming the fix."""
    sel, _ = selection
    plain, engine = speech.plan_utterances(sel, 1), speech.plan_utterances(sel, 1, unseen_engine="flite")
    assert set(engine) - set(plain) == set(speech.UNSEEN_ENGINE_SPLITS)
    assert all(engine[s] == plain[s] for s in plain)
    voices = set(speech.UNSEEN_ENGINE_VOICES["flite"])
    for split, source in speech.UNSEEN_ENGINE_SPLITS.items():
        assert [(u.src_text, u.tgt_text) for u in engine[split]] == [(u.src_text, u.tgt_text) for u in plain[source]]
        assert {u.voice for u in engine[split]} <= voices and {speech.engine_of(u.voice) for u in engine[split]} == {"flite"}
    assert len({u.voice for s in speech.UNSEEN_ENGINE_SPLITS for u in engine[s]}) >= 3  # 40 draws from 4
    speech.check_voices(tuple(voices))
    spec = engine["test_unseen_engine"][0]
    feats = speech.render(spec)
    np.testing.assert_array_equal(feats, speech.render(spec))
    assert feats.shape[1] == 80 and np.isfinite(feats).all() and feats.std() > 1.0
    assert 30 <= feats.shape[0] <= 2000  # 0.3-20 s for 3-12 words
    espeak = speech.render(plain["test"][0])
    assert spec.src_text == plain["test"][0].src_text and feats.shape != espeak.shape
    params = lambda e: provenance.build_params(size="ci", seed=1, counts=None, feature_dtype="float32", text_sha="x",
                                               spm_vocab_size=None, spm_type="unigram", unseen_engine=e)
    assert "unseen_engine" not in params(None) and params("flite")["unseen_engine"] == "flite"
    from imitkd_data.ddtp.corpus import build
    with pytest.raises(BuildError, match="unknown unseen_engine 'festival'"):
        build(Path("/nonexistent/never-created"), size="ci", unseen_engine="festival")
    monkeypatch.setattr(speech.shutil, "which", lambda exe: None if exe == "flite" else "/usr/bin/" + exe)
    with pytest.raises(BuildError, match=r"flite not found: run `apt-get install -y flite`"):
        speech.check_voices(("flite:awb",))


def test_features(ddtp_ci, manifests):
    from fairseq.data.audio.audio_utils import get_features_or_waveform

    for s, rows in manifests.items():
        for r in rows:
            assert r["audio"].startswith("fbank80.zip:")
            feats = get_features_or_waveform(str(ddtp_ci / r["audio"]))
            n = int(r["n_frames"])
            assert n > 0 and feats.shape == (n, 80) and feats.dtype == np.float32
            assert np.isfinite(feats).all()
            # noise is present: no frame sits at the log(eps) floor of digital silence
            assert not (feats <= KALDI_FLOOR + 0.5).all(axis=1).any(), r["id"]
            assert feats.min() > KALDI_FLOOR + 1.0
            assert 30 <= n <= 2000  # 0.3 s .. 20 s for 3-12 words


def test_manifest_json(ddtp_ci, translations):
    m = json.loads((ddtp_ci / "MANIFEST.json").read_text())
    for lang, path in translations.items():
        entry = m["inputs"][f"Translation-{lang}"]
        assert entry["sha256"] == provenance.sha256_file(path) and entry["bytes"] == path.stat().st_size
        assert len(entry["sha256"]) == 64
    assert m["seed"] == 1 and m["size"] == "ci"
    assert {s: v["pairs"] for s, v in m["splits"].items()} == {"train": 200, "dev": 20, "test": 20, "dev_unseen": 20,
                                                               "test_unseen": 20, "train_asr_extra": CI_ASR_EXTRA}
    assert m["voices"] == {"seen": list(speech.SEEN_VOICES), "unseen": list(speech.UNSEEN_VOICES)}
    assert m["espeak_ng_version"] == speech.espeak_version()
    assert m["created_utc"] and m["build_seconds"] >= 0
    src = m["apt_source"]  # the system's Debian source that fetch_translations used
    assert src == apt.recorded_apt_source(ddtp_ci / "apt"), "MANIFEST.json of an older builder (stale cache?)"
    assert src["uri"] and src["suite"] and "main" == src["component"]
    for lang in ("en", "de"):
        assert m["inputs"][f"Translation-{lang}"]["source"] == src["translations"][lang]
    for name, digest in m["outputs"].items():
        assert provenance.sha256_file(ddtp_ci / name) == digest, name


def test_joint_spm_and_config(ddtp_ci):
    import sentencepiece as spm
    from fairseq.data import Dictionary
    from fairseq.data.audio.data_cfg import S2TDataConfig

    cfg = S2TDataConfig(ddtp_ci / "config.yaml")
    assert cfg.vocab_filename == "dict.txt" and cfg.input_feat_per_channel == 80
    model = Path(cfg.bpe_tokenizer["sentencepiece_model"])
    assert model.is_absolute() and model == (ddtp_ci / "spm_joint.model").resolve()
    assert Path(cfg.audio_root) == ddtp_ci.resolve()
    sp = spm.SentencePieceProcessor(model_file=str(model))
    lines = (ddtp_ci / "dict.txt").read_text(encoding="utf-8").splitlines()
    assert lines == [f"{sp.id_to_piece(i)} 1" for i in range(4, sp.get_piece_size())]
    d = Dictionary.load(str(ddtp_ci / "dict.txt"))
    for s in ("train", "dev", "test"):
        for lang in ("en", "de"):
            raw = (ddtp_ci / "text" / f"{s}.{lang}").read_text(encoding="utf-8").splitlines()
            enc = (ddtp_ci / "text" / f"{s}.spm.{lang}").read_text(encoding="utf-8").splitlines()
            assert len(raw) == len(enc)
            assert [sp.decode(e.split()) for e in enc[:5]] == raw[:5]
    train_de = (ddtp_ci / "text" / "train.spm.de").read_text(encoding="utf-8").split()
    assert sum(d.index(t) == d.unk() for t in train_de) == 0  # joint dict covers its training text


def test_rebuild_is_a_noop(ddtp_ci):
    """Building a finished corpus again only verifies it: no output is rewritten (checked on the files,
    not on a wall-clock limit, which a loaded CI machine can exceed)."""
    outputs = sorted(ddtp_ci.glob("*.tsv")) + [ddtp_ci / n for n in ("fbank80.zip", "MANIFEST.json", "dict.txt")]
    mtimes = {p: p.stat().st_mtime_ns for p in outputs}
    assert build_ci_corpus(ddtp_ci.parent) == ddtp_ci  # (ignores the argument when IMITKD_DATA_CACHE is set)
    assert {p: p.stat().st_mtime_ns for p in outputs} == mtimes


def test_output_directory_that_cannot_be_created_is_one_line_error(tmp_path):
    """build_ddtp_st.py --out-dir under a file (or where one may not write): one line naming the directory,
    before any download or synthesis."""
    (tmp_path / "a-file").write_text("")
    out = subprocess.run([sys.executable, str(BUILDER), "--out-dir", str(tmp_path / "a-file" / "corpus"), "--size", "ci"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stdout, out.stdout
    assert out.stdout.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'a-file' / 'corpus'}: cannot create the output directory (Not a directory)")


def _builder_error(capsys, *argv):
    """build_ddtp_st.py's main in this process; returns its single ``error: ...`` line (status 2, no traceback)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_ddtp_st", BUILDER)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    status = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert status == 2 and len(errors) == 1 and "Traceback" not in err, (status, err)
    return errors[0]


def _tiny_translations(d: Path) -> Path:
    """Translation-en/-de with a few pairs in each of train/dev/test (package names chosen by ``split_of``)."""
    d.mkdir(parents=True)
    entries = {"en": [], "de": []}
    need = {"train": 3, "dev": 2, "test": 2}
    i = 0
    while any(need.values()):
        pkg, i = f"tool{i}", i + 1
        if need[ddtp_text.split_of(pkg)] == 0:
            continue
        need[ddtp_text.split_of(pkg)] -= 1
        word = "".join(chr(97 + (i // 26 ** k) % 26) for k in range(3))
        md5 = hashlib.md5(pkg.encode()).hexdigest()
        for lang, desc in (("en", f"reads the {word} files of a small archive"),
                           ("de", f"liest die {word} Dateien eines kleinen Archivs")):
            entries[lang].append(f"Package: {pkg}\nDescription-md5: {md5}\nDescription-{lang}: {desc}\n")
    for lang, items in entries.items():
        (d / f"Translation-{lang}").write_text("\n".join(items), encoding="utf-8")
    return d


@pytest.mark.parametrize("content", ["", "\x00\x01 not a Translation file\nPackage x\n"])
def test_translations_without_pairs_is_one_line_error_before_any_output(tmp_path, capsys, content):
    tr = tmp_path / "tr"
    tr.mkdir()
    for lang in ("en", "de"):
        (tr / f"Translation-{lang}").write_text(content)
    out = tmp_path / "corpus"
    line = _builder_error(capsys, "--out-dir", out, "--translations-dir", tr, "--no-progress")
    assert line == (f"error: no pairs for split(s) train, dev, test from {tr}/Translation-en and {tr}/Translation-de: "
                    "Debian Translation-en/-de files with entries of the same Description-md5 are needed")
    assert not out.exists()


def test_translations_dir_missing_a_file_leaves_no_out_dir(tmp_path, capsys):
    tr = _tiny_translations(tmp_path / "tr")
    (tr / "Translation-de").unlink()
    out = tmp_path / "corpus"
    line = _builder_error(capsys, "--out-dir", out, "--translations-dir", tr, "--no-progress")
    assert line == f"error: --translations-dir: {tr}/Translation-de not found"
    assert not out.exists()


@pytest.mark.parametrize("size", ["0", "-5", "4"])
def test_spm_vocab_size_out_of_range_before_any_output(tmp_path, capsys, size):
    out = tmp_path / "corpus"
    line = _builder_error(capsys, "--out-dir", out, "--translations-dir", _tiny_translations(tmp_path / "tr"),
                          "--spm-vocab-size", size, "--no-progress")
    assert line == (f"error: --spm-vocab-size must be an integer > 4 (the special symbols <s> <pad> </s> <unk> come "
                    f"first), got {size}")
    assert not out.exists()


def test_spm_vocab_size_smaller_than_the_characters_fails_before_the_speech(tmp_path, capsys):
    if shutil.which("espeak-ng") is None:
        pytest.fail(ESPEAK_HINT, pytrace=False)
    out = tmp_path / "corpus"
    line = _builder_error(capsys, "--out-dir", out, "--translations-dir", _tiny_translations(tmp_path / "tr"),
                          "--spm-vocab-size", "10", "--no-progress")
    assert re.fullmatch(r"error: --spm-vocab-size 10 is too small for the training text: sentencepiece needs at "
                        r"least \d+ \(its characters and the 4 special symbols\)", line), line
    assert not (out / "fbank80.zip").exists() and not (out / "fbank80").exists() and not (out / "train.tsv").exists()


def test_build_without_spm_removes_an_earlier_builds_vocabulary(tmp_path):
    """The same output directory built again without --spm-vocab-size: the earlier build's sentencepiece
    model, dict.txt, encoded text and config.yaml (made from its text) are removed, not left beside manifests
    they may not belong to; MANIFEST.json lists no vocabulary."""
    from imitkd_data.ddtp.corpus import build

    if shutil.which("espeak-ng") is None:
        pytest.fail(ESPEAK_HINT, pytrace=False)
    out, tr = tmp_path / "corpus", _tiny_translations(tmp_path / "tr")
    build(out, size="ci", translations_dir=tr, spm_vocab_size=40, progress=False)
    spm_files = ["spm_joint.model", "spm_joint.vocab", "dict.txt", "config.yaml", "text/train.spm.en", "text/test.spm.de"]
    assert all((out / n).is_file() for n in spm_files)
    build(out, size="ci", translations_dir=tr, progress=False)
    assert [n for n in spm_files if (out / n).exists()] == []
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["spm"] is None and "dict.txt" not in manifest["outputs"] and "train.tsv" in manifest["outputs"]
    assert len(read_manifest(out / "train.tsv")) > 0


def test_skeleton_and_split_rules():
    assert ddtp_text.skeleton("This package contains the libfoo2 shared library.", "libfoo2") == ddtp_text.skeleton(
        "This package contains the libbar7 shared library.", "libbar7"
    )
    assert ddtp_text.skeleton("Foo is a tool.", "foo") != ddtp_text.skeleton("Foo is a game.", "foo")
    assert {ddtp_text.split_of(f"pkg{i}") for i in range(500)} == {"train", "dev", "test"}
    assert ddtp_text.split_of("bash") == ddtp_text.split_of("bash")


# --------------------------------------------------------------------- the apt source (system's own configuration)
def _apt_tree(root: Path, sources_list: str, parts: dict) -> Path:
    (root / "etc" / "apt" / "sources.list.d").mkdir(parents=True)
    (root / "etc" / "apt" / "sources.list").write_text(sources_list)
    for name, text in parts.items():
        (root / "etc" / "apt" / "sources.list.d" / name).write_text(text)
    return root


def test_apt_sources_parses_one_line_and_deb822(tmp_path):
    root = _apt_tree(tmp_path / "a", (
        "# one-line format\n"
        "deb-src file:/srv/mirror/debian bookworm main\n"
        "deb [ arch=amd64 signed-by=/usr/share/keyrings/ubuntu-archive-keyring.gpg ] file:/srv/mirror/ubuntu noble main universe\n"
        "deb file:/srv/mirror/debian-security bookworm-security main  # security updates\n"
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] file:/srv/mirror/debian trixie contrib\n"
    ), {
        "a-old.sources": "Types: deb\nURIs: file:/srv/old/debian\nSuites: buster\nComponents: main\nEnabled: no\n",
        "debian.sources": (
            "Types: deb deb-src\n# a comment inside the stanza\nURIs: file:/srv/mirror/debian/\n"
            "Suites: bookworm-updates bookworm\nComponents: main contrib\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
            "Types: deb\nURIs: file:/srv/mirror/debian-security\nSuites: bookworm-security\nComponents: main\n"),
        "z.list.disabled": "deb file:/srv/other/debian sid main\n",  # apt reads *.list and *.sources only
    })
    got = [(s.uri, s.suite, s.signed_by, Path(s.origin).name) for s in apt.apt_sources(root)]
    assert got == [
        ("file:/srv/mirror/ubuntu", "noble", "/usr/share/keyrings/ubuntu-archive-keyring.gpg", "sources.list:3"),
        ("file:/srv/mirror/debian-security", "bookworm-security", None, "sources.list:4"),
        ("file:/srv/mirror/debian", "bookworm-updates", "/usr/share/keyrings/debian-archive-keyring.gpg", "debian.sources:1"),
        ("file:/srv/mirror/debian", "bookworm", "/usr/share/keyrings/debian-archive-keyring.gpg", "debian.sources:1"),
        ("file:/srv/mirror/debian-security", "bookworm-security", None, "debian.sources:8"),
    ]
    src = apt.debian_source(root)  # the first Debian release suite with 'main': not ubuntu, -security, -updates
    assert (src.uri, src.suite, src.component) == ("file:/srv/mirror/debian", "bookworm", "main")
    assert src.translation_url("de") == "file:/srv/mirror/debian/dists/bookworm/main/i18n/Translation-de"
    assert src.record()["translations"]["en"].endswith("/dists/bookworm/main/i18n/Translation-en")

    # a one-line Debian entry before the deb822 files wins; an inline deb822 key is kept as is
    key = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBGPL\n-----END PGP PUBLIC KEY BLOCK-----"
    root = _apt_tree(tmp_path / "b", "deb file:/srv/m2/debian sid main non-free\n", {
        "debian.sources": "Types: deb\nURIs: file:/srv/mirror/debian\nSuites: trixie\nComponents: main\nSigned-By:\n"
                          " -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mQINBGPL\n -----END PGP PUBLIC KEY BLOCK-----\n"})
    assert (apt.debian_source(root).uri, apt.debian_source(root).suite) == ("file:/srv/m2/debian", "sid")
    assert apt.apt_sources(root)[1].signed_by == key
    (root / "etc" / "apt" / "sources.list").unlink()
    assert (apt.debian_source(root).suite, apt.debian_source(root).signed_by) == ("trixie", key)

    with pytest.raises(BuildError, match=r"no Debian 'main' deb source in .*sources\.list .*file:/srv/mirror/ubuntu "
                                           r"noble \(.*sources\.list:1\).*pass --translations-dir"):
        apt.debian_source(_apt_tree(tmp_path / "c", "deb file:/srv/mirror/ubuntu noble main\n", {}))


def test_fetch_translations_uses_the_derived_source(tmp_path):
    """apt-get gets a private sources.list holding the derived entry (a file: mirror that does not exist:
    apt-get fails at once, no network), and the error names it."""
    import shutil

    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(b"")
    root = _apt_tree(tmp_path / "root", "", {"debian.sources": (
        f"Types: deb\nURIs: file:{tmp_path}/mirror/debian\nSuites: trixie trixie-updates\nComponents: main\n"
        f"Signed-By: {keyring}\n")})
    assert shutil.which("apt-get"), "apt-get is needed (Debian)"
    cache = tmp_path / "cache"
    with pytest.raises(BuildError, match=rf"apt-get update of file:{tmp_path}/mirror/debian trixie "
                                           r"\(.*/debian\.sources:1\) failed \(exit \d+; network\?\)"):
        apt.fetch_translations(cache, apt_root=root)
    assert (cache / "sources.list").read_text() == f"deb [signed-by={keyring}] file:{tmp_path}/mirror/debian trixie main\n"
    assert apt.recorded_apt_source(cache) is None  # nothing fetched, nothing recorded
