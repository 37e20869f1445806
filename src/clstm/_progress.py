"""Per-epoch progress display for ``verbose`` (no dependency; writes to stderr).

One line per epoch: a bar that fills while the epoch's mini-batches run
(redrawn in place with a carriage return), then the epoch's loss, the
validation score when early stopping is on, the epoch time and the estimated
time left for the remaining ``max_iter`` epochs.
"""

import sys
import time

__all__ = ["EpochProgress"]


def _fmt_seconds(seconds):
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class EpochProgress:
    """``start_epoch`` / ``batch_done`` / ``end_epoch``; silent when ``verbose`` is 0."""

    width = 24

    def __init__(self, verbose, max_iter, stream=None):
        self.verbose = int(verbose)
        self.max_iter = int(max_iter)
        self.stream = sys.stderr if stream is None else stream
        self._epoch_times = []
        self._live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._drawn = 0

    def start_epoch(self, epoch, n_batches):
        self.epoch = epoch
        self.n_batches = max(int(n_batches), 1)
        self._t0 = time.perf_counter()
        self._last_draw = 0.0

    def _prefix(self):
        return f"Epoch {self.epoch}/{self.max_iter}"

    def batch_done(self, batch, loss):
        if not self.verbose or not self._live:
            return      # the in-place bar only on a terminal; logs get one line per epoch
        now = time.perf_counter()
        if batch + 1 < self.n_batches and now - self._last_draw < 0.1:
            return    # at most 10 redraws a second
        self._last_draw = now
        filled = int(self.width * (batch + 1) / self.n_batches)
        bar = "=" * filled + (">" if filled < self.width else "") + "." * (self.width - filled - 1)
        text = f"{self._prefix()} [{bar[:self.width]}] {batch + 1}/{self.n_batches} - loss: {loss:.4g}"
        # pad over what the previous draw left (a longer loss, say), then redraw
        self.stream.write("\r" + text.ljust(self._drawn))
        self._drawn = len(text)
        self.stream.flush()

    def end_epoch(self, loss, validation_score=None, remaining_epochs=0):
        elapsed = time.perf_counter() - self._t0
        self._epoch_times.append(elapsed)
        if not self.verbose:
            return
        recent = self._epoch_times[-5:]
        left = sum(recent) / len(recent) * max(int(remaining_epochs), 0)
        line = f"{self._prefix()} [{'=' * self.width}] - loss: {loss:.6g}"
        if validation_score is not None:
            line += f" - validation score: {validation_score:.6g}"
        line += f" - {_fmt_seconds(elapsed)}/epoch - time left: {_fmt_seconds(left)}"
        if self._live:
            line = "\r" + line.ljust(self._drawn)
        self._drawn = 0
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self):
        """End a line the in-epoch bar left unfinished (training stopped mid-epoch)."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = 0

    def message(self, text):
        if self.verbose:
            self.stream.write(text + "\n")
            self.stream.flush()
