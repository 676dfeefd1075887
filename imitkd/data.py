"""Text inputs in the batch, read from manifest columns and encoded in the data loader.

``TextInputDataset`` wraps fairseq's ``SpeechToTextDataset`` and, per item, encodes one or more
text columns (in ``__getitem__``, i.e. in the data-loader workers). In the collated batch, in the
batch's row order:

* ``sample["expert_input"] = {"src_tokens": B×S long, "src_lengths": B long}`` — the transcript the
  text expert reads (student inputs stay exactly fairseq's);
* for a *text* student (the cascade's NMT part), ``sample["net_input"]["src_tokens"/"src_lengths"]``
  are replaced by the encoded ASR transcript.
"""
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from fairseq.data import BaseWrapperDataset, ConcatDataset
from fairseq.data import data_utils
from fairseq.data.audio.speech_to_text_dataset import SpeechToTextDataset, SpeechToTextDatasetCreator

from .errors import ImitKDError

EXPERT_INPUT, STUDENT_INPUT = "expert_input", "net_input"


def read_text_column(root: str, splits: str, column: str, needed_by: str) -> List[str]:
    """The ``column`` of the manifests ``<root>/<split>.tsv`` (comma-separated splits, concatenated in
    order, as fairseq concatenates them). Fails on a missing column or an empty cell."""
    texts = []
    for split in splits.split(","):
        path = Path(root) / f"{split}.tsv"
        rows = SpeechToTextDatasetCreator._load_samples_from_tsv(root, split)
        if column not in rows[0]:
            raise ImitKDError(f"{path}: no '{column}' column (columns: {', '.join(rows[0])}); {needed_by} reads it")
        for i, row in enumerate(rows):
            if row[column] is None or not row[column].strip():
                raise ImitKDError(f"{path}: row {i + 2} (id={row.get('id')}) has an empty '{column}'; {needed_by} reads it")
        texts.extend(row[column] for row in rows)
    return texts


def _n_items(dataset) -> int:
    parts = dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]
    if all(isinstance(d, SpeechToTextDataset) for d in parts):
        return len(dataset)
    raise ImitKDError(
        f"{type(dataset).__name__}: text inputs work with plain or concatenated speech_to_text manifests "
        "(set sampling_alpha to 1.0 in the data config)")


class TextInputDataset(BaseWrapperDataset):
    """Adds encoded text columns to every item and batch.

    Args:
        dataset: a ``SpeechToTextDataset`` (or a concatenation of them).
        inputs: ``{EXPERT_INPUT or STUDENT_INPUT: (texts, encoder)}``; ``texts`` has one string per
            item in dataset order, ``encoder`` is an ``imitkd.expert.SourceEncoder``.
    """

    def __init__(self, dataset, inputs: Dict[str, Tuple[List[str], object]]):
        super().__init__(dataset)
        n = _n_items(dataset)
        for key, (texts, _) in inputs.items():
            if len(texts) != n:
                raise ImitKDError(f"{len(texts)} texts for {key} but {n} manifest rows")
        self.inputs = inputs

    def __getitem__(self, index):
        return self.dataset[index], {key: enc.encode(texts[index]) for key, (texts, enc) in self.inputs.items()}

    def collater(self, samples):
        if len(samples) == 0:
            return {}
        batch = self.dataset.collater([item for item, _ in samples], return_order=True)
        order = batch.pop("order").tolist()
        for key, (_, encoder) in self.inputs.items():
            tokens = [samples[i][1][key] for i in order]
            collated = {
                "src_tokens": data_utils.collate_tokens(tokens, encoder.dictionary.pad(), encoder.dictionary.eos()),
                "src_lengths": torch.tensor([t.numel() for t in tokens], dtype=torch.long),
            }
            batch[key] = {**batch.get(key, {}), **collated}
        return batch
