"""The table of tools/bench-dist.sh from its JSON lines (stdin): img/s of one process x 2
threads and 2 ranks x 1 thread per engine and model, the scaling, and c10d's allreduce
bandwidth."""
import json
import sys

rows = [json.loads(line) for line in sys.stdin if line.strip()]
runs = [r for r in rows if "img_per_s" in r]
print("%-12s %-22s %10s %10s %8s" % ("engine", "model", "1x2 img/s", "2x1 img/s", "scaling"))
for eng in ("sorbier", "pytorch"):
    for arch, size in sorted({(r["arch"], r["size"]) for r in runs}):
        pick = lambda world: [r["img_per_s"] for r in runs if r["impl"].startswith(eng) and (r["arch"], r["size"]) == (arch, size) and r["world"] == world]
        one, two = pick(1), pick(2)
        if one and two:
            print("%-12s %-22s %10.1f %10.1f %7.2fx" % (eng, f"{arch} {size} px", one[0], two[0], two[0] / one[0]))
for r in rows:
    if "bus_gb_per_s" in r:
        print("%-12s allreduce %d MiB over %d ranks: %.1f ms, bus bandwidth %.2f GB/s" % (r["impl"], r["allreduce_mib"], r["world"], r["ms"], r["bus_gb_per_s"]))
