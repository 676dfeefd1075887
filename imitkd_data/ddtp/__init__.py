"""DDTP-ST en→de: an offline English-speech → German-text corpus built from Debian's package registry.

One module per job: ``apt`` (fetch Debian's Translation-en/-de through the system's apt configuration),
``text`` (pair, deduplicate, split by package, select), ``speech`` (espeak-ng synthesis plan and
rendering), ``provenance`` (parameters, MANIFEST.json) and ``corpus`` (``build``: all of it, resumable).
The CLI is ``examples/speech_to_text/build_ddtp_st.py``.
"""
