"""The DDTP text source: Debian's Translation-en/-de files, fetched through the system's own apt configuration.

``fetch_translations(cache_dir)`` runs ``apt-get update -o Acquire::Languages=en,de`` into a *private* list
directory (the system's apt state is untouched) from the first Debian ``main`` 'deb' source of the apt
configuration (``debian_source``: ``/etc/apt/sources.list``, ``sources.list.d/*.list`` and deb822
``*.sources``), decompresses the Translation files with ``apt-helper cat-file`` and records the source in
``<cache_dir>/apt_source.json`` (MANIFEST.json's ``apt_source``).
"""
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from .. import atomic
from ..atomic import atomic_write
from ..errors import BuildError

logger = logging.getLogger("build_ddtp_st")

#: apt's source lists under a root directory ("/" for the system), in the order apt reads them
APT_SOURCE_LISTS = ("etc/apt/sources.list", "etc/apt/sources.list.d")
#: in the cache dir: the source the cached Translation files were fetched from (MANIFEST.json apt_source)
APT_SOURCE_RECORD = "apt_source.json"
#: the corpus' languages: English speech (Translation-en), German text (Translation-de)
LANGS = ("en", "de")


def _apt_helper() -> str:
    for name in ("/usr/lib/apt/apt-helper", "/usr/lib/apt/apt-tool"):
        if os.access(name, os.X_OK):
            return name
    found = shutil.which("apt-helper")
    if found:
        return found
    raise BuildError("neither /usr/lib/apt/apt-helper nor apt-tool found (needs Debian/Ubuntu apt), or pass --translations-dir")


@dataclass(frozen=True)
class AptSource:
    """One 'deb' source (URI + suite, with its 'main' component) of an apt configuration."""

    uri: str
    suite: str
    component: str
    signed_by: Optional[str]  #: keyring path(s) or fingerprint(s); an inline deb822 key block as is
    origin: str  #: "<file>:<line>" of the entry

    def translation_url(self, lang: str) -> str:
        return f"{self.uri}/dists/{self.suite}/{self.component}/i18n/Translation-{lang}"

    def record(self) -> dict:
        return dict(uri=self.uri, suite=self.suite, component=self.component, signed_by=self.signed_by,
                    origin=self.origin, translations={lang: self.translation_url(lang) for lang in LANGS})


def _deb822_stanzas(text: str):
    """(first line number, {lower-case field: value}) of each stanza of a deb822 file; comments skipped,
    continuation lines joined with newlines (`` .`` is an empty line)."""
    fields, start, key = {}, None, None
    for n, line in enumerate(text.splitlines() + [""], 1):
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                yield start, fields
            fields, start, key = {}, None, None
        elif line[0] in " \t" and key is not None:
            fields[key] += "\n" + ("" if line.strip() == "." else line.strip())
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            fields[key] = value.strip()
            start = start or n


def _one_line_entries(text: str):
    """(line number, type, {option: value}, uri, suite, components) of a one-line sources.list."""
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        kind, rest = (line.split(None, 1) + [""])[:2]
        options = {}
        if rest.startswith("["):
            inside, _, rest = rest[1:].partition("]")
            for opt in inside.split():
                key, _, value = opt.partition("=")
                options[key.lower()] = value
        words = rest.split()
        if len(words) >= 2:
            yield n, kind, options, words[0], words[1], words[2:]


def apt_sources(root="/") -> List[AptSource]:
    """Every enabled 'deb' (not deb-src) source with a ``main`` component in the apt configuration under
    ``root`` (``/`` for the system's): ``etc/apt/sources.list``, then ``etc/apt/sources.list.d/*.list``
    (one-line format) and ``*.sources`` (deb822), in apt's order; one entry per URI and suite."""
    root = Path(root)
    files = [root / APT_SOURCE_LISTS[0]]
    parts = root / APT_SOURCE_LISTS[1]
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    found = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, IsADirectoryError):
            continue
        except OSError as e:
            raise BuildError(f"{path}: cannot read apt source list: {e}") from None
        if path.suffix == ".sources":
            for n, f in _deb822_stanzas(text):
                if f.get("enabled", "yes").lower() == "no" or "deb" not in f.get("types", "").split():
                    continue
                if "main" in f.get("components", "").split():
                    found += [AptSource(uri.rstrip("/"), suite, "main", f.get("signed-by", "").strip() or None,
                                        f"{path}:{n}")
                              for uri in f.get("uris", "").split() for suite in f.get("suites", "").split()]
        else:
            for n, kind, options, uri, suite, components in _one_line_entries(text):
                if kind == "deb" and "main" in components:
                    found.append(AptSource(uri.rstrip("/"), suite, "main", options.get("signed-by") or None,
                                           f"{path}:{n}"))
    return found


def _is_debian_release(src: AptSource) -> bool:
    """A Debian archive (a 'debian' URI path segment, or signed with Debian's archive keyring) and a
    release suite (bookworm, trixie, stable, sid ...: not -updates/-security/-backports, which hold no
    Translation files)."""
    path = src.uri.split("://", 1)[-1].split("/")[1:] if "://" in src.uri else src.uri.split("/")
    debian = "debian" in path or "debian-archive-keyring" in (src.signed_by or "")
    return debian and "-" not in src.suite and "/" not in src.suite


def debian_source(root="/") -> AptSource:
    """The first Debian 'main' deb source of the apt configuration under ``root`` (see ``apt_sources``)."""
    sources = apt_sources(root)
    for src in sources:
        if _is_debian_release(src):
            return src
    listed = "; ".join(f"{s.uri} {s.suite} ({s.origin})" for s in sources[:4]) or "none"
    raise BuildError(f"no Debian 'main' deb source in {Path(root) / APT_SOURCE_LISTS[0]} or "
                     f"{Path(root) / APT_SOURCE_LISTS[1]}/*.list|*.sources (main sources found: {listed}); "
                     "add one, or pass --translations-dir")


def recorded_apt_source(cache_dir: Path) -> Optional[dict]:
    """The source recorded by ``fetch_translations`` beside the Translation files (None if absent)."""
    path = Path(cache_dir) / APT_SOURCE_RECORD
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def fetch_translations(cache_dir: Path, refresh: bool = False, apt_root="/") -> Dict[str, Path]:
    """Translation-en/-de of the main suite of the system's Debian source (``debian_source(apt_root)``),
    decompressed into ``cache_dir`` (reused unless ``refresh``); the source is logged and recorded in
    ``cache_dir``/apt_source.json."""
    cache_dir = Path(cache_dir)
    out = {lang: cache_dir / f"Translation-{lang}" for lang in LANGS}
    if not refresh and all(p.is_file() and p.stat().st_size > 0 for p in out.values()):
        used = recorded_apt_source(cache_dir)
        logger.info("DDTP text: cached Translation files in %s (from %s)", cache_dir,
                    f"{used['uri']} {used['suite']} {used['component']}" if used else "an unrecorded source")
        return out
    source = debian_source(apt_root)
    logger.info("DDTP text from apt source %s %s %s (signed-by %s; %s)", source.uri, source.suite,
                source.component, source.signed_by or "apt's trusted keys", source.origin)
    signed_by = source.signed_by
    if signed_by and signed_by.lstrip().startswith("-----BEGIN"):  # deb822 inline key: one-line needs a file
        key_file = cache_dir / "signed-by.asc"
        cache_dir.mkdir(parents=True, exist_ok=True)
        key_file.write_text(signed_by.strip() + "\n")
        signed_by = str(key_file.resolve())
    elif signed_by:
        for key in signed_by.split(","):
            if key.startswith("/") and not Path(key).is_file():
                raise BuildError(f"{key} (Signed-By of {source.origin}) missing: "
                                 "apt-get install -y debian-archive-keyring")
    if shutil.which("apt-get") is None:
        raise BuildError("apt-get not found: DDTP text comes from Debian's apt index (or pass --translations-dir)")
    lists = cache_dir / "lists"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    (cache_dir / "cache").mkdir(exist_ok=True)
    (cache_dir / APT_SOURCE_RECORD).unlink(missing_ok=True)  # written again once both files are in place
    sources = cache_dir / "sources.list"
    options = f"[signed-by={signed_by}] " if signed_by else ""
    sources.write_text(f"deb {options}{source.uri} {source.suite} {source.component}\n")
    cmd = [
        "apt-get", "update",
        "-o", f"Dir::State::Lists={lists.resolve()}",
        "-o", f"Dir::Etc::SourceList={sources.resolve()}",
        "-o", "Dir::Etc::SourceParts=/nonexistent",
        "-o", f"Dir::Cache={(cache_dir / 'cache').resolve()}",
        "-o", "Acquire::Languages=" + ",".join(LANGS),
        "-o", "Acquire::IndexTargets::deb::Packages::DefaultEnabled=false",  # translations only
    ]
    logger.info("fetching DDTP translations: %s", " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
    if r.returncode != 0:
        raise BuildError(f"apt-get update of {source.uri} {source.suite} ({source.origin}) failed "
                         f"(exit {r.returncode}; network?): {tail}")
    helper = _apt_helper()
    for lang, dest in out.items():
        found = sorted(lists.glob(f"*_i18n_Translation-{lang}*"))
        if not found:
            raise BuildError(f"apt-get update fetched no Translation-{lang} (network or mirror problem?): {tail}")
        with atomic_write(dest, binary=True) as f:
            r = subprocess.run([helper, "cat-file", str(found[0])], stdout=f, stderr=subprocess.PIPE, text=False)
            if r.returncode != 0:
                raise BuildError(f"{helper} cat-file {found[0]} failed: {r.stderr.decode(errors='replace').strip()}")
    atomic.write_text(cache_dir / APT_SOURCE_RECORD, json.dumps(source.record(), indent=1) + "\n")
    return out
