"""A short table of the latency measurements: kernel launches (count_launches.py) and host overhead
(bench_host_overhead.py), from their JSON files.

    python3 benchmarks/latency_table.py LAUNCHES.json HOST_OVERHEAD.json

Either file may be missing (a run cut short): its part of the table is then skipped.
"""

from __future__ import annotations

import json
import os
import sys


def _load(path: str):
    if not path or not os.path.exists(path):
        print(f"(no {path or 'file'}: skipped)")
        return None
    with open(path) as f:
        return json.load(f)


def launches_table(data: dict) -> list[str]:
    lines = [f"Kernel launches, benzene ({data.get('device', '?')}, {data.get('dtype', '?')}); counts from the profiler trace ({data['rows'][0]['md_step_guards']['source'] if data.get('rows') else '?'})",
             f"{'model':<14}{'impl':<14}{'MD step':>9}{'no guards':>11}{'target':>8}{'copies':>8}{'host launches':>15}{'e+f call':>10}"]  # fmt: skip
    for row in data.get("rows", []):
        on, off, call = row["md_step_guards"]["per_step"], row["md_step_no_guards"]["per_step"], row["energy_and_forces_call"]
        impl = f"{row['implementation']}->{row['runs']}"
        lines.append(f"{row['model']:<14}{impl:<14}{on['kernels']:>9.1f}{off['kernels']:>11.1f}{row['target_launches_per_step']:>8}{on['memcpy']:>8.1f}"
                     f"{on['host_launch_calls']:>15.1f}{call['kernels']:>10.1f}")  # fmt: skip
    return lines


def host_table(data: dict) -> list[str]:
    lines = [f"Host path, one molecule ({data.get('device', data.get('backend', '?'))}, {data.get('dtype', '?')}); medians in µs; "
             "overhead = host - device-resident (target <= 30), extra = calculator - host (target <= 50)",
             f"{'model':<14}{'system':<18}{'host':>8}{'device':>8}{'calc':>8}{'overhead':>10}{'extra':>8}{'host/dev':>10}{'null ovh':>10}{'null extra':>11}"]  # fmt: skip
    results = data.get("results", {})
    if results and "host_call" in next(iter(results.values())):  # one model per file (older layout)
        results = {data.get("checkpoint", "?"): results}
    for model, systems in results.items():
        for name, r in systems.items():
            null = r.get("null_program", {})
            lines.append(f"{os.path.basename(model)[:13]:<14}{name:<18}{r['host_call']['wall_us']:>8.0f}{r['device_resident_call']['wall_us']:>8.0f}"
                         f"{r['calculator_call']['wall_us']:>8.0f}{r['overhead_wall_us']:>10.1f}{r['calculator_extra_wall_us']:>8.1f}"
                         f"{r['host_call']['wall_us'] / r['device_resident_call']['wall_us']:>10.2f}"
                         f"{null.get('overhead_wall_us', float('nan')):>10.1f}{null.get('calculator_extra_wall_us', float('nan')):>11.1f}")  # fmt: skip
    return lines


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        raise SystemExit(__doc__)
    launches, host = (_load(p) for p in argv)
    if launches:
        print("\n".join(launches_table(launches)))
    if host:
        print("\n".join(host_table(host)))


if __name__ == "__main__":
    main()
