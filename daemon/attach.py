"""Finding and keeping the data plane's region.

``Attacher.try_attach()`` attaches when the region exists and is valid, and
otherwise returns why not (the daemon keeps waiting with backoff: an absent
data plane, a permission problem or an ABI mismatch is never a crash loop).
``Attacher.check()`` says whether the attached region is still the data
plane's current one and still safe to touch: the file may have been truncated
under the mapping (checked first: reading past its end would be SIGBUS), the
name may now point at a new segment (data plane restarted and recreated it) or
the header's generation may have changed (re-initialised in place).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from marllb.daemon.shm import Region, RegionError, shm_name


@dataclass
class Attached:
    region: Region
    generation: int
    inode: int


def _inode(name: str) -> int | None:
    try:
        return os.stat("/dev/shm/" + shm_name(name).lstrip("/")).st_ino
    except OSError:
        return None


class Backoff:
    """Exponential backoff between attach attempts: 50 ms doubling to ``max_s``."""

    def __init__(self, max_s: float, first_s: float = 0.05) -> None:
        self.first_s = min(first_s, max_s)
        self.max_s = max_s
        self.next_s = self.first_s

    def step(self) -> float:
        d = self.next_s
        self.next_s = min(self.next_s * 2, self.max_s)
        return d

    def reset(self) -> None:
        self.next_s = self.first_s


class Attacher:
    def __init__(self, name: str) -> None:
        self.name = shm_name(name)
        self.current: Attached | None = None
        self.attaches = 0
        self.reattaches = 0

    def try_attach(self) -> str | None:
        """Attach if possible: None on success, else the reason (one line)."""
        ino = _inode(self.name)
        if ino is None:
            return f"region {self.name} does not exist (is the data plane running?)"
        try:
            region = Region.attach(self.name, writable=True)
        except RegionError as e:
            return str(e)
        if _inode(self.name) != ino:  # recreated while we attached: try again later
            region.close()
            return f"region {self.name} was being recreated"
        if self.attaches:
            self.reattaches += 1
        self.attaches += 1
        self.current = Attached(region, region.generation, ino)
        return None

    def check(self) -> str | None:
        """None while the attached region is still current, else why it is not."""
        cur = self.current
        if cur is None:
            return "not attached"
        shrunk = cur.region.size_problem()
        if shrunk is not None:
            return shrunk
        ino = _inode(self.name)
        if ino is None:
            return f"region {self.name} disappeared (data plane stopped)"
        if ino != cur.inode:
            return f"region {self.name} was recreated (data plane restarted)"
        gen = cur.region.generation
        if gen != cur.generation:
            return f"region {self.name} generation changed {cur.generation:#x} -> {gen:#x}"
        return None

    def detach(self) -> None:
        if self.current is not None:
            self.current.region.close()
            self.current = None

    @property
    def region(self) -> Region | None:
        return self.current.region if self.current else None
