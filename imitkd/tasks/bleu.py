"""Validation BLEU for ``speech_to_text_kd`` (``--eval-bleu``): beam search on the dev set,
detokenised hypotheses and references, corpus sacreBLEU from summed n-gram statistics (so it is
exact across batches and data-parallel workers)."""
import json

import numpy as np
import torch
from fairseq import metrics

from ..errors import ImitKDError

ORDER = 4


def add_args(parser):
    parser.add_argument("--eval-bleu", action="store_true", help="validation: also decode the dev set and log sacreBLEU")
    parser.add_argument("--eval-bleu-args", default="{}", metavar="JSON",
                        help='generation args for --eval-bleu, e.g. \'{"beam": 4, "max_len_a": 0.1}\'')
    parser.add_argument("--eval-bleu-detok", default="none", metavar="TOK",
                        help="detokenizer applied after BPE removal (moses, space or none)")
    parser.add_argument("--eval-bleu-detok-args", default="{}", metavar="JSON", help="args for the detokenizer")
    parser.add_argument("--eval-bleu-tokenize", default="13a", help="sacreBLEU tokenization (13a, intl, none, ...)")


def json_flag(flag: str, value) -> dict:
    """The JSON object a flag holds (``{}`` when unset); ImitKDError naming the flag otherwise."""
    try:
        parsed = json.loads(value or "{}")
    except json.JSONDecodeError as e:
        raise ImitKDError(f"{flag}: not valid JSON ({e.msg} at character {e.pos + 1}) in {value!r}; "
                          'write an object with quoted keys, e.g. \'{"beam": 4}\'') from None
    if not isinstance(parsed, dict):
        raise ImitKDError(f"{flag}: expected a JSON object such as '{{\"beam\": 4}}', got {value!r}")
    return parsed


class BleuScorer:
    """Decodes a batch with the task's generator and returns sacreBLEU statistics to log."""

    def __init__(self, task, model, args):
        from argparse import Namespace
        from fairseq.data import encoders

        self.task, self.args = task, args
        gen_args = Namespace(**json_flag("--eval-bleu-args", args.eval_bleu_args))
        self.generator = task.build_generator([model], gen_args)
        self.bpe = task.build_bpe(args)
        self.pre_tokenizer = task.build_tokenizer(args)
        detok_args = json_flag("--eval-bleu-detok-args", args.eval_bleu_detok_args)
        self.detok = None if args.eval_bleu_detok in (None, "none") else \
            encoders.build_tokenizer(Namespace(tokenizer=args.eval_bleu_detok, **detok_args))

    def decode(self, tokens, escape_unk=False):
        d = self.task.target_dictionary
        text = d.string(tokens.int().cpu(), unk_string="UNKNOWNTOKENINREF" if escape_unk else "UNKNOWNTOKENINHYP")
        for step in (self.bpe, self.pre_tokenizer, self.detok):
            if step is not None:
                text = step.decode(text)
        return text

    def __call__(self, model, sample):
        import sacrebleu

        with torch.no_grad():
            hyps = self.task.inference_step(self.generator, [model], sample)
        pad = self.task.target_dictionary.pad()
        sys_out = [self.decode(h[0]["tokens"]) for h in hyps]
        refs = [self.decode(t[t.ne(pad)], escape_unk=True) for t in sample["target"]]
        bleu = sacrebleu.corpus_bleu(sys_out, [refs], tokenize=self.args.eval_bleu_tokenize)
        out = {"_bleu_sys_len": bleu.sys_len, "_bleu_ref_len": bleu.ref_len}
        for i in range(ORDER):
            out[f"_bleu_counts_{i}"], out[f"_bleu_totals_{i}"] = bleu.counts[i], bleu.totals[i]
        return out


def reduce_metrics(logging_outputs):
    def total(key):
        return sum(float(log.get(key, 0)) for log in logging_outputs)

    counts = [total(f"_bleu_counts_{i}") for i in range(ORDER)]
    totals = [total(f"_bleu_totals_{i}") for i in range(ORDER)]
    if total("_bleu_ref_len") <= 0:  # no --eval-bleu statistics (empty hypotheses still log BLEU 0)
        return
    metrics.log_scalar("_bleu_counts", np.array(counts))
    metrics.log_scalar("_bleu_totals", np.array(totals))
    metrics.log_scalar("_bleu_sys_len", total("_bleu_sys_len"))
    metrics.log_scalar("_bleu_ref_len", total("_bleu_ref_len"))

    def compute_bleu(meters):
        from sacrebleu.metrics import BLEU

        bleu = BLEU.compute_bleu(correct=meters["_bleu_counts"].sum, total=meters["_bleu_totals"].sum,
                                 sys_len=int(meters["_bleu_sys_len"].sum), ref_len=int(meters["_bleu_ref_len"].sum),
                                 smooth_method="exp")
        return round(bleu.score, 2)

    metrics.log_derived("bleu", compute_bleu)
