#!/usr/bin/env python3
"""Transcribe a speech subset with the CTC head of a fairseq speech model (no language model).

An ASR model trained with ``--ctc-weight`` (imitkd's ``nll`` criterion, or any ``s2t_transformer`` with
``ctc_proj``) has two decoders: the attention decoder (``imitkd-generate``) and its CTC head. By default
this runs the CTC head's best path, one encoder pass per batch (an all-blank path gives the likeliest
non-blank label, so no transcript is empty). With ``--joint-beam N`` it decodes jointly instead: the
attention decoder's N-best and the best path, rescored by ``λ·log p_CTC + (1−λ)·log p_att + b·tokens``
(``--joint-ctc-weight λ``, ``--joint-length-bonus b``; imitkd/joint_decoding.py). It prints what
``fairseq-generate`` prints per sample, in its format, so ``create_wmt19_generated_dataset.py -a`` and the
demo read either log::

    T-<id>\\t<reference>   H-<id>\\t<score>\\t<pieces>   D-<id>\\t<score>\\t<detokenized>

(score: the best path's log-prob, or the joint score, in nats)

    python examples/imitkd/ctc_transcribe.py DATA --config-yaml config.yaml --gen-subset dev_asr \\
        --path asr/checkpoint_best.pt [--joint-beam 8] > asr.dev.ctc.log
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
    p.add_argument("--joint-beam", type=int, default=0,
                   help="decode jointly: rescore the attention decoder's N-best and the best path (default 0: best path only)")
    p.add_argument("--joint-ctc-weight", type=float, default=0.5, help="λ, the CTC share of the joint score (default 0.5)")
    p.add_argument("--joint-length-bonus", type=float, default=1.0,
                   help="b, nats added per token to the joint score (default 1.0)")
    return p


def transcribe(args, out=sys.stdout):
    import imitkd  # noqa: F401  (registers the task, applies the runtime fixes)
    from fairseq import checkpoint_utils

    from imitkd.errors import ImitKDError
    from imitkd.expert_checks import expert_kind
    from imitkd.joint_decoding import joint_decode

    if args.joint_beam < 0:
        raise ImitKDError(f"--joint-beam must be ≥ 0 (got {args.joint_beam})")
    if not 0.0 <= args.joint_ctc_weight <= 1.0:
        raise ImitKDError(f"--joint-ctc-weight must be in [0, 1] (got {args.joint_ctc_weight})")

    if args.max_tokens < 1:
        raise ImitKDError(f"--max-tokens must be ≥ 1 frame (got {args.max_tokens})")

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    state = checkpoint_utils.load_checkpoint_to_cpu(args.path)
    if expert_kind(state["cfg"]) != "speech":  # (its arch, else its task: expert_checks)
        task_name = getattr(state["cfg"].task, "_name", None)
        raise ImitKDError(f"{args.path}: a checkpoint of task {task_name}, not a speech model; --path needs an "
                          "ASR model trained with a CTC head (--task speech_to_text_kd --ctc-weight W)")
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [args.path], arg_overrides={"data": args.data, "config_yaml": args.config_yaml}, state=state)
    model = models[0].to(device).eval()
    if getattr(model.encoder, "ctc_proj", None) is None:
        raise ImitKDError(f"{args.path}: the model has no CTC head (train it with --ctc-weight > 0)")
    task.load_dataset(args.gen_subset)
    dataset, tgt_dict = task.dataset(args.gen_subset), task.target_dictionary
    longest = int(dataset.sizes.argmax())
    if dataset.sizes[longest] > args.max_tokens:
        ids = getattr(dataset, "ids", None)
        which = f"id={ids[longest]}, " if ids is not None else ""
        raise ImitKDError(f"--max-tokens {args.max_tokens} is below the longest utterance of {args.gen_subset} "
                          f"({which}{dataset.sizes[longest]} frames): raise it")
    bpe = task.build_bpe(cfg.bpe)
    decode = bpe.decode if bpe is not None else (lambda x: x)
    batches = task.get_batch_iterator(dataset, max_tokens=args.max_tokens, max_positions=model.max_positions(),
                                      ignore_invalid_inputs=False).next_epoch_itr(shuffle=False)
    specials = {tgt_dict.pad(), tgt_dict.eos()}  # never in a CTC target (blank = bos); dropped if emitted
    if args.joint_beam:
        cfg.generation.beam = cfg.generation.nbest = args.joint_beam
        # no longer than the encoder output (a longer candidate has no CTC alignment: −inf): this cuts the
        # beam's loops at the batch's encoder length instead of the decoder's positions
        cfg.generation.max_len_a, cfg.generation.max_len_b = encoder_frames_per_input_frame(model), 1
        generator = task.build_generator([model], cfg.generation)
    with torch.inference_mode():
        for sample in batches:
            sample = {k: ({n: t.to(device) for n, t in v.items()} if k == "net_input" else v) for k, v in sample.items()}
            if args.joint_beam:
                best = joint_decode(model, task, generator, sample, args.joint_ctc_weight, args.joint_length_bonus,
                                    specials, tgt_dict.pad(), tgt_dict.eos())
            else:
                best = best_paths(model, sample, specials)
            for i, sample_id in enumerate(sample["id"].tolist()):
                target = sample["target"][i]
                ref = decode(tgt_dict.string(target[target.ne(tgt_dict.pad())], escape_unk=True))
                tokens, score = best[i]
                pieces = tgt_dict.string(torch.tensor(tokens, dtype=torch.long))
                score = f"{score:.4f}"
                print(f"T-{sample_id}\t{ref}\nH-{sample_id}\t{score}\t{pieces}\nD-{sample_id}\t{score}\t{decode(pieces)}",
                      file=out)


def encoder_frames_per_input_frame(model) -> float:
    """An upper bound on the encoder's output frames per input frame (a fairseq ``Conv1dSubsampler``:
    1/2 per layer; 1 for an encoder without one)."""
    subsample = getattr(model.encoder, "subsample", None)
    if subsample is None or not hasattr(subsample, "get_out_seq_lens_tensor"):
        return 1.0
    return float(subsample.get_out_seq_lens_tensor(torch.tensor([10 ** 6]))[0]) / 10 ** 6


def best_paths(model, sample, specials):
    """The CTC best path of every row: ``(labels, log-prob)`` pairs; an all-blank path gives the likeliest
    other label, as fairseq-generate's --min-len 1."""
    from imitkd.ctc import ctc_greedy

    net_input = {k: v for k, v in sample["net_input"].items() if k != "prev_output_tokens"}
    encoder_out = model.encoder(**net_input)
    lprobs, lengths = model.get_ctc_output([None, {"encoder_out": encoder_out}], None)
    labels, scores = ctc_greedy(lprobs, lengths, blank=0)
    best = []
    for i, row in enumerate(labels):
        tokens = [t for t in row if t not in specials]
        if not tokens:
            frames = lprobs[: lengths[i], i].clone()
            frames[:, [0, *specials]] = float("-inf")
            tokens = [int(frames.argmax()) % frames.size(1)]
        best.append((tokens, scores[i].item()))
    return best


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
