"""Figures -> the console table, report.md, report.json and chart.png."""

import json
import math
import os

from cni_backend import files

from .models import MODELS

PHASES = {  # phase -> what it measures
    "total": "client-measured: Docker API start/stop, ctr run until the container prints / kill until ctr exits, "
             "invoke add/del",
    "docker->shim": "Docker's requests to the shim, as long as the shim's handlers took (sum per container)",
    "shim own": "docker->shim minus the CNI executions the shim made",
    "outside shim": "total minus docker->shim: dockerd, containerd, runc",
    "after answer": "CNI executions the shim made after answering Docker: CreateEndpoint's ADD (the Join "
                    "waits for it, and counts the wait), DeleteEndpoint's DEL (nothing waits for it)",
    "cni exec": "plug-in executions seen by the runtime-side caller (process start included; the shim runs "
                "our own plug-ins on a thread of its worker)",
    "plug-in": "the plug-ins' own work (in the CNI daemon's worker, or on a thread of the shim's worker)",
    "netlink": "netlink requests and dumps (plug-ins and the shim's staging moves)",
    "firewall": "iptables-restore / nft runs",
}


def percentile(values: list, q: float):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def stats(values: list) -> dict:
    return {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95), "max": max(values) if values else None}


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def latency_rows(latency: dict, op: str) -> list:
    """[[phase, "p50/p95/max" per model]] for the phases any model has."""
    rows = []
    for phase in PHASES:
        cells = []
        for model in MODELS:
            s = latency.get(model, {}).get(op, {}).get(phase)
            cells.append("-" if not s or s["p50"] is None else f"{_ms(s['p50'])} / {_ms(s['p95'])} / {_ms(s['max'])}")
        if any(c != "-" for c in cells):
            rows.append([phase, *cells])
    return rows


def table(header: list, rows: list) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def console(figures: dict) -> str:
    header = ["phase (ms p50 / p95 / max)", *MODELS.values()]
    parts = []
    for op in ("attach", "detach"):
        parts.append(f"{op} ({figures['containers']} containers per model, backend {figures['backend']})")
        parts.append(table(header, latency_rows(figures["latency"], op)))
    parts.append("calls per container (attach + detach)")
    parts.append(table(["calls", *MODELS.values()], calls_rows(figures["calls"])))
    parts.append("data plane")
    parts.append(table(["pair", "ping avg ms", "ping loss %", "iperf3 Gbit/s"], dataplane_rows(figures["dataplane"])))
    parts.append(f"topology differences: {len(figures['topology']['differences'])}")
    return "\n\n".join(parts)


def calls_rows(calls: dict) -> list:
    kinds = sorted({k for per_model in calls.values() for k in per_model})
    return [[kind, *(f"{calls.get(m, {}).get(kind, 0):g}" for m in MODELS)] for kind in kinds]


def dataplane_rows(dataplane: list) -> list:
    return [[d["pair"], "-" if d["ping"]["rtt_avg_ms"] is None else f"{d['ping']['rtt_avg_ms']:.3f}",
             f"{d['ping']['loss_pct']:g}", "-" if d["iperf3"].get("gbit_s") is None else f"{d['iperf3']['gbit_s']:.2f}"]
            for d in dataplane]


def markdown(figures: dict, charted: bool = True) -> str:
    env = figures["environment"]
    out = [f"# CNM vs CNI on the `{figures['backend']}` backend", "",
           f"Run {figures['started']}, {figures['containers']} containers per model, one network "
           f"(`{figures['network']['docker_name']}`, subnet {figures['network']['subnet']}).", "",
           "    " + figures["command"], "",
           "| component | version |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in env.items()]
    out += ["", "Models: " + "; ".join(f"**{k}** = {v}" for k, v in MODELS.items()) + ".", ""]
    for op in ("attach", "detach"):
        out += [f"## {op.capitalize()} latency (ms, p50 / p95 / max)", "",
                table(["phase", *MODELS.values()], latency_rows(figures["latency"], op)), ""]
    out += ["Phases: " + "; ".join(f"*{k}*: {v}" for k, v in PHASES.items()) + ".", "",
            "## Calls per container (attach + detach, mean)", "",
            table(["calls", *MODELS.values()], calls_rows(figures["calls"])), "",
            "## Topology (container 0 of each model, normalised)", ""]
    topo = figures["topology"]
    keys = sorted({k for t in topo["per_model"].values() for k in t})
    out.append(table(["key", *MODELS], [[k, *(_cell(topo["per_model"].get(m, {}).get(k)) for m in MODELS)]
                                        for k in keys]))
    out += ["", "### Differences", ""]
    out += [f"- `{key}`: " + "; ".join(f"{m} = `{_cell(v)}`" for m, v in values.items())
            for key, values in topo["differences"]] or ["- none"]
    out += ["", "## Data plane", "", table(["pair", "ping avg ms", "ping loss %", "iperf3 Gbit/s"],
                                           dataplane_rows(figures["dataplane"])), ""]
    out += ["![latency](chart.png)", ""] if charted else [f"({NO_CHART})", ""]
    return "\n".join(out)


def _cell(value) -> str:
    if isinstance(value, list):
        return "<br>".join(map(str, value)) or "(none)"
    return "(absent)" if value is None else str(value)


# The chart library is in the `compare` extra, not in the product: `make run`
# and the managed plug-in do not carry it (it and numpy are ~100 MB, for one
# picture of figures the Markdown and JSON reports hold in full).
NO_CHART = ("no chart.png: matplotlib is not installed (pip install 'rancher-cnm-cni[compare]' adds it); "
            "report.md and report.json are complete")


def chart_library_present() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def chart(figures: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    phases = ["total", "docker->shim", "cni exec", "plug-in", "netlink", "firewall"]
    width = 0.8 / len(MODELS)
    for ax, op in zip(axes, ("attach", "detach")):
        for i, model in enumerate(MODELS):
            per_phase = figures["latency"].get(model, {}).get(op, {})
            p50 = [(per_phase.get(p) or {}).get("p50") or 0 for p in phases]
            p95 = [(per_phase.get(p) or {}).get("p95") or 0 for p in phases]
            xs = [x + i * width for x in range(len(phases))]
            ax.bar(xs, p50, width, label=model)
            ax.scatter(xs, p95, marker="_", color="black", s=80)
        ax.set_xticks([x + width for x in range(len(phases))])
        ax.set_xticklabels(phases, rotation=30, ha="right")
        ax.set_ylabel("ms (bar p50, tick p95)")
        ax.set_title(f"{op} ({figures['backend']}, n={figures['containers']})")
        ax.legend()
    pairs = figures["dataplane"]
    axes[2].bar(range(len(pairs)), [d["iperf3"].get("gbit_s") or 0 for d in pairs], color="tab:green")
    axes[2].set_xticks(range(len(pairs)))
    axes[2].set_xticklabels([d["pair"] for d in pairs], rotation=30, ha="right")
    axes[2].set_ylabel("iperf3 TCP Gbit/s")
    axes[2].set_title("data plane")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(figures: dict, folder: str) -> dict:
    """The reports written, by name; chart.png only when matplotlib is there."""
    os.makedirs(folder, exist_ok=True)
    charted = chart_library_present()
    names = ("report.md", "report.json") + (("chart.png",) if charted else ())
    paths = {name: os.path.join(folder, name) for name in names}
    files.write_atomic(paths["report.json"], json.dumps(figures, indent=2, default=str), 0o644)
    if charted:
        chart(figures, paths["chart.png"])
    files.write_atomic(paths["report.md"], markdown(figures, charted), 0o644)
    return paths
