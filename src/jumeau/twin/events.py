"""One-year risk of a clinical event (e.g. GI bleeding in the Eunomia cohort) from the history.

A discrete-time survival model: at an index date, every subject under observation (an
observation period covering the index date and the year after, or the event within it) gives one
row of features computed from events up to the index date only, and a label saying whether the
outcome happened in the following window. A regularised logistic regression on those rows
estimates the window's event probability; the back-test trains at an earlier index date and
scores the later one with the C-index (AUC for a fixed horizon) and the Brier score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from jumeau._duck import arrow_table

if TYPE_CHECKING:
    from jumeau.store import Store

OBSERVATION_PERIOD = "JUMEAU/observation_period"


def _frame(con, query: str, params: dict) -> pl.DataFrame:
    return pl.from_arrow(arrow_table(con, query, params))  # type: ignore[return-value]


def cohort(
    store: Store,
    outcome: list[str],
    index: datetime,
    window_days: int = 365,
    vocabulary: list[str] | None = None,
) -> tuple[pl.DataFrame, list[str]]:
    """Features and labels at ``index``: one row per subject under observation then."""
    con = store.connect()
    end = index + timedelta(days=window_days)
    params = {"index": index, "end": end, "outcome": outcome}
    try:
        base = _frame(
            con,
            """WITH periods AS (
                SELECT subject_id FROM events WHERE code = $o_p AND time <= $index AND end_time >= $index
                GROUP BY 1),
            births AS (SELECT subject_id, min(time) AS birth FROM events WHERE code = 'MEDS_BIRTH' GROUP BY 1),
            sexes AS (SELECT subject_id, max(CASE WHEN code = 'Gender/F' THEN 1 ELSE 0 END) AS female
                      FROM events WHERE code LIKE 'Gender/%' GROUP BY 1),
            outcomes AS (SELECT subject_id, min(time) FILTER (time > $index AND time <= $end) AS next_event,
                                count(*) FILTER (time <= $index) AS prior_events
                         FROM events WHERE list_contains($outcome, code) GROUP BY 1),
            follow AS (SELECT subject_id, max(end_time) AS observed_until FROM events
                       WHERE code = $o_p AND time <= $end GROUP BY 1),
            history AS (SELECT subject_id, count(DISTINCT code) FILTER (domain = 'condition') AS n_conditions,
                               count(*) FILTER (domain = 'drug' AND time > $index - INTERVAL 365 DAY) AS n_drugs_last_year,
                               count(*) FILTER (domain = 'visit') AS n_visits
                        FROM events WHERE time <= $index GROUP BY 1)
            SELECT p.subject_id,
                   date_diff('day', b.birth, $index) / 365.25 AS age,
                   COALESCE(s.female, 0) AS female,
                   COALESCE(o.prior_events, 0) AS prior_events,
                   COALESCE(h.n_conditions, 0) AS n_conditions,
                   COALESCE(h.n_drugs_last_year, 0) AS n_drugs_last_year,
                   COALESCE(h.n_visits, 0) AS n_visits,
                   o.next_event IS NOT NULL AS label,
                   o.next_event IS NOT NULL OR f.observed_until >= $end AS complete
            FROM periods p JOIN births b USING (subject_id)
            LEFT JOIN sexes s USING (subject_id) LEFT JOIN outcomes o USING (subject_id)
            LEFT JOIN follow f USING (subject_id) LEFT JOIN history h USING (subject_id)
            WHERE b.birth <= $index""",
            {**params, "o_p": OBSERVATION_PERIOD},
        )
        base = base.filter(pl.col("complete")).drop("complete")
        if vocabulary is None:
            vocabulary = [
                r[0]
                for r in con.execute(
                    """SELECT code FROM events WHERE domain IN ('condition', 'drug') AND time <= $index
                   GROUP BY code ORDER BY count(DISTINCT subject_id) DESC, code LIMIT 60""",
                    {"index": index},
                ).fetchall()
            ]
        flags = _frame(
            con,
            "SELECT DISTINCT subject_id, code FROM events WHERE time <= $index AND list_contains($codes, code)",
            {"index": index, "codes": vocabulary},
        )
    finally:
        con.close()
    if flags.height:
        wide = flags.with_columns(pl.lit(1).alias("v")).pivot(
            on="code", index="subject_id", values="v"
        )
        base = base.join(wide, on="subject_id", how="left")
    for code in vocabulary:
        if code not in base.columns:
            base = base.with_columns(pl.lit(0).alias(code))
    base = base.with_columns([pl.col(c).fill_null(0) for c in vocabulary])
    return base, vocabulary


@dataclass
class EventModel:
    """A fitted one-year event-risk model."""

    outcome: list[str]
    window_days: int
    vocabulary: list[str]
    model: object = field(repr=False)
    n_train: int = 0
    n_events: int = 0

    NUMERIC = ("age", "female", "prior_events", "n_conditions", "n_drugs_last_year", "n_visits")

    def _matrix(self, frame: pl.DataFrame) -> np.ndarray:
        return frame.select([*self.NUMERIC, *self.vocabulary]).to_numpy().astype(float)

    @classmethod
    def fit(
        cls, store: Store, outcome: list[str], index: datetime, window_days: int = 365
    ) -> EventModel:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        frame, vocabulary = cohort(store, outcome, index, window_days)
        labels = frame["label"].to_numpy().astype(int)
        if labels.sum() < 5 or labels.sum() == len(labels):
            raise ValueError(
                f"too few outcome events ({labels.sum()}) after {index.date()} to fit a model"
            )
        model = cls(outcome, window_days, vocabulary, None, len(labels), int(labels.sum()))
        model.model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        model.model.fit(model._matrix(frame), labels)
        return model

    def predict(self, store: Store, index: datetime) -> pl.DataFrame:
        """Each subject's probability of the outcome within the window after ``index``."""
        frame, _ = cohort(store, self.outcome, index, self.window_days, self.vocabulary)
        risk = self.model.predict_proba(self._matrix(frame))[:, 1]
        return frame.select("subject_id", "label").with_columns(pl.Series("risk", risk))


def evaluate_events(
    store: Store, outcome: list[str], cutoff: datetime, window_days: int = 365
) -> dict:
    """Train on the window before ``cutoff``, score the window after it: C-index and Brier."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    model = EventModel.fit(store, outcome, cutoff - timedelta(days=window_days), window_days)
    scored = model.predict(store, cutoff)
    labels = scored["label"].to_numpy().astype(int)
    risk = scored["risk"].to_numpy()
    prevalence = float(model.n_events / model.n_train)
    return {
        "outcome": outcome,
        "cutoff": cutoff.isoformat(),
        "window_days": window_days,
        "train": {"subjects": model.n_train, "events": model.n_events},
        "test": {"subjects": len(labels), "events": int(labels.sum())},
        "c_index": float(roc_auc_score(labels, risk)) if 0 < labels.sum() < len(labels) else None,
        "brier": float(brier_score_loss(labels, risk)),
        "brier_prevalence_baseline": float(
            brier_score_loss(labels, np.full(len(labels), prevalence))
        ),
        "mean_predicted": float(risk.mean()),
        "observed_rate": float(labels.mean()) if len(labels) else None,
    }
