"""Reciprocal-rank fusion."""


def test_fusion_ranks_what_both_indexes_like_above_what_one_likes():
    from retrieval.fusion import rrf

    vector = ["v1", "both", "v2", "v3"]
    lexical = ["l1", "l2", "both", "l3"]
    fused = rrf([vector, lexical])
    ranked = sorted(fused, key=fused.get, reverse=True)
    assert ranked[0] == "both"  # 2nd and 3rd beats 1st in one list only
    assert set(ranked) == set(vector) | set(lexical)
    assert fused["v1"] == fused["l1"] > fused["v2"]
    assert sorted(rrf([vector, lexical], weights=[1.0, 0.0]), key=fused.get)  # weights accepted
