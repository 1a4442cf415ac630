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


def test_harrell_c_counts_only_comparable_pairs():
    from jumeau.twin.events import harrell_c

    time, event = [1, 2, 3, 4], [1, 1, 0, 0]
    assert harrell_c(time, event, [0.9, 0.5, 0.1, 0.2]) == 1.0
    assert harrell_c(time, event, [0.1, 0.2, 0.9, 0.8]) == 0.0
    # subject 3 is censored at 3 before subject 4's end: the pair (3, 4) is never compared
    assert harrell_c(time, event, [0.9, 0.5, 0.1, 0.05]) == 1.0


def test_censored_follow_up_is_used_not_dropped(eunomia_store):
    from jumeau.twin.events import EventModel

    store, _ = eunomia_store
    model = EventModel.fit(store, GI_BLEED, datetime(2018, 1, 1), landmarks=1)
    frame, _ = cohort(store, GI_BLEED, datetime(2018, 1, 1))
    censored = frame.filter(~frame["label"] & (frame["followup_days"] < 365))
    assert model.n_censored == censored.height > 0
    assert model.n_train == frame.height  # censored subjects are in the training rows
    risk = model.risk(frame)
    assert ((risk > 0) & (risk < 1)).all()


def test_a_rare_outcome_is_learnt_from_several_windows_each_known_by_the_cutoff(eunomia_store):
    """GI bleeding comes a dozen times a year in Eunomia: the model stacks the windows a year
    apart before the index date (each subject with the history it had at each), so it learns
    from several times the events of one window, and none of them after the index's window."""
    from jumeau.twin.events import EventModel

    store, _ = eunomia_store
    index = datetime(2016, 1, 1)
    model = EventModel.fit(store, GI_BLEED, index, landmarks=3)
    windows = [cohort(store, GI_BLEED, datetime(y, 1, 1), vocabulary=model.vocabulary)[0]
               for y in (2014, 2015, 2016)]  # fmt: skip
    assert model.landmarks == 3
    assert model.n_train == sum(w.height for w in windows)
    assert model.n_events == sum(int(w["label"].sum()) for w in windows)
    assert model.n_events > 2 * int(windows[-1]["label"].sum())
