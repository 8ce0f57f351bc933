"""gunicorn's sync worker, made safe to stop while Docker is calling.

A connection Docker made before our socket file went away sits in the
listen queue; a worker that exits without accepting it makes the kernel
reset it, and Docker re-sends that call with an empty body (see
../shared/PROTOCOLS.md section 1). So a stopping worker first finishes its
call, then serves what is queued, then exits. It stops that way on SIGTERM,
on SIGINT (Ctrl-C reaches every process of the foreground group, workers
too: gunicorn's own worker would abort the call it is in) and when the
master dies (PR_SET_PDEATHSIG), so a killed master leaves no worker behind
that still holds the old socket.
"""

import errno
import os
import signal

from gunicorn.workers.sync import SyncWorker

from .children import die_with_parent

GONE = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINVAL, errno.EBADF)  # queue empty, or socket closed


class DrainingWorker(SyncWorker):
    def init_process(self):
        die_with_parent(signal.SIGTERM)
        if os.getppid() != self.ppid:  # the master died before prctl took effect
            self.alive = False
        super().init_process()

    def init_signals(self):
        super().init_signals()
        signal.signal(signal.SIGINT, self.handle_exit)

    def run(self):
        super().run()
        self.serve_queued()

    def serve_queued(self) -> None:
        """Accept until every listen queue is empty (the listeners are non-blocking)."""
        for listener in self.sockets:
            while True:
                self.notify()
                try:
                    self.accept(listener)
                except OSError as exc:
                    if exc.errno == errno.ECONNABORTED:
                        continue
                    if exc.errno in GONE:
                        break
                    raise
