"""A checkpoint whose token embeddings do not fit the dictionaries of the task loading it: one line naming the
dictionary file, its size, the checkpoint and the size it expects, instead of torch's ``size mismatch for
decoder.embed_tokens.weight`` traceback (a regenerated vocabulary, or another corpus' data config).

fairseq builds the model from the task's dictionaries and then loads the checkpoint's weights into it.
:func:`install` wraps the two loaders the console scripts use, ``checkpoint_utils.load_model_ensemble_and_task``
(imitkd-generate, imitkd-validate, experts) and ``checkpoint_utils.load_checkpoint`` (imitkd-train resuming,
``--finetune-from-model``): only once such a load has failed on an embedding's size is the checkpoint read
again and compared with the dictionaries (``expert_checks.check_dictionaries_fit``); a good load costs nothing.
"""
import functools
import os
import re
from typing import List, Optional, Tuple

from .checkpoints import unloadable_checkpoint
from .expert_checks import check_dictionaries_fit, embedding_rows

_SIZE_MISMATCH = re.compile(r"size mismatch for (en|de)coder\.(embed_tokens|output_projection)\.weight")


def task_dictionaries(task) -> Tuple[List[Tuple[Optional[str], str]], list, str]:
    """The (flag or None, file) of ``task``'s source and target dictionary, the dictionaries, and what to
    do when they do not fit a checkpoint: a speech_to_text task's come from its data config's
    ``vocab_filename`` (a text student's source from ``--student-src-dict``), a translation task's are
    ``dict.<lang>.txt`` of its data directory."""
    cfg = getattr(task, "cfg", None) or task.args  # a legacy task (speech_to_text) keeps its args
    dicts = [task.source_dictionary, task.target_dictionary]
    data = str(getattr(cfg, "data", "") or "").split(os.pathsep)[0]
    data_cfg = getattr(task, "data_cfg", None)
    if data_cfg is not None:
        config = os.path.join(data, cfg.config_yaml)
        target = (f"{config}: vocab_filename", os.path.join(data, data_cfg.vocab_filename))
        student_src = getattr(cfg, "student_src_dict", None)
        source = ("--student-src-dict", os.path.join(data, student_src)) if student_src else target
        fix = "point vocab_filename at the dictionary it was trained with (or use its training data config)"
        return [source, target], dicts, fix
    files = [(None, os.path.join(data, f"dict.{lang}.txt"))
             for lang in (getattr(cfg, "source_lang", None), getattr(cfg, "target_lang", None))]
    return files, dicts, "use the data directory it was trained with (its fairseq-preprocess --destdir)"


def check_checkpoint_fits(task, filename: str, arg_overrides=None) -> None:
    """Raise one ImitKDError line if the checkpoint ``filename``'s token embeddings do not fit ``task``'s
    dictionaries (their number of rows, or a joined dictionary its shared embeddings need)."""
    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(filename, arg_overrides)
    files, dicts, fix = task_dictionaries(task)
    check_dictionaries_fit(state["cfg"], embedding_rows(state), files, dicts, filename, "the checkpoint", fix)


def _embedding_size_mismatch(e: BaseException) -> bool:
    return any(_SIZE_MISMATCH.search(str(x)) for x in (e, e.__context__) if isinstance(x, RuntimeError))


def _checking_ensemble_loader(load):
    """Wrap ``load_model_ensemble_and_task``: a failed load of an embedding checks every checkpoint against
    the task (the given one, else the one the first checkpoint sets up, as fairseq does)."""
    @functools.wraps(load)
    def wrapper(filenames, arg_overrides=None, task=None, *args, **kwargs):
        try:
            return load(filenames, arg_overrides, task, *args, **kwargs)
        except RuntimeError as e:
            if not _embedding_size_mismatch(e):
                raise
            if task is None:
                from fairseq import checkpoint_utils, tasks

                cfg = checkpoint_utils.load_checkpoint_to_cpu(filenames[0], arg_overrides)["cfg"]
                task = tasks.setup_task(cfg.task, from_checkpoint=True)
            for filename in filenames:
                check_checkpoint_fits(task, filename, arg_overrides)
            raise

    wrapper._imitkd_checks_dictionaries = True
    return wrapper


def _checking_trainer_loader(load):
    """Wrap ``checkpoint_utils.load_checkpoint(cfg, trainer)`` (resume, --finetune-from-model) likewise."""
    @functools.wraps(load)
    def wrapper(cfg, trainer, *args, **kwargs):
        try:
            return load(cfg, trainer, *args, **kwargs)
        except Exception as e:
            path = unloadable_checkpoint(e)
            if path is None or not _embedding_size_mismatch(e) or not os.path.isfile(path):
                raise
            check_checkpoint_fits(trainer.task, path)
            raise

    wrapper._imitkd_checks_dictionaries = True
    return wrapper


def install() -> None:
    """Wrap fairseq's two checkpoint loaders (idempotent)."""
    import fairseq.checkpoint_utils as checkpoint_utils

    for name, wrap in (("load_model_ensemble_and_task", _checking_ensemble_loader),
                       ("load_checkpoint", _checking_trainer_loader)):
        if not getattr(getattr(checkpoint_utils, name), "_imitkd_checks_dictionaries", False):
            setattr(checkpoint_utils, name, wrap(getattr(checkpoint_utils, name)))
