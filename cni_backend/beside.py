"""Work started on a thread of its own, beside the caller's own work: for
work that mostly waits for another process or the kernel (an
iptables-restore, an RCU grace period), so the two waits overlap. Work
that is mostly Python runs `here` instead: beside, it would only take
turns with the caller on the interpreter's lock, and cost a thread."""

import threading
import time


def start(name: str, fn, *args, here: bool = False):
    """Start fn(*args) on a thread of its own, in the caller's network
    namespace (a new thread starts in its creator's); with `here`, run it
    now, in the caller's thread. The function returned waits for it and
    gives what it raised, or None."""
    raised = []
    if here:
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which raises it
            raised.append(exc)
        return lambda: raised[0] if raised else None

    def run():
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which raises it
            raised.append(exc)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    # Hand it the GIL now: it then runs its Python up to its first blocking
    # call (the process or kernel it waits for) while we wait, instead of
    # waiting for us in between our netlink requests (~2 ms later per ADD).
    time.sleep(0)

    def finished():
        thread.join()
        return raised[0] if raised else None
    return finished
