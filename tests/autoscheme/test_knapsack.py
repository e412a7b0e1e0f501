import itertools
import math

import pytest
import torch

from signround.autoscheme.allocate import check_budget, choose
from signround.autoscheme.bits import layer_bits
from signround.autoscheme.knapsack import solve
from signround.autoscheme.units import build_units
from signround.errors import BadInputError
from signround.schemes import resolve_scheme


def _brute(costs, losses, budget):
    best = None
    for pick in itertools.product(*[range(len(c)) for c in costs]):
        b = sum(c[k] for c, k in zip(costs, pick))
        l = sum(x[k] for x, k in zip(losses, pick))
        if b <= budget and (best is None or l < best[1] - 1e-12 or (abs(l - best[1]) <= 1e-12 and b < best[0])):
            best = (b, l)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_dp_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n, k = 6, 3
    costs = torch.randint(1, 40, (n, k), generator=g).tolist()
    losses = torch.rand(n, k, generator=g).tolist()
    lo, hi = sum(min(c) for c in costs), sum(max(c) for c in costs)
    for budget in (lo - 1, lo, (lo + hi) // 2, hi):
        sol, ref = solve(costs, losses, budget), _brute(costs, losses, budget)
        if ref is None:
            assert sol is None
            continue
        assert sol.bits <= budget
        assert sol.loss == pytest.approx(ref[1], abs=1e-9)
        assert sol.bits == sum(c[i] for c, i in zip(costs, sol.choice))


def test_budget_met_and_no_single_upgrade_fits():
    g = torch.Generator().manual_seed(0)
    n = 10
    costs = [[10, 20, 40] for _ in range(n)]  # more bits ...
    base = torch.rand(n, generator=g)
    losses = [[float(b * 8), float(b * 2), float(b * 0.5)] for b in base]  # ... always less loss
    budget = 215
    sol = solve(costs, losses, budget)
    assert sol.bits <= budget
    for u, k in enumerate(sol.choice):
        for k2 in range(k + 1, 3):
            assert sol.bits - costs[u][k] + costs[u][k2] > budget  # any upgrade would overflow


def test_units_fused_shared_and_experts():
    names = [f"model.layers.{b}.{n}" for b in range(2) for n in
             ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
              "mlp.up_proj", "mlp.down_proj")]
    fused = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj"))
    units = build_units(names, "model.layers", fused)
    assert len(units) == 2 * 4
    units = build_units(names, "model.layers", fused, shared_layers=[("o_proj", "down_proj")])
    assert len(units) == 2 * 3 and all(u[0].split(".")[2] == u[-1].split(".")[2] for u in units)
    units = build_units(names, "model.layers", (), shared_layers=[(r"self_attn\..*",)])
    assert len(units) == 2 * 4
    moe = [f"model.layers.0.mlp.experts.{e}.{p}" for e in range(3) for p in ("up_proj", "down_proj")]
    moe += ["model.layers.0.mlp.shared_expert.up_proj"]
    units = build_units(moe, "model.layers")
    assert sorted(len(u) for u in units) == [1, 6]


def _toy():
    options = {"W2A16G64": resolve_scheme("W2A16G64"), "W4A16": resolve_scheme("W4A16"),
               "W8A16": resolve_scheme("W8A16")}
    shapes = {f"model.layers.{b}.{n}": (128, 256) for b in range(3) for n in ("q", "k", "o")}
    shapes["lm_head"] = (256, 256)
    return options, shapes


def test_choose_head_rule_budget_and_units():
    options, shapes = _toy()
    g = torch.Generator().manual_seed(1)
    scores = {l: {"W2A16G64": float(r) * 10, "W4A16": float(r) * 2, "W8A16": float(r) * 0.1}
              for l, r in zip(shapes, torch.rand(len(shapes), generator=g))}
    units = build_units(list(shapes), "model.layers", (("q", "k"),))
    budget = check_budget(4.0, options, shapes, {})
    c = choose(units, shapes, options, scores, budget, head="lm_head")
    assert c.head_rule and c.option["lm_head"] == "W8A16"
    achieved = sum(layer_bits(options[c.option[l]], s) for l, s in shapes.items())
    assert achieved == c.bits <= budget.bits == int(sum(o * i for o, i in shapes.values()) * 4.0)
    for b in range(3):
        assert c.option[f"model.layers.{b}.q"] == c.option[f"model.layers.{b}.k"]
    # at 2.5 bits the head cannot take 8 bits: the rule is relaxed, the budget still holds
    c = choose(units, shapes, options, scores, check_budget(2.5, options, shapes, {}), head="lm_head")
    assert not c.head_rule and c.bits <= check_budget(2.5, options, shapes, {}).bits


def test_target_outside_options_fails_listing_them():
    options, shapes = _toy()
    with pytest.raises(BadInputError, match=r"W2A16G64 2\.28.*W4A16 4\.15.*W8A16 8\.1"):
        check_budget(1.5, options, shapes, {})
    with pytest.raises(BadInputError, match="outside"):
        check_budget(9, options, shapes, {})
    fixed = {"model.layers.0.q": (resolve_scheme("W8A16"), (128, 256))}
    rest = {k: v for k, v in shapes.items() if k not in fixed}
    b = check_budget(4.0, options, rest, fixed)
    assert b.bits == int(sum(o * i for o, i in shapes.values()) * 4.0) - layer_bits(options["W8A16"], (128, 256))
