"""Errors about input data: the CLIs print them as one line ``error: ...`` (exit status 2)."""


class DataPrepError(Exception):
    """A problem with the input data or the output directory; the message names the file, row or flag."""


class ManifestError(DataPrepError):
    """A manifest that cannot be read (missing, not UTF-8, not a TSV); names the file and line."""


class BuildError(DataPrepError):
    """DDTP-ST: a missing tool, a failed download or an inconsistent output dir."""


class ParamsMismatch(BuildError):
    """DDTP-ST: ``out_dir`` holds features of a build with other parameters (seed, size, text, voices...)."""


def make_output_dir(path, error=DataPrepError):
    """``mkdir -p path``; a path that cannot be created (under a file, not writable) raises ``error`` naming it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise error(f"{path}: cannot create the output directory ({e.strerror or e})") from None
    return path


def yaml_error(path, e) -> str:
    """``PATH:LINE: not valid YAML (problem)`` for a ``yaml.YAMLError`` ``e`` raised reading ``path`` (no line
    where the parser gives none)."""
    mark = getattr(e, "problem_mark", None)
    where = f":{mark.line + 1}" if mark is not None else ""
    return f"{path}{where}: not valid YAML ({' '.join(str(getattr(e, 'problem', None) or e).split())})"
