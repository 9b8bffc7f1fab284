"""Write files so that a crash, a full disk or a second writer never leaves a partial, lost or
overwritten file. Every file the package writes (mask, PNG, DICOM-SEG, model bundle, study, ...)
goes through this module:

1. `check_writable` / `check_outputs` validate each output before any work is done: a file name
   (not empty, not a folder), an accepted suffix, a writable folder, no existing file unless
   forced, never an input file or a path inside an input folder (a DICOM series), and no two
   outputs of one command naming the same file.
2. `atomic_path` / `atomic_outputs`: the caller writes temporary files in the target folder. On
   success each is flushed to disk (fsync) and verified (not empty, plus an optional check that
   reads it back), and only then committed. Without `replace` the commit is an exclusive
   `os.link`, which fails if the name appeared meanwhile (a concurrent run finished first: it
   wins, this one fails); with `replace` it is `os.replace`. The outputs of one command are
   committed together: if one fails, those already made are removed again.

Any OSError while writing (disk full, quota, RLIMIT_FSIZE, permissions) becomes a ResourceError
(exit 2, one line) and every temporary file is removed, also on Ctrl-C and SIGTERM (the CLI turns
SIGTERM into an exception so that this cleanup runs).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import InputError, PropSAMError, ResourceError

Verify = Callable[[Path], None]  # raises if the written temporary file is not what was meant


def check_writable(path: str | os.PathLike, force: bool, *, suffixes: Iterable[str] | None = None,
                   inputs: Iterable[str | os.PathLike] = (), what: str = "output") -> Path:
    """Validate one output before any work: see the module docstring. Returns it as a Path."""
    if path is None or not str(path).strip():
        raise InputError(f"{what} path is empty")
    path = Path(path)
    suffixes = tuple(suffixes or ())
    if suffixes and not path.name.lower().endswith(suffixes):
        raise InputError(f"{what} {path.name} must end with {' or '.join(suffixes)}")
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder, expected a file name")
    _check_not_an_input(path, inputs, what)
    if path.exists() and not force:
        raise InputError(f"{what} {path} already exists; pass --force to replace it")
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"{what} folder {folder} does not exist")
    try:  # a real probe: os.access misses read-only mounts, ACLs and root squashing
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise InputError(f"{what} folder {folder} is not writable ({exc.strerror or exc})") from None
    return path


def check_outputs(outputs: dict[str, tuple[str | os.PathLike | None, Iterable[str] | None]], force: bool,
                  inputs: Iterable[str | os.PathLike] = ()) -> dict[str, Path]:
    """Validate all outputs of one command: {name: (path or None, suffixes)} -> {name: Path}.

    Each must pass `check_writable`, and no two may name the same file."""
    inputs = [i for i in inputs if i is not None and str(i).strip()]
    checked: dict[str, Path] = {}
    for name, (path, suffixes) in outputs.items():
        if path is None:
            continue
        checked[name] = check_writable(path, force, suffixes=suffixes, inputs=inputs, what=name)
    seen: dict[Path, str] = {}
    for name, path in checked.items():
        key = path.resolve()
        if key in seen:
            raise InputError(f"{seen[key]} and {name} name the same file {path}; give each its own")
        seen[key] = name
    return checked


def _check_not_an_input(path: Path, inputs: Iterable[str | os.PathLike], what: str) -> None:
    target = path.resolve()
    for given in inputs:
        if given is None or not str(given).strip():
            continue
        source = Path(given).resolve()
        if source.is_dir():
            if source == target or source in target.parents:
                raise InputError(f"{what} {path} lies inside the input folder {given}; write it elsewhere "
                                 "(inputs are never changed)")
        elif target == source or (path.exists() and source.exists() and os.path.samefile(path, source)):
            raise InputError(f"{what} {path} is the input {given}; inputs are never overwritten, choose another name")


def check_not_empty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise ResourceError("0 bytes were written")


class AtomicOutputs:
    """Temporary files for several outputs, committed together (see the module docstring)."""

    def __init__(self, replace: bool = True):
        self.replace = replace
        self._pending: list[tuple[Path, Path, Verify | None]] = []  # (final, temporary, verify)

    def add(self, path: str | os.PathLike, verify: Verify | None = None) -> Path:
        """A temporary path in `path`'s folder with the same suffixes (writers choose the format by them)."""
        path = Path(path)
        suffix = "".join(path.suffixes) or ".tmp"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp's 0600 would hide outputs from other users (PACS upload)
        self._pending.append((path, tmp_path, verify))
        return tmp_path

    def commit(self) -> list[Path]:
        for final, tmp, verify in self._pending:
            _sync(tmp)
            try:
                check_not_empty(tmp)
                if verify is not None:
                    verify(tmp)
            except PropSAMError as exc:
                raise ResourceError(f"{final} was not written correctly, nothing was saved: {exc} "
                                    "(is the disk full?)") from None
        done: list[Path] = []  # committed and created by us: removed again if a later commit fails
        try:
            for final, tmp, _ in self._pending:
                existed = final.exists()
                self._commit_one(tmp, final)
                if not existed:
                    done.append(final)
        except BaseException:
            for final in done:
                with contextlib.suppress(OSError):
                    final.unlink()
            raise
        folders = {final.parent for final, _, _ in self._pending}
        for folder in folders:
            _sync(folder)
        return [final for final, _, _ in self._pending]

    def _commit_one(self, tmp: Path, final: Path) -> None:
        if self.replace:
            os.replace(tmp, final)
            return
        taken = InputError(f"output {final} was created by another process while this one ran; it was kept "
                           "(pass --force to replace it)")
        try:
            os.link(tmp, final)  # atomic and exclusive: fails if `final` exists by now
        except FileExistsError:
            raise taken from None
        except OSError:  # a filesystem without hard links: exclusive create, then replace it
            try:
                os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                raise taken from None
            os.replace(tmp, final)

    def discard(self) -> None:
        for _, tmp, _ in self._pending:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._pending = []


@contextlib.contextmanager
def atomic_outputs(replace: bool = True) -> Iterator[AtomicOutputs]:
    """`with atomic_outputs(replace=force) as out: write(out.add(path, verify))` commits on success."""
    outputs = AtomicOutputs(replace)
    try:
        try:
            yield outputs
            outputs.commit()
        except OSError as exc:
            names = ", ".join(str(final) for final, _, _ in outputs._pending) or "output"
            raise ResourceError(f"cannot write {names}: {_reason(exc)}") from None
    finally:
        outputs.discard()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, replace: bool = True, verify: Verify | None = None) -> Iterator[Path]:
    """Yield a temporary path in the same folder (same suffixes); verified, then moved to `path`.

    replace=False: fail (InputError) rather than replace a file that exists at commit time."""
    with atomic_outputs(replace) as outputs:
        yield outputs.add(path, verify)


def _reason(exc: BaseException) -> str:
    """The system's words for an OSError, also when a library wrapped it (pydicom adds a traceback)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():  # some filesystems cannot fsync a folder; a file must be synced
            raise
    finally:
        os.close(fd)
