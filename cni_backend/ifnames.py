"""What an interface name may be, decided in one place: what the kernel's
dev_valid_name() accepts (at most IFNAMSIZ - 1 characters, not "." or "..",
no '/', ':' or whitespace), which also keeps a name from pointing anywhere
else when it becomes part of a path (/proc/sys/net/*/conf/NAME). No imports:
the dispatcher, the plug-ins and net/ all use it."""

IFNAME_MAX = 15  # IFNAMSIZ - 1
RULE = f"at most {IFNAME_MAX} characters, not '.' or '..', no '/', ':' or whitespace"


def is_ifname(name) -> bool:
    return (isinstance(name, str) and 0 < len(name) <= IFNAME_MAX and name not in (".", "..")
            and not any(c in name for c in "/: \t\n\r\v\f\0"))
