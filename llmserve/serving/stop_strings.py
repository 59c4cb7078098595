"""Stop strings matched on text, not token ids (the same string has many tokenizations)."""

from __future__ import annotations


class StopMatcher:
    """Accumulates generated text; releases only text that cannot turn out to be part of a stop string."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.text = ""
        self.released = 0
        self.matched: str | None = None

    def feed(self, piece: str) -> str:
        """Adds new text; returns what is safe to send now. After a match, `matched` is set."""
        if not self.stops:
            self.text += piece
            return self._release(len(self.text))
        search_from = max(0, len(self.text) - max(len(s) for s in self.stops) + 1)
        self.text += piece
        hits = [(i, s) for s in self.stops if (i := self.text.find(s, search_from)) >= 0]
        if hits:
            end, self.matched = min(hits)
            self.text = self.text[:end]
            return self._release(end)
        return self._release(len(self.text) - self._held_back())

    def flush(self) -> str:
        return self._release(len(self.text))

    def _held_back(self) -> int:
        # Longest tail of the text that is a proper prefix of some stop string.
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best

    def _release(self, upto: int) -> str:
        out = self.text[self.released:upto]
        self.released = max(self.released, upto)
        return out
