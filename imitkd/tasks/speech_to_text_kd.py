"""Task ``speech_to_text_kd``: fairseq's ``speech_to_text`` plus what distillation needs.

* the expert's input: the manifest's transcript column (``--expert-src-column``, default
  ``src_text``), encoded with the expert's own tokenizer/BPE/dictionary (``imitkd.text_encoding``)
  in the data loader and put in the batch as ``sample["expert_input"]`` (student inputs stay exactly
  fairseq's); criteria ask for it, and for the CTC transcript, with ``attach_text_input``;
* the training loop's update counter: ``train_step`` passes fairseq's ``update_num`` to the
  criterion (``sample["update_num"]``), which drives the β schedule, so β is exact after a resume
  and the same on every data-parallel worker;
* optionally a *text* student (``--student-src-column asr_text``, the NMT part of an ASR→NMT
  cascade): it reads that column, encoded with the data config's tokenizer/BPE and
  ``--student-src-dict`` (default: the target dictionary, a joined vocabulary as in the original recipe);
* validation: the criterion's gold NLL, plus detokenised sacreBLEU with ``--eval-bleu``.
"""
import logging
from pathlib import Path
from typing import Optional

from fairseq.data import ConcatDataset
from fairseq.tasks import register_task
from fairseq.tasks.speech_to_text import SpeechToTextTask

from .. import checkpoints
from ..data import EXPERT_INPUT, STUDENT_INPUT, TextInputDataset, check_manifest, read_text_columns
from ..config_checks import check_data_config
from ..errors import ImitKDError
from ..feature_checks import check_audio_cells, check_on_read
from ..text_encoding import SourceEncoder, load_dictionary
from . import bleu

logger = logging.getLogger(__name__)


class _KeepExistingFlags:
    """A parser view that skips flags already defined: a text student's arch (transformer) defines
    --max-source-positions too, and one flag then serves both."""

    def __init__(self, parser):
        self._parser = parser

    def add_argument(self, *names, **kwargs):
        if any(n in self._parser._option_string_actions for n in names):
            return None
        return self._parser.add_argument(*names, **kwargs)

    def __getattr__(self, name):
        return getattr(self._parser, name)


def load_pretrained_encoder(model, path: str) -> None:
    """Initialise ``model.encoder`` from the encoder of the checkpoint ``path`` (e.g. an ASR model),
    as fairseq's ``--load-pretrained-encoder-from`` does, except for the CTC head (``ctc_proj``): one
    the student does not have is left out, and a student head the checkpoint lacks keeps its fresh
    initialisation. Every other weight must match."""
    from fairseq import checkpoint_utils

    problem = checkpoints.path_problem(path)
    if problem:
        raise ImitKDError(f"--load-pretrained-encoder-from: {problem}: {path}")
    state = checkpoint_utils.load_checkpoint_to_cpu(path)["model"]
    weights = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if getattr(model.encoder, "ctc_proj", None) is None:
        weights = {k: v for k, v in weights.items() if not k.startswith("ctc_proj.")}
    own = model.encoder.state_dict()
    if not any(k.startswith("ctc_proj.") for k in weights):
        weights.update({k: v for k, v in own.items() if k.startswith("ctc_proj.")})
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or unexpected or shapes:
        what = "; ".join(f"{name}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                         for name, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", shapes))
                         if keys)
        raise ImitKDError(f"--load-pretrained-encoder-from {path}: its encoder does not fit the student's ({what}); "
                          "use the same encoder flags (layers, dims, conv) as the pretrained model")
    model.encoder.load_state_dict(weights)
    logger.info(f"loaded pretrained encoder from {path} ({len(weights)} tensors)")


@register_task("speech_to_text_kd")
class SpeechToTextKDTask(SpeechToTextTask):
    @classmethod
    def add_args(cls, parser):
        super().add_args(_KeepExistingFlags(parser))
        parser.add_argument("--expert-src-column", default="src_text", metavar="COL",
                            help="manifest column the text expert reads (the gold transcript, or an "
                                 "ASR transcript for ImitKDT/KDT); default: src_text")
        parser.add_argument("--student-src-column", default=None, metavar="COL",
                            help="train a *text* student (e.g. --arch transformer) reading this manifest "
                                 "column (ASR transcripts) instead of the audio")
        parser.add_argument("--student-src-dict", default=None, metavar="FILE",
                            help="text student: its source dictionary (default: the target dictionary, i.e. a "
                                 "joined vocabulary); the text is encoded with the data config's tokenizer/BPE")
        bleu.add_args(parser)

    @classmethod
    def setup_task(cls, args, **kwargs):
        subsets = getattr(args, "train_subset", "train") or "train"
        bad = [s for s in subsets.split(",") if not s.startswith("train")]
        if bad:  # fairseq's speech_to_text raises a bare ValueError for this
            raise ImitKDError(f"--train-subset {subsets}: the speech_to_text tasks need training manifests named "
                              f"train*: rename {bad[0]}.tsv (e.g. to train_{bad[0]}.tsv)")
        check_data_config(args.data, args.config_yaml)  # fairseq's own reading of it fails with tracebacks
        return super().setup_task(args, **kwargs)

    def __init__(self, args, tgt_dict):
        super().__init__(args, tgt_dict)
        self.text_inputs = {}  # batch key -> (manifest column, SourceEncoder, who needs it): attach_text_input
        self.bleu_scorer = None
        self.student_source = None
        if getattr(args, "student_src_column", None):
            src_dict = tgt_dict
            if args.student_src_dict:
                src_dict = load_dictionary(Path(args.data) / args.student_src_dict, "--student-src-dict")
            self.student_source = SourceEncoder(src_dict, self.build_tokenizer(args), self.build_bpe(args))

    @property
    def source_dictionary(self):
        """The text student's source dictionary; None for an audio student."""
        return self.student_source.dictionary if self.student_source is not None else None

    def build_model(self, args, from_checkpoint=False):
        from fairseq.models import ARCH_MODEL_REGISTRY

        if not from_checkpoint:  # training: fairseq reads the manifests only after building model and expert
            self.check_manifests()
        model_cls = ARCH_MODEL_REGISTRY.get(getattr(args, "arch", None))
        if self.student_source is None and model_cls is not None and "speech" not in model_cls.__module__:
            raise ImitKDError(f"--arch {args.arch} reads text: set --student-src-column (the manifest column it "
                              "reads, e.g. ASR transcripts), or use a speech arch such as s2t_transformer_s")
        pretrained = getattr(args, "load_pretrained_encoder_from", None)
        if pretrained:  # loaded below (fairseq's strict load fails on a CTC head only one side has)
            args.load_pretrained_encoder_from = None
        try:
            model = super().build_model(args, from_checkpoint)
        finally:
            if pretrained:
                args.load_pretrained_encoder_from = pretrained
        if pretrained and not from_checkpoint:  # a checkpoint brings its own trained encoder
            load_pretrained_encoder(model, pretrained)
        if getattr(args, "eval_bleu", False):
            self.bleu_scorer = bleu.BleuScorer(self, model, args)
        return model

    def attach_text_input(self, key: str, needed_by: str, column: Optional[str] = None,
                          encoder: Optional[SourceEncoder] = None):
        """Where criterion and task meet: every split (loaded or not yet) gets the manifest ``column``
        encoded by ``encoder`` as ``sample[key] = {"src_tokens": B×S long, "src_lengths": B long}``
        (``imitkd.data.TextInputDataset``), e.g. the expert's source or the CTC transcript.

        Args:
            key: the batch key (``imitkd.data.EXPERT_INPUT``, ``CTC_INPUT``).
            needed_by: who reads it (a criterion, a flag), named in the errors about the column.
            column: manifest column; default for ``EXPERT_INPUT``: ``--expert-src-column``.
            encoder: text → ids; default: the data config's tokenizer/BPE and the target dictionary
                (a joint vocabulary then encodes transcripts too).
        """
        if column is None:
            if key != EXPERT_INPUT:
                raise ValueError(f"attach_text_input({key!r}): name the manifest column")
            column = self.args.expert_src_column
        if encoder is None:
            encoder = SourceEncoder(self.tgt_dict, self.build_tokenizer(self.args), self.build_bpe(self.args))
        self.text_inputs[key] = (column, encoder, needed_by)
        for split in list(self.datasets):
            self.datasets[split] = self._with_text_inputs(split, self.datasets[split])

    def _with_text_inputs(self, split, dataset):
        """``dataset`` (unwrapped if it already carries text inputs) with every attached text input and
        a text student's source; each manifest of ``split`` is read once."""
        if isinstance(dataset, TextInputDataset):
            dataset = dataset.dataset
        wanted = dict(self.text_inputs)
        if self.student_source is not None:
            wanted[STUDENT_INPUT] = (self.args.student_src_column, self.student_source, "--student-src-column")
        if not wanted:
            return dataset
        texts = read_text_columns(self.args.data, split, [(column, needed_by) for column, _, needed_by in wanted.values()])
        return TextInputDataset(dataset, {key: (texts[column], encoder) for key, (column, encoder, _) in wanted.items()})

    def check_manifests(self):
        """Before the model and the expert are built (fairseq reads the manifests after): one line naming
        file and line for a missing, empty or non-UTF-8 --train-subset manifest, or a --valid-subset one
        that exists but is empty or not UTF-8 (a missing one fails when it is loaded), or a row naming a
        feature file that does not exist or bytes outside its zip."""
        args = self.args
        subsets = [("--train-subset", getattr(args, "train_subset", None), True)]
        if not getattr(args, "disable_validation", False):
            subsets.append(("--valid-subset", getattr(args, "valid_subset", None), False))
        for flag, splits, required in subsets:
            for split in (splits or "").split(","):
                path = Path(args.data) / f"{split}.tsv"
                if split and (required or path.is_file()):
                    check_manifest(path, f"{flag} {splits}")
                    check_audio_cells(path, self.data_cfg.audio_root, f"{flag} {splits}")

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        for name in split.split(","):
            check_manifest(Path(self.args.data) / f"{name}.tsv")
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        self.check_features(split, self.datasets[split])
        self.datasets[split] = self._with_text_inputs(split, self.datasets[split])

    def check_features(self, split, dataset):
        """Every row of each manifest of ``split`` names features that exist (``check_audio_cells``), each
        utterance is checked when it is read (``check_on_read``: readable, ``input_feat_per_channel`` ×
        ``input_channels`` per frame, finite, about ``n_frames`` frames), and the first one is read now, so that
        a data config that does not describe the features stops before training starts. fairseq would fail
        mid-training, in the model's first convolution or in numpy, without naming a row."""
        parts = dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]
        for name, part in zip(split.split(","), parts):
            path = Path(self.args.data) / f"{name}.tsv"
            line_numbers = check_audio_cells(path, self.data_cfg.audio_root)
            check_on_read(part, path, line_numbers, self.args.config_yaml)
            if len(part):
                part[0]  # noqa: B018  (read and checked)

    def valid_step(self, sample, model, criterion):
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        if self.bleu_scorer is not None:
            logging_output.update(self.bleu_scorer(model, sample))
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        bleu.reduce_metrics(logging_outputs)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if sample:
            sample = {**sample, "update_num": update_num}
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
