"""``jumeau twin`` and ``jumeau evaluate forecasts`` as a user runs them."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import jumeau as api
from tests.cli.test_cli import cli_store, jumeau  # noqa: F401 - the fixture is shared
from tests.subjects import living_subject_with


def test_twin_json_has_state_risks_and_forecasts(cli_store):  # noqa: F811
    subject = living_subject_with(api.open(cli_store), "LOINC/8480-6", datetime(2019, 6, 1))
    result = jumeau(
        "twin",
        str(subject),
        "--store",
        str(cli_store),
        "--as-of",
        "2019-06-01",
        "--forecast",
        "sbp",
        "--format",
        "json",
    )
    twin = json.loads(result.stdout)
    assert "sbp" in twin["variables"]
    assert twin["as_of"].startswith("2019-06-01")
    assert "score2" in twin["risks"]
    horizons = [f["horizon"] for f in twin["forecasts"]["sbp"]]
    assert horizons == ["3mo", "6mo", "12mo"]
    text = jumeau("twin", str(subject), "--store", str(cli_store), "--as-of", "2019-06-01").stdout
    assert "risk scores" in text and "state" in text


def test_evaluate_forecasts_json(cli_store):  # noqa: F811
    result = json.loads(
        jumeau(
            "evaluate",
            "forecasts",
            "--store",
            str(cli_store),
            "--cutoff",
            "2016-01-01",
            "--format",
            "json",
        ).stdout
    )
    sbp = result["variables"]["sbp"]
    assert sbp["n"] > 0 and 0 <= sbp["coverage_80"] <= 1
    assert {"mae", "mae_carry_forward", "mae_population_mean"} <= set(sbp)


def test_a_subject_unknown_at_the_date_is_a_clear_error(cli_store):  # noqa: F811
    subject = json.loads(jumeau("subjects", "--store", str(cli_store), "--format", "json").stdout)[
        0
    ]
    result = jumeau(
        "twin", str(subject), "--store", str(cli_store), "--as-of", "1800-01-01", check=False
    )
    assert result.returncode == 2 and "no events known" in result.stderr


def test_ingest_brings_existing_twins_up_to_date(tmp_path, synthea_dir):
    """Twins are rebuilt by the ingest that touches them, and only those."""
    store = tmp_path / "store"
    bundles = sorted(synthea_dir.glob("*.json"))
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    for b in bundles[:-1]:
        (first / b.name).write_bytes(b.read_bytes())
    (second / bundles[-1].name).write_bytes(bundles[-1].read_bytes())
    jumeau("init", str(store))
    jumeau("ingest", "fhir", str(first), "--store", str(store))
    built = json.loads(
        jumeau("twins", "--store", str(store), "--as-of", "2020-01-01", "--format", "json").stdout
    )
    assert built["rebuilt"] == len(bundles) - 1 and built["to_version"] == 1

    report = json.loads(
        jumeau("ingest", "fhir", str(second), "--store", str(store), "--format", "json").stdout
    )
    (update,) = report["twins"]
    assert update["as_of"].startswith("2020-01-01")
    assert (update["from_version"], update["to_version"], update["rebuilt"]) == (1, 2, 1)
    text = jumeau("twins", "--store", str(store), "--as-of", "2020-01-01").stdout
    assert "0 twin(s) rebuilt" in text
    again = jumeau("ingest", "fhir", str(second), "--store", str(store)).stdout
    assert "twins as of" not in again  # nothing new was committed, nothing rebuilt


def test_a_back_test_with_nothing_to_forecast_says_so(cli_store):  # noqa: F811
    text = jumeau(
        "evaluate", "forecasts", "--store", str(cli_store), "--cutoff", "1900-01-01"
    ).stdout
    assert "no catalogued variable was measured both before the cutoff" in text


def test_twin_since_an_earlier_date_says_what_changed_in_words(cli_store):  # noqa: F811
    """What changed since the last visit: the twin of then, from what was known then, against
    today's; the problems named by their descriptions."""
    store = api.open(cli_store)
    as_of = datetime(2019, 6, 1)
    found = None
    for subject in store.subjects().tolist():  # the day before a problem began, as "since"
        onsets = store.timeline(subject, domains=["condition"])["time"].drop_nulls()
        for onset in sorted({t.date() for t in onsets.to_list() if t < as_of}, reverse=True):
            since = datetime(onset.year, onset.month, onset.day) - timedelta(days=1)
            try:
                before, after = store.twin(subject, since), store.twin(subject, as_of)
            except KeyError:
                continue
            if after.diff(before)["new_problems"]:
                found = subject, since, after.diff(before)["new_problems"]
                break
        if found:
            break
    assert found is not None
    subject, since, new_problems = found
    day = since.date().isoformat()
    args = ["twin", str(subject), "--store", str(cli_store), "--as-of", "2019-06-01"]
    payload = json.loads(jumeau(*args, "--since", day, "--format", "json").stdout)
    changes = payload["changes_since"]
    assert changes["from"].startswith(day) and changes["new_problems"] == new_problems
    vaccines = store.timeline(subject, domains=["immunization"])
    given = vaccines.filter((vaccines["time"] > since) & (vaccines["time"] <= as_of))
    assert changes["vaccines_since"] == sorted(set(given["code"].to_list()))
    described = store.code_descriptions()[new_problems[0]]
    assert changes["descriptions"][new_problems[0]] == described
    text = jumeau(*args, "--since", day).stdout
    assert f"changes since {day}" in text and described.split()[0] in text
    refused = jumeau(*args, "--since", "2020-01-01", check=False)
    assert refused.returncode != 0 and "is not before" in refused.stderr
