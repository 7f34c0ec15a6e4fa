"""Inference on the composed model: prefill, greedy generation, candidate scoring and the imagination trace.

Each function takes the :class:`~affectverse_ds.model.affect_model.AffectVerseModel` as its first argument
(the model exposes them as methods). Inference uses the training preparation (``model.prepare_inputs``)
with kappa = 1 (nothing dropped), belief tokens in the same two places, left padding and the KV cache.
``kappa < 1`` at evaluation (paper Table 2) means the model observes only the first kappa of every A/V
stream, exactly as if the clip had been cut there (``ewm.context_source = "past"``): the towers run on the cut
clip alone (the waveform's first ``processing.audio_keep_samples`` samples, the first kept frame groups; see
``past_inputs.py``), both passes see the truncated sequence and the EWM treats all observed tokens as past.
Under ``"full"`` the truncated sequence gathers its A/V tokens from the full clip's towers (the code before
issue 24).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from affectverse_ds.data.batch import IM_END_ID, PAD_TOKEN_ID
from affectverse_ds.model import thinker_io
from affectverse_ds.model.ewm_context import ewm_inputs, ewm_states
from affectverse_ds.model.records import ImaginationTrace
from affectverse_ds.model.step_plan import split_ewm


@torch.no_grad()
def imagination_trace(model, batch: dict, kappa: float) -> ImaginationTrace:
    """Full observation, split at ``kappa`` (no dropout): what the EWM imagines vs the real future."""
    if model.ewm is None:
        raise RuntimeError("imagination_trace needs the EWM (ewm.enabled=true)")
    s = model._setup(batch, None, None, for_generation=True)
    b, dev = s.embeds.shape[0], s.embeds.device
    # the same split as training: whole video frame groups, context from the past pass (ewm.context_source)
    kap = torch.full((b,), float(kappa), dtype=torch.float64)
    split_ewm(s, s.regions, s.mask, s.answer, kap)
    if model.cfg.ewm.context_source == "past" and s.plan_past is not None:
        model.observe_past(batch, s, kap)  # the past pass reads the cut clip's own towers
    hidden = ewm_inputs(s, *(ewm_states(model._decoder, s, model.cfg.ewm) if s.needs_states else (None, None)))
    lengths = [n.to(dev) for n in s.lengths]
    split = [t.to(dev) for t in s.split]
    use = [n > 0 for n in lengths]
    z = [model.ewm.project(hidden[m], m) for m in range(2)]
    past = [(torch.arange(z[m].shape[1], device=dev)[None] < split[m][:, None]) & use[m][:, None]
            for m in range(2)]
    return ImaginationTrace(z, lengths, split, use, model.ewm.rollout(z, past))


def prefill(model, batch: dict, kappa: float):
    """The prepared prompt through the decoder: (prepared, last state (B, d), cache, next position (B,))."""
    prep = model.prepare_inputs(batch, kappa, for_generation=True)
    hidden, cache = model._decoder(prep.inputs_embeds, prep.attention_mask, prep.position_ids,
                                   cache=thinker_io.new_cache())
    return prep, hidden[:, -1], cache, _next_positions(prep.position_ids, prep.attention_mask)


def step(model, tokens: torch.Tensor, mask: torch.Tensor, next_pos: torch.Tensor, cache):
    """Decode ``tokens`` (B, n) after the cache: returns hidden (B, n, d), cache."""
    n = tokens.shape[1]
    x = thinker_io.embed_tokens(model.core, tokens)
    pos = (next_pos[:, None] + torch.arange(n, device=tokens.device)[None])[None].expand(3, -1, -1)
    return model._decoder(x, mask, pos, cache=cache)


@torch.no_grad()
def generate(model, batch: dict, max_new_tokens: int = 32, kappa: float = 1.0,
             eos_token_id: int = IM_END_ID, pad_token_id: int = PAD_TOKEN_ID) -> torch.Tensor:
    """Greedy decoding with the KV cache, belief tokens injected as in training.

    The prompt is each sample up to its ``answer_start`` (answer tokens, if any, are ignored).
    Returns (B, T) new token ids; after a sample's EOS the row holds ``pad_token_id``.
    """
    prep, last, cache, next_pos = prefill(model, batch, kappa)
    mask = prep.attention_mask
    b = mask.shape[0]
    done = torch.zeros(b, dtype=torch.bool, device=mask.device)
    out = []
    for _ in range(max_new_tokens):
        tok = thinker_io.lm_head(model.core, last).argmax(-1)  # (B,)
        tok = torch.where(done, torch.full_like(tok, pad_token_id), tok)
        out.append(tok)
        done |= tok == eos_token_id
        if bool(done.all()):
            break
        mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
        hidden, cache = step(model, tok[:, None], mask, next_pos, cache)
        last, next_pos = hidden[:, -1], next_pos + 1
    return torch.stack(out, dim=1) if out else torch.zeros(b, 0, dtype=torch.long, device=mask.device)


@torch.no_grad()
def score_candidates(model, batch: dict, candidates: list[list[int]], kappa: float = 1.0) -> torch.Tensor:
    """Log-likelihood of each candidate answer (token ids, e.g. the label words + ``<|im_end|>``) per sample.

    Returns (B, C) float32 sums of token log-probabilities (divide by ``len(candidates[c])`` to normalise).

    Two decoder calls whatever C: the prompt (prepared as for ``generate``, belief tokens injected) followed
    by the tokens every candidate starts with (e.g. "The character's emotional state is"), once per sample;
    then the KV cache repeated per candidate and all candidate suffixes in one right-padded, masked pass.
    The cache grows C-fold for that pass (B*C rows of the prompt's keys and values).
    """
    if any(len(t) == 0 for t in candidates):
        raise ValueError("score_candidates: every candidate needs at least one token")
    if not candidates:
        return torch.zeros(batch["attention_mask"].shape[0], 0, device=batch["attention_mask"].device)
    # input j of a candidate is its token j, whose state predicts token j + 1; the first n_shared inputs
    # are the same for every candidate, so their states are computed once per sample
    n_shared = min(_common_prefix(candidates), max(len(t) for t in candidates) - 1)
    head, cache, mask, next_pos = _prefill_shared(model, batch, kappa, candidates[0][:n_shared])
    b, dev, c = head.shape[0], head.device, len(candidates)
    # head[:, i] (i = 0 .. n_shared) predicts token i of every candidate long enough
    tgt = torch.zeros(n_shared + 1, c, dtype=torch.long)
    valid = torch.zeros(n_shared + 1, c, dtype=torch.bool)
    for k, toks in enumerate(candidates):
        m = min(n_shared + 1, len(toks))
        tgt[:m, k], valid[:m, k] = torch.tensor(toks[:m], dtype=torch.long), True
    rest = [k for k, t in enumerate(candidates) if len(t) - 1 > n_shared]
    logp = F.log_softmax(thinker_io.lm_head(model.core, head).float(), dim=-1)  # (B, n_shared + 1, V)
    picked = logp.gather(-1, tgt.to(dev)[None].expand(b, -1, -1))
    scores = (picked * valid.to(dev)[None]).sum(1)  # (B, C)
    if rest:
        tail, tail_tgt, tail_valid = _suffix_states(model, cache, mask, next_pos,
                                                    [candidates[k][n_shared:] for k in rest])
        logp = F.log_softmax(thinker_io.lm_head(model.core, tail[tail_valid]).float(), dim=-1)
        tok = logp.gather(-1, tail_tgt[tail_valid][:, None]).squeeze(-1)
        row = torch.arange(tail.shape[0], device=dev)[:, None].expand_as(tail_valid)[tail_valid]
        scores[:, rest] += tok.new_zeros(tail.shape[0]).index_add(0, row, tok).view(b, len(rest))
    return scores


def _prefill_shared(model, batch: dict, kappa: float, shared: list[int]):
    """The prompt (as :func:`prefill`) with ``shared`` token ids appended, in one decoder call.

    Returns the states of the prompt's last token and of the appended tokens (B, 1 + n, d), the cache,
    its attention mask (B, L' + n) and the next position id per sample (B,).
    """
    prep = model.prepare_inputs(batch, kappa, for_generation=True)
    x, mask, pos = prep.inputs_embeds, prep.attention_mask, prep.position_ids
    b, n = mask.shape[0], len(shared)
    next_pos = _next_positions(pos, mask)
    if n:
        ids = torch.tensor(shared, device=x.device)
        x = torch.cat([x, thinker_io.embed_tokens(model.core, ids)[None].expand(b, -1, -1).to(x.dtype)], 1)
        mask = torch.cat([mask, mask.new_ones(b, n)], dim=1)
        extra = next_pos[:, None] + torch.arange(n, device=x.device)[None]
        pos = torch.cat([pos, extra[None].expand(3, -1, -1)], dim=2)
    hidden, cache = model._decoder(x, mask, pos, cache=thinker_io.new_cache())
    # contiguous: lm_head on the strided view is several times slower (CPU)
    return hidden[:, -(n + 1):].contiguous(), cache, mask, next_pos + n


def _suffix_states(model, cache, mask: torch.Tensor, next_pos: torch.Tensor, suffixes: list[list[int]]):
    """Feed each of the K ``suffix[:-1]`` after the cache of every sample, all in one decoder call.

    The cache (B rows) is repeated to B*K rows (sample-major, in place) and the suffixes right-padded to
    the longest; padding is masked out and, coming after every real token, never seen by one (causal).
    Returns states (B*K, n, d), their targets ``suffix[1:]`` (B*K, n) and the real positions (B*K, n).
    """
    b, k, dev = mask.shape[0], len(suffixes), mask.device
    n = max(len(t) for t in suffixes) - 1
    inp = torch.full((k, n), PAD_TOKEN_ID, dtype=torch.long)
    tgt = torch.zeros(k, n, dtype=torch.long)
    valid = torch.zeros(k, n, dtype=torch.bool)
    for j, toks in enumerate(suffixes):
        m = len(toks) - 1
        inp[j, :m], tgt[j, :m], valid[j, :m] = torch.tensor(toks[:-1]), torch.tensor(toks[1:]), True
    inp, tgt, valid = (t.to(dev).repeat(b, 1) for t in (inp, tgt, valid))  # (B*K, n)
    thinker_io.repeat_cache(cache, k)
    full_mask = torch.cat([mask.repeat_interleave(k, dim=0), valid.to(mask.dtype)], dim=1)
    hidden, _ = step(model, inp, full_mask, next_pos.repeat_interleave(k), cache)
    return hidden, tgt, valid


def _next_positions(pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) next position id per sample: running max over real tokens + 1 (all three M-RoPE dims)."""
    return pos.masked_fill(mask[None] == 0, -1).amax(dim=(0, 2)) + 1


def _common_prefix(seqs: list[list[int]]) -> int:
    """Length of the longest token prefix all sequences share."""
    n = min(len(t) for t in seqs)
    for i in range(n):
        if any(t[i] != seqs[0][i] for t in seqs):
            return i
    return n
