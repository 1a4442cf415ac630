"""A FHIR Genomics Reporting variant Observation as one canonical ``genomic`` event.

The IG's ``variant`` profile (code LOINC 69548-6, "Genetic variant assessment") describes one
variant through a dozen components: the gene, the genomic, coding and protein HGVS, the
reference and alternate alleles with their coordinates, the allelic state, the genomic source
class, the allele frequency... Mapped one event a component, the gene would no longer be tied
to its DNA change; mapped here, the variant is one event as a VCF call is (see
:mod:`jumeau.ingest.vcf`): code ``VARIANT/<chrom>-<pos>-<ref>-<alt>`` for a single-nucleotide
variant whose coordinates are given (the code a VCF gives the same call), else ``HGVS/<genomic
HGVS>``, else ``HGVS/<coding HGVS>``; and its facts as ``key=value`` text (``GENE``, ``GT``,
``CONSEQUENCE``...), so the twin reads variants of either source alike.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from jumeau.model import variant_code

#: LOINC code of the Genomics Reporting variant Observation.
VARIANT_CODE = "69548-6"

_GENE = "48018-6"
_GENOMIC_HGVS = "81290-9"
#: "Discrete genetic variant": a name (``EGFR L858R``) or an HGVS expression
_DISCRETE_VARIANT = "81252-9"
_CODING_HGVS = "48004-6"
_PROTEIN_HGVS = "48005-3"
_CHANGE_TYPE = "48019-4"
_SOURCE_CLASS = "48002-0"
_ALLELIC_STATE = "53034-5"
_ALLELE_FREQUENCY = "81258-6"
_READ_DEPTH = "82121-5"
_GENOMIC_REFERENCE = "48013-7"
_ASSEMBLY = "62374-4"
_REF_ALLELE = "69547-8"
_ALT_ALLELE = "69551-0"
_START_END = "81254-5"
_COORDINATE_SYSTEM = "92822-6"
_CONSEQUENCE = ("molecular-consequence", "48006-1")
_SIGNIFICANCE = "53037-8"
_PHENOTYPE = "81259-4"

#: LOINC answers of the coordinate systems (LL5323-2).
_ZERO_BASED_INTERVAL = "LA30100-4"
_ONE_BASED = "LA30102-0"

#: Allelic states (LOINC LL381-5) as a VCF genotype writes them.
_GENOTYPES = {"heterozygous": "0/1", "homozygous": "1/1", "hemizygous": "1"}

#: RefSeq chromosome accessions (``NC_000007.13``: chromosome 7 of GRCh37).
_REFSEQ_CHROMOSOME = re.compile(r"NC_0000(\d\d)\.\d+")
_CHROMOSOMES = {23: "X", 24: "Y"}
#: A genomic HGVS substitution on a RefSeq chromosome (``NC_000007.13:g.55259515T>G``).
_HGVS_SUBSTITUTION = re.compile(r"NC_0000(\d\d)\.\d+:g\.(\d+)([ACGT])>([ACGT])")


def is_variant(code: dict | None) -> bool:
    """Whether an Observation's code is the Genomics Reporting variant's (LOINC 69548-6)."""
    return any(
        c.get("code") == VARIANT_CODE and "loinc" in str(c.get("system", "")).lower()
        for c in (code or {}).get("coding") or []
    )


class Variant(NamedTuple):
    """A variant's event: its code, its facts as text, the sample's allele frequency as its
    value, and its gene."""

    code: str
    text: str | None
    frequency: float | None
    gene: str | None


def variant_event(components: list[dict]) -> Variant | None:
    """The event of the variant the components describe, or None when they name no variant
    (no HGVS, no alleles with coordinates)."""
    values = _component_values(components)
    facts = {
        "GT": _GENOTYPES.get((values.get(_ALLELIC_STATE) or "").lower()),
        "ZYGOSITY": values.get(_ALLELIC_STATE),
        "GENE": values.get(_GENE),
        "HGVS_G": values.get(_GENOMIC_HGVS),
        "HGVS_C": values.get(_CODING_HGVS),
        "HGVS_P": values.get(_PROTEIN_HGVS),
        "TYPE": values.get(_CHANGE_TYPE),
        "ORIGIN": values.get(_SOURCE_CLASS),
        "ASSEMBLY": values.get(_ASSEMBLY),
        "DEPTH": values.get(_READ_DEPTH),
        "CONSEQUENCE": next((values[c] for c in _CONSEQUENCE if values.get(c)), None)
        or protein_consequence(values.get(_PROTEIN_HGVS)),
    }
    code = _vcf_code(values)
    if code is None:
        discrete = str(values.get(_DISCRETE_VARIANT) or "")
        hgvs = (
            values.get(_GENOMIC_HGVS)
            or values.get(_CODING_HGVS)
            or (discrete if re.search(r":[gcmn]\.", discrete) else None)
        )
        if not hgvs:
            return None
        code = f"HGVS/{hgvs}"
    text = ";".join(f"{k}={_plain(v)}" for k, v in facts.items() if v not in (None, ""))
    frequency = values.get(_ALLELE_FREQUENCY)
    frequency = frequency if isinstance(frequency, float) else None
    return Variant(code, text or None, frequency, facts["GENE"])


def implication_facts(components: list[dict]) -> str | None:
    """``SIGNIFICANCE=...;CONDITION=...`` of a diagnostic implication's components (its
    clinical significance, LOINC 53037-8, and the condition it bears on, 81259-4), or None
    when it states no significance."""
    values = _component_values(components)
    significance = values.get(_SIGNIFICANCE)
    if not significance:
        return None
    facts = {"SIGNIFICANCE": significance, "CONDITION": values.get(_PHENOTYPE)}
    return ";".join(f"{k}={_plain(v)}" for k, v in facts.items() if v not in (None, ""))


def protein_consequence(hgvs: str | None) -> str | None:
    """The Sequence Ontology consequence a protein HGVS expression states, where it states one
    (``p.Trp243Ter``, ``p.S1178*``: stop_gained; ``p.Gly12fs``: frameshift_variant;
    ``p.Met1?``: start_lost; ``p.Leu858Arg``: missense_variant; ``p.=``: synonymous_variant)."""
    if not hgvs or "p." not in hgvs:
        return None
    change = hgvs.split("p.", 1)[1].strip("()")
    if "fs" in change:
        return "frameshift_variant"
    if re.search(r"(Ter|\*)\d*$", change) and "ext" not in change:
        return "stop_gained"
    if re.fullmatch(r"M(et)?1[?0]?", change) or change.startswith(("Met1?", "M1?")):
        return "start_lost"
    if change.endswith("=") or change == "=":
        return "synonymous_variant"
    if re.fullmatch(r"[A-Z][a-z]{0,2}\d+[A-Z][a-z]{0,2}", change):
        return "missense_variant"
    return None


def _vcf_code(values: dict) -> str | None:
    """``VARIANT/<chrom>-<pos>-<ref>-<alt>`` of a single-nucleotide variant: from its genomic
    HGVS substitution on a RefSeq chromosome (1-based, as VCF), else from its chromosome's
    accession, position, coordinate system and alleles (a 0-based interval starts one before
    the VCF position)."""
    genomic = values.get(_GENOMIC_HGVS) or values.get(_DISCRETE_VARIANT)
    substitution = _HGVS_SUBSTITUTION.fullmatch(str(genomic or "").strip())
    if substitution:
        number, position, ref, alt = substitution.groups()
        return variant_code(_chromosome(int(number)), int(position), ref, alt)
    ref, alt = values.get(_REF_ALLELE), values.get(_ALT_ALLELE)
    start = values.get(_START_END)
    found = _REFSEQ_CHROMOSOME.search(str(values.get(_GENOMIC_REFERENCE) or ""))
    if not (isinstance(ref, str) and isinstance(alt, str) and found and start is not None):
        return None
    if len(ref) != 1 or len(alt) != 1 or ref.upper() == alt.upper():
        return None
    system = values.get(f"{_COORDINATE_SYSTEM}#code")
    if system not in (_ZERO_BASED_INTERVAL, _ONE_BASED):
        return None
    position = int(start) + (1 if system == _ZERO_BASED_INTERVAL else 0)
    return variant_code(_chromosome(int(found.group(1))), position, ref, alt)


def _chromosome(number: int) -> str:
    """A RefSeq chromosome number as VCF names it (23 is X, 24 is Y)."""
    return _CHROMOSOMES.get(number, str(number))


def _component_values(components: list[dict]) -> dict:
    """component code -> its value: a concept's display, else its code, else its text; a
    number; a range's low bound (a start-end's start); a string. A coded value's bare code is
    also kept under ``<code>#code``."""
    out: dict = {}
    for component in components:
        if not isinstance(component, dict):
            continue
        codes = [c.get("code") for c in (component.get("code") or {}).get("coding") or []]
        code = next((c for c in codes if c), None)
        if code is None or code in out:
            continue
        value = None
        if "valueCodeableConcept" in component:
            concept = component["valueCodeableConcept"] or {}
            coding = next(iter(concept.get("coding") or []), {})
            value = coding.get("display") or coding.get("code") or concept.get("text")
            out[f"{code}#code"] = coding.get("code")
        elif "valueString" in component:
            value = component["valueString"]
        elif "valueQuantity" in component:
            value = _float((component["valueQuantity"] or {}).get("value"))
        elif "valueInteger" in component:
            value = _float(component["valueInteger"])
        elif "valueRange" in component:
            value = _float(((component["valueRange"] or {}).get("low") or {}).get("value"))
        if value not in (None, ""):
            out[code] = value
    return out


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _plain(value: object) -> str:
    """A fact's value as ``key=value;...`` text holds it: no ``;`` inside, whole numbers without
    a decimal point."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).replace(";", ",")
