"""The recipe search: candidates validated before any training, run in order within the
budget, chosen on validation accuracy, and only the winner tested."""
import copy

import pytest
import yaml

from benchmarks.gpucheck.runner import Check
from benchmarks.gpucheck.search import BASELINE, Candidate, choose, load_candidates, run_search
from conftest import PROJECT_ROOT
from vitlens.config import ConfigError, load_params


def write(tmp_path, candidates):
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({"candidates": candidates}))
    return path


def test_the_committed_search_file_holds_valid_distinct_vits():
    base = load_params(PROJECT_ROOT / "params.yaml").to_dict()
    cands = load_candidates(PROJECT_ROOT / "search.yaml", base)
    assert len(cands) >= 3 and all(c.why for c in cands)
    for c in cands:
        assert c.raw != base and c.raw["train"]["epochs"] == base["train"]["epochs"]
        assert 0.1 < c.cost < 5, c  # each fits a few default trainings' time


def test_candidates_change_only_their_keys_and_know_their_cost(tmp_path, params_dict):
    path = write(tmp_path, [{"name": "p2", "why": "tokens", "set": {"model.patch_size": 2}},
                            {"name": "lr", "set": {"train.lr": 0.002}}])
    p2, lr = load_candidates(path, params_dict)
    assert p2.changes == {"model.patch_size": 2} and p2.raw["model"]["patch_size"] == 2
    assert {**p2.raw, "model": params_dict["model"]} == params_dict
    assert p2.raw["model"] != params_dict["model"] and params_dict["model"]["patch_size"] == 4
    assert p2.cost == pytest.approx(4.4, abs=0.05)  # 257 tokens instead of 65
    assert lr.cost == 1.0 and lr.why == ""


@pytest.mark.parametrize("candidates,message", [
    ([], "non-empty list `candidates`"),
    ([{"name": "a b", "set": {"train.lr": 1.0}}], "candidate a b: `name` must be letters"),
    ([{"name": BASELINE, "set": {"train.lr": 1.0}}], "candidate default: the name is taken"),
    ([{"name": "a", "set": {"train.lr": 1.0}}, {"name": "a", "set": {"train.lr": 2.0}}],
     "candidate a: the name is taken"),
    ([{"name": "a"}], "candidate a: `set` must map section.key to a value"),
    ([{"name": "a", "set": {"model.nosuch": 1}}], "candidate a: model.nosuch is not a known key"),
    ([{"name": "a", "set": {"optim.lr": 1}}], "candidate a: 'optim.lr' must be section.key"),
    ([{"name": "a", "set": {"model.dim": 100}}], "candidate a: model.dim=100 must be divisible "
     "by model.heads=6"),
])
def test_a_bad_candidate_fails_the_file_in_one_line(tmp_path, params_dict, candidates, message):
    with pytest.raises(ConfigError) as e:
        load_candidates(write(tmp_path, candidates), params_dict)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_missing_search_file_is_one_line(tmp_path, params_dict):
    with pytest.raises(ConfigError, match="search file .*nope.yaml"):
        load_candidates(tmp_path / "nope.yaml", params_dict)


def test_choose_takes_the_best_validation_accuracy_and_the_first_on_a_tie():
    assert choose({"default": 0.80, "a": 0.83, "b": 0.82}) == "a"
    assert choose({"default": 0.80, "a": 0.80}) == "default"


def cand(name, cost=1.0):
    return Candidate(name, "", {"train.lr": cost}, {"name": name}, cost)


def checked(tmp_path, *, test_acc, budget=1000.0, base_seconds=10.0, val=0.70):
    check = Check(tmp_path / "check.json", budget, optional=[], skip=[])
    check.result["steps"] = {
        "train_eager": {"status": "ok", "seconds": base_seconds, "final_val_acc": val,
                        "train_s": base_seconds},
        "evaluate_eager": {"status": "ok", "accuracy": test_acc}}
    return check


def fake_search(check, candidates, val_acc, below=0.85):
    trained, tested = [], []

    def train(name, raw):
        trained.append(name)
        if val_acc[name] is None:
            raise RuntimeError("out of memory")
        return {"final_val_acc": val_acc[name], "train_s": 5.0}

    def test(name):
        tested.append(name)
        return {"accuracy": 0.9}
    run_search(check, candidates, train=train, test=test, baseline="train_eager",
               evaluated="evaluate_eager", below=below)
    return trained, tested, check.result["search"]


def test_the_search_trains_in_order_and_tests_only_the_winner(tmp_path, capsys):
    check = checked(tmp_path, test_acc=0.70)
    trained, tested, r = fake_search(check, [cand("a"), cand("b"), cand("c")],
                                     {"a": 0.72, "b": 0.78, "c": None})
    assert trained == ["a", "b", "c"] and tested == ["b"]
    assert r["best"] == "b" and r["best_test_acc"] == 0.9 and r["best_changes"] == {"train.lr": 1.0}
    assert r["adopt"] == "dvc exp run -S train.lr=1.0"
    assert "best: b, test accuracy 0.9000; to adopt it: dvc exp run -S train.lr=1.0" in \
        capsys.readouterr().out
    rows = {x["name"]: x for x in r["rows"]}
    assert rows[BASELINE]["val_acc"] == 0.70 and rows["c"]["status"] == "failed"
    assert rows["c"]["val_acc"] is None and check.get("search_c")["status"] == "failed"
    table = r["table"].splitlines()
    assert table[2] == "| b | train.lr=1.0 | 1.00x | 0.7800 | 5.0 |" and "failed" in table[-1]


def test_the_baseline_wins_without_a_second_test(tmp_path):
    check = checked(tmp_path, test_acc=0.70, val=0.90)
    _, tested, r = fake_search(check, [cand("a")], {"a": 0.72})
    assert tested == [] and r["best"] == BASELINE and r["best_test_acc"] == 0.70
    assert "adopt" not in r  # params.yaml already is the winner


def test_a_default_that_meets_the_bar_needs_no_search(tmp_path):
    check = checked(tmp_path, test_acc=0.86)
    trained, tested, r = fake_search(check, [cand("a")], {"a": 0.99})
    assert trained == tested == [] and "at least 0.85" in r["skipped"] and r["best"] is None


def test_candidates_that_would_not_fit_the_budget_are_skipped(tmp_path):
    check = checked(tmp_path, test_acc=0.5, budget=100.0, base_seconds=30.0)
    trained, _, r = fake_search(check, [cand("big", 4.0), cand("small", 1.0)],
                                {"big": 0.99, "small": 0.6})
    assert trained == ["small"] and r["best"] == BASELINE
    assert check.get("search_big")["skipped"].startswith("needs ~120s")


def test_cost_counts_the_images_an_epoch_trains_on(params_dict):
    from benchmarks.gpucheck.search import relative_cost

    half = copy.deepcopy(params_dict)
    half["data"]["train_subset"] = (50_000 - params_dict["data"]["val_size"]) // 2
    assert relative_cost(half, params_dict) == pytest.approx(0.5, rel=0.01)
    more_val = copy.deepcopy(params_dict)
    more_val["data"]["val_size"] = 25_000
    assert relative_cost(more_val, params_dict) == pytest.approx(25_000 / 45_000, rel=0.01)
