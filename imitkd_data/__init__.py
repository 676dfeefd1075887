"""imitkd_data: the data side of imitkd-ast, without fairseq or torch.

Importing this package (or any module in it) neither imports fairseq/torch nor patches anything, so the
data-prep scripts start fast and the ``imitkd`` plugin can use the same code:

* ``manifest``: read/write fairseq speech-to-text manifests (TSV, tab, no quoting), as fairseq reads them;
* ``atomic``: write a file all at once or not at all (temporary file beside it + ``os.replace``);
* ``features``: 80-dim Kaldi fbank (kaldi-native-fbank), one sample rate;
* ``feature_store``, ``layouts``, ``vocab``, ``data_config``, ``prep``: ``examples/speech_to_text/prep_s2t_data.py``;
* ``ddtp``: the offline DDTP-ST corpus (``examples/speech_to_text/build_ddtp_st.py``).

The package ``__init__`` imports nothing: ``import imitkd_data.manifest`` costs the standard library only.
"""
