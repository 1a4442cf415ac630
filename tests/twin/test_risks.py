"""Risk scores against the worked examples and tables of their publications."""

from __future__ import annotations

import math

import pytest

from jumeau.twin.risks import (
    bedside_schwartz,
    bmi_class,
    bmi_for_age_z,
    cha2ds2_vasc,
    child_bmi_class,
    ckd_epi_2021,
    has_bled,
    qtc_class,
    score2,
    score2_op,
)


@pytest.mark.parametrize(
    ("sex", "region", "published_percent"),
    [
        # SCORE2 (Eur Heart J 2021;42:2439), abstract: a 50-year-old smoker, SBP 140 mmHg,
        # total cholesterol 5.5 mmol/L, HDL 1.3 mmol/L.
        ("male", "low", 5.9),
        ("male", "very_high", 14.0),
        ("female", "low", 4.2),
        ("female", "very_high", 13.7),
    ],
)
def test_score2_matches_the_publication_example(sex, region, published_percent):
    risk = score2(50, sex, True, 140, 5.5, 1.3, region=region)
    assert round(float(risk) * 100, 1) == published_percent


def test_score2_rises_with_each_risk_factor_and_france_is_low_risk():
    base = float(score2(55, "male", False, 130, 5.0, 1.3))
    assert float(score2(60, "male", False, 130, 5.0, 1.3)) > base
    assert float(score2(55, "male", True, 130, 5.0, 1.3)) > base
    assert float(score2(55, "male", False, 150, 5.0, 1.3)) > base
    assert float(score2(55, "male", False, 130, 6.5, 1.3)) > base
    assert float(score2(55, "male", False, 130, 5.0, 0.9)) > base
    assert float(score2(55, "male", False, 130, 5.0, 1.3, region="high")) > base


def test_score2_op_is_plausible_for_older_people():
    # SCORE2-OP (Eur Heart J 2021;42:2455): older persons have high absolute risk, and diabetes and
    # smoking raise it in every region.
    base = float(score2_op(75, "male", False, False, 150, 6.0, 1.4))
    assert 0.10 < base < 0.40
    assert float(score2_op(75, "male", True, False, 150, 6.0, 1.4)) > base
    assert float(score2_op(75, "male", False, True, 150, 6.0, 1.4)) > base
    assert float(score2_op(75, "male", False, False, 150, 6.0, 1.4, region="very_high")) > base
    assert float(score2_op(80, "male", False, False, 150, 6.0, 1.4)) > base


# The SCORE2-OP working group's reference program (score2oprisk.ado, Kaptoge, Pennells, Hageman;
# Cardiovascular Epidemiology Unit, Cambridge) publishes, per region and sex, the equation giving
# the "risk age" of a SCORE2-OP risk: the age at which a person with ideal risk factors (non-smoker,
# no diabetes, SBP 135 mmHg, total cholesterol 4.7 mmol/L [men] / 4.9 [women], HDL 1.3 / 1.5) has
# that risk. Fed our risk for the ideal person at each age, it must give that age back.
RISK_AGE = {
    ("low", "male"): lambda p: 39.9846 + 13.8987 * math.log(p) + 0.0910 * p,
    ("moderate", "male"): lambda p: 37.9434 + 13.2507 * math.log(p) + 0.0952 * p,
    ("high", "male"): lambda p: 31.6487 + 14.3310 * math.log(p) + 0.1070 * p,
    ("very_high", "male"): lambda p: -10.9389 + 24.3541 * math.log(p) + 0.0021 * p**2,
    ("low", "female"): lambda p: 49.8338 + 11.2458 * math.log(p) + 0.0747 * p,
    ("moderate", "female"): lambda p: 49.3691 + 10.2798 * math.log(p) + 0.0772 * p,
    ("high", "female"): lambda p: 44.2790 + 10.5245 * math.log(p) + 0.0011 * p**2,
    ("very_high", "female"): lambda p: 14.1880 + 16.7619 * math.log(p) + 0.0016 * p**2,
}


@pytest.mark.parametrize(("region", "sex"), sorted(RISK_AGE))
@pytest.mark.parametrize("age", [70, 75, 80, 85, 89])
def test_score2_op_agrees_with_the_working_groups_risk_age_equations(region, sex, age):
    cholesterol, hdl = (4.7, 1.3) if sex == "male" else (4.9, 1.5)
    percent = 100 * float(score2_op(age, sex, False, False, 135, cholesterol, hdl, region=region))
    assert RISK_AGE[(region, sex)](percent) == pytest.approx(age, abs=0.5)


@pytest.mark.parametrize(
    ("creatinine", "age", "sex", "expected"),
    [
        # CKD-EPI 2021 (Inker et al., NEJM 2021;385:1737), reported as labs do (nearest integer):
        # 142 x min(Scr/k,1)^a x max(Scr/k,1)^-1.200 x 0.9938^age [x 1.012 female]; e.g. a man of
        # 60 with 1.0 mg/dL: 142 x 1.1111^-1.2 x 0.9938^60 = 142 x 0.8812 x 0.6886 = 86.
        (1.0, 60, "male", 86),
        (0.9, 50, "female", 78),
        (0.7, 40, "female", 112),
        (2.5, 70, "male", 27),
        (0.6, 30, "male", 133),
    ],
)
def test_ckd_epi_2021(creatinine, age, sex, expected):
    assert round(float(ckd_epi_2021(creatinine, age, sex))) == expected


@pytest.mark.parametrize(
    ("creatinine", "height", "expected"),
    [
        # bedside Schwartz (Schwartz et al., JASN 2009;20:629): 0.413 x height (cm) / Scr (mg/dL)
        (0.5, 120, 99.1),
        (0.8, 150, 77.4),
        (1.6, 110, 28.4),
    ],
)
def test_bedside_schwartz(creatinine, height, expected):
    assert round(float(bedside_schwartz(creatinine, height)), 1) == expected


@pytest.mark.parametrize(
    ("bmi", "age", "sex", "expected"),
    [
        # a 7-year-old boy of 30 kg and 122 cm: BMI 20.2, above +2 SD of the WHO 2007 reference
        (30 / 1.22**2, 7.0, "male", "obese"),
        (15.5, 7.0, "male", "normal"),  # about the WHO 2007 median at 7
        (12.5, 7.0, "male", "thinness"),
        (19.0, 3.0, "female", "overweight"),  # under 5: the WHO 2006 standards' classes
        (17.8, 3.0, "female", "possible risk of overweight"),
        (26.0, 18.9, "female", "overweight"),  # BMI 25 at 19 is +1 SD
    ],
)
def test_a_childs_bmi_is_classed_by_its_who_bmi_for_age_z_score(bmi, age, sex, expected):
    assert child_bmi_class(bmi_for_age_z(bmi, age, sex), age) == expected


def test_a_childs_kidney_function_and_bmi_are_not_scored_on_adult_equations(tmp_path, new_store):
    """A 7-year-old and a 40-year-old with the same creatinine, height and weight: the adult
    gets CKD-EPI 2021 and a WHO adult BMI class; the child gets the bedside Schwartz eGFR, with
    an interval, and the class of its BMI-for-age (CKD-EPI would give the child a kidney function
    a third too high, WHO's adult classes would call the child underweight)."""
    import json
    from datetime import datetime

    from jumeau.ingest.fhir import ingest_fhir

    def observation(patient: str, code: str, value: float, unit: str) -> dict:
        return {
            "resource": {
                "resourceType": "Observation",
                "id": f"{code}-{patient}",
                "status": "final",
                "subject": {"reference": f"Patient/{patient}"},
                "effectiveDateTime": "2020-01-10",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "valueQuantity": {"value": value, "unit": unit},
            }
        }

    (tmp_path / "in").mkdir()
    for patient, born in (("child", "2013-01-01"), ("adult", "1980-01-01")):
        bundle = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {
                    "resource": {
                        "resourceType": "Patient",
                        "id": patient,
                        "gender": "male",
                        "birthDate": born,
                    }
                },
                observation(patient, "2160-0", 0.45, "mg/dL"),
                observation(patient, "8302-2", 122.0, "cm"),
                observation(patient, "29463-7", 23.0, "kg"),
            ],
        }
        (tmp_path / "in" / f"{patient}.json").write_text(json.dumps(bundle))
    ingest_fhir(new_store, tmp_path / "in")
    as_of = datetime(2020, 2, 1)
    twins = [new_store.twin(new_store.lookup("fhir", p), as_of=as_of) for p in ("child", "adult")]
    child, adult = (t.risks for t in twins)
    assert child["egfr_ckd_epi_2021"].value is None
    assert "18 and over" in child["egfr_ckd_epi_2021"].note
    schwartz = child["egfr_bedside_schwartz"]
    estimated = {n: twins[0].variables[n].estimate.mean for n in ("creatinine", "height")}
    # on the filtered estimates, as every score is (one value each, shrunk towards the population)
    assert schwartz.value == pytest.approx(
        float(bedside_schwartz(estimated["creatinine"] / 88.42, estimated["height"])), abs=0.1
    )
    assert schwartz.inputs["creatinine"]["last_value"] == pytest.approx(0.45 * 88.42)
    low, high = schwartz.interval_95
    assert low < schwartz.value < high
    assert child["bmi_class"].value == "normal"  # WHO's adult classes: "underweight"
    assert child["bmi_class"].inputs["bmi_for_age_z"] == pytest.approx(
        bmi_for_age_z(child["bmi_class"].inputs["bmi"], twins[0].age, "male"), abs=0.05
    )
    assert child["bmi_class"].inputs["bmi"] == pytest.approx(23 / 1.22**2, abs=0.3)
    assert adult["egfr_ckd_epi_2021"].value > 1.3 * schwartz.value
    assert adult["egfr_bedside_schwartz"].value is None
    assert adult["bmi_class"].value == "underweight"
    assert "bmi_for_age_z" not in adult["bmi_class"].inputs


def test_cha2ds2_vasc_points_follow_lip_2010():
    assert (
        cha2ds2_vasc(
            chf=False,
            hypertension=False,
            age=50,
            diabetes=False,
            stroke_tia=False,
            vascular=False,
            female=False,
        )
        == 0
    )
    assert (
        cha2ds2_vasc(
            chf=False,
            hypertension=True,
            age=76,
            diabetes=True,
            stroke_tia=False,
            vascular=False,
            female=True,
        )
        == 5
    )
    assert (
        cha2ds2_vasc(
            chf=True,
            hypertension=True,
            age=80,
            diabetes=True,
            stroke_tia=True,
            vascular=True,
            female=True,
        )
        == 9
    )
    assert (
        cha2ds2_vasc(
            chf=False,
            hypertension=False,
            age=65,
            diabetes=False,
            stroke_tia=False,
            vascular=False,
            female=False,
        )
        == 1
    )


def test_has_bled_counts_each_component_once():
    none = dict(
        hypertension=False,
        abnormal_renal=False,
        abnormal_liver=False,
        stroke=False,
        bleeding=False,
        labile_inr=False,
        elderly=False,
        drugs=False,
        alcohol=False,
    )
    assert has_bled(**none) == 0
    assert has_bled(**{k: True for k in none}) == 9
    assert has_bled(**{**none, "elderly": True, "drugs": True}) == 2


def test_classes():
    assert [bmi_class(b) for b in (17, 22, 27, 32, 37, 45)] == [
        "underweight",
        "normal",
        "overweight",
        "obese class I",
        "obese class II",
        "obese class III",
    ]
    assert qtc_class(420, "male") == "normal"
    assert qtc_class(440, "male") == "borderline"
    assert qtc_class(455, "male") == "prolonged" and qtc_class(455, "female") == "borderline"
    assert qtc_class(510, "female") == "high risk (>500 ms)"


@pytest.mark.parametrize(
    "code, condition",
    [
        ("ICD10CM/I48.91", "atrial_fibrillation"),
        ("ICD10CM/I252", "vascular"),  # written without its dot
        ("ICD10/I25.2", "vascular"),
        ("ICD9CM/427.31", "atrial_fibrillation"),
        ("ICD9CM/42731", "atrial_fibrillation"),
        ("ICD9CM/401.9", "hypertension"),
        ("ICD9CM/250.00", "diabetes"),
        ("ICD9CM/434.11", "stroke"),
        ("ICD9CM/578.9", "bleeding"),
        ("SNOMED/49436004", "atrial_fibrillation"),
    ],
)
def test_conditions_match_icd10_and_icd9_with_or_without_dots(code, condition):
    from jumeau.twin.conditions import CONDITIONS, matches

    assert matches(code, condition)
    assert [c for c in CONDITIONS if matches(code, c)] == [condition]


def test_an_icd9_occlusion_without_infarction_is_no_stroke():
    from jumeau.twin.conditions import matches

    assert not matches("ICD9CM/433.10", "stroke") and matches("ICD9CM/433.11", "stroke")


def test_an_ejection_fraction_of_40_or_less_scores_the_c_of_cha2ds2_vasc(tmp_path, new_store):
    # ESC 2020: C is clinical heart failure or objective evidence of moderate-to-severe LV
    # systolic dysfunction; a 70-year-old woman with atrial fibrillation, no heart failure coded
    import json
    from datetime import datetime

    from jumeau.ingest.fhir import ingest_fhir

    def bundle(ejection_fraction: float, patient: str) -> dict:
        ref = {"reference": f"Patient/{patient}"}
        return {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {
                    "resource": {
                        "resourceType": "Patient",
                        "id": patient,
                        "gender": "female",
                        "birthDate": "1950-01-01",
                    }
                },
                {
                    "resource": {
                        "resourceType": "Condition",
                        "id": f"af-{patient}",
                        "subject": ref,
                        "onsetDateTime": "2019-06-01",
                        "code": {
                            "coding": [{"system": "http://snomed.info/sct", "code": "49436004"}]
                        },
                    }
                },
                {
                    "resource": {
                        "resourceType": "Observation",
                        "id": f"ef-{patient}",
                        "status": "final",
                        "subject": ref,
                        "effectiveDateTime": "2020-01-10",
                        "code": {"coding": [{"system": "http://loinc.org", "code": "10230-1"}]},
                        "valueQuantity": {
                            "value": ejection_fraction,
                            "unit": "%",
                            "system": "http://unitsofmeasure.org",
                            "code": "%",
                        },
                    }
                },
            ],
        }

    (tmp_path / "in").mkdir()
    for patient, ef in (("reduced", 35.0), ("preserved", 60.0)):
        (tmp_path / "in" / f"{patient}.json").write_text(json.dumps(bundle(ef, patient)))
    ingest_fhir(new_store, tmp_path / "in")
    as_of = datetime(2020, 2, 1)
    scores = {
        patient: new_store.twin(new_store.lookup("fhir", patient), as_of=as_of).risks[
            "cha2ds2_vasc"
        ]
        for patient in ("reduced", "preserved")
    }
    # female 1 + age 65-74 1, and C for the reduced ejection fraction
    assert scores["preserved"].value == 2
    assert scores["reduced"].value == 3
    assert scores["reduced"].inputs["lvef"]["last_value"] == 35.0


def test_a_differential_diagnosis_is_listed_as_such_and_never_scored(tmp_path, new_store):
    # a 70-year-old woman with atrial fibrillation; "stroke" is only a differential diagnosis
    import json
    from datetime import datetime

    from jumeau.ingest.fhir import ingest_fhir

    def condition(cid: str, code: str, verification: str) -> dict:
        return {
            "resource": {
                "resourceType": "Condition",
                "id": cid,
                "subject": {"reference": "Patient/w"},
                "onsetDateTime": "2019-06-01",
                "verificationStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                            "code": verification,
                        }
                    ]
                },
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
            }
        }

    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "Patient",
                    "id": "w",
                    "gender": "female",
                    "birthDate": "1950-01-01",
                }
            },
            condition("af", "49436004", "confirmed"),
            condition("stroke", "230690007", "differential"),
        ],
    }
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "w.json").write_text(json.dumps(bundle))
    ingest_fhir(new_store, tmp_path / "in")
    twin = new_store.twin(new_store.lookup("fhir", "w"), as_of=datetime(2020, 1, 1))
    stroke = next(p for p in twin.problems if p["code"] == "SNOMED/230690007")
    assert stroke["verification"] == "differential"
    assert "verification" not in next(p for p in twin.problems if p["code"] == "SNOMED/49436004")
    assert not twin.condition_flags()["stroke"]
    assert twin.risks["cha2ds2_vasc"].value == 2  # female 1, age 65-74 1; no stroke points
