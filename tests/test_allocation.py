"""How a budget is spread over slice groups: one rank for all (the paper's rule) or the same share
of every group's weights (ratio allocation, as SVD-LLM and Basis Sharing state a compression)."""

import pytest

from tensorslim.cli import build_parser
from tensorslim.compress.api import decompose
from tensorslim.compress.inplace import layout
from tensorslim.decomposition.methods import get_method
from tensorslim.decomposition.slices import Group
from tensorslim.errors import TensorslimError
from tiny_models import tiny_model

DECODER = {  # SmolLM2-135M's groups: q/o, k/v, gate/up/down
    "576x576": Group("576x576", 576, 576, 60),
    "576x192": Group("576x192", 576, 192, 60),
    "1536x576": Group("1536x576", 1536, 576, 90),
}


def dense(group: Group) -> int:
    return group.num_slices * group.rows * group.cols


def lowrank_rank_by_hand(group: Group, keep: float) -> int:
    """The largest r with n (R + C) r + n r^2 <= keep n R C, by counting up."""
    n, R, C = group.num_slices, group.rows, group.cols
    r = 1
    while r < min(R, C) and n * (R + C) * (r + 1) + n * (r + 1) ** 2 <= keep * n * R * C:
        r += 1
    return r


def test_ratio_allocation_gives_lowrank_the_largest_rank_per_group_by_hand():
    total = sum(dense(g) for g in DECODER.values())
    method = get_method("lowrank", allocation="ratio").for_budget(DECODER, 576, int(0.8 * total))
    assert method.keep == pytest.approx(int(0.8 * total) / total)
    for group in DECODER.values():
        assert method.group_ranks(group, 576) == {"rank": lowrank_rank_by_hand(group, method.keep)}
    assert method.total_params(DECODER, 576) <= 0.8 * total


@pytest.mark.parametrize("name", ["lowrank", "shared", "tucker"])
@pytest.mark.parametrize("share", [0.2, 0.5, 0.8])
def test_every_group_keeps_the_same_share_and_no_more(name, share):
    """Each group's factors hold at most the share, and one rank more would exceed it; the rank rule
    spreads the same budget unevenly (that is what the ratio rule is for)."""
    total = sum(dense(g) for g in DECODER.values())
    budget = int(share * total)
    method = get_method(name, allocation="ratio").for_budget(DECODER, 576, budget)
    assert method.total_params(DECODER, 576) <= budget
    shares = []
    for group in DECODER.values():
        ranks = method.group_ranks(group, 576)
        kept = method.num_params(group, ranks)
        assert kept <= method.keep * dense(group)
        if ranks["rank"] < min(group.rows, group.cols):
            bigger = method.ranks_at(group, ranks["rank"] + 1)
            assert method.num_params(group, bigger) > method.keep * dense(group)
        shares.append(kept / dense(group))
    assert max(shares) - min(shares) < 0.05
    by_rank = get_method(name, allocation="rank").for_budget(DECODER, 576, budget)
    rank_shares = [by_rank.num_params(g, by_rank.group_ranks(g, 576)) / dense(g) for g in DECODER.values()]
    assert max(rank_shares) - min(rank_shares) > max(shares) - min(shares)


def test_a_fixed_rank_wins_over_the_ratio_rule():
    method = get_method("lowrank", allocation="ratio", rank=64).for_budget(DECODER, 576, 10**9)
    assert method.rank is not None and method.keep is None
    assert method.group_ranks(DECODER["576x576"], 576) == {"rank": method.rank}
    both = get_method("lowrank", allocation="ratio", rank=64, keep=0.5)  # a share set as well: the rank decides
    assert both.group_ranks(DECODER["576x576"], 576) == {"rank": 64}


def test_a_share_too_small_for_rank_one_is_refused():
    with pytest.raises(TensorslimError, match="no tucker rank setting fits in 10"):
        get_method("tucker", allocation="ratio").for_budget(DECODER, 576, 10)


@pytest.mark.parametrize(
    ("model_type", "allocation", "weighting"), [("llama", "ratio", "relative"), ("bert", "rank", "absolute")]
)
def test_decompose_follows_the_papers_of_the_model_kind(model_type, allocation, weighting):
    """Causal LMs default to ratio allocation (the LLM papers' convention) and shared bases fitted to
    relative output errors, encoders to the rank rule (the paper's) and absolute errors; an explicit
    choice wins."""
    model = tiny_model(model_type)
    groups = layout(model)[0]
    _, record = decompose(model, "lowrank", compression=0.5)
    assert record["options"]["allocation"] == allocation
    kept = [group["weights"]["student"] / group["weights"]["teacher"] for group in record["groups"].values()]
    if allocation == "ratio" and len(groups) > 1:
        assert max(kept) - min(kept) < 0.1
    _, explicit = decompose(tiny_model(model_type), "lowrank", compression=0.5, allocation="rank")
    assert explicit["options"]["allocation"] == "rank"
    _, tucker = decompose(tiny_model(model_type), "tucker", compression=0.5, max_iter=1)
    assert tucker["options"]["weighting"] == weighting
    _, chosen = decompose(tiny_model(model_type), "tucker", compression=0.5, max_iter=1, weighting="absolute")
    assert chosen["options"]["weighting"] == "absolute"


def test_the_cli_takes_allocation_but_not_the_derived_share():
    parser = build_parser()
    args = parser.parse_args(["decompose", "--teacher", "t", "--out", "o", "--allocation", "ratio"])
    assert args.allocation == "ratio"
    with pytest.raises(SystemExit):
        parser.parse_args(["decompose", "--teacher", "t", "--out", "o", "--keep", "0.5"])
