"""The twin: a patient's state, risks and forecasts as of any date."""

from jumeau.twin.twin import PopulationModel, Twin, build_twin

__all__ = ["PopulationModel", "Twin", "build_twin"]
