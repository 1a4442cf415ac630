"""One-year GI-bleeding risk in the Eunomia GiBleed cohort, back-tested in time."""

from __future__ import annotations

from datetime import datetime

from jumeau.twin.events import cohort, evaluate_events

GI_BLEED = ["SNOMED/74474003"]


def test_the_cohort_uses_only_the_past_for_features(eunomia_store):
    store, _ = eunomia_store
    index = datetime(2015, 1, 1)
    frame, vocabulary = cohort(store, GI_BLEED, index)
    assert frame.height > 2000 and len(vocabulary) == 60
    assert frame["age"].min() >= 0
    later, _ = cohort(store, GI_BLEED, datetime(2017, 1, 1), vocabulary=vocabulary)
    both = frame.join(later, on="subject_id", suffix="_later")
    assert (both["n_visits_later"] >= both["n_visits"]).all()


def test_gi_bleeding_risk_discriminates_better_than_chance(eunomia_store):
    store, _ = eunomia_store
    result = evaluate_events(store, GI_BLEED, datetime(2017, 1, 1))
    assert result["test"]["events"] >= 5
    assert result["c_index"] > 0.7
    assert result["brier"] <= result["brier_prevalence_baseline"] * 1.05
