"""Output folders: what softprompt wrote into one, checked before any work, and removing only that.

Every job that writes a folder (train, compare, sweep) lists each path in the folder's manifest,
``.softprompt_outputs.json``, *before* writing it. ``--overwrite_output_dir`` then removes exactly
the listed paths (a listed folder only once it is empty, a run folder inside by its own manifest)
and the temporary files and folders a killed write left beside a listed name; every other file
stays where it is, and one log line names it. A file softprompt did not write whose name a run
would write (``adapter_config.json``, ``config.json``, ``checkpoint-2``, ...) is refused instead:
replacing it would lose it. A folder without a manifest holds nothing of softprompt's.

Before anything is loaded an output folder is checked: it can be created or written, it is not
(and does not contain) one of the run's inputs (the model, the adapter, the dataset), and it is not
the current directory when that holds other files. Each refusal is one ``ArgumentError`` line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from softprompt.config import ArgumentError, DataArgs, ModelArgs
from softprompt.files import atomic_write_text

MANIFEST = ".softprompt_outputs.json"
STAGING = ".softprompt_staging"
"""A folder inside an output folder where a result is written before its files are listed and moved in."""
RUN_FILES = ("training_args.yaml", "trainer_log.jsonl", "train_results.json", "training_loss.png",
             "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
_RUN_PATTERN = re.compile(
    r"checkpoint-\d+|config\.json|generation_config\.json|special_tokens_map\.json|added_tokens\.json|merges\.txt"
    r"|vocab\.\w+|chat_template\.\w+|tokenizer[\w.-]*|(model|pytorch_model)[\w.-]*\.(safetensors|bin|json)")
"""The names of a model folder (full / freeze write one) and of checkpoints."""
TEMPORARY_CHECKPOINT = re.compile(r"\.checkpoint-\d+\.\w+")
"""A checkpoint folder being written (:func:`softprompt.files.atomic_folder` beside ``checkpoint-N``)."""


def run_writes(name: str) -> bool:
    """Whether a training run may write ``name`` into its output_dir (its files, a model folder's, checkpoint-N)."""
    return name in RUN_FILES or name == MANIFEST or _RUN_PATTERN.fullmatch(name) is not None


# ---------------------------------------------------------------------------------------------
# the manifest


def written(folder: str | Path) -> set[str]:
    """The paths (relative, ``/``-separated) the manifest of ``folder`` lists; empty without a readable one."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return set()
    paths = data.get("written") if isinstance(data, dict) else None
    return {p for p in paths if isinstance(p, str)} if isinstance(paths, list) else set()


def _write_manifest(folder: Path, paths: set[str]) -> None:
    text = json.dumps({"written_by": "softprompt", "written": sorted(paths)}, indent=1) + "\n"
    atomic_write_text(folder / MANIFEST, text)


def claim(folder: str | Path, *paths: str) -> None:
    """List ``paths`` (relative to ``folder``, which is created) in its manifest; call before writing them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    listed = written(folder)
    if not set(paths) <= listed or not (folder / MANIFEST).is_file():
        _write_manifest(folder, listed | set(paths))


def remove_own(folder: str | Path, name: str) -> list[str]:
    """Remove the entry ``name`` of ``folder`` as far as softprompt wrote it and unlist what is gone; the
    paths kept."""
    folder = Path(folder)
    listed = written(folder)
    kept = _clear_entry(folder, name, listed, _owned_names(folder, listed, ""))
    mine = {p for p in listed if p == name or p.startswith(name + "/")}
    _write_manifest(folder, listed - {p for p in mine if not (folder / p).exists()})
    return kept


def adopt(folder: str | Path, writes: Callable[[str], bool]) -> None:
    """List what ``folder`` holds under the names ``writes`` says a run writes, with what is in them: for a
    run folder written before softprompt kept manifests, which a resumed run may replace."""
    folder = Path(folder)
    names = [p for p in folder.iterdir() if writes(p.name) and p.name != MANIFEST]
    claim(folder, *(p.name for p in names),
          *(str(q.relative_to(folder)) for p in names if p.is_dir() and not p.is_symlink() for q in p.rglob("*")))


def clear(folder: str | Path) -> list[str]:
    """Remove what softprompt wrote into ``folder`` (see the module docstring); the paths kept, relative."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    listed = written(folder)
    own = _owned_names(folder, listed, "")
    kept: list[str] = []
    for entry in sorted(folder.iterdir()):
        if entry.name != MANIFEST:
            kept += _clear_entry(folder, entry.name, listed, own)
    (folder / MANIFEST).unlink(missing_ok=True)
    return kept


def _owned_names(folder: Path, listed: set[str], sub: str) -> set[str]:
    """The names directly in ``folder/sub`` that ``listed`` holds (the manifest counts at the top)."""
    prefix = sub + "/" if sub else ""
    names = {p[len(prefix):] for p in listed if p.startswith(prefix) and "/" not in p[len(prefix):]}
    return names | ({MANIFEST} if not sub and (folder / MANIFEST).is_file() else set())


def _is_temporary(name: str, own: set[str]) -> bool:
    """What an atomic write of an owned name leaves when killed: ``.NAME.XXXX(.tmp)``."""
    if not own or not name.startswith(".") or name in own:
        return False
    return TEMPORARY_CHECKPOINT.fullmatch(name) is not None or any(name.startswith(f".{o}.") for o in own)


def _clear_entry(root: Path, rel: str, listed: set[str], own: set[str]) -> list[str]:
    """Remove ``root/rel`` as far as softprompt wrote it; the paths kept (relative to ``root``)."""
    path, name = root / rel, rel.rsplit("/", 1)[-1]
    if not path.exists() and not path.is_symlink():
        return []
    if _is_temporary(name, own) or (rel == STAGING and rel in listed):  # softprompt's scratch, whole
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        return []
    if rel not in listed:
        return [rel]
    if not path.is_dir() or path.is_symlink():
        path.unlink()
        return []
    if (path / MANIFEST).is_file():  # a run folder inside (compare, sweep): by its own manifest
        kept = [f"{rel}/{k}" for k in clear(path)]
    else:
        inner = _owned_names(root, listed, rel)
        kept = [k for child in sorted(path.iterdir()) for k in _clear_entry(root, f"{rel}/{child.name}", listed, inner)]
    if not any(path.iterdir()):
        path.rmdir()
    return kept


def write_into(folder: str | Path, write: Callable[[Path], None]) -> None:
    """``write(new)`` fills a new folder inside ``folder``'s staging folder; its entries are listed in the
    manifest and then renamed into ``folder`` (replacing softprompt's own of the same names only)."""
    folder = Path(folder)
    claim(folder, STAGING)
    stage = folder / STAGING
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    new = stage / "new"
    write(new)
    listed = written(folder)
    names = sorted(p.name for p in new.iterdir())
    for name in names:
        target = folder / name
        if target.is_dir() and not target.is_symlink() and name in listed:
            remove_own(folder, name)  # softprompt's own folder of that name; what else is in it stays
        if (target.exists() or target.is_symlink()) and (name not in listed or target.is_dir()):
            raise ArgumentError(f"{folder} holds {name}, which softprompt did not write; the result is in {new}")
    claim(folder, *names, *(str(p.relative_to(new)) for p in new.rglob("*")))
    for name in names:
        os.replace(new / name, folder / name)
    remove_own(folder, STAGING)


# ---------------------------------------------------------------------------------------------
# checks before any work


def check_writable(path: str | Path, flag: str = "--output_dir") -> None:
    """``path`` is a folder softprompt can write, or one it can create: no part of it is a file and the
    nearest existing folder is writable. Nothing is created."""
    path = Path(path)
    try:
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long
        raise ArgumentError(f"{flag} {str(path)[:200]!r}: not a usable path ({exc})") from None
    if existing == path and not path.is_dir():
        raise ArgumentError(f"{flag} {path} exists and is not a folder")
    if existing.exists() and not existing.is_dir():
        raise ArgumentError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ArgumentError(f"{flag} {path}: cannot write in {existing} (read-only or permission denied)")


def run_inputs(model: ModelArgs, data: DataArgs, dataset_files: Mapping[str, Path]) -> dict[str, Path]:
    """What a run reads from disk, named as its messages say (the model, the adapter, the dataset folder, each
    dataset's file, given as ``dataset_files``: name -> path), where it exists."""
    found = {"the model (--model_name_or_path)": model.model_name_or_path,
             "the adapter (--adapter_name_or_path)": model.adapter_name_or_path,
             "the dataset folder (--dataset_dir)": data.dataset_dir,
             **{f"the file of dataset {name!r}": str(path) for name, path in dataset_files.items()}}
    return {what: Path(p).expanduser() for what, p in found.items() if p and Path(p).expanduser().exists()}


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def foreign(folder: str | Path) -> list[str]:
    """The entries of ``folder`` softprompt did not write (sorted names)."""
    folder = Path(folder)
    listed = written(folder)
    own = _owned_names(folder, listed, "")
    return sorted(p.name for p in folder.iterdir() if p.name not in own and not (own and _is_temporary(p.name, own)))


def check_output_dir(out: str | Path, overwrite: bool, resume: bool, inputs: Mapping[str, Path],
                     writes: Callable[[str], bool]) -> None:
    """Refuse, in one line, an output folder that cannot be written, that is or holds one of ``inputs``,
    that is the current directory holding other files, that is not empty (without ``overwrite`` or
    ``resume``), or that holds a file softprompt did not write under a name ``writes`` says it writes."""
    out = Path(out)
    check_writable(out)
    where = out.resolve()
    for what, path in inputs.items():
        if _inside(path.resolve(), where):
            relation = "is" if path.resolve() == where else "contains"
            raise ArgumentError(f"--output_dir {out} {relation} {what}, {path}: choose another --output_dir "
                                f"(softprompt does not write where its inputs are)")
    if not out.is_dir() or not any(out.iterdir()):
        return
    others = foreign(out)
    if others and _inside(Path.cwd().resolve(), where):
        named = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise ArgumentError(f"--output_dir {out} is the current directory (or holds it), with files softprompt did not "
                            f"write ({named}): give the run a folder of its own")
    if not overwrite and not resume:
        raise ArgumentError(f"--output_dir {out} is not empty; pass --overwrite_output_dir to replace it "
                            f"(only what softprompt wrote there is removed)")
    clash = next((name for name in others if writes(name)), None)
    if clash is not None and not (resume and not (out / MANIFEST).is_file()):  # resuming a run older than manifests
        raise ArgumentError(f"--output_dir {out} holds {clash}, which softprompt did not write ({MANIFEST} does not "
                            f"list it) and which this run would replace: move it away or choose another --output_dir")
