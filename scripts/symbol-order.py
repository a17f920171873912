#!/usr/bin/env python3
"""Prints the symbol order for lld (see build.rs): the functions of BINARY that callgrind saw
run, in the callgrind outputs given, named from lld's link map of the same build (a release
build keeps no symbols, so callgrind names its code by address).
With `--faults PID FILE` (perf script --show-mmap-events -F pid,addr of a run of the same
binary under `perf record -e page-faults -d`), also the functions at the code addresses whose
first run faulted in process PID (each block the kernel mapped around a fault names one).
Usage: symbol-order.py BINARY LINK_MAP [--faults PID FILE] CALLGRIND_OUT...
"""
import bisect
import re
import sys

binary, link_map, outputs = sys.argv[1], sys.argv[2], sys.argv[3:]
fault_pid = fault_file = None
if outputs[:1] == ["--faults"]:
    fault_pid, fault_file, outputs = outputs[1], outputs[2], outputs[3:]

# lld's map: "VMA LMA Size Align Out/In/Symbol"; an input section line names "file:(section)".
# Functions have a section each, named ".text." and the function's symbol (the map itself
# prints symbols demangled; the section name keeps the name the ordering file needs).
sections = []  # (start, end, symbol) of the function sections in .text
in_text = False
for line in open(link_map, errors="replace"):
    parts = line.split(None, 4)
    if len(parts) < 5 or not re.fullmatch(r"[0-9a-f]+", parts[0]):
        continue
    vma, size, rest = int(parts[0], 16), int(parts[2], 16), parts[4].strip()
    if rest.startswith(".") and ":(" not in rest:
        in_text = rest == ".text"
    elif in_text and ":(" in rest and size > 0:
        section = rest.rsplit(":(", 1)[1].rstrip(")")
        m = re.match(r"^\.text\.(?:(?:unlikely|hot|startup|exit)\.)?(.+)$", section)
        if m:
            sections.append((vma, vma + size, m.group(1)))
sections.sort()
starts = [s[0] for s in sections]

# Callgrind names a function once, "fn=(id) name" (its object by "ob="; a callee's by "cfn=" and
# "cob="), then by "(id)" alone. Code without a symbol is named by its address.
wanted = set()
for path in outputs:
    objects, names = {}, {}
    ob = cob = None
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        m = re.match(r"^(c?ob)=\((\d+)\)(?: (.*))?$", line)
        if m:
            if m.group(3) is not None:
                objects[m.group(2)] = m.group(3)
            if m.group(1) == "ob":
                ob = objects.get(m.group(2))
            else:
                cob = objects.get(m.group(2))
            continue
        m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line)
        if not m:
            continue
        if m.group(3) is not None:
            names[m.group(2)] = m.group(3)
        obj = ob if m.group(1) == "fn" else (cob or ob)
        if m.group(1) == "cfn":
            cob = None
        name = names.get(m.group(2), "")
        if obj == binary and name.startswith("0x"):
            address = int(name.split("'")[0], 16)
            i = bisect.bisect_right(starts, address) - 1
            if i >= 0 and address < sections[i][1]:
                wanted.add(i)

# perf's page faults: the binary's first mapping (file offset 0) gives its load address; a
# fault's address less that is the link map's address.
if fault_file:
    base = None
    for line in open(fault_file, errors="replace"):
        if "PERF_RECORD_MMAP" in line:
            m = re.search(r"\[(0x[0-9a-f]+)\((0x[0-9a-f]+)\) @ (0x[0-9a-f]+|0) .*\]: \S+ (\S+)$", line)
            if m and m.group(4) == binary and int(m.group(3), 16) == 0:
                base = int(m.group(1), 16)
            continue
        fields = line.split()
        if base is None or len(fields) != 2 or fields[0] != fault_pid:
            continue
        address = int(fields[1], 16) - base
        i = bisect.bisect_right(starts, address) - 1
        if i >= 0 and address < sections[i][1]:
            wanted.add(i)

total = 0
listed = set()
for i in sorted(wanted, key=lambda i: (-(sections[i][1] - sections[i][0]), sections[i][0])):
    total += sections[i][1] - sections[i][0]
    listed.add(sections[i][2])
    print(sections[i][2])


# Then the other copies of the generic functions seen run (the same name but for the hash that
# names the types): which of them run depends on timing (a channel's blocking path), which
# differs under callgrind. Placed after the functions seen run, they cost nothing unless run.
def stem(symbol):
    return re.sub(r"17h[0-9a-f]{16}E$", "", symbol)


stems = {stem(symbol) for symbol in listed}
others = 0
for start, end, symbol in sections:
    if symbol not in listed and stem(symbol) in stems:
        others += end - start
        print(symbol)
print(f"{len(wanted)} functions seen run, {total} bytes of {sections[-1][1] - sections[0][0]} "
      f"of code; {others} bytes of other copies of the generic ones", file=sys.stderr)
