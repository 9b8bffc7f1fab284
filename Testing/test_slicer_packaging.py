"""The extension's catalog entry passes what the Slicer Extensions Index checks read, and the three
places that describe the extension (PropSAMSlicer.json, PropSAMSlicer.s4ext, CMakeLists.txt) agree.

The index's checks (ExtensionsIndex scripts/check_description_files.py) clone the repository and
read: the JSON entry's $schema, category, scm_url (scheme, repository name containing "Slicer"),
build_dependencies (names of other index entries); the top-level CMakeLists.txt project() name
(= the entry's file name), EXTENSION_ICONURL and EXTENSION_SCREENSHOTURLS (http URLs of images);
and a LICENSE file at the root. URLs cannot be fetched here, so each raw GitHub URL is mapped to
the file in this checkout that it will serve once pushed.
"""

from __future__ import annotations

import json
import re
import struct
import urllib.parse as urlparse
from pathlib import Path

import pytest

from conftest import REPO

ENTRY = REPO / "PropSAMSlicer.json"
S4EXT = REPO / "PropSAMSlicer.s4ext"
CMAKE = REPO / "CMakeLists.txt"
SCHEMA = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
INDEX_CATEGORIES_WE_MAY_USE = {"Segmentation", "Quantification", "Analysis"}  # subset of the index's accepted list


def cmake_settings() -> dict[str, str]:
    text = CMAKE.read_text()
    settings = dict(re.findall(r'set\(\s*(EXTENSION_\w+)\s+"([^"]*)"\s*\)', text))
    settings["project"] = re.search(r"project\s*\(\s*([^\s)]+)", text).group(1)
    return settings


def s4ext_settings() -> dict[str, str]:
    settings = {}
    for line in S4EXT.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            settings[key] = value.strip()
    return settings


def served_file(url: str) -> Path:
    """The checkout file a raw.githubusercontent.com/<org>/<repo>/<branch>/<path> URL serves."""
    parts = urlparse.urlsplit(url)
    assert parts.scheme == "https" and parts.netloc == "raw.githubusercontent.com", url
    path = REPO.joinpath(*parts.path.split("/")[4:])
    assert path.is_file(), f"{url} would serve {path}, which is not in the repository"
    return path


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def repository(url: str) -> tuple[str, str]:
    parts = [p for p in urlparse.urlsplit(url).path.split("/") if p]
    return parts[0], parts[1].removesuffix(".git")


def test_json_catalog_entry_has_the_fields_the_index_checks():
    entry = json.loads(ENTRY.read_text())
    assert entry["$schema"] == SCHEMA
    assert set(entry) <= {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision",
                          "scm_type", "scm_url", "tier"}
    assert entry["category"] in INDEX_CATEGORIES_WE_MAY_USE
    assert urlparse.urlsplit(entry["scm_url"]).scheme == "https"
    assert "slicer" in repository(entry["scm_url"])[1].lower()  # check_git_repository_name
    assert entry["build_dependencies"] == ["PyTorch"]  # as every torch-based extension of the index
    assert entry["tier"] in (1, 3, 5) and entry["scm_revision"] and entry["build_subdirectory"] == "."
    assert cmake_settings()["project"] == ENTRY.stem  # the index matches project() to the file name


def test_cmake_urls_point_at_real_images_and_the_license_is_apache():
    cmake = cmake_settings()
    assert cmake["EXTENSION_HOMEPAGE"].startswith("https://")
    assert png_size(served_file(cmake["EXTENSION_ICONURL"])) == (128, 128)
    screenshots = cmake["EXTENSION_SCREENSHOTURLS"].split()
    assert screenshots, "EXTENSION_SCREENSHOTURLS is empty"
    for url in screenshots:
        width, height = png_size(served_file(url))
        assert width >= 400 and height >= 300
    assert cmake["EXTENSION_DEPENDS"] == "PyTorch"
    assert (REPO / "PropSAMSlicer" / "Resources" / "Icons" / "PropSAMSlicer.png").read_bytes() == \
        served_file(cmake["EXTENSION_ICONURL"]).read_bytes()
    license_text = (REPO / "LICENSE").read_text()
    for phrase in ("Apache License", "Version 2.0, January 2004", "TERMS AND CONDITIONS FOR USE, REPRODUCTION",
                   "9. Accepting Warranty or Additional Liability", "END OF TERMS AND CONDITIONS"):
        assert phrase in license_text, phrase
    assert 'license = "Apache-2.0"' in (REPO / "pyproject.toml").read_text()


def test_every_url_names_one_repository():
    """One organisation/repository everywhere, so moving the repository is one search-and-replace."""
    cmake, entry = cmake_settings(), json.loads(ENTRY.read_text())
    urls = [cmake["EXTENSION_HOMEPAGE"], cmake["EXTENSION_ICONURL"], *cmake["EXTENSION_SCREENSHOTURLS"].split(),
            entry["scm_url"]]
    assert {repository(url) for url in urls} == {repository(entry["scm_url"])}


@pytest.mark.parametrize("s4ext_key, value_of", [
    ("scmurl", lambda e, c: e["scm_url"]),
    ("scmrevision", lambda e, c: e["scm_revision"]),
    ("scm", lambda e, c: e["scm_type"]),
    ("build_subdirectory", lambda e, c: e["build_subdirectory"]),
    ("category", lambda e, c: e["category"]),
    ("depends", lambda e, c: " ".join(e["build_dependencies"]) or "NA"),
    ("homepage", lambda e, c: c["EXTENSION_HOMEPAGE"]),
    ("iconurl", lambda e, c: c["EXTENSION_ICONURL"]),
    ("screenshoturls", lambda e, c: c["EXTENSION_SCREENSHOTURLS"]),
    ("description", lambda e, c: c["EXTENSION_DESCRIPTION"]),
    ("contributors", lambda e, c: c["EXTENSION_CONTRIBUTORS"]),
])
def test_s4ext_agrees_with_json_entry_and_cmake(s4ext_key, value_of):
    entry, cmake = json.loads(ENTRY.read_text()), cmake_settings()
    assert s4ext_settings()[s4ext_key] == value_of(entry, cmake)
    assert cmake["EXTENSION_CATEGORY"] == entry["category"] and cmake["EXTENSION_DEPENDS"] == " ".join(
        entry["build_dependencies"])
