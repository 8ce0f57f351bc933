"""The one error type of the CNI side, carrying a CNI spec error code."""

# Codes reserved by the CNI spec.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
NOT_AVAILABLE_LIMITED = 51

# Our own codes (the spec leaves 100 and above to plug-ins).
INTERNAL = 100
ADDRESS_IN_USE = 101
POOL_EXHAUSTED = 102
INTERFACE_EXISTS = 103
NETLINK_FAILURE = 104
FIREWALL_FAILURE = 105
KERNEL_FEATURE_MISSING = 106
PLUGIN_NOT_FOUND = 107
PLUGIN_FAILED = 108
CHECK_FAILED = 109


class CNIError(Exception):
    """A failure reported to the runtime as the spec's error JSON."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def __reduce__(self):
        # Exception pickles as cls(*self.args), which here is (msg,) alone; a
        # CNIError crossing a process boundary (a worker pool, the daemon) must
        # arrive whole, not as a TypeError in the receiving process.
        return (type(self), (self.code, self.msg, self.details))

    def to_json(self, cni_version: str) -> dict:
        return {
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        }

    def __str__(self) -> str:
        return f"{self.msg} ({self.details})" if self.details else self.msg
