"""What an interface name may be, decided in one place: what the kernel's
dev_valid_name() accepts (at most IFNAMSIZ - 1 bytes, not "." or "..",
no '/', ':' or whitespace), which also keeps a name from pointing anywhere
else when it becomes part of a path (/proc/sys/net/*/conf/NAME). No imports:
the dispatcher, the plug-ins and net/ all use it."""

IFNAME_MAX = 15  # IFNAMSIZ - 1
RULE = f"at most {IFNAME_MAX} bytes, not '.' or '..', no '/', ':' or whitespace"


def is_ifname(name) -> bool:
    if not isinstance(name, str) or name in (".", ".."):
        return False
    try:
        raw = name.encode("utf-8")  # the kernel counts and checks bytes (5 characters may be 20 bytes)
    except UnicodeEncodeError:
        return False  # a lone surrogate: no name the kernel could hold
    # the kernel's isspace() also takes byte 0xa0 (part of many UTF-8 characters)
    return 0 < len(raw) <= IFNAME_MAX and not any(b in raw for b in b"/: \t\n\r\v\f\0\xa0")
