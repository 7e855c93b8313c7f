"""Planned DP runs on the tiny model: --plan-only charges nothing, the ledger charges the plan's epsilon, the noise
is reseeded from the OS CSPRNG every step, and ghost clipping clips exactly as the hooks do."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from appliance.cli import app
from appliance.config import Settings, load_settings
from appliance.errors import ValidationFailed
from appliance.testing import MemoryAuditLog
from appliance.training import Ledger, StepInfo, TrainingRun, make_config, plan_training
from tests.training.conftest import tiny_options

pytestmark = pytest.mark.slow

PLANNED = ("batch_size", "steps", "learning_rate")


def _planned_options(prepared: Path, base: Path, out: Path, **overrides: object) -> dict[str, object]:
    """The tiny options without the ones the planner fills in."""
    options = tiny_options(prepared, base, out, **overrides)
    for name in PLANNED:
        options.pop(name, None)
    return options


def test_plan_only_prints_the_plan_and_charges_nothing(
    monkeypatch: pytest.MonkeyPatch,
    data_dir: Path,
    make_policy: Callable[..., Path],
    prepared: Path,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    """`--plan-only` prints batch, steps, noise, noise per coordinate and epsilon; no ledger, audit or output."""
    monkeypatch.setenv("APPLIANCE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("APPLIANCE_POLICIES_DIR", str(make_policy(default={"delta": 1e-3})))
    monkeypatch.setenv("COLUMNS", "160")
    out = tmp_path / "adapter"
    args = ["train", "--dataset", str(prepared), "--base", str(tiny_model), "--out", str(out), "--epsilon", "4"]
    result = CliRunner().invoke(app, [*args, "--max-length", "48", "--plan-only"])
    assert result.exit_code == 0, result.output
    plan = plan_training(units=48, epsilon=4.0, delta=1e-3)
    assert f"* {plan.batch_size} (sampling rate" in result.output
    assert f"* {plan.steps} (" in result.output
    assert f"{plan.noise_multiplier:.4f}" in result.output and f"{plan.noise_per_coordinate:.5f}" in result.output
    assert f"{plan.epsilon:.4f} at δ=0.001" in result.output
    assert not out.exists()
    assert not data_dir.exists() or not any(data_dir.iterdir())  # no ledger, audit segment or key was written


def test_a_planned_run_charges_the_plans_epsilon(
    data_dir: Path, make_policy: Callable[..., Path], prepared: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """A run given only epsilon follows the plan; the ledger's epsilon and metadata equal the plan's exactly."""
    settings = load_settings(data_dir=data_dir, policies_dir=make_policy(default={"delta": 1e-3}))
    out = tmp_path / "adapter"
    config = make_config(**_planned_options(prepared, tiny_model, out, physical_batch_size=8))
    preview = TrainingRun(config, settings, use_stage_factories=False).plan_only()
    run = TrainingRun(config, settings, audit=MemoryAuditLog())
    run.run()
    assert run.plan == preview and run.plan is not None
    meta = json.loads((out / "metadata.json").read_text())
    entry = Ledger(settings.ledger_path).get(meta["run_id"])
    assert entry.steps_taken == run.plan.steps == meta["steps"]
    assert entry.epsilon == run.plan.epsilon == meta["dp"]["epsilon"]
    assert meta["dp"]["noise_multiplier"] == run.plan.noise_multiplier
    assert meta["dp"]["noise_per_coordinate"] == pytest.approx(run.plan.noise_per_coordinate)
    assert meta["hyperparameters"]["batch_size"] == run.plan.batch_size
    assert meta["hyperparameters"]["learning_rate"] == run.plan.learning_rate


def test_explicit_noise_below_the_target_is_refused_before_anything_is_charged(
    train_settings: Settings, prepared: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """An explicit noise multiplier that would spend more than --epsilon is refused; the ledger stays empty."""
    options = tiny_options(prepared, tiny_model, tmp_path / "a", noise_multiplier=0.05, epsilon=1.0)
    with pytest.raises(ValidationFailed, match="above the target"):
        TrainingRun(make_config(**options), train_settings, audit=MemoryAuditLog()).run()
    assert Ledger(train_settings.ledger_path).runs() == []


def _adapter_and_seeds(settings: Settings, options: dict[str, object]) -> tuple[dict[str, torch.Tensor], list[int]]:
    seeds: list[int] = []
    run: TrainingRun

    def on_step(info: StepInfo) -> None:
        if run.built.noise_generator is not None:
            seeds.append(run.built.noise_generator.initial_seed())

    run = TrainingRun(make_config(**options), settings, audit=MemoryAuditLog(), on_step=on_step)
    run.run()
    return load_file(str(Path(str(options["out"])) / "adapter_model.safetensors")), seeds


def test_noise_is_reseeded_from_the_os_csprng_every_step(
    data_dir: Path, make_policy: Callable[..., Path], prepared: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """Two DP runs with the same --seed draw different noise (a fresh seed every step); non-DP runs are equal."""
    settings = load_settings(data_dir=data_dir, policies_dir=make_policy(allow_no_dp=True, default={"delta": 1e-3}))
    adapters, seed_lists = [], []
    for name in ("a", "b"):
        options = tiny_options(prepared, tiny_model, tmp_path / name, epsilon=4.0, steps=4, seed=7)
        weights, seeds = _adapter_and_seeds(settings, options)
        adapters.append(weights)
        seed_lists.append(seeds)
        meta = json.loads((tmp_path / name / "metadata.json").read_text())
        assert meta["dp"]["noise_seeding"] == "os-csprng-per-step"
        assert meta["dp"]["sampling_seeding"] == "os-csprng"
    assert all(len(s) == 4 for s in seed_lists)
    assert len(set(seed_lists[0]) | set(seed_lists[1])) == 8  # every step of either run had its own seed
    assert any(not torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])
    # the control: without DP the same seed gives the same adapter, so the difference above is the DP randomness
    plain = []
    for name in ("c", "d"):
        options = tiny_options(prepared, tiny_model, tmp_path / name, no_dp=True, epsilon=None, steps=4, seed=7)
        plain.append(_adapter_and_seeds(settings, options)[0])
    assert all(torch.equal(plain[0][k], plain[1][k]) for k in plain[0])


def test_an_empty_first_poisson_draw_takes_a_noisy_step(
    train_settings: Settings, prepared: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """A run whose very first Poisson draw is empty takes it as a noisy step with zero rows (Opacus's collate
    wrapper would hand that first empty draw over in the dataset's shape, which the step cannot unpack)."""
    run = TrainingRun(
        make_config(**tiny_options(prepared, tiny_model, tmp_path / "a", batch_size=1, steps=2)),
        train_settings,
        audit=MemoryAuditLog(),
    )
    run.prepare()
    run.build()
    sampler = run.built.loader.batch_sampler
    units = len(run.prepared.units)
    seed = next(  # a seed whose first draw samples no unit (probability (1 - 1/48)^48, about 0.36)
        s
        for s in range(1000)
        if not bool((torch.rand(units, generator=torch.Generator().manual_seed(s)) < sampler.sample_rate).any())
    )
    sampler.generator.manual_seed(seed)
    assert list(run.built.loader.collate_fn([])[0].shape) == [0, 1]  # ids, mask, weights: three zero-row tensors
    run.fit()
    assert run.progress.step == 2 and Ledger(train_settings.ledger_path).get(run.run_id).steps_taken == 2


def _clipped_sum(settings: Settings, options: dict[str, object], mode: str) -> dict[str, torch.Tensor]:
    """The sum of the clipped per-unit gradients of the first 6 units, before noise."""
    from appliance.training._data import UnitDataset, collate
    from appliance.training._loss import unit_losses

    run = TrainingRun(make_config(**options, grad_sample_mode=mode), settings, audit=MemoryAuditLog())
    run.prepare()
    run.build()
    dataset = UnitDataset(run.prepared.units)
    ids, mask, weights = collate(int(run.prepared.tokenizer.pad_token_id))([dataset[i] for i in range(6)])
    losses = unit_losses(run.built.model(input_ids=ids, attention_mask=mask).logits, ids, weights)
    run._backward(losses, run.built.optimizer)
    named = {n: p for n, p in run.built.model.named_parameters() if p.requires_grad}
    if mode == "hooks":
        run.built.optimizer.clip_and_accumulate()
        return {n: p.summed_grad.detach().clone() for n, p in named.items()}
    return {n: p.grad.detach().clone() for n, p in named.items()}


def test_ghost_clipping_clips_as_the_hooks_do(
    train_settings: Settings, prepared: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """On the same units, ghost clipping's clipped gradient sum equals the hooks' (per-unit clip at C)."""
    common = {"max_grad_norm": 0.01}  # small enough that every unit is clipped
    hooks = _clipped_sum(train_settings, tiny_options(prepared, tiny_model, tmp_path / "h", **common), "hooks")
    ghost = _clipped_sum(train_settings, tiny_options(prepared, tiny_model, tmp_path / "g", **common), "ghost")
    assert hooks.keys() == ghost.keys() and hooks
    for name in hooks:
        torch.testing.assert_close(ghost[name], hooks[name], rtol=1e-4, atol=1e-7)
    total = torch.sqrt(sum((g**2).sum() for g in hooks.values()))
    assert 0 < float(total) <= 6 * 0.01 + 1e-6  # six units, each clipped to norm C
