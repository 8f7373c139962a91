from qa_app.fusion import reciprocal_rank_fusion


def test_rrf_sums_reciprocal_ranks():
    fused = dict(reciprocal_rank_fusion({"a": ["x", "y"], "b": ["y", "z"]}, k=60))
    assert fused["y"] == 1 / 62 + 1 / 61
    assert fused["x"] == 1 / 61 and fused["z"] == 1 / 62
    assert max(fused, key=fused.get) == "y"


def test_weights_and_zero_weight():
    out = reciprocal_rank_fusion({"a": ["x"], "b": ["y"]}, {"a": 2.0, "b": 1.0})
    assert [pid for pid, _ in out] == ["x", "y"]
    out = reciprocal_rank_fusion({"a": ["x"], "b": ["y"]}, {"a": 0.0})
    assert [pid for pid, _ in out] == ["y"]


def test_ties_are_deterministic():
    out = reciprocal_rank_fusion({"a": ["x", "y"], "b": ["y", "x"]})
    assert [pid for pid, _ in out] == ["x", "y"]


def test_empty():
    assert reciprocal_rank_fusion({}) == []


# -- score-based fusion (z-scores) ---------------------------------------------------------
import math  # noqa: E402

from qa_app.fusion import zscore_fusion, zscores  # noqa: E402


def test_zscores_and_floor():
    z, floor = zscores([3.0, 1.0, 2.0])
    std = math.sqrt(2 / 3)
    assert z == [1 / std, -1 / std, 0.0]
    assert floor == -1 / std
    assert zscores([]) == ([], 0.0)
    assert zscores([5.0, 5.0]) == ([0.0, 0.0], 0.0)  # flat scores carry no information


def test_zscore_fusion_is_the_weighted_mean_of_z():
    runs = {"a": [("x", 3.0), ("y", 1.0), ("z", 2.0)], "b": [("y", 10.0), ("x", 0.0)]}
    out = {pid: (score, parts) for pid, score, parts in zscore_fusion(runs, {"a": 2.0, "b": 1.0})}
    za, fa = zscores([3.0, 1.0, 2.0])
    zb, fb = zscores([10.0, 0.0])
    assert math.isclose(out["x"][0], (2 * za[0] + zb[1]) / 3)
    assert math.isclose(out["y"][0], (2 * za[1] + zb[0]) / 3)
    # z is missing from run b: it gets b's floor, the z of b's lowest candidate.
    assert out["z"][1] == {"a": za[2], "b": fb}
    assert math.isclose(out["z"][0], (2 * za[2] + fb) / 3)


def test_zscore_fusion_rewards_a_confident_retriever_more_than_rrf():
    # Retriever a is sure of x (far above its other candidates); b barely prefers y.
    a = [("x", 10.0), ("y", 1.0), ("w", 0.9), ("v", 0.8)]
    b = [("y", 0.51), ("x", 0.50), ("w", 0.49), ("v", 0.48)]
    assert [p for p, *_ in zscore_fusion({"a": a, "b": b})][0] == "x"
    rrf = reciprocal_rank_fusion({"a": [p for p, _ in a], "b": [p for p, _ in b]})
    assert rrf[0][1] == rrf[1][1]  # RRF cannot tell x from y


def test_zscore_fusion_weights_zero_and_empty_runs():
    runs = {"a": [("x", 1.0), ("y", 0.0)], "b": [("y", 1.0), ("x", 0.0)]}
    assert [p for p, *_ in zscore_fusion(runs, {"a": 0.0})] == ["y", "x"]
    assert [p for p, *_ in zscore_fusion(runs, {"b": 0.0})] == ["x", "y"]
    assert zscore_fusion({}) == []
    assert zscore_fusion({"a": []}) == []
    assert zscore_fusion(runs, {"a": 0.0, "b": 0.0}) == []


def test_zscore_fusion_ties_keep_first_seen_order():
    out = zscore_fusion({"a": [("x", 1.0), ("y", 1.0)]})
    assert [p for p, *_ in out] == ["x", "y"]


def test_zscore_fusion_sharpness_is_a_soft_maximum():
    runs = {"a": [("x", 3.0), ("y", 1.0), ("z", 2.0)], "b": [("y", 10.0), ("x", 0.0)]}
    mean = {p: s for p, s, _ in zscore_fusion(runs)}
    for b in (0.25, 1.0, 4.0):
        out = {p: (s, parts) for p, s, parts in zscore_fusion(runs, sharpness=b)}
        for pid, (score, parts) in out.items():
            assert math.isclose(score, math.log(sum(math.exp(b * z) for z in parts.values())
                                                / len(parts)) / b)
            assert mean[pid] - 1e-9 <= score <= max(parts.values()) + 1e-9
    # a passage one retriever is sure of, that the other misses, against one that both
    # rank in the middle: the mean prefers the latter, the soft maximum the former
    a = [("sure", 10.0), ("mid", 5.0), ("p", 4.0), ("q", 3.0), ("r", 0.0)]
    b = [("mid", 5.0), ("p", 4.8), ("q", 4.6), ("r", 4.4), ("s", 0.0)]
    assert [p for p, *_ in zscore_fusion({"a": a, "b": b})][0] == "mid"
    assert [p for p, *_ in zscore_fusion({"a": a, "b": b}, sharpness=1.0)][0] == "sure"


def test_guarantee_moves_required_ids_into_the_head():
    from qa_app.fusion import guarantee

    order = ["a", "b", "c", "d", "e", "f", "g"]
    assert guarantee(order, ["a", "b"], 5) == order  # already in
    # g moves to the 5th place; e, pushed out, comes right after the head
    assert guarantee(order, ["g"], 5) == ["a", "b", "c", "d", "g", "e", "f"]
    assert guarantee(order, ["f", "g"], 5) == ["a", "b", "c", "f", "g", "d", "e"]
    # a required id never pushes out another required one
    assert guarantee(order, ["e", "g"], 5) == ["a", "b", "c", "e", "g", "d", "f"]
    # an id absent from the ranking is added; short rankings just grow
    assert guarantee(["a", "b"], ["z"], 5) == ["a", "b", "z"]
    assert guarantee(order, ["f", "g", "e"], 2) == ["f", "g", "a", "b", "c", "d", "e"]
    assert guarantee([], [], 5) == [] and guarantee(order, [], 5) == order
