"""Expert input in the batch: the manifest's transcript column, encoded for the expert.

``ExpertSourceDataset`` wraps fairseq's ``SpeechToTextDataset`` (student inputs untouched) and adds
``sample["expert_input"] = {"src_tokens": B×S long, "src_lengths": B long}`` in the collated batch's
row order. Encoding happens in ``__getitem__``, i.e. in the data-loader workers.
"""
from pathlib import Path
from typing import List

import torch

from fairseq.data import BaseWrapperDataset, ConcatDataset
from fairseq.data import data_utils
from fairseq.data.audio.speech_to_text_dataset import SpeechToTextDataset, SpeechToTextDatasetCreator

from .errors import ImitKDError


def read_text_column(root: str, splits: str, column: str, needed_by: str) -> List[str]:
    """The ``column`` of the manifests ``<root>/<split>.tsv`` (comma-separated splits, concatenated in
    order, as fairseq concatenates them). Fails on a missing column or an empty cell."""
    texts = []
    for split in splits.split(","):
        path = Path(root) / f"{split}.tsv"
        rows = SpeechToTextDatasetCreator._load_samples_from_tsv(root, split)
        if column not in rows[0]:
            raise ImitKDError(
                f"{path}: no '{column}' column (columns: {', '.join(rows[0])}); {needed_by} needs the "
                f"transcript there (set --expert-src-column to use another column)")
        for i, row in enumerate(rows):
            if row[column] is None or not row[column].strip():
                raise ImitKDError(f"{path}: row {i + 2} (id={row.get('id')}) has an empty '{column}'; {needed_by} needs it")
        texts.extend(row[column] for row in rows)
    return texts


def _base_datasets(dataset):
    if isinstance(dataset, SpeechToTextDataset):
        return [dataset]
    if isinstance(dataset, ConcatDataset) and all(isinstance(d, SpeechToTextDataset) for d in dataset.datasets):
        return list(dataset.datasets)
    raise ImitKDError(
        f"{type(dataset).__name__}: expert inputs work with plain or concatenated speech_to_text manifests "
        "(set sampling_alpha to 1.0 in the data config)")


class ExpertSourceDataset(BaseWrapperDataset):
    """Adds the expert's encoded source text to every item and batch.

    Args:
        dataset: a ``SpeechToTextDataset`` (or a concatenation of them).
        texts: one source text per item, in dataset order.
        encoder: ``imitkd.expert.SourceEncoder`` (text → expert token ids with ``</s>``).
    """

    def __init__(self, dataset, texts: List[str], encoder):
        super().__init__(dataset)
        n = sum(len(d) for d in _base_datasets(dataset))
        if len(texts) != n:
            raise ImitKDError(f"{len(texts)} source texts for {n} manifest rows")
        self.texts, self.encoder = texts, encoder
        self.pad, self.eos = encoder.dictionary.pad(), encoder.dictionary.eos()

    def __getitem__(self, index):
        return self.dataset[index], self.encoder.encode(self.texts[index])

    def collater(self, samples):
        if len(samples) == 0:
            return {}
        batch = self.dataset.collater([s for s, _ in samples], return_order=True)
        order = batch.pop("order").tolist()
        tokens = [samples[i][1] for i in order]
        batch["expert_input"] = {
            "src_tokens": data_utils.collate_tokens(tokens, self.pad, self.eos, left_pad=False),
            "src_lengths": torch.tensor([t.numel() for t in tokens], dtype=torch.long),
        }
        return batch
