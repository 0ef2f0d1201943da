"""The recommender's policy functions (rayrec.serve_apps.policy): pure, no Serve, no Ray.
Every expectation below is computed by hand in the comments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayrec.serve_apps import policy
from rayrec.serve_apps.policy import ItemCatalog, blend


# ---- request options ----------------------------------------------------------------------
def test_resolve_k_default_and_limit():
    assert policy.resolve_k(None, 20, 100) == 20
    assert policy.resolve_k(7, 20, 100) == 7
    assert policy.resolve_k(100, 20, 100) == 100  # the limit itself is allowed
    with pytest.raises(ValueError, match=r"k must be <= 100, got 101"):
        policy.resolve_k(101, 20, 100)


def test_exclude_consumed_request_overrides_default():
    assert policy.exclude_consumed(None, True) is True
    assert policy.exclude_consumed(None, False) is False
    assert policy.exclude_consumed(False, True) is False
    assert policy.exclude_consumed(True, False) is True


def test_exclusions_merge_once_in_first_seen_order():
    # explicit first, then each consumed list; "a" and "b" appear twice but are kept once
    assert policy.exclusions(["x", "a"], [["a", "b"], ["b", "c"]]) == ["x", "a", "b", "c"]
    assert policy.exclusions(["x"]) == ["x"]  # consumed items kept: explicit only
    assert policy.exclusions([], [["s1", "s2"], []]) == ["s1", "s2"]
    assert policy.exclusions((), ()) == []


# ---- filters ------------------------------------------------------------------------------
@pytest.fixture
def catalog():
    # items i0..i5; i5 has no category
    cats = {"i0": "a", "i1": "b", "i2": "a", "i3": "c", "i4": "b"}
    return ItemCatalog([f"i{j}" for j in range(6)], cats)


def test_catalog_indices_and_category_masks(catalog):
    assert catalog.indices(["i3", "zz", "i0", "i3"]) == [3, 0, 3]  # unknown dropped, order kept
    assert catalog.allowed_mask() is None
    assert catalog.allowed_mask(["a"]).tolist() == [True, False, True, False, False, False]
    # include a or b, exclude b -> a only
    assert catalog.allowed_mask(["a", "b"], ["b"]).tolist() == [True, False, True, False, False, False]
    # exclude c: items without a category stay allowed
    assert catalog.allowed_mask((), ["c"]).tolist() == [True, True, True, False, True, True]
    with pytest.raises(ValueError, match=r"include_categories: unknown .*'zz'.*known: a, b, c"):
        catalog.allowed_mask(["zz"])
    with pytest.raises(ValueError, match="exclude_categories"):
        catalog.check_categories(["q"], "exclude_categories")


def test_catalog_allowed_one_item(catalog):
    assert catalog.allowed("i0", ["a"], [])
    assert not catalog.allowed("i1", ["a"], [])
    assert not catalog.allowed("i5", ["a"], [])  # no category: fails an include filter
    assert catalog.allowed("i5", [], ["a"])  # ... but passes an exclude filter
    assert not catalog.allowed("i3", [], ["c"])
    assert catalog.allowed("new-item", [], [])


def test_filter_ranked_keeps_order(catalog):
    ranked = ["i4", "i0", "i1", "i2", "i3"]
    out = policy.filter_ranked(ranked, {"i0"}, lambda i: catalog.allowed(i, ["a", "b"], []))
    assert out == ["i4", "i1", "i2"]  # i0 excluded, i3 (c) filtered


# ---- popularity -----------------------------------------------------------------------------
def test_popularity_order_online_first_then_training_order():
    # online counters say 3, then 1 (3 repeated, 9 out of range); the rest by item_idx
    assert policy.popularity_order(5, [3, 1, 3, 9]).tolist() == [3, 1, 0, 2, 4]
    assert policy.popularity_order(3).tolist() == [0, 1, 2]
    assert policy.popularity_order(3, [7]).tolist() == [0, 1, 2]
    assert policy.popularity_order(4, np.array([2])).dtype == np.int64


def test_popularity_topk_skips_excluded_and_filtered():
    order = [3, 1, 0, 2, 4]
    allowed = torch.tensor([True, True, True, False, True])
    # 3 filtered out, 1 excluded -> 0, 2
    assert policy.popularity_topk(order, 2, {1}, allowed) == [0, 2]
    assert policy.popularity_topk(order, 10, {1}, allowed) == [0, 2, 4]  # runs out
    assert policy.popularity_topk(order, 2, set(), None) == [3, 1]
    assert policy.popularity_topk(order, 0, set(), None) == []


def test_fill_tops_up_without_repeats():
    assert policy.fill(["a"], ["a", "b", "c"], 3) == ["a", "b", "c"]
    assert policy.fill(["a"], ["a", "b", "c"], 2) == ["a", "b"]
    assert policy.fill(["a", "b"], [], 5) == ["a", "b"]
    assert policy.fill(["a", "b", "c"], ["d"], 2) == ["a", "b"]
    assert policy.fill([], ["x", "x", "y"], 0) == []


# ---- blending -----------------------------------------------------------------------------
def test_blend_positional_policies():
    a, b = ["a", "b", "c"], ["x", "b", "y"]
    # a, x, b, (b again: skipped), c, y
    assert blend(a, b, 5, "interleave") == ["a", "x", "b", "c", "y"]
    assert blend(a, b, 10, "interleave") == ["a", "x", "b", "c", "y"]  # union is 5 items
    assert blend(a, [], 2, "interleave") == ["a", "b"]
    assert blend(["a"], ["x", "y", "z"], 3, "interleave") == ["a", "x", "y"]
    assert blend(a, b, 4, "session_first") == ["a", "b", "c", "x"]
    assert blend(a, b, 4, "daily_first") == ["x", "b", "y", "a"]
    assert blend(a, b, 0, "interleave") == []


def test_blend_weighted_by_rank():
    a, b = ["a", "b", "c"], ["b", "x", "y"]
    # w=0.5: a .5, b .25+.5=.75, c .1667, x .25, y .1667 (tie c/y: session first)
    assert blend(a, b, 5, "weighted", 0.5) == ["b", "a", "x", "c", "y"]
    # w=0.8: a .8, b .4+.2=.6, c .2667, x .1, y .0667
    assert blend(a, b, 5, "weighted", 0.8) == ["a", "b", "c", "x", "y"]
    # w=0.2: a .2, b .1+.8=.9, c .0667, x .4, y .2667
    assert blend(a, b, 5, "weighted", 0.2) == ["b", "x", "y", "a", "c"]
    assert blend(a, b, 2, "weighted", 0.5) == ["b", "a"]
    assert blend(a, ["x", "y", "z"], 3, "weighted", 1.0) == ["a", "b", "c"]  # daily weight 0
    with pytest.raises(ValueError, match=r"session_weight must be in \[0, 1\]"):
        blend(a, b, 3, "weighted", 1.5)


def test_blend_unknown_policy():
    with pytest.raises(ValueError, match="blend policy must be one of interleave"):
        blend(["a"], ["b"], 3, "zip")  # type: ignore[arg-type]


def test_blend_source_and_rank_scores():
    assert policy.blend_source(has_daily=True, has_session=True) == "blend"
    assert policy.blend_source(has_daily=True, has_session=False) == "daily"
    assert policy.blend_source(has_daily=False, has_session=True) == "session"
    assert policy.blend_source(has_daily=False, has_session=False) == "popularity"
    assert policy.rank_scores(3) == [3.0, 2.0, 1.0]
    assert policy.rank_scores(0) == []


def test_item_sources_say_where_each_blended_item_came_from():
    session, daily = ["s1", "both", "s2"], ["d1", "both"]
    items = policy.blend(session, daily, 6, "interleave")
    assert items == ["s1", "d1", "both", "s2"]
    items = policy.fill(items, ["p1", "s1", "p2"], 6)
    assert policy.item_sources(items, session, daily) == [
        "session", "daily", "session+daily", "session", "popularity", "popularity"]
    assert policy.item_sources([], session, daily) == []


def test_multi_valued_categories_match_if_any_category_matches(tmp_path):
    """Issue 15 finding 6: an item in several categories (``Action|Comedy``) matches an
    include filter if any of its categories is included and is removed by an exclude filter
    if any of them is excluded; the metadata file's categories are split on the separator and
    titles are kept for ``include_metadata`` responses."""
    from rayrec.serve_apps.scoring import read_item_metadata

    meta = tmp_path / "items.csv"
    meta.write_text("item_id,category,title\n"
                    "i0,Action|Comedy,Zero\ni1,Comedy,One\ni2,Drama| Action ,Two\ni3,,Three\n")
    cats, titles = read_item_metadata(meta, "|")
    assert cats == {"i0": ["Action", "Comedy"], "i1": ["Comedy"], "i2": ["Drama", "Action"]}
    assert titles["i3"] == "Three"
    cat = ItemCatalog([f"i{j}" for j in range(5)], cats, titles)
    assert cat.categories == ["Action", "Comedy", "Drama"]
    assert cat.allowed_mask(["Action"]).tolist() == [True, False, True, False, False]
    assert cat.allowed_mask(["Comedy"]).tolist() == [True, True, False, False, False]
    # exclude Comedy: i0 (Action|Comedy) goes although Action is not excluded
    assert cat.allowed_mask((), ["Comedy"]).tolist() == [False, False, True, True, True]
    assert cat.allowed_mask(["Action"], ["Drama"]).tolist() == [True, False, False, False, False]
    assert cat.allowed("i2", ["Action"], []) and not cat.allowed("i0", [], ["Comedy"])
    assert cat.metadata("i0") == {"item_id": "i0", "categories": ["Action", "Comedy"], "title": "Zero"}
    assert cat.metadata("i3") == {"item_id": "i3", "categories": [], "title": "Three"}
    assert cat.metadata("nope") == {"item_id": "nope", "categories": [], "title": None}
    one, _ = read_item_metadata(meta, None)  # no separator: one category per item
    assert one["i0"] == ["Action|Comedy"]
