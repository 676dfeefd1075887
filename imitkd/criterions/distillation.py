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
``--student-src-column``; needs it set), ``nll`` (no expert: label-smoothed gold NLL, the baseline).

Every name takes ``--ctc-weight``: an auxiliary CTC loss of the speech encoder on the source
transcript (``imitkd.ctc``), added to the summed loss (as fairseq's ``..._with_ctc`` criterion does).
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
from ..beta import SCHEDULES, BetaSchedule
from ..ctc import check_ctc_head, transcript_ctc_loss
from ..data import CTC_INPUT, EXPERT_INPUT
from ..errors import ImitKDError
from ..expert import Expert
from ..expert_checks import check_same_dictionary
from ..losses import kd_cross_entropy
from ..rollout import DECODINGS, length_cap_problem, length_caps, mix_prefixes, reorder_encoder_out, student_rollout
from ..text_encoding import SourceEncoder


def _flag(default, help_text):
    return field(default=default, metadata={"help": help_text})


@dataclass
class DistillationConfig(FairseqDataclass):
    # expert
    expert: str = _flag("", "expert checkpoint(s), ':'-separated for an ensemble (probabilities averaged)")
    path: Optional[str] = _flag(
        None, "the expert's data directory (dictionaries / data config); default: the one stored in its checkpoint")
    expert_vocab_src: Optional[str] = _flag(
        None, "source dictionary of a text expert (default: <path>/dict.<src>.txt)")
    expert_vocab_tgt: Optional[str] = _flag(
        None, "target dictionary of a text expert (default: <path>/dict.<tgt>.txt); must equal the student's")
    bpe_codes: Optional[str] = _flag(None, "BPE codes of the expert's source side (subword_nmt/fastbpe)")
    expert_bpe: Optional[str] = _flag(
        None, "expert source BPE: sentencepiece, subword_nmt, fastbpe or none (default: from --bpe-codes/"
              "--expert-sentencepiece-model, else what the checkpoint recorded)")
    expert_sentencepiece_model: Optional[str] = _flag(None, "sentencepiece model of the expert's source side")
    expert_tokenizer: Optional[str] = _flag(
        None, "expert source pre-tokenizer: moses, space or none (default: what the checkpoint recorded)")
    expert_source_lang: str = _flag("en", "language of the expert's source (moses tokenizer)")
    expert_dtype: ChoiceEnum(precision.CHOICES) = _flag(
        "auto", "precision of the expert; int8: int8 linear layers, fp32 elsewhere (x86 CPUs); auto: bf16 on GPUs "
                "and CPUs with native bf16 (AVX512-BF16/AMX), else fp32")
    # beta schedule
    beta: float = _flag(
        1.0, "β: probability of keeping the gold prefix; initial value of the schedule (or the constant)")
    beta_schedule: ChoiceEnum(list(SCHEDULES)) = _flag(
        "exponential", "β decay per optimizer update: beta·base^(-t/T), linear, inverse_sigmoid or constant")
    beta_base: float = _flag(200.0, "base of the exponential schedule (ImitKD: 200)")
    beta_decay_updates: Optional[int] = _flag(None, "T of the schedule, in updates (default: --max-update)")
    beta_hold_updates: int = _flag(
        0, "keep β = --beta for the first N updates (a student that cannot decode yet learns from gold "
           "prefixes), then decay over the remaining T - N")
    beta_sigmoid_slope: float = _flag(20.0, "slope of the inverse_sigmoid schedule (> 0)")
    # rollouts
    rollout: ChoiceEnum(["greedy", "sample"]) = _flag("greedy", "how the student decodes its own prefixes")
    rollout_topk: int = _flag(0, "sampling rollouts: keep the k best tokens (0 = all)")
    rollout_temperature: float = _flag(1.0, "sampling rollouts: softmax temperature (> 0)")
    rollout_dtype: ChoiceEnum(precision.CHOICES) = _flag(
        "auto", "precision of the rollouts: bf16/fp16 autocast of the encoder pass (and, on GPUs, decoding); int8: "
                "int8 copies of the student's current linear weights (x86 CPUs); auto: bf16 where native, else "
                "fp32. fp32 rollouts equal fairseq's SequenceGenerator")
    rollout_decoding: ChoiceEnum(list(DECODINGS)) = _flag(
        "cached", "rollout decoding: cached (preallocated key/value cache, one-token steps; equals fairseq's "
                  "decoding), cuda-graph (the same step replayed as a CUDA graph on GPUs; cached elsewhere), "
                  "fairseq (the decoder's incremental_state)")
    rollout_encoder: ChoiceEnum(["own", "training"]) = _flag(
        "own", "the encoder output rollouts decode from: own (an eval-mode encoder pass of their own, as fairseq's "
               "SequenceGenerator) or training (the training forward's, detached, dropout included: one encoder "
               "pass less per update; single process only)")
    rollout_max_len_a: float = _flag(1.5, "rollout cap per sentence: a·gold_len + b tokens (a >= 0)")
    rollout_max_len_b: int = _flag(5, "rollout cap per sentence: a·gold_len + b tokens (b >= 0)")
    # loss
    kd_weight: float = _flag(
        1.0, "weight of the expert term on gold rows; the rest is (label-smoothed) gold NLL. Rollout rows are pure KD")
    label_smoothing: float = _flag(0.0, "ε of the gold NLL term")
    ctc_weight: float = _flag(
        0.0, "weight of an auxiliary CTC loss of the speech encoder on the source transcript (--ctc-src-column, "
             "encoded with the data config's BPE and the target dictionary: a joint vocabulary)")
    ctc_src_column: str = _flag("src_text", "manifest column with the transcript the CTC loss reads")
    report_accuracy: bool = _flag(False, "(accepted for compatibility; accuracies are always logged)")
    ignore_prefix_size: int = _flag(0, "ignore the first N target positions (e.g. a language tag)")
    sentence_avg: bool = II("optimization.sentence_avg")
    max_update: int = II("optimization.max_update")


def check_config(cfg: DistillationConfig, rollouts: bool) -> Optional[BetaSchedule]:
    """The one place where the flags are checked; returns the bound β schedule (None without
    rollouts). Raises ImitKDError naming the flag. Every range check is written so that NaN fails it."""
    problems = []
    if not 0.0 <= cfg.kd_weight <= 1.0:
        problems.append(f"--kd-weight must be in [0, 1], got {cfg.kd_weight}")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        problems.append(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if not 0 <= cfg.ctc_weight < math.inf:
        problems.append(f"--ctc-weight must be >= 0 and finite, got {cfg.ctc_weight}")
    if cfg.beta_decay_updates is not None and cfg.beta_decay_updates <= 0:
        problems.append(f"--beta-decay-updates must be positive, got {cfg.beta_decay_updates}")
    if rollouts:
        if not 0 < cfg.rollout_temperature < math.inf:
            problems.append(f"--rollout-temperature must be > 0 and finite (use --rollout greedy for argmax "
                            f"rollouts), got {cfg.rollout_temperature}")
        if cfg.rollout_topk < 0:
            problems.append(f"--rollout-topk must be >= 0 (0 = all tokens), got {cfg.rollout_topk}")
        cap_problem = length_cap_problem(cfg.rollout_max_len_a, cfg.rollout_max_len_b)
        if cap_problem:
            problems.append(cap_problem)
    if problems:
        raise ImitKDError("; ".join(problems))
    if not rollouts:
        return None
    try:
        return BetaSchedule(cfg.beta_schedule, cfg.beta, cfg.beta_decay_updates or cfg.max_update, cfg.beta_base,
                            cfg.beta_sigmoid_slope, cfg.beta_hold_updates)
    except ValueError as e:
        raise ImitKDError(str(e)) from None


class DistillationCriterion(FairseqCriterion):
    """Shared implementation; the registered names below only change these class attributes."""

    expert_target = "full"  #: "full" distribution (ImitKD-full, KD) or "argmax" (ImitKD-optimal)
    rollouts = True  #: False: β ≡ 1 (word-level KD)
    expert_reads = "transcript"  #: "transcript" (text NMT expert), "audio" (speech expert) or None (no expert)
    student_reads = "audio"  #: "audio", or "text" (cascade NMT part: --student-src-column)

    def __init__(self, task, cfg: DistillationConfig):
        super().__init__(task)
        self.cfg = cfg
        self.pad, self.eos = task.target_dictionary.pad(), task.target_dictionary.eos()
        self.beta_schedule = check_config(cfg, self.rollouts)
        if self.student_reads == "text" and getattr(task, "student_source", None) is None:
            raise ImitKDError(f"criterion {self.registered_name} trains a text student: set --student-src-column "
                              "(the manifest column with ASR transcripts) and a text --arch such as transformer")
        if cfg.ctc_weight > 0:
            if self.student_reads == "text" or not hasattr(task, "attach_text_input"):
                raise ImitKDError(f"--ctc-weight: criterion {self.registered_name} needs --task speech_to_text_kd "
                                  "and a speech student (the CTC loss is on its encoder)")
            task.attach_text_input(CTC_INPUT, "--ctc-weight", column=cfg.ctc_src_column)
        self.expert = self._load_expert(task, cfg) if self.expert_reads else None

    # -- set-up ---------------------------------------------------------------------------------
    def _load_expert(self, task, cfg):
        name = self.__class__.registered_name
        data_dir = cfg.path or (task.args.data if self.expert_reads == "audio" else None)
        expert, stored_cfg = Expert.from_checkpoints(
            cfg.expert, data_dir, cfg.expert_vocab_src, cfg.expert_vocab_tgt, cfg.expert_dtype,
            expects="speech" if self.expert_reads == "audio" else "text")
        check_same_dictionary(task.target_dictionary, expert.target_dictionary, expert.description)
        if self.expert_reads == "transcript":
            if expert.source_dictionary is None:
                raise ImitKDError(f"criterion {name}: {expert.description} has no source dictionary (a speech "
                                  "expert?); use imit_kd_ast / imit_kd_ast_pure_kd for speech experts")
            if not hasattr(task, "attach_text_input"):
                raise ImitKDError(f"criterion {name} needs --task speech_to_text_kd (its expert reads the "
                                  "manifest's transcript column)")
            encoder = SourceEncoder.build(expert.source_dictionary, stored_cfg, cfg.expert_tokenizer, cfg.expert_bpe,
                                          cfg.bpe_codes, cfg.expert_sentencepiece_model, cfg.expert_source_lang)
            task.attach_text_input(EXPERT_INPUT, f"criterion {name}", encoder=encoder)  # --expert-src-column
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
        encoder_out = None  # --rollout-encoder training: the training forward's encoder pass, run first
        if rows.numel() > 0 and self.cfg.rollout_encoder == "training":
            if hasattr(model, "module"):
                raise ImitKDError("--rollout-encoder training calls the student's encoder and decoder outside its "
                                  "(distributed) wrapper; use --rollout-encoder own")
            encoder_out = model.encoder(net_input["src_tokens"], src_lengths=net_input["src_lengths"])
        if rows.numel() > 0:
            encoder_dtype, decoder_dtype = precision.rollout_autocast(
                self.cfg.rollout_dtype, target.device, next(model.parameters()).dtype)
            rollouts = student_rollout(
                model, net_input["src_tokens"][rows], net_input["src_lengths"][rows],
                length_caps(sample["target_lengths"][rows], self.cfg.rollout_max_len_a, self.cfg.rollout_max_len_b),
                self.eos, self.pad, sample=self.cfg.rollout == "sample", topk=self.cfg.rollout_topk,
                temperature=self.cfg.rollout_temperature, encoder_dtype=encoder_dtype, decoder_dtype=decoder_dtype,
                decoding=self.cfg.rollout_decoding, int8=precision.int8(self.cfg.rollout_dtype, target.device),
                encoder_out=None if encoder_out is None else reorder_encoder_out(model, encoder_out, rows))
            prev = mix_prefixes(gold_prev, rollouts, rows, self.eos, self.pad)
            rollout_tokens = rollouts.ne(self.pad).sum()
        is_gold_row = torch.ones(bsz, dtype=torch.bool, device=target.device)
        is_gold_row[rows] = False

        if encoder_out is None:
            net_output = model(**{**net_input, "prev_output_tokens": prev})
        else:
            net_output = model.decoder(prev, encoder_out=encoder_out)
        logits = net_output[0]  # B×T×V
        expert_scores = self.expert.scores(*self._expert_input(sample), prev) if self.expert else None  # B×T×V
        gold = self._pad_to(target, prev.size(1))
        mask = self._loss_mask(prev)
        gold_mask = mask & is_gold_row[:, None] & gold.ne(self.pad)
        alpha = torch.where(is_gold_row, self.cfg.kd_weight, 1.0)[:, None]
        out = kd_cross_entropy(logits, expert_scores, gold, alpha, self.cfg.label_smoothing,
                               expert_argmax=self.expert_target == "argmax")
        loss = (out.loss * mask).sum()
        ctc_loss = self._ctc_loss(model, net_output, sample)
        if ctc_loss is not None:
            loss = loss + self.cfg.ctc_weight * ctc_loss
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
            "n_correct": (out.student_argmax.eq(gold) & gold_mask).sum().data,
        }
        if self.expert is not None:
            logging_output["agree"] = (out.student_argmax.eq(out.expert_argmax) & mask).sum().data
            logging_output["expert_n_correct"] = (out.expert_argmax.eq(gold) & gold_mask).sum().data
        logging_output.update(beta_sum=beta * bsz, rollout_rows=rows.numel(), rollout_tokens=rollout_tokens)
        if ctc_loss is not None:
            logging_output.update(ctc_loss=ctc_loss.data, ctc_sentences=bsz)
        return loss, sample_size, logging_output

    def _ctc_loss(self, model, net_output, sample):
        """Summed CTC loss (nats) on the transcript, or None without --ctc-weight."""
        if self.cfg.ctc_weight <= 0:
            return None
        if CTC_INPUT not in sample:
            raise ImitKDError("--ctc-weight: the batch has no transcript: use --task speech_to_text_kd")
        dictionary = self.task.target_dictionary
        check_ctc_head(model, len(dictionary))
        return transcript_ctc_loss(model, net_output, sample[CTC_INPUT]["src_tokens"], dictionary.pad(),
                                   dictionary.eos(), blank=dictionary.bos())

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
        return self.beta_schedule(sample["update_num"])

    def _expert_input(self, sample):
        if self.expert_reads == "audio":
            return sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"]
        if EXPERT_INPUT not in sample:
            raise ImitKDError("the batch has no expert input: use --task speech_to_text_kd")
        return sample[EXPERT_INPUT]["src_tokens"], sample[EXPERT_INPUT]["src_lengths"]

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
                expert_accuracy = 100.0 * total("expert_n_correct") / gold_ntokens
                metrics.log_scalar("expert_accuracy", expert_accuracy, gold_ntokens, round=2)
        if any("beta_sum" in log for log in logging_outputs) and nsentences > 0:
            metrics.log_scalar("beta", total("beta_sum") / nsentences, nsentences, round=4)
            metrics.log_scalar("rollout_frac", rollout_rows / nsentences, nsentences, round=3)
            if rollout_rows > 0:
                metrics.log_scalar("rollout_len", total("rollout_tokens") / rollout_rows, rollout_rows, round=2)
        ctc_sentences = total("ctc_sentences")
        if ctc_sentences > 0:  # per sentence, in bits (its transcript lengths differ from the target's)
            metrics.log_scalar("ctc_loss", total("ctc_loss") / ctc_sentences / math.log(2), ctc_sentences, round=3)
        if n_positions > 0 and any("agree" in log for log in logging_outputs):
            metrics.log_scalar("agreement", 100.0 * total("agree") / n_positions, n_positions, round=2)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


@register_criterion("imit_kd_CE", dataclass=DistillationConfig)
class ImitKDFull(DistillationCriterion):
    """ImitKD-full: CE to the expert's next-token distribution on mixed gold/rollout prefixes."""

    registered_name = "imit_kd_CE"


@register_criterion("imit_kd", dataclass=DistillationConfig)
class ImitKDOptimal(DistillationCriterion):
    """ImitKD-optimal: NLL of the expert's argmax token on mixed gold/rollout prefixes."""

    registered_name, expert_target = "imit_kd", "argmax"


@register_criterion("word_kd", dataclass=DistillationConfig)
class WordKD(DistillationCriterion):
    """Word-level KD: the expert's distribution on gold prefixes (β ≡ 1)."""

    registered_name, rollouts = "word_kd", False


@register_criterion("kd_expert_copy", dataclass=DistillationConfig)
class KDExpertCopy(WordKD):
    """The seed's name for word-level KD."""

    registered_name = "kd_expert_copy"


@register_criterion("imit_kd_ast", dataclass=DistillationConfig)
class ImitKDAST(DistillationCriterion):
    """ImitKD-full with a speech expert (an S2T checkpoint) reading the same audio."""

    registered_name, expert_reads = "imit_kd_ast", "audio"


@register_criterion("imit_kd_ast_pure_kd", dataclass=DistillationConfig)
class ImitKDASTPureKD(DistillationCriterion):
    """Word-level KD with a speech expert reading the same audio."""

    registered_name, expert_reads, rollouts = "imit_kd_ast_pure_kd", "audio", False


@register_criterion("imit_pipeline_nmt_training", dataclass=DistillationConfig)
class ImitPipelineNMT(DistillationCriterion):
    """The NMT part of a cascade: a text student reading ASR transcripts (--student-src-column), the
    expert reading the gold transcript; ImitKD-full otherwise."""

    registered_name, student_reads = "imit_pipeline_nmt_training", "text"


@register_criterion("nll", dataclass=DistillationConfig)
class GoldNLL(DistillationCriterion):
    """The baseline: label-smoothed gold NLL (fairseq's label_smoothed_cross_entropy) without an
    expert, with this family's options (--ctc-weight on the transcript) and logging."""

    registered_name, expert_reads, rollouts = "nll", None, False
