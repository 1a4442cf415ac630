"""One-year risk of a clinical event (e.g. GI bleeding in the Eunomia cohort) from the history.

A discrete-time survival model (Singer & Willett): at an index date, every subject under
observation gives features computed from events up to the index date only, and a follow-up that
ends at the outcome, at the end of their observation (censored) or at the end of the window.
The follow-up is cut into monthly intervals; a regularised logistic regression of the monthly
hazard on the features and the month uses every subject for as long as they were followed,
censored ones included, and the window's risk is ``1 - prod(1 - hazard)``. The model learns from
several index dates a window apart (landmarks, van Houwelingen 2007): a rare outcome gives a few
events a year, too few for one window to fit on. The back-test trains on the windows that end
by a cutoff and scores the window after it with Harrell's C-index (censoring-aware) and the Brier
score among subjects whose one-year status is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from jumeau._duck import arrow_table
from jumeau.twin.variables import SEX_CODES

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
    params = {
        "index": index,
        "end": end,
        "outcome": outcome,
        "female": [c for c, sex in SEX_CODES.items() if sex == "female"],
        "sex_codes": list(SEX_CODES),
    }
    try:
        base = _frame(
            con,
            """WITH periods AS (
                SELECT subject_id FROM events WHERE code = $o_p AND time <= $index AND end_time >= $index
                GROUP BY 1),
            births AS (SELECT subject_id, min(time) AS birth FROM events WHERE code = 'MEDS_BIRTH' GROUP BY 1),
            sexes AS (SELECT subject_id, max(CASE WHEN list_contains($female, code) THEN 1 ELSE 0 END) AS female
                      FROM events WHERE list_contains($sex_codes, code) GROUP BY 1),
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
                   date_diff('day', $index, COALESCE(o.next_event, LEAST(f.observed_until, $end)))
                       AS followup_days
            FROM periods p JOIN births b USING (subject_id)
            LEFT JOIN sexes s USING (subject_id) LEFT JOIN outcomes o USING (subject_id)
            LEFT JOIN follow f USING (subject_id) LEFT JOIN history h USING (subject_id)
            WHERE b.birth <= $index""",
            {**params, "o_p": OBSERVATION_PERIOD},
        )
        base = base.filter(pl.col("label") | (pl.col("followup_days") > 0))
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


MONTH_DAYS = 365.25 / 12
#: Index dates a model is trained at, a window apart (the latest one's window ends at the cutoff).
LANDMARKS = 5


@dataclass
class EventModel:
    """A fitted discrete-time (monthly) hazard model of an outcome."""

    outcome: list[str]
    window_days: int
    vocabulary: list[str]
    model: object = field(repr=False)
    n_train: int = 0
    n_events: int = 0
    n_censored: int = 0
    landmarks: int = 1

    NUMERIC = ("age", "female", "prior_events", "n_conditions", "n_drugs_last_year", "n_visits")

    @property
    def months(self) -> int:
        return max(1, round(self.window_days / MONTH_DAYS))

    def _matrix(self, frame: pl.DataFrame) -> np.ndarray:
        return frame.select([*self.NUMERIC, *self.vocabulary]).to_numpy().astype(float)

    def _in_month(self, x: np.ndarray, month: int) -> np.ndarray:
        """Feature rows with the month of follow-up appended as a one-hot block."""
        onehot = np.zeros((len(x), self.months))
        onehot[:, month] = 1.0
        return np.hstack([x, onehot])

    def _person_months(self, frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """One row per subject and month at risk (features + month one-hot), with the event
        flag in the month it happened."""
        x = self._matrix(frame)
        followup = frame["followup_days"].to_numpy().astype(float)
        event = frame["label"].to_numpy().astype(bool)
        rows, labels = [], []
        for month in range(self.months):
            start = month * MONTH_DAYS
            at_risk = (followup > start) | (event & (followup >= start) & (month == 0))
            if not at_risk.any():
                continue
            happened = event & (followup <= start + MONTH_DAYS) & at_risk
            rows.append(self._in_month(x[at_risk], month))
            labels.append(happened[at_risk].astype(int))
        return np.vstack(rows), np.concatenate(labels)

    @classmethod
    def fit(
        cls,
        store: Store,
        outcome: list[str],
        index: datetime,
        window_days: int = 365,
        landmarks: int | None = None,
    ) -> EventModel:
        """Fit on the subjects under observation at ``index`` and at the ``landmarks - 1``
        (by default :data:`LANDMARKS` ``- 1``) index dates a window apart before it (a subject followed through several windows counts
        in each, with the features of its history at each index date)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        frame, vocabulary = cohort(store, outcome, index, window_days)
        frames = [frame]
        for k in range(1, LANDMARKS if landmarks is None else landmarks):
            earlier, _ = cohort(
                store, outcome, index - timedelta(days=k * window_days), window_days, vocabulary
            )
            if earlier.height:
                frames.append(earlier.select(frame.columns))
        frame = pl.concat(frames)
        events = int(frame["label"].sum())
        if events < 5 or events == frame.height:
            raise ValueError(
                f"too few outcome events ({events}) after {index.date()} to fit a model"
            )
        censored = int(((~frame["label"]) & (frame["followup_days"] < window_days)).sum())
        model = cls(outcome, window_days, vocabulary, None, frame.height, events, censored)
        model.landmarks = len(frames)
        x, y = model._person_months(frame)
        model.model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        model.model.fit(x, y)
        return model

    def risk(self, frame: pl.DataFrame) -> np.ndarray:
        """Each row's probability of the outcome within the window."""
        x = self._matrix(frame)
        survival = np.ones(len(x))
        for month in range(self.months):
            hazard = self.model.predict_proba(self._in_month(x, month))[:, 1]
            survival *= 1 - hazard
        return 1 - survival

    def predict(self, store: Store, index: datetime) -> pl.DataFrame:
        """Each subject's probability of the outcome within the window after ``index``."""
        frame, _ = cohort(store, self.outcome, index, self.window_days, self.vocabulary)
        return frame.select("subject_id", "label", "followup_days").with_columns(
            pl.Series("risk", self.risk(frame))
        )


def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float | None:
    """Harrell's concordance: among pairs where one subject's event comes before the other's
    follow-up ends, the share where that subject has the higher risk (ties count half)."""
    time, event, risk = (np.asarray(a, dtype=float) for a in (time, event, risk))
    concordant = comparable = 0.0
    for i in np.flatnonzero(event > 0):
        later = time > time[i]
        comparable += later.sum()
        concordant += (risk[i] > risk[later]).sum() + 0.5 * (risk[i] == risk[later]).sum()
    return float(concordant / comparable) if comparable else None


def evaluate_events(
    store: Store, outcome: list[str], cutoff: datetime, window_days: int = 365
) -> dict:
    """Train on the window before ``cutoff``, score the window after it: Harrell's C-index and the
    Brier score (among subjects whose status at the window's end is known)."""
    from sklearn.metrics import brier_score_loss

    model = EventModel.fit(store, outcome, cutoff - timedelta(days=window_days), window_days)
    train_subjects = model.n_train
    scored = model.predict(store, cutoff)
    events = scored["label"].to_numpy().astype(int)
    followup = scored["followup_days"].to_numpy().astype(float)
    risk = scored["risk"].to_numpy()
    known = (events == 1) | (followup >= window_days)
    prevalence = float(model.n_events / train_subjects)
    return {
        "outcome": outcome,
        "cutoff": cutoff.isoformat(),
        "window_days": window_days,
        "model": "discrete-time (monthly) hazard, logistic, censored follow-up included",
        "train": {
            "landmarks": model.landmarks,
            "subject_windows": model.n_train,
            "events": model.n_events,
            "censored": model.n_censored,
        },
        "test": {"subjects": len(events), "events": int(events.sum())},
        "c_index": harrell_c(followup, events, risk),
        "brier": float(brier_score_loss(events[known], risk[known])),
        "brier_prevalence_baseline": float(
            brier_score_loss(events[known], np.full(int(known.sum()), prevalence))
        ),
        "mean_predicted": float(risk.mean()),
        "observed_rate": float(events[known].mean()) if known.any() else None,
    }
