"""imitkd-ast: a fairseq plugin for Imitation-based Knowledge Distillation in speech translation.

Importing the package applies the runtime fixes for fairseq under torch 2.13 (``imitkd.compat``) and
registers the task ``speech_to_text_kd`` and the criteria (``imit_kd_CE``, ``imit_kd``, ``word_kd``,
``kd_expert_copy``, ``imit_kd_ast``, ``imit_kd_ast_pure_kd``, ``imit_pipeline_nmt_training``).
Use it as ``fairseq-train --user-dir <repo>/imitkd`` or through the ``imitkd-*`` console scripts.
"""
from . import compat

with compat.keep_root_logging():  # fairseq's import must not configure the program's logging
    compat.apply()

    from .errors import ImitKDError, install_excepthook  # noqa: E402

    install_excepthook()

    from . import criterions, tasks  # noqa: E402,F401

__all__ = ["ImitKDError"]
