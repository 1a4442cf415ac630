"""VCF/BCF genotypes into the twin: each sample's called variants attached to its subject.

Every non-reference allele a sample carries becomes a static ``genomic`` event (germline
genotypes have no date unless one is given): code ``VARIANT/<chrom>-<pos>-<ref>-<alt>``
(:func:`~jumeau.model.variant_code`: ``chr7`` and ``7`` alike), the
call's QUAL as value, and genotype, filter, gene and consequence (from VEP ``CSQ``, SnpEff
``ANN`` or ``EFF``) as text. Samples map to subjects through a user-given table; the file is
streamed through ``cyvcf2``, so memory stays bounded whatever its size.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np

from jumeau.ingest.events import epoch_us, event, event_table
from jumeau.model import variant_code
from jumeau.store import BatchWriter, IngestReport, Progress, Store

FLUSH = 100_000


class VcfError(ValueError):
    """A VCF cannot be read; the message names the file and the position."""


def read_sample_map(path: str | Path) -> dict[str, tuple[str, str]]:
    """CSV with columns ``sample,source,id`` (e.g. ``NA12878,omop,123``) -> sample: (source, id)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"sample", "source", "id"} - set(rows[0] if rows else {})
    if missing:
        raise VcfError(
            f"{path}: the sample map needs columns sample, source, id (missing {', '.join(sorted(missing))})"
        )
    return {r["sample"]: (r["source"], r["id"]) for r in rows}


def _annotation_parser(vcf) -> Callable[[object], tuple[str | None, str | None]]:
    """(gene, consequence) of a variant from whichever annotation the header declares."""
    header = vcf.raw_header
    csq = re.search(r'ID=CSQ,.*?Format: ([^"]+)"', header)
    if csq:
        fields = csq.group(1).split("|")
        gene_i = (
            fields.index("SYMBOL")
            if "SYMBOL" in fields
            else (fields.index("Gene") if "Gene" in fields else None)
        )
        cons_i = fields.index("Consequence") if "Consequence" in fields else None

        def parse_csq(variant):
            value = variant.INFO.get("CSQ")
            if not value:
                return None, None
            first = str(value).split(",")[0].split("|")
            return (first[gene_i] or None) if gene_i is not None else None, (
                first[cons_i] or None
            ) if cons_i is not None else None

        return parse_csq
    if "ID=ANN," in header:

        def parse_ann(variant):
            value = variant.INFO.get("ANN")
            if not value:
                return None, None
            first = str(value).split(",")[0].split("|")
            return (first[3] or None) if len(first) > 3 else None, (first[1] or None) if len(
                first
            ) > 1 else None

        return parse_ann
    if "ID=EFF," in header:

        def parse_eff(variant):
            value = variant.INFO.get("EFF")
            if not value:
                return None, None
            first = str(value).split(",")[0]
            effect, _, rest = first.partition("(")
            parts = rest.rstrip(")").split("|")
            return (parts[5] or None) if len(parts) > 5 else None, effect or None

        return parse_eff
    return lambda variant: (None, None)


def _clinvar_facts(info) -> str:
    """``;SIGNIFICANCE=...;CONDITION=...`` from a ClinVar-annotated record's ``CLNSIG`` and
    ``CLNDN`` (``Likely_pathogenic`` read as ``Likely pathogenic``, the first condition named),
    else nothing."""
    facts = ""
    for key, name in (("CLNSIG", "SIGNIFICANCE"), ("CLNDN", "CONDITION")):
        value = info.get(key)
        if isinstance(value, tuple | list):
            value = value[0] if value else None
        if not value or value in (".", "not_provided"):
            continue
        first = str(value).split("|")[0].replace("_", " ").replace(";", ",")
        facts += f";{name}={first}"
    return facts


#: ALT alleles that name no variant of the sample's: a gVCF's any-other-allele (``<NON_REF>``,
#: ``<*>``) and the allele a deletion upstream spans (``*``).
_NOT_A_VARIANT = frozenset({"<NON_REF>", "<*>", "*"})


def ingest_vcf(
    store: Store,
    source: str | Path,
    *,
    sample_map: dict[str, tuple[str, str]] | None = None,
    subject_source: str = "vcf",
    time: datetime | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest a VCF/BCF (plain or bgzipped) as one atomic batch.

    Parameters
    ----------
    sample_map:
        sample name -> (source, patient id); samples absent from it use their own name under
        ``subject_source``.
    time:
        When the sample was taken, if the genotypes should be dated; default: static facts.
    """
    import cyvcf2

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such VCF")
    try:
        vcf = cyvcf2.VCF(str(path))
    except Exception as exc:  # noqa: BLE001 - htslib reports bad headers as several error types
        raise VcfError(f"{path}: not a readable VCF/BCF ({exc})") from exc
    with BatchWriter(store, "vcf", str(path.resolve())) as writer:
        p = store.pseudonymiser
        samples = list(vcf.samples)
        if not samples:
            raise VcfError(
                f"{path}: a sites-only VCF (no sample columns): it holds no patient's genotypes"
            )
        sample_map = sample_map or {}
        subjects = [p.subject_id(*sample_map.get(s, (subject_source, s))) for s in samples]
        annotate = _annotation_parser(vcf)
        counts = writer.report.table("vcf/variant")
        rows: list[dict] = []
        time_us = None if time is None else epoch_us(time)
        if progress:
            progress(path.name)
        position = "the header"
        try:
            for variant in vcf:
                position = f"{variant.CHROM}:{variant.POS}"
                counts.read += 1
                gene, consequence = annotate(variant)
                clinvar = _clinvar_facts(variant.INFO)
                filt = variant.FILTER or "PASS"
                # only the samples carrying an alternate allele are looked at one by one (a
                # cohort's VCF is mostly reference calls)
                calls = variant.genotype.array()[:, :-1]  # -1 missing, -2 past the ploidy
                carriers = np.flatnonzero((calls > 0).any(axis=1))
                phased = variant.gt_phases if len(carriers) else None
                for k in carriers:
                    called = [int(a) for a in calls[k] if a >= -1]
                    alleles = [a for a in called if a > 0]
                    for allele in sorted(set(alleles)):
                        alt = variant.ALT[allele - 1]
                        if alt in _NOT_A_VARIANT:
                            continue
                        copies = alleles.count(allele)
                        separator = "|" if phased[k] else "/"
                        gt = separator.join("." if a < 0 else str(a) for a in called)
                        code = variant_code(variant.CHROM, variant.POS, variant.REF, alt)
                        text = f"GT={gt};COPIES={copies};FILTER={filt}"
                        if gene:
                            text += f";GENE={gene}"
                        if consequence:
                            text += f";CONSEQUENCE={consequence}"
                        text += clinvar
                        rows.append(
                            event(
                                subjects[k],
                                time_us,
                                code,
                                variant.QUAL,
                                text,
                                None,
                                "genomic",
                                "vcf/variant",
                                p.record_key(
                                    "vcf/variant",
                                    f"{subjects[k]}#{path.name}#{code}#{samples[k]}",
                                ),
                            )
                        )
                counts.accepted += 1
                if len(rows) >= FLUSH:
                    writer.add_events(event_table(rows))
                    counts.events += len(rows)
                    rows = []
        except Exception as exc:  # noqa: BLE001 - htslib stops on malformed lines
            raise VcfError(
                f"{path}: malformed record after {position} ({type(exc).__name__}: {exc})"
            ) from exc
        if rows:
            writer.add_events(event_table(rows))
            counts.events += len(rows)
        return writer.commit()
