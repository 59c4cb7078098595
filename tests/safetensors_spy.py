"""safe_open's file with a record of what is read from it: the keys of whole tensors and the bytes of every tensor
or slice (headers and shapes are free). Tests put it in place of llmserve.model.loading.safe_open."""

from __future__ import annotations


class SpyFile:
    def __init__(self, f, keys: list[str] | None = None, counts: list[int] | None = None):
        self.f = f
        self.keys_read = keys if keys is not None else []
        self.counts = counts if counts is not None else []

    def __enter__(self):
        self.f.__enter__()
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)

    def keys(self):
        return self.f.keys()

    def get_tensor(self, key):
        t = self.f.get_tensor(key)
        self.keys_read.append(key)
        self.counts.append(t.nbytes)
        return t

    def get_slice(self, key):
        return SpySlice(self.f.get_slice(key), self.counts)


class SpySlice:
    def __init__(self, sl, counts: list[int]):
        self.sl, self.counts = sl, counts

    def __getattr__(self, name):
        return getattr(self.sl, name)

    def __getitem__(self, index):
        t = self.sl[index]
        self.counts.append(t.nbytes)
        return t
