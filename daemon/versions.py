"""Versioned checkpoints: a store of immutable policy versions with manifests.

Layout (one directory per version, written as a whole, never changed after)::

    STORE/NAME/v1/policy.safetensors   the checkpoint's tensors
    STORE/NAME/v1/policy.json          its metadata (daemon/checkpoint.py)
    STORE/NAME/v1/manifest.json        version, parent, training command,
                                       scenario distribution, evaluation summary,
                                       gate verdict, sha256 of every file

A version is named ``NAME@vN`` (``NAME@latest`` is the highest N).  Serving
a version verifies the sha256 of every file listed in its manifest first: a
file changed or truncated after it was published is refused with the file
named.  Nothing is ever overwritten, so the previous version stays available
for rollback; ``lbctl policy list`` shows them.

A version may be canaried only when its manifest records a passed evaluation
gate (``gate.passed``): the gate is run offline (``lbsim eval``) and recorded
when the version is added.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marllb.daemon.fsutil import atomic_write_json, replace_dir

MANIFEST = "manifest.json"
TENSORS = "policy.safetensors"
META = "policy.json"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_VERSION = re.compile(r"^v([1-9][0-9]{0,8})$")


class VersionError(ValueError):
    """A version that cannot be resolved or verified; the message names it."""


@dataclass(frozen=True)
class VersionRef:
    name: str
    version: str          # "vN", "latest" or "previous"

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


def parse_ref(spec: str) -> VersionRef:
    """``NAME@vN`` | ``NAME@latest`` | ``NAME@previous`` -> VersionRef (VersionError if not)."""
    name, sep, ver = spec.partition("@")
    if not sep or not _NAME.match(name) or not (
            _VERSION.match(ver) or ver in ("latest", "previous")):
        raise VersionError(f"version {spec!r}: expected NAME@vN, NAME@latest or NAME@previous")
    return VersionRef(name, ver)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class CheckpointStore:
    """The versions of every policy under one root directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def versions(self, name: str) -> list[str]:
        """Published versions of ``name``, oldest first (``["v1", "v2", ...]``)."""
        d = self.root / name
        if not d.is_dir():
            return []
        found = [(int(m.group(1)), p.name) for p in d.iterdir()
                 if p.is_dir() and (m := _VERSION.match(p.name)) and (p / MANIFEST).is_file()]
        return [v for _, v in sorted(found)]

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and _NAME.match(p.name) and self.versions(p.name))

    def _concrete(self, ref: VersionRef) -> str:
        vs = self.versions(ref.name)
        if not vs:
            raise VersionError(f"version {ref}: no versions of {ref.name!r} in {self.root}")
        if ref.version == "latest":
            return vs[-1]
        if ref.version == "previous":
            if len(vs) < 2:
                raise VersionError(f"version {ref}: {ref.name!r} has only {vs[0]}")
            return vs[-2]
        if ref.version not in vs:
            raise VersionError(f"version {ref}: not in {self.root / ref.name} "
                               f"(have {', '.join(vs)})")
        return ref.version

    def manifest(self, spec: str | VersionRef) -> dict[str, Any]:
        ref = parse_ref(spec) if isinstance(spec, str) else spec
        ver = self._concrete(ref)
        p = self.root / ref.name / ver / MANIFEST
        try:
            m = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise VersionError(f"version {ref.name}@{ver}: unreadable {p}: {e}") from None
        if not isinstance(m, dict) or not isinstance(m.get("files"), dict):
            raise VersionError(f"version {ref.name}@{ver}: {p} has no 'files' table")
        return m

    def resolve(self, spec: str | VersionRef) -> Path:
        """The verified tensors path of a version (every file's sha256 checked)."""
        ref = parse_ref(spec) if isinstance(spec, str) else spec
        ver = self._concrete(ref)
        m = self.manifest(VersionRef(ref.name, ver))
        d = self.root / ref.name / ver
        for fname, want in m["files"].items():
            p = d / fname
            if "/" in fname or not p.is_file():
                raise VersionError(f"version {ref.name}@{ver}: {p} is missing")
            got = sha256_file(p)
            if got != want:
                raise VersionError(f"version {ref.name}@{ver}: {p} sha256 {got[:12]}... "
                                   f"does not match the manifest's {str(want)[:12]}...")
        return d / TENSORS

    def add(self, name: str, checkpoint: str | Path, *, parent: str | None = None,
            training: dict[str, Any] | None = None,
            evaluation: dict[str, Any] | None = None,
            gate: dict[str, Any] | None = None) -> str:
        """Publish ``checkpoint`` (X.safetensors + X.json) as the next version of ``name``."""
        if not _NAME.match(name):
            raise VersionError(f"policy name {name!r}: letters, digits, '_', '.', '-' only")
        src = Path(checkpoint)
        if src.suffix in (".safetensors", ".json"):
            src = src.with_suffix("")
        tp, mp = src.with_name(src.name + ".safetensors"), src.with_name(src.name + ".json")
        for p in (tp, mp):
            if not p.is_file():
                raise VersionError(f"checkpoint {p}: no such file")
        if parent is not None:
            self.manifest(parent)  # must exist
        vs = self.versions(name)
        ver = f"v{int(vs[-1][1:]) + 1 if vs else 1}"
        (self.root / name).mkdir(parents=True, exist_ok=True)

        def fill(tmp: Path) -> None:
            shutil.copyfile(tp, tmp / TENSORS)
            shutil.copyfile(mp, tmp / META)
            for f in (tmp / TENSORS, tmp / META):
                f.chmod(0o640)
            manifest = {
                "name": name, "version": ver, "parent": parent,
                "created_unix": int(time.time()),
                "training": training or {}, "evaluation": evaluation or {},
                "gate": gate or {"passed": False, "why": "no evaluation gate recorded"},
                "files": {f: sha256_file(tmp / f) for f in (TENSORS, META)},
            }
            atomic_write_json(tmp / MANIFEST, manifest, mode=0o640)

        replace_dir(self.root / name / ver, fill)
        return ver

    def require_gate(self, spec: str) -> None:
        """VersionError unless the version's manifest records a passed evaluation gate."""
        m = self.manifest(spec)
        gate = m.get("gate") or {}
        if gate.get("passed") is not True:
            raise VersionError(f"version {spec}: has not passed the evaluation gate "
                               f"({gate.get('why', 'no gate recorded')}); it cannot be canaried")

    def listing(self) -> list[dict[str, Any]]:
        """One row per version of every policy (for ``lbctl policy list``)."""
        rows = []
        for name in self.names():
            for ver in self.versions(name):
                try:
                    m = self.manifest(f"{name}@{ver}")
                except VersionError as e:
                    rows.append({"policy": f"{name}@{ver}", "error": str(e)})
                    continue
                rows.append({
                    "policy": f"{name}@{ver}", "parent": m.get("parent"),
                    "created_unix": m.get("created_unix"),
                    "gate": bool((m.get("gate") or {}).get("passed")),
                    "command": (m.get("training") or {}).get("command"),
                })
        return rows
