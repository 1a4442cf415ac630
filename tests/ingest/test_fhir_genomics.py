"""FHIR Genomics Reporting variants, specified on the IG's own examples
(``tests/data/fhir-genomics-examples``): one ``genomic`` event a variant, coded as a VCF call of
the same variant is, so the twin reads variants of either source alike."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from jumeau.ingest.fhir import ingest_fhir
from jumeau.ingest.fhir_genomics import protein_consequence, variant_event
from jumeau.twin.twin import _facts

EXAMPLES = Path(__file__).parent.parent / "data" / "fhir-genomics-examples"


def components(name: str) -> list[dict]:
    return json.loads((EXAMPLES / name).read_text())["component"]


@pytest.fixture
def genomic_store(new_store):
    ingest_fhir(new_store, EXAMPLES)
    return new_store


def test_a_variant_is_one_genomic_event_with_its_gene_and_changes(genomic_store):
    """EGFR L858R, a somatic SNV given by its gene, its genomic, coding and protein HGVS and
    its allele frequency: one event, not one a component (the gene tied to its change), coded
    as a VCF on the same build would code it (HGVS positions are 1-based, as VCF's)."""
    events = genomic_store.timeline(genomic_store.lookup("fhir", "somaticPatient"))
    variants = events.filter(pl.col("domain") == "genomic")
    egfr = variants.filter(
        (pl.col("code") == "VARIANT/7-55259515-T-G") & pl.col("text_value").str.contains("HGVS_C")
    ).row(0, named=True)
    facts = _facts(egfr["text_value"])
    assert facts["GENE"] == "EGFR"
    assert facts["HGVS_C"] == "NM_005228.4:c.2573T>G"
    assert facts["HGVS_P"] == "NP_005219.2:p.Leu858Arg"
    assert facts["CONSEQUENCE"] == "missense_variant" and facts["ORIGIN"] == "Somatic"
    assert egfr["numeric_value"] == pytest.approx(0.066)  # the sample's allele frequency
    assert egfr["time"] == datetime(2023, 2, 1)
    # none of its components left as an event of its own
    assert events.filter(pl.col("code") == "LOINC/48018-6").is_empty()


def test_a_zero_based_coordinate_is_moved_to_the_vcf_position(genomic_store):
    """A germline SNV given only by its chromosome's RefSeq accession, a 0-based interval start
    and its alleles: the VCF position is one more (the IG's own discrete-variant name of it,
    NC_000001.10:g.86852621A>G, says so); the allelic state gives the genotype."""
    code, text, frequency, _ = variant_event(
        components("Observation-variant-with-molec-consequences.json")
    )
    assert code == "VARIANT/1-86852621-A-G"
    assert _facts(text)["GT"] == "0/1" and frequency == pytest.approx(0.6)
    events = genomic_store.timeline(genomic_store.lookup("fhir", "HG00403"))
    assert "VARIANT/1-86852621-A-G" in events["code"].to_list()


def test_a_variant_the_components_cannot_name_keeps_its_components(genomic_store):
    """A 16-base deletion given by its alleles and a start but no HGVS and no VCF-style anchor
    base: no code can name it, so its components stay events, none lost."""
    assert variant_event(components("Observation-VariantExample.json")) is None
    events = genomic_store.timeline(genomic_store.lookup("fhir", "HG00403"))
    alleles = events.filter(pl.col("code").is_in(["LOINC/69547-8", "LOINC/69551-0"]))
    assert sorted(alleles["text_value"].to_list()) == ["ATTGAGGGAAAACACAT", "T"]


@pytest.mark.parametrize(
    ("hgvs", "consequence"),
    [
        ("NP_002519.2:p.Trp243Ter", "stop_gained"),
        ("NP_006594.3:p.S1178*", "stop_gained"),
        ("NP_000537.3:p.(Arg175Glyfs*12)", "frameshift_variant"),
        ("NP_000537.3:p.Met1?", "start_lost"),
        ("NP_005219.2:p.Leu858Arg", "missense_variant"),
        ("NP_000068.1:p.Ala4_Pro11del", None),  # an in-frame deletion: HGVS names no SO term
        ("NP_000537.3:p.Ter394Glnext*?", None),
        (None, None),
    ],
)
def test_a_protein_change_names_its_consequence_where_hgvs_states_one(hgvs, consequence):
    assert protein_consequence(hgvs) == consequence


def test_the_twin_lists_a_fhir_variant_of_high_impact_as_it_does_a_vcfs(genomic_store):
    """NTHL1 p.Trp243Ter (a stop gained) is of high impact; EGFR's missense change is not."""
    twin = genomic_store.twin(genomic_store.lookup("fhir", "somaticPatient"), datetime(2024, 1, 1))
    assert twin.genomics["variants"] == 2 and twin.genomics["genes"] == 2
    assert [(v["gene"], v["consequence"]) for v in twin.genomics["high_impact"]] == [
        ("NTHL1", "stop_gained")
    ]
    assert twin.genomics["high_impact"][0]["code"] == "VARIANT/16-2040196-C-T"
    before = genomic_store.twin(
        genomic_store.lookup("fhir", "somaticPatient"), datetime(2022, 1, 1)
    )
    assert before.genomics is None  # reported in 2023: not known before


def test_a_vcf_call_and_a_fhir_report_of_the_same_variant_share_its_code(tmp_path, genomic_store):
    """The tumour's VCF (UCSC names: chr7) calls the EGFR variant the FHIR report gives (RefSeq
    NC_000007.13): one code, one variant in the twin, whichever source named the chromosome."""
    from jumeau.ingest.vcf import ingest_vcf
    from jumeau.model import variant_code

    assert variant_code("chr7", 55259515, "t", "g") == variant_code("7", 55259515, "T", "G")
    assert variant_code("chrM", 3243, "A", "G") == "VARIANT/MT-3243-A-G"
    vcf = tmp_path / "tumour.vcf"
    vcf.write_text(
        "##fileformat=VCFv4.2\n"
        "##contig=<ID=chr7>\n"
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tT1\n"
        "chr7\t55259515\t.\tT\tG\t50\tPASS\t.\tGT\t0/1\n"
    )
    ingest_vcf(genomic_store, vcf, sample_map={"T1": ("fhir", "somaticPatient")})
    subject = genomic_store.lookup("fhir", "somaticPatient")
    codes = genomic_store.timeline(subject).filter(pl.col("domain") == "genomic")["code"]
    # the report's variant, the report's implication of it and the VCF's call
    assert codes.to_list().count("VARIANT/7-55259515-T-G") == 3
    assert genomic_store.twin(subject, datetime(2024, 1, 1)).genomics["variants"] == 2


def test_a_variants_clinical_significance_is_kept_under_its_code(genomic_store):
    """The report's diagnostic implications (derived from a variant: pathogenic, and for which
    condition) are stored under the variant's code, whichever file comes first, and the twin
    names them, pathogenic first."""
    twin = genomic_store.twin(genomic_store.lookup("fhir", "somaticPatient"), datetime(2024, 1, 1))
    assert twin.genomics["implications"] == [
        {
            "code": "VARIANT/7-55259515-T-G",
            "gene": "EGFR",
            "significance": "Pathogenic",
            "condition": None,
        },
        {
            "code": "VARIANT/16-2040196-C-T",
            "gene": "NTHL1",
            "significance": "Pathogenic",
            "condition": "Hereditary cancer-predisposing syndrome (disorder)",
        },
    ]
    assert twin.genomics["variants"] == 2  # an implication is no variant of its own


def test_an_implication_in_an_ndjson_export_before_its_variant_still_finds_it(tmp_path, new_store):
    folder = tmp_path / "export"
    folder.mkdir()
    lines = [
        json.loads((EXAMPLES / name).read_text())
        for name in (
            "Observation-NTHL1-snv-disease.json",  # before the variant it is derived from
            "Observation-NTHL1-snv-var.json",
        )
    ]
    (folder / "Observation.ndjson").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    (folder / "Patient.ndjson").write_text(
        (EXAMPLES / "Patient-somaticPatient.json").read_text().replace("\n", " ") + "\n"
    )
    ingest_fhir(new_store, folder)
    events = new_store.timeline(new_store.lookup("fhir", "somaticPatient"))
    genomic = events.filter(pl.col("domain") == "genomic")
    assert genomic["code"].to_list() == ["VARIANT/16-2040196-C-T"] * 2
    assert any("SIGNIFICANCE=Pathogenic" in t for t in genomic["text_value"].to_list())


def test_a_clinvar_annotated_vcf_gives_the_same_reported_significance(tmp_path, new_store):
    """ClinVar's INFO fields (CLNSIG, CLNDN, as ClinVar's own VCF and annotators write them):
    the twin lists a VCF's pathogenic call as it lists a FHIR report's implication."""
    from jumeau.ingest.vcf import ingest_vcf

    vcf = tmp_path / "clinvar.vcf"
    vcf.write_text(
        "##fileformat=VCFv4.2\n"
        "##contig=<ID=17>\n"
        '##INFO=<ID=CLNSIG,Number=.,Type=String,Description="Clinical significance">\n'
        '##INFO=<ID=CLNDN,Number=.,Type=String,Description="Disease name">\n'
        '##INFO=<ID=GENEINFO,Number=1,Type=String,Description="Gene">\n'
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS1\n"
        "17\t43045712\t.\tT\tC\t60\tPASS\t"
        "CLNSIG=Likely_pathogenic;CLNDN=Hereditary_breast_ovarian_cancer_syndrome|not_provided"
        "\tGT\t0/1\n"
        "17\t43045800\t.\tG\tA\t60\tPASS\tCLNSIG=Benign;CLNDN=not_provided\tGT\t0/1\n"
        "17\t43045900\t.\tC\tT\t60\tPASS\t.\tGT\t1/1\n"
    )
    ingest_vcf(new_store, vcf, time=datetime(2020, 5, 1))
    twin = new_store.twin(new_store.lookup("vcf", "S1"), datetime(2021, 1, 1))
    assert twin.genomics["variants"] == 3
    assert twin.genomics["implications"] == [
        {
            "code": "VARIANT/17-43045712-T-C",
            "gene": None,
            "significance": "Likely pathogenic",
            "condition": "Hereditary breast ovarian cancer syndrome",
        },
        {
            "code": "VARIANT/17-43045800-G-A",
            "gene": None,
            "significance": "Benign",
            "condition": None,
        },
    ]
