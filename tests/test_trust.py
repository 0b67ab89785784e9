"""The map a run's own scores trust, and the warnings on the maps they do not back."""
from vitlens.explain.trust import map_verdicts


def scores(auc: float, half: float = 0.02, bias: float = 0.0) -> dict:
    return {"deletion_auc": auc, "deletion_low": auc - half, "deletion_high": auc + half,
            "position_bias": bias}


def test_the_lowest_deletion_auc_leads_and_random_never_does():
    f = {"images": 500, "rollout": scores(0.33), "grad_rollout": scores(0.24),
         "last_layer": scores(0.35), "random": scores(0.20)}  # random is never a candidate
    v = map_verdicts(f, 0.5)
    assert (v["best"], v["best_auc"]) == ("grad_rollout", 0.24)


def test_a_map_within_reach_of_random_or_bound_to_a_place_is_warned_of():
    f = {"rollout": scores(0.33, 0.01, bias=0.7), "grad_rollout": scores(0.24), "last_layer": scores(0.355),
         "random": scores(0.365)}
    w = map_verdicts(f, 0.5)["warnings"]
    assert set(w) == {"rollout", "last_layer"}
    assert "position bias 0.70" in w["rollout"] and "random" not in w["rollout"]
    assert "within reach of random's 0.365" in w["last_layer"]
    assert map_verdicts(f, 0.8)["warnings"].keys() == {"last_layer"}  # the threshold is the param's


def test_without_scores_there_is_no_verdict():
    assert map_verdicts(None, 0.5) is None
    assert map_verdicts({"images": 10, "random": scores(0.4)}, 0.5) is None
