"""The original research code's ``imit_kd_CE`` training step (the seed this package re-implements),
re-enacted as the ``criterion`` of ``task.train_step``: the ``reference`` mode of the training-step
benchmark. Only its cost matters here; its loss is the same ImitKD-full cross-entropy."""
import copy


class ReferenceStep:
    """The seed's ``imit_kd_CE`` training forward, used as the ``criterion`` of ``task.train_step``.
    What the original criterion's ``forward`` did, in its order (a fairseq criterion holding the expert
    as a plain attribute, and a ``generate_imit_batch`` helper that mixed gold and generated prefixes):

    1. a teacher-forced student forward on the gold prefix, only for the accuracy (its autograd graph
       stays alive until the step returns);
    2. the expert source re-encoded from the transcript strings in a Python loop (``encode_line``);
    3. ``copy.deepcopy`` of the batch (audio included), and again inside ``generate_imit_batch``;
    4. a ``SequenceGenerator`` (beam 1, ``max_len`` = the batch's decoder-input width, i.e. every
       rollout capped by the longest gold) built every step and run on the **whole** batch;
    5. per sentence, gold (p = β) or rollout prefix, built in a Python loop and re-collated;
    6. ``P_E = softmax(expert(...)).float()`` (B×T×V, fp32), zeroed at padded prefix positions; the
       expert runs in train mode (the trainer's ``criterion.train()`` reached it), under ``no_grad``;
    7. ``loss = −Σ P_E · log_softmax(student)``, ``sample_size = ntokens``.
    """

    def __init__(self, task, expert_model, expert_src_dict, beta: float):
        self.tgt_dict, self.src_dict = task.target_dictionary, expert_src_dict
        self.pad, self.eos = self.tgt_dict.pad(), self.tgt_dict.eos()
        self.expert, self.beta = expert_model, beta
        self.expert.requires_grad = False  # the seed's no-op: parameters keep requires_grad=True
        for p in self.expert.parameters():
            p.requires_grad_(True)

    def __call__(self, model, sample):
        import torch
        import torch.nn.functional as F
        from fairseq.data import data_utils

        net_input, target = sample["net_input"], sample["target"]
        device = target.device
        # 1. extra forward for the accuracy, with graph
        net_output = model(net_input["src_tokens"], net_input["src_lengths"], net_input["prev_output_tokens"])
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        gold_mask = target.ne(self.pad)
        n_correct = lprobs.argmax(-1).masked_select(gold_mask).eq(target.masked_select(gold_mask)).sum()
        # 2. expert source from the transcripts, every step
        ids = [self.src_dict.encode_line(line, add_if_not_exist=False, append_eos=True).long()
               for line in net_input["src_text"]]
        src_lengths = torch.tensor([len(t) for t in ids])
        src = data_utils.collate_tokens(ids, self.src_dict.pad(), self.src_dict.eos(), left_pad=False).to(device)
        # 3.–5. deepcopy, whole-batch greedy generation, prefixes in a Python loop
        s = copy.deepcopy(sample)
        del s["net_input"]["src_text"]
        s = self.generate_imit_batch(model, s)
        prev = s["net_input"]["prev_output_tokens"]
        # 6. expert distribution, fp32 B×T×V
        self.expert.train()
        with torch.no_grad():
            probs_e = F.softmax(self.expert(src, src_lengths.to(device), prev)[0], dim=-1).float().detach()
        probs_e[prev.eq(self.pad)] = 0
        # 7. cross-entropy with the student's full log-softmax
        logp_s = model.get_normalized_probs(model(net_input["src_tokens"], net_input["src_lengths"], prev),
                                            log_probs=True)
        loss = -(probs_e * logp_s).sum()
        del net_output  # (held until here, as in the seed)
        return loss, sample["ntokens"], {"loss": loss.data, "ntokens": sample["ntokens"],
                                         "nsentences": target.size(0), "sample_size": sample["ntokens"],
                                         "n_correct": n_correct.data, "total": gold_mask.sum().data,
                                         "n_positions": prev.ne(self.pad).sum().data,
                                         "rollout_rows": self._rollout_rows}

    def generate_imit_batch(self, model, s):
        import torch
        from fairseq.data import data_utils
        from fairseq.sequence_generator import SequenceGenerator

        with torch.no_grad():
            model.eval()
            gold_prev = s["net_input"]["prev_output_tokens"]
            gold = gold_prev.tolist()
            width = gold_prev.size(1)
            generator = SequenceGenerator([model], self.tgt_dict, beam_size=1, max_len=width)
            hyps = generator._generate(copy.deepcopy(s))
            use_student = torch.distributions.Categorical(torch.tensor([self.beta, 1.0 - self.beta])).sample(
                (len(gold),)).eq(1)
            self._rollout_rows = int(use_student.sum())
            prevs = []
            for b in range(len(gold)):
                if use_student[b]:
                    h = hyps[b][0]["tokens"]
                    if h[-1] == self.eos:
                        prevs.append(torch.cat([h.new([self.eos]), h[:-1]]))
                    else:
                        prevs.append(torch.cat([h.new([self.eos]), h]))
                else:
                    prevs.append(torch.tensor(gold[b]))
            s["net_input"]["prev_output_tokens"] = data_utils.collate_tokens(
                prevs, self.pad, self.eos, left_pad=False).to(gold_prev.device)
            model.train()
        return s


