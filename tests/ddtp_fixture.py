"""The DDTP-ST en→de ``ci`` corpus for tests and demos: ``build_ci_corpus(tmp_dir) -> Path``.

Builds ``examples/speech_to_text/build_ddtp_st.py --size ci --seed 1 --spm-vocab-size 1000 --asr-extra 30`` (its library
``imitkd_data.ddtp.corpus.build``; about
15 s: apt-get update of the Debian translation index + espeak-ng + fbank). If the environment variable
``IMITKD_DATA_CACHE`` is set, the corpus lives in ``$IMITKD_DATA_CACHE/ddtp_st_ci_seed<seed>`` and is
reused across sessions (re-running the build only verifies it); otherwise it is built under ``tmp_dir``.
Needs ``espeak-ng`` (``apt-get install -y espeak-ng``) and network access to Debian's package index
(the system's apt source) for the first build. Usage in a test module::

    from ddtp_fixture import build_ci_corpus

    @pytest.fixture(scope="session")
    def ddtp_ci(tmp_path_factory):
        return build_ci_corpus(tmp_path_factory.mktemp("ddtp"))
"""
import fcntl
import os
import shutil
from pathlib import Path

from imitkd_data.ddtp.corpus import build
from imitkd_data.errors import BuildError, ParamsMismatch

CI_SEED = 1
CI_SPM_VOCAB = 1000
CI_ASR_EXTRA = 30  #: English-only utterances for the ASR stage (train_asr_extra.tsv), as run_demo's ci preset reads
ESPEAK_HINT = "espeak-ng is not installed: run `apt-get install -y espeak-ng` (the DDTP-ST test corpus is synthesised with it)"


def corpus_dir(tmp_dir, seed: int = CI_SEED) -> Path:
    cache = os.environ.get("IMITKD_DATA_CACHE")
    return (Path(cache) if cache else Path(tmp_dir)) / f"ddtp_st_ci_seed{seed}"


def build_ci_corpus(tmp_dir, seed: int = CI_SEED, spm_vocab_size: int = CI_SPM_VOCAB) -> Path:
    """Build (or reuse) the ci corpus; raises RuntimeError naming the fix if espeak-ng or apt fails."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError(ESPEAK_HINT)
    out = corpus_dir(tmp_dir, seed)
    out.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:  # parallel sessions sharing the cache
        fcntl.flock(lock, fcntl.LOCK_EX)
        kw = dict(size="ci", seed=seed, workers=2, spm_vocab_size=spm_vocab_size, progress=False,
                  counts={"train_asr_extra": CI_ASR_EXTRA})
        try:
            try:
                return build(out, **kw)
            except ParamsMismatch:  # cache from an older builder or Translation release: rebuild
                return build(out, overwrite=True, **kw)
        except BuildError as e:
            raise RuntimeError(f"building the DDTP-ST ci corpus failed: {e}") from None
