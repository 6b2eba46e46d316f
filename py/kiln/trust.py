"""What kiln.load lets a file make Python do: the pickles inside an ExportedProgram archive.

torch.export.load unpickles every weight or constant its configs mark ``use_pickle`` (and the
sample inputs) with the full Python unpickler: a crafted ``.pt2`` runs any code on load. Before
torch sees the file, ``check_archive`` reads every pickle in it with ``pickletools`` (which parses
opcodes and executes nothing) and allows only the globals that rebuild tensors and Kiln engines.
Anything else refuses the file by entry and global, unless the caller says it trusts the file
(``kiln.load(path, trusted=True)``). docs/security.md states the trust model.
"""

from __future__ import annotations

import io
import json
import pickletools
import zipfile

from kiln._C import KilnError
from kiln.serialize import _ZIP_ERRORS

# The globals a Kiln-saved archive's pickles reference: tensor rebuilding (torch.save's zip format)
# and the Engine class (torch.classes.kiln.Engine pickles as its TorchScript class).
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch.jit._pickle", "restore_type_tag"),
    ("torch", "Size"),
    ("torch", "device"),
    ("__torch__.torch.classes.kiln", "Engine"),
}
_STRING_OPS = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "SHORT_BINSTRING",
    "BINSTRING",
    "STRING",
}


def _allowed(module: str, name: str) -> bool:
    if (module, name) in _SAFE_GLOBALS:
        return True
    if module != "torch":
        return False
    import torch

    # torch.FloatStorage and friends (tensor storage) and dtypes (torch.float32).
    return name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)


def _globals(data: bytes):
    """(module, name) of every global a pickle loads; ("?", "?") where it cannot be told
    without running it (a STACK_GLOBAL not right after its two strings)."""
    strings: list[str] = []
    for op, arg, _ in pickletools.genops(data):
        if op.name in _STRING_OPS:
            strings.append(arg if isinstance(arg, str) else arg.decode("latin-1"))
            continue
        if op.name == "MEMOIZE":
            continue
        if op.name in ("GLOBAL", "INST"):
            module, _, name = arg.partition(" ")
            yield module, name
        elif op.name == "STACK_GLOBAL":
            yield (strings[-2], strings[-1]) if len(strings) >= 2 else ("?", "?")
        strings = []


def _pickles(entry: str, data: bytes, pickled: bool):
    """(where, pickle bytes) of an archive entry: the pickles of a torch.save zip inside it, or
    the entry itself when the loader unpickles it in another form."""
    if data[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            for name in inner.namelist():
                if name.endswith(".pkl"):
                    yield f"{entry} ({name})", inner.read(name)
    elif pickled:
        yield entry, data


def _pickled_entries(archive: zipfile.ZipFile) -> set[str]:
    """The archive entries torch.export.load unpickles: configs' use_pickle payloads and the
    sample inputs."""
    names = set(archive.namelist())
    found = {n for n in names if "/data/sample_inputs/" in n}
    for config in (n for n in names if n.endswith("_config.json")):
        try:
            entries = json.loads(archive.read(config)).get("config", {})
        except (ValueError, AttributeError):
            raise KilnError(f"kiln.load: {config} in the archive is not valid JSON") from None
        folder = config.rsplit("/", 1)[0]
        for meta in entries.values() if isinstance(entries, dict) else []:
            if isinstance(meta, dict) and meta.get("use_pickle"):
                found.add(f"{folder}/{meta.get('path_name', '')}")
    return found


def check_archive(path: str) -> None:
    """Raises KilnError naming the entry and the global when a pickle in the ExportedProgram
    archive at `path` could make loading run code other than rebuilding tensors and Kiln
    engines, and when the archive cannot be read (a damaged zip)."""
    try:
        _check_archive(path)
    except _ZIP_ERRORS as error:
        raise KilnError(
            f"kiln.load: {path} is a damaged zip archive ({type(error).__name__}: {error})"
        ) from error


def _check_archive(path: str) -> None:
    with zipfile.ZipFile(path) as archive:
        pickled = _pickled_entries(archive)
        for entry in archive.namelist():
            with archive.open(entry) as f:
                head = f.read(2)
            if head != b"PK" and entry not in pickled:
                continue  # raw tensor bytes, JSON, text: torch reads them without unpickling
            data = archive.read(entry)
            for where, payload in _pickles(entry, data, entry in pickled):
                try:
                    refs = list(_globals(payload))
                except Exception as error:  # noqa: BLE001 (pickletools raises several kinds)
                    raise KilnError(
                        f"kiln.load: {path}: entry {where} is not a readable pickle ({error}); "
                        "refusing the file. Load it with kiln.load(path, trusted=True) only if "
                        "you trust where it came from."
                    ) from None
                for module, name in refs:
                    if not _allowed(module, name):
                        raise KilnError(
                            f"kiln.load: {path}: entry {where} is a pickle that calls "
                            f"{module}.{name} when loaded, which a file saved by kiln.save never "
                            "does; refusing it (it could run any code). If you trust the file, "
                            "load it with kiln.load(path, trusted=True). See docs/security.md."
                        )
