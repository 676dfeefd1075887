#!/usr/bin/env python3
"""Transcribe a speech subset with the CTC head of a fairseq speech model (best path, no language model).

An ASR model trained with ``--ctc-weight`` (imitkd's ``nll`` criterion, or any ``s2t_transformer`` with
``ctc_proj``) has two decoders: the attention decoder (``imitkd-generate``) and its CTC head. This runs the
CTC head, one encoder pass per batch (an all-blank path gives the likeliest non-blank label, so no
transcript is empty), and prints what ``fairseq-generate`` prints per sample, in its format, so
``create_wmt19_generated_dataset.py -a`` and the demo read either log::

    T-<id>\\t<reference>   H-<id>\\t<best-path log-prob>\\t<pieces>   D-<id>\\t<log-prob>\\t<detokenized>

    python examples/imitkd/ctc_transcribe.py DATA --config-yaml config.yaml --gen-subset dev_asr \\
        --path asr/checkpoint_best.pt > asr.dev.ctc.log
"""
import argparse
import sys

import torch


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="the manifests' directory")
    p.add_argument("--config-yaml", required=True, help="the model's data config")
    p.add_argument("--gen-subset", required=True, help="manifest to transcribe (<data>/<subset>.tsv)")
    p.add_argument("--path", required=True, help="checkpoint with a CTC head")
    p.add_argument("--max-tokens", type=int, default=50000, help="frames per batch (default 50000)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is available")
    return p


def transcribe(args, out=sys.stdout):
    import imitkd  # noqa: F401  (registers the task, applies the runtime fixes)
    from fairseq import checkpoint_utils

    from imitkd.ctc import ctc_greedy
    from imitkd.errors import ImitKDError

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [args.path], arg_overrides={"data": args.data, "config_yaml": args.config_yaml})
    model = models[0].to(device).eval()
    if getattr(model.encoder, "ctc_proj", None) is None:
        raise ImitKDError(f"{args.path}: the model has no CTC head (train it with --ctc-weight > 0)")
    task.load_dataset(args.gen_subset)
    dataset, tgt_dict = task.dataset(args.gen_subset), task.target_dictionary
    bpe = task.build_bpe(cfg.bpe)
    decode = bpe.decode if bpe is not None else (lambda x: x)
    batches = task.get_batch_iterator(dataset, max_tokens=args.max_tokens, max_positions=model.max_positions(),
                                      ignore_invalid_inputs=False).next_epoch_itr(shuffle=False)
    specials = {tgt_dict.pad(), tgt_dict.eos()}  # never in a CTC target (blank = bos); dropped if emitted
    with torch.inference_mode():
        for sample in batches:
            net_input = {k: v.to(device) for k, v in sample["net_input"].items() if k != "prev_output_tokens"}
            encoder_out = model.encoder(**net_input)
            lprobs, lengths = model.get_ctc_output([None, {"encoder_out": encoder_out}], None)
            labels, scores = ctc_greedy(lprobs, lengths, blank=0)
            for i, sample_id in enumerate(sample["id"].tolist()):
                target = sample["target"][i]
                ref = decode(tgt_dict.string(target[target.ne(tgt_dict.pad())], escape_unk=True))
                tokens = [t for t in labels[i] if t not in specials]
                if not tokens:  # all blank: the likeliest other label, as fairseq-generate's --min-len 1
                    frames = lprobs[: lengths[i], i].clone()
                    frames[:, [0, *specials]] = float("-inf")
                    tokens = [int(frames.argmax()) % frames.size(1)]
                pieces = tgt_dict.string(torch.tensor(tokens, dtype=torch.long))
                score = f"{scores[i].item():.4f}"
                print(f"T-{sample_id}\t{ref}\nH-{sample_id}\t{score}\t{pieces}\nD-{sample_id}\t{score}\t{decode(pieces)}",
                      file=out)


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    from imitkd.errors import ImitKDError

    try:
        transcribe(args)
    except (ImitKDError, OSError) as e:  # fairseq: OSError "Model file not found"
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
