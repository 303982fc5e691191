"""rlbook's losses against TRL 1.16's own loss code on the same tensors (rlbook.trl_bridge), and the
k1-in-the-reward GRPO subclass against a hand-written computation of the same batch. Skipped without
TRL, an optional extra (pip install -e '.[trl]'; CI installs the bench extra, which has it)."""

import pytest
import torch
from transformers import TrainerCallback

pytest.importorskip("trl", reason="TRL is an optional extra: pip install -e '.[trl]'")

from rlbook import lm, pretrained, tasks, trl_bridge as tb  # noqa: E402
from rlbook.advantages import group_advantages  # noqa: E402
from rlbook.grpo import grpo_loss  # noqa: E402
from rlbook.preference import ipo_loss  # noqa: E402
from rlbook.train import pair_logprobs, sequence_logprobs  # noqa: E402

P, G = 8, 4


def close(result, loss_rel=1e-6, grad_rel=1e-5):
    return (result["loss_diff"] <= loss_rel * max(1.0, abs(result["rlbook"]))
            and result["grad_diff"] <= grad_rel * result["grad_scale"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    world = tasks.SortWorld(n_digits=5)  # chapter 06's model: seconds to train when not cached
    model, tok, _ = pretrained.sft_model(world, dict(d_model=64), dict(steps=90), progress=False, device="cpu")
    tiny = tb.TinyTRL(model, tok, world, tmp_path_factory.mktemp("trl"))
    theta = lm.perturbed_copy(model, 0.05, 1).state_dict()  # pi_theta != pi_old != pi_ref
    return world, model, tok, tiny, theta


@pytest.fixture(scope="module")
def grpo_batch(setup):
    world, model, tok, _, _ = setup
    torch.manual_seed(0)
    batch, _ = tasks.sample_groups(world, model, tok, P, G, seed=1, temperature=2.0)
    assert len(set(batch.lengths.tolist())) > 1  # lengths differ, so the aggregations differ
    rewards = tasks.SortWorld(n_digits=5, reward_type="position").score(batch, tok)  # few exact answers at T = 2
    with torch.no_grad():
        old = lm.completion_logprobs(lm.perturbed_copy(model, 0.05, 2), batch)
        ref = lm.completion_logprobs(model, batch)
    advantages = group_advantages(rewards, G)
    assert (advantages != 0).sum() >= len(batch) // 2  # the policy term is tested, not only the KL
    return batch, old, ref, advantages


@pytest.mark.parametrize("aggregation", ["grpo", "token", "dr_grpo"])
def test_grpo_loss_and_gradient_equal_trls(setup, grpo_batch, aggregation):
    *_, tiny, theta = setup
    batch, old, ref, adv = grpo_batch
    trainer = tiny.grpo_trainer(P, G, loss_type=tb.GRPO_LOSS_TYPES[aggregation], beta=0.04,
                                use_bias_correction_kl=False)
    trainer.model.load_state_dict(theta)
    r = tb.compare_grpo(trainer, batch, old, ref, adv, aggregation, beta=0.04)
    assert abs(r["rlbook"]) > 1e-3 and close(r)


def test_aggregations_give_different_losses(setup, grpo_batch):
    *_, tiny, theta = setup
    batch, old, ref, adv = grpo_batch
    trainer = tiny.grpo_trainer(P, G, loss_type="grpo", beta=0.04, use_bias_correction_kl=False)
    trainer.model.load_state_dict(theta)
    logp = lm.completion_logprobs(trainer.model, batch)
    values = [grpo_loss(logp, old, ref, adv, batch.completion_mask, beta=0.04, aggregation=a,
                        max_length=trainer.max_completion_length).item() for a in ("grpo", "token", "dr_grpo")]
    assert min(abs(a - b) for i, a in enumerate(values) for b in values[i + 1:]) > 1e-4


def test_bias_correction_keeps_the_on_policy_loss_and_changes_its_gradient(setup, grpo_batch):
    *_, tiny, theta = setup
    batch, _, ref, adv = grpo_batch
    trainer = tiny.grpo_trainer(P, G, loss_type="grpo", beta=0.04)  # use_bias_correction_kl: TRL's default True
    assert trainer.args.use_bias_correction_kl
    trainer.model.load_state_dict(theta)
    r = tb.compare_grpo(trainer, batch, None, ref, adv, "grpo", beta=0.04)
    assert r["loss_diff"] <= 1e-6 * max(1.0, abs(r["rlbook"]))
    assert r["grad_diff"] > 0.1 * r["grad_scale"]


@pytest.fixture(scope="module")
def pairs(setup):
    world, model, tok, _, _ = setup
    torch.manual_seed(0)
    return tb.finished_pairs(tasks.preference_pairs(world, model, tok, 64, 4, seed=2), tok.eos_token_id, 32)


@pytest.mark.parametrize("loss, loss_type", [("dpo", "sigmoid"), ("ipo", "ipo")])
def test_dpo_and_length_normalised_ipo_equal_trls(setup, pairs, loss, loss_type):
    _, model, _, tiny, theta = setup
    assert len(pairs) >= 16
    trainer = tiny.dpo_trainer(tiny.dpo_dataset(pairs), beta=0.1, loss_type=[loss_type])
    trainer.model.load_state_dict(theta)
    assert close(tb.compare_pairs(trainer, pairs, model, beta=0.1, loss=loss))


def test_trls_ipo_is_not_the_summed_form(setup, pairs):
    _, model, _, tiny, theta = setup
    trainer = tiny.dpo_trainer(tiny.dpo_dataset(pairs), beta=0.1, loss_type=["ipo"])
    trainer.model.load_state_dict(theta)
    ref_c, ref_r = pair_logprobs(model, pairs)
    with torch.no_grad():
        summed = ipo_loss(sequence_logprobs(trainer.model, pairs.chosen), sequence_logprobs(trainer.model, pairs.rejected),
                          ref_c, ref_r, beta=0.1)
        theirs = tb.trl_dpo_loss(trainer, ref_c, ref_r)
    assert abs(summed.item() - theirs.item()) > 1e-3 * abs(theirs.item())


def test_kto_with_mismatched_pair_z0_equals_trls(setup):
    world, model, tok, tiny, theta = setup
    torch.manual_seed(0)
    fb = tasks.unpaired_feedback(world, model, tok, 32, 0.5, seed=3)
    done = ((fb.batch.completion_ids == tok.eos_token_id) & (fb.batch.completion_mask == 1)).any(1)
    rows = done.nonzero().squeeze(1)
    batch, desirable = fb.batch.index(rows), fb.desirable[rows]
    assert 0 < int(desirable.sum()) < len(rows)
    trainer = tiny.kto_trainer(tiny.kto_dataset(batch, desirable), beta=0.1)
    trainer.model.load_state_dict(theta)
    r = tb.compare_kto(trainer, batch, desirable, model, beta=0.1)
    assert r["z0"] > 0 and close(r)


# ---------------------------------------------------------------- k1 in the reward

def test_k1_reward_subclass_matches_a_hand_computation(setup):
    world, model, tok, tiny, theta = setup
    beta = 0.1
    trainer = tiny.grpo_trainer(P, G, trainer_cls=tb.KLRewardGRPOTrainer, beta=beta)
    assert trainer.beta == 0.0 and trainer.reward_beta == beta and trainer.ref_model is not None
    trainer.model.load_state_dict(theta)
    out = tb.generation_batch(trainer, seed=0)
    batch = tb.as_batch(out)
    mask = batch.completion_mask
    with torch.no_grad():
        old = lm.completion_logprobs(trainer.model, batch)
        ref = lm.completion_logprobs(model, batch)
    # by hand: R'_i = R_i - beta sum_t (log pi_old - log pi_ref); A = (R' - group mean) / (group std + 1e-4)
    words = tok.convert_ids_to_tokens(list(range(len(tok))))
    shaped = []
    for i in range(len(batch)):
        n = int(mask[i].sum())
        prompt = [words[j] for j in batch.prompt_ids[i].tolist() if words[j] != lm.BOS]
        reward = world.reward(prompt, [words[j] for j in batch.completion_ids[i, :n].tolist()])
        shaped.append(reward - beta * sum(old[i, t].item() - ref[i, t].item() for t in range(n)))
    adv = []
    for g in range(len(batch) // G):
        xs = shaped[g * G:(g + 1) * G]
        mean = sum(xs) / G
        std = (sum((x - mean) ** 2 for x in xs) / (G - 1)) ** 0.5
        adv += [(x - mean) / (std + 1e-4) for x in xs]
    adv = torch.tensor(adv)
    assert torch.allclose(out["advantages"], adv, atol=1e-5)
    plain = group_advantages(world.score(batch, tok), G, eps=1e-4)
    assert (out["advantages"] - plain).abs().max() > 1e-2  # the penalty changed the advantages
    # the loss: TRL's "dapo" token mean of -A * ratio, no KL term; gradient against rlbook's grpo_loss
    trainer.current_gradient_accumulation_steps = 1
    theirs = trainer._compute_loss(trainer.model, out)
    logp = lm.completion_logprobs(trainer.model, batch)
    ours = grpo_loss(logp, old, None, adv.float(), mask, beta=0.0, aggregation="token")
    params = list(trainer.model.parameters())
    g_theirs, g_ours = torch.autograd.grad(theirs, params), torch.autograd.grad(ours, params)
    scale = max(g.abs().max().item() for g in g_ours)
    assert max((a - b).abs().max().item() for a, b in zip(g_theirs, g_ours)) < 1e-4 * scale


def test_k1_reward_subclass_trains_and_rejects_what_it_does_not_support(setup):
    *_, tiny, _ = setup
    trainer = tiny.grpo_trainer(P, G, steps=2, trainer_cls=tb.KLRewardGRPOTrainer, beta=0.1, learning_rate=1e-3)
    kl = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            kl.append(trainer._metrics["train"]["kl_in_reward"][-1])

    trainer.add_callback(Record())
    trainer.train()
    assert len(kl) == 2 and kl[0] == pytest.approx(0.0, abs=1e-6)  # pi = pi_ref at the first step
    with pytest.raises(ValueError, match="scale_rewards"):
        tiny.grpo_trainer(P, G, trainer_cls=tb.KLRewardGRPOTrainer, beta=0.1, scale_rewards="batch")
    with pytest.raises(ValueError, match="kl_estimator"):
        tiny.grpo_trainer(P, G, trainer_cls=lambda *a, **k: tb.KLRewardGRPOTrainer(*a, kl_estimator="k4", **k),
                          beta=0.1)
