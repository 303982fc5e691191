"""The algorithm seam: each algorithm's maths against hand-written formulas, and the loop's
contract (old log-probs, the reference, extra parameters, metrics, misconfiguration)."""

import math
import statistics

import pytest
import torch

from rlbook.advantages import rloo_advantages
from rlbook.algorithms import GRPO, PPO, REINFORCE, Algorithm, KLPlacement, Rollout
from rlbook.kl import k1, kl_estimate
from rlbook.lm import Batch, completion_logprobs, frozen_copy, trainable_copy
from rlbook.policy_gradient import reinforce_loss, weights
from rlbook.ppo import AdaptiveKLController, ppo_clip_loss
from rlbook.train import RLConfig, on_policy
from rlbook.value import critic_model

MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]])
B, T = MASK.shape
CONFIG = RLConfig(iterations=2, prompts_per_iter=2, group_size=2, inner_steps=2, lr=1e-2)


def rollout_of(rewards, old_logp, ref_logp=None, group_size=2):
    batch = Batch(torch.zeros(B, 1, dtype=torch.long), torch.ones(B, 1, dtype=torch.long),
                  torch.zeros(B, T, dtype=torch.long), MASK)
    return Rollout(batch, rewards, old_logp, ref_logp, group_size)


def logps(seed=0):
    g = torch.Generator().manual_seed(seed)
    old = (-torch.rand(B, T, generator=g, dtype=torch.float64) * 3 - 0.05) * MASK
    ref = ((old - 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=0.0)) * MASK
    return old, ref


def run(algorithm, prepare_rollout=None, loss_step=None):
    """prepare then loss, as the loop calls them."""
    with torch.no_grad():
        state, metrics = algorithm.prepare(prepare_rollout)
    return state, metrics, algorithm.loss(loss_step, prepare_rollout, state)


# ---------------------------------------------------------------- each algorithm's maths

def test_reinforce_puts_the_sequence_reward_at_the_last_token():
    rewards = torch.tensor([1.0, 0.0, 3.0, 2.0])
    rollout = rollout_of(rewards, torch.zeros(B, T))
    total = REINFORCE("total").phi(rollout)
    assert torch.equal(total, rewards.unsqueeze(1) * MASK)
    assert torch.equal(REINFORCE("rewards_to_go").phi(rollout), total)  # one reward at the end: G_t = R
    rloo = REINFORCE("total", "rloo").phi(rollout)
    assert torch.allclose(rloo, rloo_advantages(rewards, 2).unsqueeze(1) * MASK)  # whole sequences, ragged or not
    logp = (-torch.rand(B, T) * MASK).requires_grad_()
    _, metrics, (loss, _) = run(REINFORCE("total", "rloo"), rollout, logp)
    by_hand = -sum(rloo[i, 0].item() * logp[i, :int(MASK[i].sum())].sum().item() for i in range(B)) / B
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    assert set(metrics) == {"phi_mean", "phi_std"}
    assert metrics["phi_std"].item() == pytest.approx(statistics.stdev(rloo[MASK.bool()].tolist()), rel=1e-5)


@pytest.mark.parametrize("placement", ["reward", "loss"])
@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_placement_gradient_matches_a_hand_written_surrogate(estimator, placement):
    old, ref_logp = logps(0)
    logp = old.clone().requires_grad_(True)
    scores = torch.tensor([1.0, 0.0, 0.5, 2.0], dtype=torch.float64)
    _, metrics, (loss, _) = run(KLPlacement(estimator, placement, beta=0.3), rollout_of(scores, old, ref_logp), logp)
    (grad,) = torch.autograd.grad(loss, logp)
    # by hand: sequence returns, group-mean baseline, surrogate -A sum_t logp (+ beta sum_t k in the loss)
    k = kl_estimate(old, ref_logp, estimator) * MASK
    R = scores - (0.3 * k.sum(1) if placement == "reward" else 0)
    A = R - R.view(2, 2).mean(1).repeat_interleave(2)
    expected = -(A[:, None] * MASK) / B
    if placement == "loss":
        dk = {"k1": torch.ones_like(old), "k3": 1 - (ref_logp - old).exp()}[estimator]
        expected = expected + 0.3 * dk * MASK / B
    assert torch.allclose(grad, expected)
    assert metrics["k1_kl"].item() == pytest.approx(((old - ref_logp) * MASK).sum(1).mean().item())


def _grpo_by_hand(logp, old, ref, adv, eps, beta, estimator):
    """The "grpo" aggregation written out token by token: 1/B sum_i 1/|o_i| sum_t l_it."""
    total = 0.0
    for i in range(B):
        n = int(MASK[i].sum())
        s = 0.0
        for t in range(n):
            r = math.exp(logp[i, t] - old[i, t])
            s -= min(r * adv[i], min(max(r, 1 - eps), 1 + eps) * adv[i])
            if beta:
                s += beta * kl_estimate(logp[i, t:t + 1], ref[i, t:t + 1], estimator).item()
        total += s / n
    return total / B


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_grpo_with_the_kl_in_the_reward_uses_the_estimator_it_is_given(estimator):
    old, ref = logps(6)
    logp = old + 0.1 * torch.randn(B, T, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * MASK
    R = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    algorithm = GRPO(beta=0.5, kl_in="reward", kl_estimator=estimator)
    _, _, (loss, _) = run(algorithm, rollout_of(R, old, ref), logp)
    penalised = [R[i].item() - 0.5 * kl_estimate(old[i, :int(MASK[i].sum())], ref[i, :int(MASK[i].sum())],
                                                   estimator).sum().item() for i in range(B)]
    adv = [(penalised[i] - statistics.mean(penalised[i // 2 * 2:i // 2 * 2 + 2]))
           / (statistics.stdev(penalised[i // 2 * 2:i // 2 * 2 + 2]) + 1e-6) for i in range(B)]
    assert loss.item() == pytest.approx(_grpo_by_hand(logp, old, ref, adv, 0.2, 0.0, estimator), rel=1e-8)
    assert GRPO(beta=0.5, kl_in="reward").kl_estimator == "k1" and GRPO().kl_estimator == "k3"


def test_grpo_kl_in_the_loss_matches_the_formula():
    old, ref = logps(7)
    logp = old + 0.3 * torch.randn(B, T, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * MASK
    R = torch.tensor([1.0, 0.0, 2.0, 1.0], dtype=torch.float64)
    state, metrics, (loss, step) = run(GRPO(beta=0.1), rollout_of(R, old, ref), logp)
    adv = [(R[i].item() - statistics.mean(R[i // 2 * 2:i // 2 * 2 + 2].tolist()))
           / (statistics.stdev(R[i // 2 * 2:i // 2 * 2 + 2].tolist()) + 1e-6) for i in range(B)]
    assert loss.item() == pytest.approx(_grpo_by_hand(logp, old, ref, adv, 0.2, 0.1, "k3"), rel=1e-8)
    assert metrics["zero_adv_groups"].item() == 0.0
    assert metrics["drift_kl"].item() == pytest.approx(sum(k1(old[i], ref[i]).sum().item() for i in range(B)) / B)


def test_grpo_std_scaling_cancels_beta_in_groups_whose_task_rewards_tie():
    """Documented: with the KL in the reward and scale="std", a tied group's advantages are
    -(K_i - mean K) / std K whatever beta is; scale="none" keeps beta."""
    old, ref = logps(8)
    tied = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    adv = {beta: GRPO(beta=beta, kl_in="reward").prepare(rollout_of(tied, old, ref))[0]["advantages"]
           for beta in (0.01, 1.0)}
    assert adv[1.0].abs().max() > 0.5
    assert torch.allclose(adv[0.01], adv[1.0], atol=1e-3)  # only eps = 1e-6 in the std tells them apart
    unscaled = {beta: GRPO(beta=beta, kl_in="reward", scale="none").prepare(rollout_of(tied, old, ref))[0]["advantages"]
                for beta in (0.01, 1.0)}
    assert torch.allclose(unscaled[1.0], 100 * unscaled[0.01])


# ---------------------------------------------------------------- the loop's contract

class Probe(Algorithm):
    """Records what the loop hands over: old_logp against a separate forward of the sampling
    policy (before any update), the grad mode in prepare, the rollout, per-step metrics."""

    def __init__(self, policy, needs_reference=False):
        self.policy, self.needs_reference, self.calls = policy, needs_reference, []

    def prepare(self, rollout):
        self.calls.append(("prepare", torch.is_grad_enabled(),
                           (completion_logprobs(self.policy, rollout.batch) - rollout.old_logp).abs().max().item()))
        return {"step": 0}, {"round_metric": 7.0}

    def loss(self, logp, rollout, state, logits=None):
        self.calls.append(("loss", logp.requires_grad, rollout.ref_logp is not None))
        step = state["step"]
        state["step"] += 1
        return -(logp * rollout.mask).sum() / rollout.mask.sum(), {"step_index": float(step)}


def test_loop_hands_the_algorithm_the_sampling_policys_log_probs_and_averages_step_metrics(sentiment):
    world, tok, model = sentiment
    policy = trainable_copy(model)
    probe = Probe(policy)
    rollouts = []
    config = RLConfig(iterations=2, prompts_per_iter=2, group_size=2, inner_steps=3, lr=1e-2)
    history = on_policy(policy, tok, world, probe, config, progress=False,
                        callback=lambda it, p, rollout, h: rollouts.append((it, rollout)))
    prepares = [c for c in probe.calls if c[0] == "prepare"]
    assert [c[1] for c in prepares] == [False, False]  # prepare runs without autograd
    assert all(c[2] < 1e-6 for c in prepares)  # old_logp = the sampling policy's log-probs
    assert sum(c[0] == "loss" for c in probe.calls) == 6 and all(c[1] and not c[2] for c in probe.calls if c[0] == "loss")
    assert history["step_index"] == [1.0, 1.0]  # mean of steps 0, 1, 2
    assert history["round_metric"] == [7.0, 7.0] and len(history["loss"]) == 2
    assert [it for it, _ in rollouts] == [0, 1] and isinstance(rollouts[0][1], Rollout)
    assert torch.equal(rollouts[0][1].true_rewards, rollouts[0][1].rewards)


def test_loop_runs_the_reward_function_and_the_reference_without_autograd(sentiment):
    world, tok, model = sentiment
    policy, ref = trainable_copy(model), frozen_copy(model)
    seen = []

    def reward_fn(batch):
        seen.append(torch.is_grad_enabled())
        return batch.completion_ids[:, 0].float()

    probe = Probe(policy, needs_reference=True)
    on_policy(policy, tok, world, probe, CONFIG, ref=ref, reward_fn=reward_fn, progress=False)
    assert seen == [False, False]
    assert all(c[2] for c in probe.calls if c[0] == "loss")  # ref_logp reached the loss
    with pytest.raises(ValueError, match="ref"):
        on_policy(trainable_copy(model), tok, world, Probe(policy, needs_reference=True), CONFIG, progress=False)


def test_misconfiguration_fails_at_construction_or_before_the_first_round(sentiment):
    world, tok, model = sentiment
    critic = critic_model(model)
    for bad in [dict(iterations=0), dict(inner_steps=0), dict(group_size=0), dict(prompts_per_iter=1.5),
                dict(lr=float("nan")), dict(lr=0.0), dict(temperature=-1.0), dict(max_grad_norm=0.0)]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            RLConfig(**bad)
    for make, name in [(lambda: PPO(critic, variant="klpen"), "kl_controller"), (lambda: PPO(critic, lam=1.5), "lam"),
                       (lambda: PPO(critic, gamma=float("nan")), "gamma"), (lambda: PPO(critic, drift_beta=-1.0), "drift_beta"),
                       (lambda: PPO(critic, variant="trpo"), "variant"), (lambda: PPO(critic, value_clip=0.0), "value_clip"),
                       (lambda: REINFORCE(kind="gae"), "kind"), (lambda: REINFORCE(baseline="median"), "baseline"),
                       (lambda: KLPlacement("k1", "advantage"), "placement"), (lambda: KLPlacement("k4"), "estimator"),
                       (lambda: KLPlacement(beta=float("nan")), "beta")]:
        with pytest.raises(ValueError, match=name):
            make()
    for bad in [dict(beta=-1.0), dict(beta=float("nan")), dict(eps=0.0), dict(aggregation="x"), dict(scale="mad"),
                dict(kl_in="both"), dict(kl_estimator="k9"), dict(eps_high=-0.1)]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            GRPO(**bad)
    # an algorithm that needs pi_ref fails before sampling anything; so does a frozen policy
    for algorithm in [GRPO(beta=0.04), PPO(critic, drift_beta=0.1), KLPlacement()]:
        with pytest.raises(ValueError, match="ref"):
            on_policy(trainable_copy(model), tok, world, algorithm, CONFIG, progress=False)
    with pytest.raises(ValueError, match="policy"):
        on_policy(frozen_copy(model), tok, world, REINFORCE(), CONFIG, progress=False)


@pytest.mark.parametrize("make", [lambda critic: REINFORCE("rewards_to_go", "rloo"),
                                  lambda critic: GRPO(beta=0.0, aggregation="dr_grpo"),
                                  lambda critic: KLPlacement("k3", "loss", beta=0.1)])
def test_each_algorithm_trains_in_the_loop(trained_sentiment, make):
    world, tok, model = trained_sentiment  # grammatical often enough for rewards (and advantages) to differ
    policy = trainable_copy(model)
    algorithm = make(None)
    ref = frozen_copy(model) if algorithm.needs_reference else None
    config = RLConfig(iterations=2, prompts_per_iter=4, group_size=4, inner_steps=2, lr=1e-2)
    history = on_policy(policy, tok, world, algorithm, config, ref=ref, progress=False)
    assert len(history["true_reward"]) == 2 and all(math.isfinite(x) for x in history["loss"])
    moved = [not torch.equal(p, q) for p, q in zip(policy.parameters(), model.parameters())]
    assert any(moved)


def test_grpo_in_the_loop_logs_its_metrics_and_its_first_step_is_on_policy(sentiment):
    world, tok, model = sentiment
    config = RLConfig(iterations=3, prompts_per_iter=4, group_size=4, inner_steps=1, lr=1e-2, seed=0)
    history = on_policy(trainable_copy(model), tok, world, GRPO(beta=0.04), config, ref=frozen_copy(model),
                        progress=False)
    for key in ["true_reward", "policy_loss", "clip_frac", "approx_kl", "drift_kl", "k3_per_token", "zero_adv_groups"]:
        assert len(history[key]) == 3 and all(math.isfinite(v) for v in history[key])
    # one inner step: pi_theta = pi_old = the sampling policy, so nothing is clipped and approx KL is 0
    assert history["clip_frac"] == [0.0] * 3 and max(history["approx_kl"]) < 1e-7
    assert history["k3_per_token"][0] == 0.0  # round 0: the policy is still the reference


def test_ppo_steps_its_critic_and_its_first_inner_step_is_on_policy(sentiment):
    """With a zero critic, lambda = gamma = 1 and no drift penalty, every token's return is the
    sequence's reward; the critic the algorithm brings is trained without any extra wiring."""
    world, tok, model = sentiment
    critic = critic_model(model)
    before = [p.detach().clone() for p in critic.parameters()]
    algorithm = PPO(critic, drift_beta=0.0, lam=1.0, value_clip=None)
    captured = []
    original_loss = algorithm.loss

    def loss(logp, rollout, state, logits=None):
        captured.append({k: v for k, v in state.items() if k != "fresh_values"})
        return original_loss(logp, rollout, state, logits)

    algorithm.loss = loss
    rollouts = []
    first_token_reward = lambda batch: batch.completion_ids[:, 0].float() / 10  # varied: advantages not all 0
    history = on_policy(trainable_copy(model), tok, world, algorithm, CONFIG, reward_fn=first_token_reward,
                        progress=False, callback=lambda it, p, rollout, h: rollouts.append(rollout))
    expected = rollouts[0].batch.completion_ids[:, :1].float() / 10 * rollouts[0].mask
    assert torch.allclose(captured[0]["returns"], expected, atol=1e-6)
    assert all(not torch.equal(a, b) for a, b in zip(before, critic.parameters()))  # the critic was stepped
    assert all(math.isfinite(x) for k in ("value_loss", "clip_frac", "approx_kl", "explained_variance")
               for x in history[k])
    assert "kl_old_new" not in history


def test_ppo_klpen_adapts_beta_without_any_callback(sentiment):
    world, tok, model = sentiment
    controller = AdaptiveKLController(beta=1.0, target=1e-6)  # any step overshoots: beta doubles each round
    algorithm = PPO(critic_model(model), variant="klpen", kl_controller=controller, drift_beta=0.1)
    config = RLConfig(iterations=3, prompts_per_iter=4, group_size=2, inner_steps=2, lr=1e-3)
    history = on_policy(trainable_copy(model), tok, world, algorithm, config, ref=frozen_copy(model), progress=False)
    assert history["beta"] == [1.0, 2.0, 4.0] and controller.beta == 8.0
    assert len(history["kl_old_new"]) == 3 and all(k > 0 for k in history["kl_old_new"])
    assert all(math.isfinite(x) for k in ("loss", "trust_region_kl", "drift_kl") for x in history[k])


def test_a_huge_critic_loss_does_not_change_the_policy_update(sentiment):
    """The loop clips the policy's and the algorithm's own parameters' gradient norms apart, so
    adding a critic loss (however large) leaves the policy's trajectory exactly as it was."""
    world, tok, model = sentiment

    class WithCritic(Algorithm):
        def __init__(self, weight):
            self.critic, self.weight = critic_model(model), weight

        def parameters(self):
            return self.critic.parameters()

        def loss(self, logp, rollout, state, logits=None):
            adv = torch.randn(len(rollout.batch), generator=torch.Generator().manual_seed(0))
            critic_loss = (self.critic(input_ids=rollout.batch.input_ids).logits - 100.0).pow(2).mean()
            return ppo_clip_loss(logp, rollout.old_logp, adv, rollout.mask) + self.weight * critic_loss, {}

    def trained(weight):
        policy = trainable_copy(model)
        config = RLConfig(iterations=2, prompts_per_iter=2, group_size=2, inner_steps=3, lr=1e-2, max_grad_norm=0.5)
        on_policy(policy, tok, world, WithCritic(weight), config, progress=False)
        return torch.cat([p.detach().reshape(-1) for p in policy.parameters()])

    without, with_critic = trained(0.0), trained(1e6)
    assert not torch.equal(without, torch.cat([p.reshape(-1) for p in model.parameters()]))  # the policy did move
    assert torch.allclose(without, with_critic, atol=1e-6)


def test_a_non_finite_loss_stops_the_loop(sentiment):
    world, tok, model = sentiment

    class Broken(Algorithm):
        def loss(self, logp, rollout, state, logits=None):
            return (logp * float("nan")).sum(), {}

    with pytest.raises(FloatingPointError, match="round 0"):
        on_policy(trainable_copy(model), tok, world, Broken(), CONFIG, progress=False)


def test_reinforce_weights_reach_the_loss_unchanged():
    """The loss of one step is reinforce_loss on weights() of the rollout: the pieces of chapter 02."""
    rewards = torch.tensor([2.0, 0.0, 1.0, 1.0])
    rollout = rollout_of(rewards, torch.zeros(B, T))
    logp = (-torch.rand(B, T, generator=torch.Generator().manual_seed(3)) * MASK).requires_grad_()
    token_r = torch.zeros(B, T)
    token_r[torch.arange(B), MASK.sum(1) - 1] = rewards
    phi = weights(token_r, "rewards_to_go", "group_mean", MASK, group_size=2)
    _, _, (loss, _) = run(REINFORCE("rewards_to_go", "group_mean"), rollout, logp)
    assert loss.item() == pytest.approx(reinforce_loss(logp, phi, MASK, "sequence").item())
    # group means by hand: (2 + 0) / 2 and (1 + 1) / 2
    assert phi[:, 0].tolist() == [1.0, -1.0, 0.0, 0.0]


# ---------------------------------------------------------------- layering and the review's fixes

MATHS = ["checks", "masked", "advantages", "exact", "kl", "policy_gradient", "ppo", "grpo", "dpo", "preference"]
MODEL_LAYER_AND_ABOVE = ["lm", "value", "tasks", "train", "pretrained", "plots", "widgets", "algorithms"]


def test_maths_modules_import_without_transformers_or_the_model_layer():
    """The maths modules are imported, one after another, in a fresh interpreter in which
    `import transformers` fails; none of them may pull in the model layer either."""
    import subprocess
    import sys

    code = f"""
import importlib, importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("transformers is blocked in this test")
sys.meta_path.insert(0, Block())
for module in {MATHS!r}:
    importlib.import_module("rlbook." + module)
    above = [m for m in sys.modules if m.startswith("rlbook.") and m.split(".")[1] in {MODEL_LAYER_AND_ABOVE!r}]
    assert not above, (module, above)
print("ok", "transformers" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ok", "False"]


def test_implied_reward_rejects_a_log_z_of_the_wrong_shape():
    from rlbook.dpo import implied_reward

    logp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -1.0, -0.5])
    log_z = torch.tensor([0.1, 0.2, 0.3])
    # one log Z per row of [B] sequence log-probs: added row by row (it used to broadcast to [B, B])
    assert implied_reward(logp, ref, 0.5, log_z).tolist() == pytest.approx([0.5 * (0.5 + 0.1), 0.5 * (-1 + 0.2),
                                                                           0.5 * (0 + 0.3)])
    bandit = torch.log_softmax(torch.randn(2, 4, generator=torch.Generator().manual_seed(0)), -1)
    got = implied_reward(bandit, bandit.flip(-1), 0.5, torch.tensor([1.0, -1.0]))  # one per prompt, over K answers
    assert torch.allclose(got, 0.5 * (bandit - bandit.flip(-1)) + 0.5 * torch.tensor([[1.0], [-1.0]]))
    for bad in [torch.zeros(2), torch.zeros(3, 1)]:
        with pytest.raises(ValueError, match="log_z"):
            implied_reward(logp, ref, 0.5, bad)


def test_values_validated_skips_only_the_value_checks():
    from rlbook.checks import values_validated

    nan = torch.tensor([[float("nan")]])
    with pytest.raises(ValueError, match="logp"):
        ppo_clip_loss(nan, torch.zeros(1, 1), torch.ones(1))
    with values_validated():
        assert torch.isnan(ppo_clip_loss(nan, torch.zeros(1, 1), torch.ones(1)))
        with pytest.raises(ValueError, match="old_logp"):  # shapes are still checked
            ppo_clip_loss(torch.zeros(1, 2), torch.zeros(1, 3), torch.ones(1))
    with pytest.raises(ValueError, match="logp"):  # and the value checks are back afterwards
        ppo_clip_loss(nan, torch.zeros(1, 1), torch.ones(1))


def test_evaluate_forks_the_random_stream_of_the_policys_device(sentiment, monkeypatch):
    """train.evaluate used to fork only the CPU generator: on a GPU it consumed the caller's stream."""
    import rlbook.device
    import rlbook.train

    calls = []
    real = torch.random.fork_rng
    monkeypatch.setattr(torch.random, "fork_rng", lambda devices=None, **kw: calls.append((list(devices), kw))
                        or real(devices=[]))
    with rlbook.device.fork_rng("cuda:1"):
        pass
    assert calls[-1] == ([1], {"device_type": "cuda"})
    world, tok, model = sentiment
    seen = []
    monkeypatch.setattr(rlbook.train, "fork_rng", lambda device: seen.append(torch.device(device)) or real(devices=[]))
    rlbook.train.evaluate(model, tok, world, n_prompts=4)
    assert seen == [next(model.parameters()).device]
    # and on the CPU the caller's stream is untouched
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    rlbook.train.evaluate(model, tok, world, n_prompts=4)
    assert torch.equal(torch.rand(3), expected)


def test_scalar_settings_reject_nan():
    from rlbook.train import PreferenceConfig
    from rlbook.value import value_loss

    nan = float("nan")
    with pytest.raises(ValueError, match="clip_eps"):
        value_loss(torch.zeros(2), torch.zeros(2), torch.ones(2), clip_eps=nan)
    for bad in [dict(steps=0), dict(batch_size=0), dict(lr=nan), dict(beta=0.0), dict(beta=nan),
                dict(nll_weight=nan), dict(max_grad_norm=-1.0)]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            PreferenceConfig(**bad)
    from rlbook.train import KTOConfig

    for bad in [dict(steps=0), dict(batch_size=1), dict(lambda_d=nan), dict(lambda_u=-1.0), dict(beta=nan)]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            KTOConfig(**bad)


def test_sampling_rejects_a_nan_temperature(sentiment):
    from rlbook.lm import sample

    world, tok, model = sentiment
    with pytest.raises(ValueError, match="temperature"):
        sample(model, tok, ["the sky is"], max_new_tokens=2, temperature=float("nan"))
