"""What `cnm-shim version` and `cnm-shim options --json` report: our version,
the CNI spec versions we speak, the data paths this kernel offers (from the
kernel-feature probes the backends themselves use, cni_backend/net/features.py)
and which optional packages are installed."""

import importlib.metadata
import importlib.util
import os

from cni_backend import version as cni_version

DISTRIBUTION = "rancher-cnm-cni"

# package -> (the extra that installs it, what it adds)
OPTIONAL_PACKAGES = {
    "matplotlib": ("compare", "cnm-shim compare draws chart.png (without it: report.md and report.json only)"),
}


def our_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def optional_packages() -> dict:
    found = {}
    for name, (extra, adds) in OPTIONAL_PACKAGES.items():
        present = importlib.util.find_spec(name) is not None
        try:
            installed = importlib.metadata.version(name) if present else None
        except importlib.metadata.PackageNotFoundError:
            installed = None
        found[name] = {"present": present, "version": installed, "extra": extra, "adds": adds}
    return found


def data_paths(kernel: dict | None, tun: bool) -> dict:
    """The data path each backend gets on this kernel, from the probed
    features (name -> bool, or None when they could not be probed)."""
    if kernel is None:
        unknown = "unknown: probing the kernel needs root"
        return {"flat": unknown, "ipsec": unknown}
    if not kernel["nft_bridge"]:
        flat = "unavailable: its anti-spoofing needs nft_bridge"
    elif kernel["nft_netdev_fwd"]:
        flat = "fast path (nftables netdev fwd), bridge path for the rest"
    else:
        flat = "bridge path only (no nft_netdev_fwd for the fast path)"
    if kernel["esp_xfrm"]:
        ipsec = "xfrm (kernel ESP)"
    elif tun:
        ipsec = "libipsec (user-space ESP over /dev/net/tun)"
    else:
        ipsec = "unavailable: no kernel ESP (XFRM) and no /dev/net/tun"
    return {"flat": flat, "ipsec": ipsec}


def kernel_features() -> dict | None:
    """The probed features, or None when not root (the probes change
    nftables and XFRM state for a moment, which needs CAP_NET_ADMIN)."""
    if os.geteuid() != 0:
        return None
    from cni_backend.net import features
    return features.report()


def report() -> dict:
    kernel = kernel_features()
    return {"version": our_version(), "cni_versions": list(cni_version.SUPPORTED_VERSIONS),
            "kernel_features": kernel, "data_paths": data_paths(kernel, os.path.exists("/dev/net/tun")),
            "optional_packages": optional_packages()}


def text(found: dict) -> str:
    lines = [f"cnm-shim {found['version']} ({DISTRIBUTION})",
             "CNI spec versions: " + ", ".join(found["cni_versions"])]
    kernel = found["kernel_features"]
    lines.append("kernel features: " + (", ".join(f"{k} {'yes' if v else 'no'}" for k, v in kernel.items())
                                        if kernel is not None else "not probed (needs root)"))
    lines.append("data paths:")
    lines += [f"  {backend}: {what}" for backend, what in found["data_paths"].items()]
    lines.append("optional packages:")
    for name, p in found["optional_packages"].items():
        state = (p["version"] or "present") if p["present"] else \
            f"absent (pip install '{DISTRIBUTION}[{p['extra']}]')"
        lines.append(f"  {name}: {state}: {p['adds']}")
    return "\n".join(lines) + "\n"


def options(backend: str) -> dict:
    """A backend's options as data: `cnm-shim options BACKEND --json`."""
    from . import backends
    from .options import ALIASES, default_text
    entry = backends.get(backend)
    names = {o.name for o in entry.options}
    return {"backend": entry.name, "driver": entry.driver,
            "options": [{"name": o.name, "default": _json_default(o, entry.required), "default_text":
                         default_text(o, entry.required), "required": o.name in entry.required, "help": o.help}
                        for o in entry.options],
            "aliases": {alias: name for alias, name in ALIASES.items() if name in names}}


def _json_default(option, required) -> object:
    if option.name in required:
        return None
    default = option.default
    if isinstance(default, tuple):
        return list(default)
    if default is None or isinstance(default, (bool, int, float, str, list, dict)):
        return default
    return str(default)
