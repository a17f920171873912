#!/usr/bin/env python3
"""Where a process's resident memory lies, per mapping class, and the page-cache folios behind
its file pages (needs root: /proc/PID/pagemap's frame numbers and /proc/kpageflags).

Usage: scripts/rss-map.py PID            one table: class, Rss, Anonymous, FilePmdMapped (KiB),
                                         and for file pages the folio sizes they belong to
       scripts/rss-map.py --file PATH    the folios of PATH's pages in the page cache (maps
                                         the file and populates it: pages not cached are read)

Classes: the binary's code (r-x of its own file), its read-only data (r-- of its file),
its relocated data (.data.rel.ro, .data: rw- of its file, anonymous once written), libc, ld.so,
other libraries, the heap, thread stacks (anonymous rw- mappings just above a guard page),
other anonymous memory, the main stack.
"""
import mmap
import os
import struct
import sys
from collections import Counter, defaultdict

KPF_COMPOUND_HEAD = 1 << 15
KPF_COMPOUND_TAIL = 1 << 16
KPF_THP = 1 << 22
PAGE = os.sysconf("SC_PAGE_SIZE")


def read_maps(pid):
    """(start, end, perms, offset, path, smaps fields) per mapping."""
    out = []
    current = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                path = parts[5] if len(parts) > 5 else ""
                current = [start, end, parts[1], int(parts[2], 16), path, {}]
                out.append(current)
            elif parts[0].endswith(":") and len(parts) >= 2 and parts[1].isdigit():
                current[5][parts[0][:-1]] = int(parts[1])
    return out


def pfns(pid, start, end):
    """The frame number of each present page of [start, end) (None when absent)."""
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(start // PAGE * 8)
        data = f.read((end - start) // PAGE * 8)
    result = []
    for (entry,) in struct.iter_unpack("<Q", data):
        present = entry >> 63 & 1
        result.append(entry & ((1 << 55) - 1) if present else None)
    return result


class Flags:
    def __init__(self):
        self.f = open("/proc/kpageflags", "rb")
        self.cache = {}

    def get(self, pfn):
        if pfn not in self.cache:
            self.f.seek(pfn * 8)
            (self.cache[pfn],) = struct.unpack("<Q", self.f.read(8))
        return self.cache[pfn]

    def folio(self, pfn):
        """(head pfn, pages) of the folio holding pfn."""
        head = pfn
        while self.get(head) & KPF_COMPOUND_TAIL:
            head -= 1
        if not self.get(head) & KPF_COMPOUND_HEAD:
            return head, 1
        n = 1
        while self.get(head + n) & KPF_COMPOUND_TAIL:
            n += 1
        return head, n


def folio_summary(flags, frames):
    """'size KiB x count' of the distinct folios the present frames belong to."""
    folios = {}
    for pfn in frames:
        if pfn is not None and pfn != 0:
            head, n = flags.folio(pfn)
            folios[head] = n
    sizes = Counter(n * PAGE // 1024 for n in folios.values())
    return " ".join(f"{k}K:{v}" for k, v in sorted(sizes.items())), len(folios)


def classify(maps, exe):
    stacks = set()
    for i, (start, end, perms, _, path, _) in enumerate(maps):
        # a thread stack: anonymous rw-p right after a ---p guard of its own
        if path == "" and perms == "rw-p" and i > 0:
            prev = maps[i - 1]
            if prev[2] == "---p" and prev[4] == "" and prev[1] == start:
                stacks.add(i)
    for i, (start, end, perms, _, path, _) in enumerate(maps):
        name = os.path.basename(path)
        if path == exe:
            cls = {"r-xp": "binary code", "r--p": "binary rodata"}.get(perms, "binary data (rw)")
        elif name.startswith("libc.so") or name.startswith("libc-"):
            cls = "libc"
        elif name.startswith("ld-linux"):
            cls = "ld.so"
        elif path == "[heap]":
            cls = "heap"
        elif path == "[stack]":
            cls = "main stack"
        elif path in ("[vdso]", "[vvar]", "[vsyscall]", "[vvar_vclock]"):
            cls = "vdso"
        elif i in stacks:
            cls = "thread stacks"
        elif path == "":
            cls = "other anonymous"
        else:
            cls = "other libs"
        yield cls, maps[i]


def by_pid(pid):
    exe = os.readlink(f"/proc/{pid}/exe")
    maps = read_maps(pid)
    flags = Flags()
    rows = defaultdict(lambda: [0, 0, 0, []])
    for cls, (start, end, perms, _, path, sm) in classify(maps, exe):
        row = rows[cls]
        row[0] += sm.get("Rss", 0)
        row[1] += sm.get("Anonymous", 0)
        row[2] += sm.get("FilePmdMapped", 0)
        if path.startswith("/") and sm.get("Rss", 0) > 0:
            row[3].extend(pfns(pid, start, end))
    total = [0, 0, 0]
    print(f"{'class':18} {'Rss':>6} {'Anon':>6} {'PmdMap':>6}  folios of the resident file pages")
    order = ["binary code", "binary rodata", "binary data (rw)", "libc", "ld.so", "other libs",
             "heap", "thread stacks", "other anonymous", "main stack", "vdso"]
    for cls in order + sorted(set(rows) - set(order)):
        if cls not in rows:
            continue
        rss, anon, pmd, frames = rows[cls]
        summary = ""
        if frames and cls.startswith("binary") or cls in ("libc", "ld.so", "other libs"):
            text, count = folio_summary(flags, frames)
            summary = f"{count} folios: {text}"
        print(f"{cls:18} {rss:6d} {anon:6d} {pmd:6d}  {summary}")
        for k, v in enumerate((rss, anon, pmd)):
            total[k] += v
    print(f"{'total':18} {total[0]:6d} {total[1]:6d} {total[2]:6d}  (KiB; VmRSS "
          f"{[l.split()[1] for l in open(f'/proc/{pid}/status') if l.startswith('VmRSS')][0]})")


def by_file(path):
    flags = Flags()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        m = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)
        m.madvise(22)  # MADV_POPULATE_READ
        # the mapping's address: find it in our own maps by the file's inode
        ino = os.fstat(f.fileno()).st_ino
        for start, end, perms, off, p, _ in read_maps("self"):
            if os.path.realpath(p) == os.path.realpath(path) and off == 0:
                frames = pfns("self", start, end)
                break
        folios = []
        seen = set()
        for i, pfn in enumerate(frames):
            if pfn:
                head, n = flags.folio(pfn)
                if head not in seen:
                    seen.add(head)
                    folios.append((i, n))
        sizes = Counter(n * PAGE // 1024 for _, n in folios)
        print(f"{path}: {size} bytes, {len(folios)} folios: "
              + " ".join(f"{k}K:{v}" for k, v in sorted(sizes.items())))
        m.close()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--file":
        by_file(sys.argv[2])
    elif len(sys.argv) == 2:
        by_pid(sys.argv[1])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
