"""Genomics (VCF) and imaging (DICOM) in their subjects' timelines."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import cyvcf2
import numpy as np
import polars as pl
import pydicom
import pytest

from jumeau.ingest.dicom import ingest_dicom
from jumeau.ingest.vcf import VcfError, ingest_vcf, read_sample_map

DATA = Path(__file__).resolve().parents[1] / "data"


def _called(path: Path) -> int:
    """Non-reference alleles carried, counted with cyvcf2 directly."""
    total = 0
    for variant in cyvcf2.VCF(str(path)):
        for genotype in variant.genotypes:
            total += len({a for a in genotype[:-1] if a is not None and a > 0})
    return total


def test_vcf_variants_attach_to_mapped_subjects(tmp_path, new_store):
    vcf = DATA / "vcf" / "test.snpeff.vcf"
    mapping = tmp_path / "map.csv"
    mapping.write_text("sample,source,id\n1094PC0005,omop,6\n1094PC0009,omop,123\n")
    report = ingest_vcf(new_store, vcf, sample_map=read_sample_map(mapping))
    assert report.tables["vcf/variant"].read == report.tables["vcf/variant"].accepted == 10
    assert report.events_written == _called(vcf)
    events = new_store.timeline(new_store.lookup("omop", "6"))
    assert (
        events.height and (events["domain"] == "genomic").all() and events["time"].is_null().all()
    )
    first = events.row(0, named=True)
    assert (
        first["code"].startswith("VARIANT/1-")
        and "GT=" in first["text_value"]
        and "GENE=" in first["text_value"]
    )
    assert ingest_vcf(new_store, vcf, sample_map=read_sample_map(mapping)).events_written == 0


def test_vep_annotations_give_gene_and_consequence(new_store):
    vcf = DATA / "vcf" / "test-haploidX.vep.vcf"
    report = ingest_vcf(new_store, vcf)
    assert report.events_written == _called(vcf)
    texts = new_store.scan().select("text_value").collect()["text_value"]
    assert texts.str.contains("CONSEQUENCE=missense_variant").any()
    assert texts.str.contains("GENE=XG").any()


def test_a_malformed_vcf_line_is_refused_as_a_whole(tmp_path, new_store):
    lines = (DATA / "vcf" / "test.snpeff.vcf").read_text().splitlines()
    body = [i for i, line in enumerate(lines) if not line.startswith("#")]
    lines[body[4]] = "chr1\tnot_a_position\t.\tA"
    bad = tmp_path / "bad.vcf"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(VcfError, match="bad.vcf"):
        ingest_vcf(new_store, bad)
    assert new_store.stats()["events"] == 0


def test_dicom_study_metadata_and_waveforms(tmp_path, new_store):
    folder = tmp_path / "study"
    shutil.copytree(DATA / "dicom", folder)
    (folder / "notes.txt").write_text("not an image")
    report = ingest_dicom(new_store, folder)
    counts = report.tables["dicom/instance"]
    assert (counts.read, counts.accepted, counts.rejected) == (4, 3, 1)
    assert "not a readable DICOM" in new_store.rejects()["reason"][0]
    ct = pydicom.dcmread(folder / "CT_small.dcm")
    events = new_store.timeline(new_store.lookup("dicom", str(ct.PatientID)))
    image = events.filter(pl.col("code") == "DICOM/CT").row(0, named=True)
    details = dict(part.split("=", 1) for part in image["text_value"].split(";"))
    # the path is sealed (a folder may be named after its patient); a key holder reads it back
    assert details["path"].startswith("sealed:") and "sha256" in details
    assert new_store.pseudonymiser.unseal(details["path"]) == "CT_small.dcm"
    assert str(ct.PatientName) not in " ".join(
        new_store.scan().collect()["text_value"].drop_nulls()
    )
    ecg = pydicom.dcmread(folder / "waveform_ecg.dcm")
    record = next(r for r in new_store.signal_records() if r.samples == 10_000)
    assert record.fs == 1000 and record.channels[1] == "Lead II"
    _, lead2 = record.physical("Lead II")
    assert np.allclose(lead2, ecg.waveform_array(0)[:, 1])


def test_waveform_padding_is_missing_and_a_group_offset_delays_its_start(tmp_path, new_store):
    """Waveform Padding Value marks samples the device did not have; Multiplex Group Time
    Offset (ms) starts a group after the acquisition time."""
    ds = pydicom.dcmread(DATA / "dicom" / "waveform_ecg.dcm")
    rhythm, median = ds.WaveformSequence
    samples = np.frombuffer(rhythm.WaveformData, dtype="<i2").copy()
    samples[:120] = -32768  # the first 10 samples of all 12 leads
    rhythm.WaveformData = samples.tobytes()
    rhythm.add_new(0x5400100A, "OW", np.int16(-32768).tobytes())  # Waveform Padding Value
    median.MultiplexGroupTimeOffset = 2500.0
    ds.save_as(tmp_path / "padded.dcm")
    ingest_dicom(new_store, tmp_path / "padded.dcm")
    by_samples = {r.samples: r for r in new_store.signal_records()}
    _, lead1 = by_samples[10_000].physical(0)
    assert np.isnan(lead1[:10]).all() and not np.isnan(lead1[10:]).any()
    other = next(r for n, r in by_samples.items() if n != 10_000)
    assert (other.start - by_samples[10_000].start).total_seconds() == pytest.approx(2.5)


def test_dicom_without_required_tags_is_rejected(tmp_path, new_store):
    ds = pydicom.dcmread(DATA / "dicom" / "MR_small.dcm")
    del ds.StudyInstanceUID
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "broken.dcm")
    report = ingest_dicom(new_store, tmp_path / "in")
    assert report.tables["dicom/instance"].rejected == 1
    assert "StudyInstanceUID" in new_store.rejects()["reason"][0]


def test_a_dicomdir_is_the_medium_index_not_a_rejected_instance(tmp_path, new_store):
    from pydicom.data import get_testdata_file

    (tmp_path / "in").mkdir()
    shutil.copy(get_testdata_file("DICOMDIR"), tmp_path / "in" / "DICOMDIR")  # bundled by pydicom
    shutil.copy(DATA / "dicom" / "MR_small.dcm", tmp_path / "in" / "MR_small.dcm")
    report = ingest_dicom(new_store, tmp_path / "in")
    counts = report.tables["dicom/instance"]
    assert (counts.read, counts.accepted, counts.rejected) == (1, 1, 0)
    assert report.unhandled == {"DICOMDIR": 1}


def test_dicom_times_with_an_offset_from_utc_are_stored_in_utc(tmp_path, new_store):
    (tmp_path / "in").mkdir()
    plain = pydicom.dcmread(DATA / "dicom" / "CT_small.dcm")  # says -0500 (US Eastern)
    del plain.TimezoneOffsetFromUTC
    plain.PatientID = "local"
    plain.save_as(tmp_path / "in" / "local.dcm")
    zoned = pydicom.dcmread(DATA / "dicom" / "CT_small.dcm")
    zoned.PatientID = "zoned"
    zoned.SOPInstanceUID = zoned.SOPInstanceUID + ".1"
    zoned.TimezoneOffsetFromUTC = "+0200"  # a Paris summer acquisition
    zoned.save_as(tmp_path / "in" / "zoned.dcm")
    stamped = pydicom.dcmread(DATA / "dicom" / "CT_small.dcm")
    stamped.PatientID = "stamped"
    stamped.SOPInstanceUID = stamped.SOPInstanceUID + ".2"
    stamped.TimezoneOffsetFromUTC = "+0200"
    # a datetime's own offset wins over the dataset's
    stamped.AcquisitionDateTime = "20040119071000.000000-0500"
    stamped.save_as(tmp_path / "in" / "stamped.dcm")
    shutil.copy(DATA / "dicom" / "CT_small.dcm", tmp_path / "in" / "eastern.dcm")
    ingest_dicom(new_store, tmp_path / "in")

    def image_time(patient: str):
        events = new_store.timeline(new_store.lookup("dicom", patient))
        return events.filter(pl.col("code") == "DICOM/CT")["time"][0]

    assert image_time("local") == dt.datetime(1997, 4, 30, 11, 30, 8)  # as written
    assert image_time("zoned") == dt.datetime(1997, 4, 30, 9, 30, 8)
    assert image_time(str(pydicom.dcmread(DATA / "dicom" / "CT_small.dcm").PatientID)) == (
        dt.datetime(1997, 4, 30, 16, 30, 8)
    )
    assert image_time("stamped") == dt.datetime(2004, 1, 19, 12, 10)


GVCF = """##fileformat=VCFv4.2
##ALT=<ID=NON_REF,Description="Any other allele">
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
##INFO=<ID=END,Number=1,Type=Integer,Description="End of the reference block">
##contig=<ID=chr1,length=248956422>
#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tNA12878
chr1\t10000\t.\tA\t<NON_REF>\t.\t.\tEND=10999\tGT\t0/0
chr1\t11000\t.\tG\tT,<NON_REF>\t50\t.\t.\tGT\t0|1
chr1\t11005\t.\tC\t*,<NON_REF>\t30\t.\t.\tGT\t1/2
chr1\t12000\t.\tT\t<NON_REF>\t.\t.\tEND=12999\tGT\t0/0
"""


def test_a_gvcf_gives_its_called_variants_not_its_reference_blocks(tmp_path, new_store):
    (tmp_path / "sample.g.vcf").write_text(GVCF)
    report = ingest_vcf(new_store, tmp_path / "sample.g.vcf")
    assert report.tables["vcf/variant"].read == 4
    events = new_store.scan().select("code", "text_value").collect()
    assert events["code"].to_list() == ["VARIANT/1-11000-G-T"]  # no <NON_REF>, no *
    assert events["text_value"][0].startswith("GT=0|1;COPIES=1")  # phased


def test_a_sites_only_vcf_is_refused_for_having_no_patient(tmp_path, new_store):
    sites = "\n".join(
        line.split("\tFORMAT")[0] if line.startswith("#CHROM") else line.rsplit("\t", 2)[0]
        for line in GVCF.splitlines()
        if not line.startswith("##FORMAT")
    )
    (tmp_path / "sites.vcf").write_text(sites + "\n")
    with pytest.raises(VcfError, match="sites-only"):
        ingest_vcf(new_store, tmp_path / "sites.vcf")


def _echo_report(path: Path, patient: str, when: str, ejection_fraction: float) -> None:
    """An echocardiography Comprehensive SR (TID 5200's shape, cut down): a finding container
    holding the left ventricle's ejection fraction (LOINC 18043-0, in %) and a text remark."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def coded(scheme: str, value: str, meaning: str) -> Sequence:
        item = Dataset()
        item.CodingSchemeDesignator, item.CodeValue, item.CodeMeaning = scheme, value, meaning
        return Sequence([item])

    measured = Dataset()
    measured.NumericValue = str(ejection_fraction)
    measured.MeasurementUnitsCodeSequence = coded("UCUM", "%", "percent")
    ef = Dataset()
    ef.RelationshipType, ef.ValueType = "CONTAINS", "NUM"
    ef.ConceptNameCodeSequence = coded("LN", "18043-0", "Left Ventricular Ejection Fraction")
    ef.MeasuredValueSequence = Sequence([measured])
    remark = Dataset()
    remark.RelationshipType, remark.ValueType = "CONTAINS", "TEXT"
    remark.ConceptNameCodeSequence = coded("DCM", "121106", "Comment")
    remark.TextValue = "Reviewed by Dr Jane Doe"
    finding = Dataset()
    finding.RelationshipType, finding.ValueType = "CONTAINS", "CONTAINER"
    finding.ConceptNameCodeSequence = coded("DCM", "121070", "Findings")
    finding.ContentSequence = Sequence([ef, remark])
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "SR", patient, "Doe^John"
    ds.ContentDate, ds.ContentTime = when, "101500"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = coded("LN", "59282-4", "Stress cardiac echo study report")
    ds.ContentSequence = Sequence([finding])
    ds.save_as(path, enforce_file_format=True)


def test_a_structured_reports_measurements_are_events_the_twin_tracks(tmp_path, new_store):
    (tmp_path / "in").mkdir()
    _echo_report(tmp_path / "in" / "echo1.dcm", "HF-1", "20200110", 38.0)
    _echo_report(tmp_path / "in" / "echo2.dcm", "HF-1", "20200710", 45.0)
    report = ingest_dicom(new_store, tmp_path / "in")
    assert report.tables["dicom/instance"].accepted == 2
    subject = new_store.lookup("dicom", "HF-1")
    events = new_store.timeline(subject).filter(pl.col("domain") == "measurement")
    assert events["code"].to_list() == ["LOINC/18043-0", "LOINC/18043-0"]
    assert events["numeric_value"].to_list() == [38.0, 45.0]
    assert events["unit"].to_list() == ["%", "%"]
    assert events["time"].to_list() == [
        dt.datetime(2020, 1, 10, 10, 15),
        dt.datetime(2020, 7, 10, 10, 15),
    ]
    assert new_store.code_descriptions()["LOINC/18043-0"] == "Left Ventricular Ejection Fraction"
    # the report's prose is not stored: it may name people
    assert "Jane" not in str(new_store.timeline(subject).to_dicts())
    twin = new_store.twin(subject, as_of=dt.datetime(2020, 8, 1))
    assert twin.variables["lvef"].last_value == 45.0


def test_pydicoms_sr_demonstration_gives_its_diameters_with_a_subject_given(tmp_path, new_store):
    from pydicom.data import get_testdata_file

    (tmp_path / "in").mkdir()
    shutil.copy(get_testdata_file("test-SR.dcm"), tmp_path / "in" / "sr.dcm")  # no PatientID
    ingest_dicom(new_store, tmp_path / "in", subject="P1")
    events = new_store.timeline(new_store.lookup("dicom", "P1"))
    diameters = events.filter(pl.col("domain") == "measurement")
    assert diameters["numeric_value"].to_list() == [3.0, 3.0]
    assert set(diameters["unit"]) == {"cm"}
    assert new_store.code_descriptions()[diameters["code"][0]] == "Diameter"
