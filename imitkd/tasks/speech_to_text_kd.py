"""Task ``speech_to_text_kd``: fairseq's ``speech_to_text`` plus what distillation needs.

* the expert's input: the manifest's transcript column (``--expert-src-column``, default
  ``src_text``), encoded with the expert's own tokenizer/BPE/dictionary in the data loader and put
  in the batch as ``sample["expert_input"]`` (student inputs stay exactly fairseq's);
* the training loop's update counter: ``train_step`` passes fairseq's ``update_num`` to the
  criterion (``sample["update_num"]``), which drives the β schedule, so β is exact after a resume
  and the same on every data-parallel worker.
"""
import logging

from fairseq.tasks import register_task
from fairseq.tasks.speech_to_text import SpeechToTextTask

from ..data import ExpertSourceDataset, read_text_column

logger = logging.getLogger(__name__)


@register_task("speech_to_text_kd")
class SpeechToTextKDTask(SpeechToTextTask):
    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        parser.add_argument("--expert-src-column", default="src_text", metavar="COL",
                            help="manifest column the text expert reads (the gold transcript, or an "
                                 "ASR transcript for ImitKDT/KDT); default: src_text")

    def __init__(self, args, tgt_dict):
        super().__init__(args, tgt_dict)
        self.expert_source = None  # (SourceEncoder, criterion name) once a criterion attaches one

    def attach_expert_source(self, encoder, needed_by: str):
        """Called by a criterion whose expert reads text: every split (loaded or not yet) gets it."""
        self.expert_source = (encoder, needed_by)
        for split in list(self.datasets):
            self.datasets[split] = self._with_expert_source(split, self.datasets[split])

    def _with_expert_source(self, split, dataset):
        if self.expert_source is None:
            return dataset
        if isinstance(dataset, ExpertSourceDataset):
            dataset = dataset.dataset
        encoder, needed_by = self.expert_source
        column = getattr(self.args, "expert_src_column", "src_text")
        texts = read_text_column(self.args.data, split, column, needed_by)
        return ExpertSourceDataset(dataset, texts, encoder)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        self.datasets[split] = self._with_expert_source(split, self.datasets[split])

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if sample:
            sample = {**sample, "update_num": update_num}
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
