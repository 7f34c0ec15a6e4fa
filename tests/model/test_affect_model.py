"""The composed model on the tiny backbone: gradients, missing modalities, inference == training preparation."""
from __future__ import annotations

import pytest
import torch

from affectverse_ds.data.batch import IM_END_ID
from affectverse_ds.model import injection as inj
from affectverse_ds.model.affect_model import build_model
from tests.support.models import nonzero_lora_b


def test_gradient_reaches_every_trainable_parameter_in_a_mixed_batch(tiny_cfg, batch_maker):
    torch.manual_seed(0)
    model = build_model(tiny_cfg("ewm.modality_dropout=0.0"), "cpu").train()
    nonzero_lora_b(model)
    batch = batch_maker.make([dict(video=4, audio=60), dict(video=4, audio=0), dict(video=0, audio=60),
                              dict(video=0, audio=0)])
    out = model(batch, kappa=0.75)
    out.loss.backward()
    names = [n for n, _ in model.trainable_parameters()]
    for part in ("lora_A", "lora_B", "imagine.0", "imagine.1", "mama_dual", "mama_single", "down.0", "down.1",
                 "w_r", "alpha", "up.", "up_norm", "tags", "type_emb"):
        assert any(part in n for n in names), part
    dead = [n for n, p in model.trainable_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


@pytest.mark.parametrize("specs", [[dict(video=4, audio=0), dict(video=2, audio=0)],
                                   [dict(video=0, audio=60), dict(video=0, audio=0)],
                                   [dict(video=0, audio=0)]], ids=["video_only", "audio_only", "text_only"])
def test_every_trainable_parameter_gets_a_gradient_when_a_modality_is_missing(tiny_cfg, batch_maker, specs):
    """ZeRO-2 safety: modules the batch did not use still get a (zero) gradient."""
    model = build_model(tiny_cfg(), "cpu").train()
    out = model(batch_maker.make(specs), generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert [n for n, p in model.trainable_parameters() if p.grad is None] == []
    assert torch.isfinite(out.loss)
    unused = "imagine.1" if specs[0]["audio"] == 0 else "imagine.0"
    assert all(p.grad.abs().sum() == 0 for n, p in model.trainable_parameters() if f"ewm.{unused}" in n)


def test_missing_modality_samples_and_text_only_gets_no_belief_tokens(tiny_cfg, batch_maker):
    model = build_model(tiny_cfg("ewm.modality_dropout=0.0"), "cpu").train()
    batch = batch_maker.make([dict(video=0, audio=60), dict(video=4, audio=0), dict(video=0, audio=0),
                              dict(video=4, audio=40)])
    prep = model.prepare_inputs(batch, kappa=0.8)
    beliefs = (prep.plan.kind == inj.BELIEF).sum(1).tolist()
    assert beliefs == [4, 4, 0, 8]  # N_b single, N_b single, none, 2 N_b dual
    assert prep.plan.n_dropped[2] == 0
    out = model(batch, kappa=0.8)
    assert torch.isfinite(out.loss) and out.sample_tokens.min() > 0


def test_training_samples_kappa_and_drops_tokens_eval_keeps_all(tiny_cfg, batch_maker):
    model = build_model(tiny_cfg(), "cpu")
    batch = batch_maker.make([dict(video=8, audio=100)])
    g = torch.Generator().manual_seed(0)
    ks = [float(model.train().prepare_inputs(batch, generator=g).kappa) for _ in range(20)]
    assert all(0.7 <= k < 1.0 for k in ks) and len(set(ks)) == 20
    assert model.train().prepare_inputs(batch, kappa=0.7).plan.n_dropped.item() > 0
    assert model.eval().prepare_inputs(batch).plan.n_dropped.item() == 0


def test_scoring_and_generation_match_the_training_forward(tiny_cfg, batch_maker, tiny_backbone_dir):
    """Left padding + KV cache at inference give the same numbers as the right-padded teacher-forced forward."""
    from affectverse_ds.model.backbone import load_tokenizer

    torch.manual_seed(0)
    model = build_model(tiny_cfg(), "cpu").eval()
    nonzero_lora_b(model)
    batch = batch_maker.make([dict(video=4, audio=60, answer="happy"), dict(video=0, audio=30, answer="happy"),
                              dict(video=2, audio=0, subtitle=None, answer="happy")])
    with torch.no_grad():
        out = model(batch)
    answer = load_tokenizer(tiny_backbone_dir)("happy", add_special_tokens=False).input_ids + [IM_END_ID]
    scores = model.score_candidates(batch, [answer[:1], answer, [IM_END_ID]])
    torch.testing.assert_close(-scores[:, 1], out.sample_nll, atol=1e-4, rtol=0)
    first = out.logits[torch.nonzero(out.label_sample[1:] != out.label_sample[:-1]).squeeze(1) + 1]
    first = torch.cat([out.logits[:1], first])  # logits predicting each sample's first answer token
    torch.testing.assert_close(scores[:, 0], first.log_softmax(-1)[:, answer[0]], atol=1e-4, rtol=0)
    gen = model.generate(batch, max_new_tokens=3)
    assert gen.shape[0] == 3 and torch.equal(gen[:, 0], first.argmax(-1))


@pytest.mark.parametrize("overrides", [("ewm.belief=none", "ewm.lambda_img=0"), ("ewm.belief=random", "ewm.lambda_img=0"),
                                       ("ewm.belief=pooling", "ewm.lambda_img=0"), ("ewm.belief=none",),
                                       ("ewm.belief=imagination", "ewm.boundary_residual=false"),
                                       ("ewm.context=self", "injection.positions=1", "ewm.boundary_residual=false")])
def test_ablations_run_and_give_every_parameter_a_gradient(tiny_cfg, batch_maker, overrides):
    """Ablations leave whole modules unused; they must still get a gradient on every step."""
    model = build_model(tiny_cfg(*overrides), "cpu").train()
    out = model(batch_maker.make([dict(video=4, audio=60), dict(video=2, audio=0)]),
                generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert [n for n, p in model.trainable_parameters() if p.grad is None] == []
    beliefs = (model.prepare_inputs(batch_maker.make([dict(video=4, audio=60)]), kappa=0.8).plan.kind == inj.BELIEF)
    assert int(beliefs.sum()) == (0 if "ewm.belief=none" in overrides else 8)


@pytest.mark.parametrize("kappa,extra", [(0.75, ()), (1.0, ()), (0.75, ("ewm.context_source=full",)),
                                         (0.75, ("ewm.img_grad_to_lora=true",)),
                                         (0.75, ("ewm.img_grad_to_lora=true", "ewm.context_source=full")),
                                         (0.75, ("injection.keep_mask=false",))])
def test_shared_prefix_step_equals_the_plain_two_pass_step(tiny_cfg, batch_maker, kappa, extra):
    """Computing the common prefix once (KV cache with grad) changes no loss and no gradient."""
    batch = batch_maker.make([dict(video=6, audio=60), dict(video=8, audio=80), dict(video=4, audio=0),
                              dict(video=0, audio=40), dict(video=0, audio=0)])
    results = []
    for share in (True, False):
        torch.manual_seed(0)
        model = build_model(tiny_cfg("ewm.modality_dropout=0.0", "ewm.temporal_split=" + str(kappa < 1), *extra),
                            "cpu")
        model.share_prefix = share
        model.min_shared_prefix = 1
        nonzero_lora_b(model)
        out = model.train()(batch, kappa=kappa if kappa < 1 else None)
        out.loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in model.trainable_parameters()}))
    (shared, g_shared), (plain, g_plain) = results
    assert shared.metrics["shared_prefix"] > 5 and plain.metrics["shared_prefix"] == 0
    torch.testing.assert_close(shared.loss, plain.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared.img_loss, plain.img_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared.logits, plain.logits, atol=1e-4, rtol=1e-4)
    for name in g_plain:
        torch.testing.assert_close(g_shared[name], g_plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_source_layer_reads_that_decoder_layer(tiny_cfg, batch_maker):
    """ewm.source_layer=k feeds the EWM the output of decoder layer k (the forward stops there)."""
    batch = batch_maker.make([dict(video=4, audio=60)])
    model = build_model(tiny_cfg("ewm.source_layer=0"), "cpu").eval()
    seen = {}
    model.ewm.register_forward_pre_hook(lambda mod, args: seen.update(h=args[0][0].clone()))
    model.prepare_inputs(batch)
    s = model._setup(batch, None, None, False)
    x0 = inj.gather_embeddings(s.plan0, s.embeds, None)
    with torch.no_grad():
        ref = model.core.model.language_model(inputs_embeds=x0, attention_mask=s.plan0.attention_mask,
                                              position_ids=s.plan0.position_ids, output_hidden_states=True)
    video = ref.hidden_states[1][s.plan0.kind == inj.VIDEO]  # hidden_states[0] is the embedding output
    torch.testing.assert_close(seen["h"][0, :video.shape[0]], video)


def test_export_hooks_and_imagination_trace(tiny_cfg, batch_maker, tmp_path):
    model = build_model(tiny_cfg(), "cpu").eval()
    state = model.ewm_state_dict()
    assert set(state) == set(model.ewm.state_dict()) and "alpha" in state
    model.thinker.save_pretrained(tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter_config.json").is_file()
    batch = batch_maker.make([dict(video=6, audio=60), dict(video=0, audio=30), dict(video=0, audio=0)])
    trace = model.imagination_trace(batch, kappa=0.5)
    # 6 frames = 3 temporal groups of 4 tokens: kappa 0.5 keeps 1.5 rounded = 2 whole groups
    assert trace.lengths[0].tolist() == [12, 0, 0] and trace.split[0].tolist() == [8, 0, 0]
    assert trace.use[1].tolist() == [True, True, False]
    assert trace.imagined[0].shape == (3, 3, 4, 64)
    assert torch.isfinite(trace.imagined[1]).all()
    assert build_model(tiny_cfg("ewm.enabled=false"), "cpu").ewm_state_dict() == {}


def _naive_scores(model, batch, candidates, kappa=1.0):
    """Reference for score_candidates: a fresh prefill per candidate, then the whole candidate teacher-forced."""
    import torch.nn.functional as F

    cols = []
    with torch.no_grad():
        for toks in candidates:
            prep, last, cache, next_pos = model._prefill(batch, kappa)
            t = torch.tensor(toks)
            score = F.log_softmax(model.core.lm_head(last).float(), -1)[:, t[0]]
            if len(toks) > 1:
                b = last.shape[0]
                mask = torch.cat([prep.attention_mask, prep.attention_mask.new_ones(b, len(toks) - 1)], dim=1)
                hidden, _ = model._step(t[:-1][None].expand(b, -1), mask, next_pos, cache)
                logp = F.log_softmax(model.core.lm_head(hidden).float(), -1)
                score = score + logp.gather(-1, t[1:][None, :, None].expand(b, -1, 1)).squeeze(-1).sum(-1)
            cols.append(score)
    return torch.stack(cols, dim=1)


@pytest.mark.parametrize("kind", ["shared_prefix", "no_common_prefix", "prefix_of_another", "single_tokens"])
def test_batched_candidate_scoring_equals_naive_per_candidate_scoring(tiny_cfg, batch_maker, tiny_backbone_dir,
                                                                      kind):
    """Prompt + common prefix once, all suffixes in one padded pass == a fresh prefill and pass per candidate."""
    from affectverse_ds.model.backbone import load_tokenizer

    tok = load_tokenizer(tiny_backbone_dir)
    enc = lambda text: tok(text, add_special_tokens=False).input_ids + [IM_END_ID]  # noqa: E731
    candidates = {
        # MELD-like: a long shared sentence, label words of different token lengths
        "shared_prefix": [enc(f"The character's emotional state is {w}.") for w in
                          ("anger", "joy", "sadness", "neutral", "disgust", "fear", "surprise", "bewilderment")],
        # nothing shared, lengths 1 .. 8
        "no_common_prefix": [[IM_END_ID], enc("happy"), enc("Sad, really sad."), enc("It is anger"),
                             enc("neutral face, calm voice and no words at all")],
        # one candidate is the shared prefix itself; duplicates allowed
        "prefix_of_another": [enc("The sentiment is")[:2], enc("The sentiment is positive."),
                              enc("The sentiment is positive."), enc("The sentiment")[:1]],
        "single_tokens": [[IM_END_ID], enc("happy")[:1], enc("sad")[:1]],
    }[kind]
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), "cpu").eval()
    nonzero_lora_b(model)
    batch = batch_maker.make([dict(video=4, audio=60), dict(video=0, audio=30), dict(video=2, audio=0, subtitle=None),
                              dict(video=0, audio=0)])
    for kappa in (1.0, 0.5):
        fast = model.score_candidates(batch, candidates, kappa=kappa)
        ref = _naive_scores(model, batch, candidates, kappa)
        assert fast.shape == (4, len(candidates)) and fast.dtype == torch.float32
        torch.testing.assert_close(fast, ref, atol=1e-4, rtol=0)
        assert torch.equal(fast.argmax(1), ref.argmax(1))


def test_batched_candidate_scoring_calls_the_decoder_twice(tiny_cfg, batch_maker):
    """Prompt + shared prefix, then all suffixes: the decoder call count does not grow with the number of candidates."""
    model = build_model(tiny_cfg("ewm.belief=none", "ewm.lambda_img=0"), "cpu").eval()
    batch = batch_maker.make([dict(video=2, audio=30), dict(video=0, audio=0)])
    calls = []
    handle = model.core.model.language_model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        for n in (2, 7):
            calls.clear()
            model.score_candidates(batch, [[785, 3668, 594, 1000 + c, 13, IM_END_ID] for c in range(n)])
            assert len(calls) == 2
    finally:
        handle.remove()
    with pytest.raises(ValueError):
        model.score_candidates(batch, [[785], []])
