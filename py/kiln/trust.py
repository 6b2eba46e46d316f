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


class _Window(io.RawIOBase):
    """Bytes [start, start + size) of an open binary file, as a seekable file of their own: a
    zip stored (uncompressed) inside the archive opens in place, without reading it whole."""

    def __init__(self, file, start: int, size: int):
        self._file, self._start, self._size, self._pos = file, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self._size - self._pos))
        self._file.seek(self._start + self._pos)
        data = self._file.read(count)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _stored_window(path: str, archive: zipfile.ZipFile, entry: str):
    """A _Window onto `entry`'s bytes when the archive stores it uncompressed (torch.save and
    torch.export.save do), else None. The data start comes from the entry's local header, whose
    extra field may differ from the central directory's."""
    info = archive.getinfo(entry)
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # compressed or encrypted
        return None
    file = open(path, "rb")  # noqa: SIM115 (closed by the caller through the window's owner)
    file.seek(info.header_offset)
    header = file.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        file.close()
        raise zipfile.BadZipFile(f"entry {entry} has no local file header")
    name_length = int.from_bytes(header[26:28], "little")
    extra_length = int.from_bytes(header[28:30], "little")
    start = info.header_offset + 30 + name_length + extra_length
    return file, _Window(file, start, info.file_size)


def _inner_pickles(entry: str, inner: zipfile.ZipFile):
    for name in inner.namelist():
        if name.endswith(".pkl"):
            yield f"{entry} ({name})", inner.read(name)


def _pickles(path: str, archive: zipfile.ZipFile, entry: str, pickled: bool):
    """(where, pickle bytes) of an archive entry: the pickles of a torch.save zip inside it (read
    in place where the entry is stored, so a large plan's bytes are not read), or the entry
    itself when the loader unpickles it in another form."""
    with archive.open(entry) as f:
        head = f.read(2)
    if head == b"PK":
        stored = _stored_window(path, archive, entry)
        if stored is not None:
            file, window = stored
            with file, zipfile.ZipFile(io.BufferedReader(window, 1 << 16)) as inner:
                yield from _inner_pickles(entry, inner)
        else:
            with zipfile.ZipFile(io.BytesIO(archive.read(entry))) as inner:
                yield from _inner_pickles(entry, inner)
    elif pickled:
        yield entry, archive.read(entry)


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
            # Raw tensor bytes, JSON and text that torch reads without unpickling yield nothing.
            for where, payload in _pickles(path, archive, entry, entry in pickled):
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
