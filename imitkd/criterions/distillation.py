"""One distillation criterion, registered under several names.

Per batch (training): each sentence keeps its gold prefix with probability β, otherwise its prefix
is the student's own rollout (decoded for those rows only). At every non-padding prefix position
the loss is the cross-entropy between the expert's next-token distribution — ``full`` (ImitKD-full,
word-level KD) or the one-hot of its ``argmax`` (ImitKD-optimal) — and the student's; on gold rows
it can be interpolated with label-smoothed gold NLL (``--kd-weight``, ``--label-smoothing``).

Normalisation: the summed loss is divided (by fairseq's trainer) by ``sample_size`` = the number of
positions that carry loss (gold tokens of gold rows + rollout tokens incl. EOS of rollout rows), or
the number of sentences with ``--sentence-avg``. Validation (model in eval mode) is the student's
teacher-forced gold NLL, so ``valid_loss`` is comparable across criteria.

Names: ``imit_kd_CE`` (ImitKD-full), ``imit_kd`` (ImitKD-optimal), ``word_kd``/``kd_expert_copy``
(β ≡ 1), ``imit_kd_ast``/``imit_kd_ast_pure_kd`` (the expert is a speech model reading the same
audio), ``imit_pipeline_nmt_training`` (a text student reading ASR transcripts from a manifest column,
``--student-src-column``; needs it set).
"""
import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from omegaconf import II

from .. import precision
from ..beta import SCHEDULES, beta_at
from ..errors import ImitKDError
from ..expert import Expert, SourceEncoder, check_same_dictionary
from ..losses import kd_cross_entropy
from ..rollout import DECODINGS, length_caps, mix_prefixes, student_rollout


@dataclass
class DistillationConfig(FairseqDataclass):
    # expert
    expert: str = field(default="", metadata={"help": "expert checkpoint(s), ':'-separated for an ensemble (probabilities averaged)"})
    path: Optional[str] = field(default=None, metadata={"help": "the expert's data directory (dictionaries / data config); default: the one stored in its checkpoint"})
    expert_vocab_src: Optional[str] = field(default=None, metadata={"help": "source dictionary of a text expert (default: <path>/dict.<src>.txt)"})
    expert_vocab_tgt: Optional[str] = field(default=None, metadata={"help": "target dictionary of a text expert (default: <path>/dict.<tgt>.txt); must equal the student's"})
    bpe_codes: Optional[str] = field(default=None, metadata={"help": "BPE codes of the expert's source side (subword_nmt/fastbpe)"})
    expert_bpe: Optional[str] = field(default=None, metadata={"help": "expert source BPE: sentencepiece, subword_nmt, fastbpe or none (default: from --bpe-codes/--expert-sentencepiece-model, else what the checkpoint recorded)"})
    expert_sentencepiece_model: Optional[str] = field(default=None, metadata={"help": "sentencepiece model of the expert's source side"})
    expert_tokenizer: Optional[str] = field(default=None, metadata={"help": "expert source pre-tokenizer: moses, space or none (default: what the checkpoint recorded)"})
    expert_source_lang: str = field(default="en", metadata={"help": "language of the expert's source (moses tokenizer)"})
    expert_dtype: ChoiceEnum(precision.CHOICES) = field(default="auto", metadata={"help": "precision of the expert; auto: bf16 on GPUs and CPUs with native bf16 (AVX512-BF16/AMX), else fp32"})
    # beta schedule
    beta: float = field(default=1.0, metadata={"help": "β: probability of keeping the gold prefix; initial value of the schedule (or the constant)"})
    beta_schedule: ChoiceEnum(list(SCHEDULES)) = field(default="exponential", metadata={"help": "β decay per optimizer update: beta·base^(-t/T), linear, inverse_sigmoid or constant"})
    beta_base: float = field(default=200.0, metadata={"help": "base of the exponential schedule (ImitKD: 200)"})
    beta_decay_updates: Optional[int] = field(default=None, metadata={"help": "T of the schedule, in updates (default: --max-update)"})
    beta_sigmoid_slope: float = field(default=20.0, metadata={"help": "slope of the inverse_sigmoid schedule"})
    # rollouts
    rollout: ChoiceEnum(["greedy", "sample"]) = field(default="greedy", metadata={"help": "how the student decodes its own prefixes"})
    rollout_topk: int = field(default=0, metadata={"help": "sampling rollouts: keep the k best tokens (0 = all)"})
    rollout_temperature: float = field(default=1.0, metadata={"help": "sampling rollouts: softmax temperature"})
    rollout_dtype: ChoiceEnum(precision.CHOICES) = field(default="auto", metadata={"help": "autocast precision of the rollouts' encoder pass (and, on GPUs, decoding); auto: bf16 where native, else fp32. fp32 rollouts equal fairseq's SequenceGenerator"})
    rollout_decoding: ChoiceEnum(list(DECODINGS)) = field(default="cached", metadata={"help": "rollout decoding: cached (preallocated key/value cache, one-token steps; equals fairseq's decoding), cuda-graph (the same step replayed as a CUDA graph on GPUs; cached elsewhere), fairseq (the decoder's incremental_state)"})
    rollout_max_len_a: float = field(default=1.5, metadata={"help": "rollout cap per sentence: a·gold_len + b tokens"})
    rollout_max_len_b: int = field(default=5, metadata={"help": "rollout cap per sentence: a·gold_len + b tokens"})
    # loss
    kd_weight: float = field(default=1.0, metadata={"help": "weight of the expert term on gold rows; the rest is (label-smoothed) gold NLL. Rollout rows are pure KD"})
    label_smoothing: float = field(default=0.0, metadata={"help": "ε of the gold NLL term"})
    report_accuracy: bool = field(default=False, metadata={"help": "(accepted for compatibility; accuracies are always logged)"})
    ignore_prefix_size: int = field(default=0, metadata={"help": "ignore the first N target positions (e.g. a language tag)"})
    sentence_avg: bool = II("optimization.sentence_avg")


class DistillationCriterion(FairseqCriterion):
    """Shared implementation; the registered names below only change these class attributes."""

    expert_target = "full"  #: "full" distribution (ImitKD-full, KD) or "argmax" (ImitKD-optimal)
    rollouts = True  #: False: β ≡ 1 (word-level KD)
    expert_reads = "transcript"  #: "transcript" (text NMT expert) or "audio" (speech expert)
    student_reads = "audio"  #: "audio", or "text" (cascade NMT part: --student-src-column)

    def __init__(self, task, cfg: DistillationConfig):
        super().__init__(task)
        self.cfg = cfg
        self.pad, self.eos = task.target_dictionary.pad(), task.target_dictionary.eos()
        self.decay_updates = cfg.beta_decay_updates or getattr(getattr(task, "args", None), "max_update", 0)
        if not 0.0 <= cfg.kd_weight <= 1.0:
            raise ImitKDError(f"--kd-weight must be in [0, 1], got {cfg.kd_weight}")
        if self.rollouts:
            try:  # validate the schedule flags now, not at the first update
                beta_at(0, self.decay_updates, cfg.beta_schedule, cfg.beta, cfg.beta_base)
            except ValueError as e:
                raise ImitKDError(str(e)) from None
        if self.student_reads == "text" and getattr(task, "student_source", None) is None:
            raise ImitKDError(f"criterion {self.registered_name} trains a text student: set --student-src-column "
                              "(the manifest column with ASR transcripts) and a text --arch such as transformer")
        self.expert = self._load_expert(task, cfg)

    # -- set-up ---------------------------------------------------------------------------------
    def _load_expert(self, task, cfg):
        name = self.__class__.registered_name
        data_dir = cfg.path or (task.args.data if self.expert_reads == "audio" else None)
        expert, stored_cfg = Expert.from_checkpoints(cfg.expert, data_dir, cfg.expert_vocab_src,
                                                     cfg.expert_vocab_tgt, cfg.expert_dtype)
        check_same_dictionary(task.target_dictionary, expert.target_dictionary, expert.description)
        if self.expert_reads == "transcript":
            if expert.source_dictionary is None:
                raise ImitKDError(f"criterion {name}: {expert.description} has no source dictionary (a speech "
                                  "expert?); use imit_kd_ast / imit_kd_ast_pure_kd for speech experts")
            if not hasattr(task, "attach_expert_source"):
                raise ImitKDError(f"criterion {name} needs --task speech_to_text_kd (its expert reads the "
                                  "manifest's transcript column)")
            encoder = SourceEncoder.build(expert.source_dictionary, stored_cfg, cfg.expert_tokenizer, cfg.expert_bpe,
                                          cfg.bpe_codes, cfg.expert_sentencepiece_model, cfg.expert_source_lang)
            task.attach_expert_source(encoder, needed_by=f"criterion {name}")
        return expert

    # -- training / validation --------------------------------------------------------------------
    def forward(self, model, sample, reduce=True):
        if not model.training:
            return self._gold_nll(model, sample)
        net_input, target = sample["net_input"], sample["target"]
        gold_prev, bsz = net_input["prev_output_tokens"], target.size(0)
        beta = self.beta(sample)
        rows = torch.empty(0, dtype=torch.long, device=target.device)
        prev, rollout_tokens = gold_prev, 0
        if self.rollouts and beta < 1.0:
            rows = (torch.rand(bsz, device=target.device) >= beta).nonzero().squeeze(1)
        if rows.numel() > 0:
            encoder_dtype, decoder_dtype = precision.rollout_autocast(
                self.cfg.rollout_dtype, target.device, next(model.parameters()).dtype)
            rollouts = student_rollout(
                model, net_input["src_tokens"][rows], net_input["src_lengths"][rows],
                length_caps(sample["target_lengths"][rows], self.cfg.rollout_max_len_a, self.cfg.rollout_max_len_b),
                self.eos, self.pad, sample=self.cfg.rollout == "sample", topk=self.cfg.rollout_topk,
                temperature=self.cfg.rollout_temperature, encoder_dtype=encoder_dtype, decoder_dtype=decoder_dtype,
                decoding=self.cfg.rollout_decoding)
            prev = mix_prefixes(gold_prev, rollouts, rows, self.eos, self.pad)
            rollout_tokens = rollouts.ne(self.pad).sum()
        is_gold_row = torch.ones(bsz, dtype=torch.bool, device=target.device)
        is_gold_row[rows] = False

        logits = model(**{**net_input, "prev_output_tokens": prev})[0]  # B×T×V
        expert_scores = self.expert.scores(*self._expert_input(sample), prev)  # B×T×V
        gold = self._pad_to(target, prev.size(1))
        mask = self._loss_mask(prev)
        gold_mask = mask & is_gold_row[:, None] & gold.ne(self.pad)
        alpha = torch.where(is_gold_row, self.cfg.kd_weight, 1.0)[:, None]
        out = kd_cross_entropy(logits, expert_scores, gold, alpha, self.cfg.label_smoothing,
                               expert_argmax=self.expert_target == "argmax")
        loss = (out.loss * mask).sum()
        n_positions = mask.sum()
        sample_size = bsz if self.cfg.sentence_avg else int(n_positions)
        logging_output = {
            "loss": loss.data,
            "nll_loss": (out.gold_nll * gold_mask).sum().data,
            "gold_ntokens": gold_mask.sum().data,
            "ntokens": sample["ntokens"],
            "nsentences": bsz,
            "sample_size": sample_size,
            "n_positions": n_positions.data,
            "agree": (out.student_argmax.eq(out.expert_argmax) & mask).sum().data,
            "n_correct": (out.student_argmax.eq(gold) & gold_mask).sum().data,
            "expert_n_correct": (out.expert_argmax.eq(gold) & gold_mask).sum().data,
            "beta_sum": beta * bsz,
            "rollout_rows": rows.numel(),
            "rollout_tokens": rollout_tokens,
        }
        return loss, sample_size, logging_output

    def _gold_nll(self, model, sample):
        """Teacher-forced gold NLL of the student (validation)."""
        target = sample["target"]
        logits = model(**sample["net_input"])[0]
        out = kd_cross_entropy(logits, None, target)
        mask = self._loss_mask(target)
        nll = (out.loss * mask).sum()
        ntokens = mask.sum()
        sample_size = target.size(0) if self.cfg.sentence_avg else int(ntokens)
        return nll, sample_size, {
            "loss": nll.data, "nll_loss": nll.data, "gold_ntokens": ntokens.data, "ntokens": sample["ntokens"],
            "nsentences": target.size(0), "sample_size": sample_size,
            "n_correct": (out.student_argmax.eq(target) & mask).sum().data,
        }

    def beta(self, sample) -> float:
        """β for this update, from fairseq's update counter (put in the sample by our task)."""
        if not self.rollouts:
            return 1.0
        if "update_num" not in sample:
            raise ImitKDError(f"criterion {self.registered_name} needs --task speech_to_text_kd (it drives β)")
        c = self.cfg
        return beta_at(sample["update_num"], self.decay_updates, c.beta_schedule, c.beta, c.beta_base,
                       c.beta_sigmoid_slope)

    def _expert_input(self, sample):
        if self.expert_reads == "audio":
            return sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"]
        if "expert_input" not in sample:
            raise ImitKDError("the batch has no expert input: use --task speech_to_text_kd")
        return sample["expert_input"]["src_tokens"], sample["expert_input"]["src_lengths"]

    def _loss_mask(self, tokens):
        mask = tokens.ne(self.pad)
        if self.cfg.ignore_prefix_size > 0:
            mask[:, : self.cfg.ignore_prefix_size] = False
        return mask

    def _pad_to(self, tokens, width):
        if tokens.size(1) >= width:
            return tokens[:, :width]
        return torch.cat([tokens, tokens.new_full((tokens.size(0), width - tokens.size(1)), self.pad)], dim=1)

    # -- logging ----------------------------------------------------------------------------------
    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        def total(key):
            return sum(float(log.get(key, 0)) for log in logging_outputs)

        sample_size, gold_ntokens = total("sample_size"), total("gold_ntokens")
        nsentences, n_positions, rollout_rows = total("nsentences"), total("n_positions"), total("rollout_rows")
        metrics.log_scalar("loss", total("loss") / max(sample_size, 1) / math.log(2), sample_size, round=3)
        if gold_ntokens > 0:
            metrics.log_scalar("nll_loss", total("nll_loss") / gold_ntokens / math.log(2), gold_ntokens, round=3)
            metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
            metrics.log_scalar("accuracy", 100.0 * total("n_correct") / gold_ntokens, gold_ntokens, round=2)
            if any("expert_n_correct" in log for log in logging_outputs):
                metrics.log_scalar("expert_accuracy", 100.0 * total("expert_n_correct") / gold_ntokens, gold_ntokens, round=2)
        if any("beta_sum" in log for log in logging_outputs) and nsentences > 0:
            metrics.log_scalar("beta", total("beta_sum") / nsentences, nsentences, round=4)
            metrics.log_scalar("rollout_frac", rollout_rows / nsentences, nsentences, round=3)
            if rollout_rows > 0:
                metrics.log_scalar("rollout_len", total("rollout_tokens") / rollout_rows, rollout_rows, round=2)
        if n_positions > 0:
            metrics.log_scalar("agreement", 100.0 * total("agree") / n_positions, n_positions, round=2)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


def _register(name, **attributes):
    cls = type(f"Criterion_{name}", (DistillationCriterion,), {"registered_name": name, **attributes})
    return register_criterion(name, dataclass=DistillationConfig)(cls)


ImitKDFull = _register("imit_kd_CE")
ImitKDOptimal = _register("imit_kd", expert_target="argmax")
WordKD = _register("word_kd", rollouts=False)
KDExpertCopy = _register("kd_expert_copy", rollouts=False)
ImitKDAST = _register("imit_kd_ast", expert_reads="audio")
ImitKDASTPureKD = _register("imit_kd_ast_pure_kd", expert_reads="audio", rollouts=False)
#: the NMT part of a cascade: a text student reading ASR transcripts (--student-src-column), the
#: expert reading the gold transcript; ImitKD-full otherwise.
ImitPipelineNMT = _register("imit_pipeline_nmt_training", student_reads="text")
