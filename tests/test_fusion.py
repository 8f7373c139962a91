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
